"""Where a result came from: the `provenance` block every result file carries.

The project's version and git commit (with a dirty flag), the command line, the Python / torch / transformers
versions, device and dtype, the model's source with a content hash of its weight files (computed once per file
and cached; a converted GGUF also names the file and quantization it came from), the data, and the UTC time.
Nothing in it differs between two runs of the same thing except the time.
"""
import functools
import hashlib
import json
import platform
import shlex
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from lib.files import sha256_of, write_text
from lib.models import COMPLETE_MARKER

ROOT = Path(__file__).resolve().parents[1]
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")
HASH_CACHE = "weight_hashes.json"


def provenance(model=None, data=None, device=None, dtype=None, command=None) -> dict:
    """The block; `model` a lib.models.ModelSpec (or None), `data` a dict saying which windows were used."""
    import torch
    try:
        import transformers
        tf_version = transformers.__version__
    except ImportError:
        tf_version = None
    return {
        "project": {"version": project_version(), **git_state()},
        "command": command or "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "transformers": tf_version},
        "device": None if device is None else str(device), "dtype": None if dtype is None else str(dtype),
        "model": None if model is None else model_source(model),
        "data": data,
        "utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def short(block: dict) -> str:
    """One line for index pages and summary tables."""
    p, v, m = block["project"], block["versions"], block.get("model") or {}
    commit = (p.get("commit") or "no git")[:10] + (" (uncommitted changes)" if p.get("dirty") else "")
    weights = f"; weights sha256 {m['weights_sha256'][:12]}" if m.get("weights_sha256") else ""
    origin = f" from {m['converted_from']}" if m.get("converted_from") else ""
    return (f"systematic-outliers {p['version']} at {commit}; torch {v['torch']}, transformers {v['transformers']}; "
            f"{m.get('source', 'no model')}{origin}{weights}; {block['utc']}")


def project_version() -> str:
    for line in (ROOT / "pyproject.toml").read_text().splitlines():
        if line.startswith("version"):
            return line.split("=", 1)[1].strip().strip('"')
    return "unknown"


@functools.lru_cache(maxsize=1)
def git_state() -> dict:
    """The commit and whether tracked files differ from it, read once per process: a run that rewrites committed
    result files in place must not call its own later results dirty."""
    def git(*args):
        out = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else None
    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no")) if commit else None
    except (OSError, subprocess.TimeoutExpired):
        commit, dirty = None, None
    return {"commit": commit, "dirty": dirty}


def model_source(spec) -> dict:
    """Name, source (folder, file or hub id) and a hash over its weight files where they are on disk."""
    out = {"name": spec.name, "source": spec.source, "title": spec.title}
    path = Path(spec.source)
    files = [path] if path.is_file() else sorted(p for p in path.glob("*") if p.suffix in WEIGHT_SUFFIXES) \
        if path.is_dir() else []
    if files:
        digest = hashlib.sha256()
        for f in files:
            digest.update(f"{f.name}:{file_sha256(f)}\n".encode())
        out["weights_sha256"] = digest.hexdigest()
    marker = path / COMPLETE_MARKER if path.is_dir() else None
    if marker is not None and marker.is_file():
        origin = json.loads(marker.read_text()).get("converted_from")
        if origin:
            out["converted_from"] = ", ".join(f"{k} {v}" for k, v in origin.items())
    return out


def file_sha256(path: Path) -> str:
    """sha256 of a file, cached by (path, size, modification time) so each file is read once."""
    from lib.sdist import cache_dir
    cache_file = cache_dir() / HASH_CACHE
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    if key not in cache:
        cache[key] = sha256_of(path)
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            write_text(cache_file, json.dumps(cache, indent=1))
        except OSError:
            pass  # a read-only cache only costs a re-hash next time
    return cache[key]
