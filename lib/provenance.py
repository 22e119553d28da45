"""Where a result came from: the `provenance` block every result file carries.

The project's version and git commit (with a dirty flag), the command line, the Python / torch / transformers
versions, device and dtype, where the decoder layers were (how many on each device, how many offloaded), the
model's source with a content hash of its weight files (computed once per file and cached; a converted GGUF also
names the file and quantization it came from), the data, and the UTC time.
Nothing in it differs between two runs of the same thing except the time.
"""
import functools
import hashlib
import platform
import shlex
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from lib.files import file_sha256
from lib.gguf_models import converted_from

ROOT = Path(__file__).resolve().parents[1]
LOSSLESS = ("F32", "F16", "BF16")  # GGUF file types that hold the weights as they were
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


def provenance(model=None, data=None, device=None, dtype=None, command=None, placement=None) -> dict:
    """The block; `model` a lib.models.ModelSpec (or None), `data` a dict saying which windows were used,
    `placement` where the decoder layers were (lib.models.placement: per device, and how many offloaded)."""
    import torch
    try:
        import transformers
        tf_version = transformers.__version__
    except ImportError:
        tf_version = None
    block = {
        "project": {"version": project_version(), **git_state()},
        "command": command or "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "transformers": tf_version},
        "device": None if device is None else str(device), "dtype": None if dtype is None else str(dtype),
        "model": None if model is None else model_source(model),
        "data": data,
        "utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if placement is not None:
        block["placement"] = placement
    return block


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


RESULT_SUFFIXES = (".json", ".jsonl", ".md", ".png", ".log")  # what runs write: not code


@functools.lru_cache(maxsize=1)
def git_state() -> dict:
    """The commit and whether tracked files other than results differ from it (`dirty`: the code is not the
    commit's), read once per process: a run that rewrites committed result files in place must not call its own
    later results dirty, nor one run another's."""
    def git(*args):
        out = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=10)
        return out.stdout if out.returncode == 0 else None
    try:
        commit = (git("rev-parse", "HEAD") or "").strip() or None
        changed = [line[3:] for line in (git("status", "--porcelain", "--untracked-files=no") or "").splitlines()]
        dirty = any(not path.endswith(RESULT_SUFFIXES) for path in changed) if commit else None
    except (OSError, subprocess.TimeoutExpired):
        commit, dirty = None, None
    return {"commit": commit, "dirty": dirty}


git_state()  # read when the code is loaded: a file edited while a long run goes on is not the code that run ran


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
    origin = converted_from(path) if path.is_dir() else None
    if origin:
        out["converted_from"] = origin_line(origin)
        out["gguf"] = origin
    return out


def origin_line(origin: dict) -> str:
    """The GGUF a converted model came from, in a few words: dequantized weights are not the original ones."""
    sha = f", sha256 {origin['sha256'][:12]}" if origin.get("sha256") else ""
    lossy = "" if origin.get("quantization") in LOSSLESS else ": dequantized, not the original weights"
    return f"{origin.get('file')} ({origin.get('quantization')} GGUF{sha}{lossy})"
