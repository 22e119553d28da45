"""Atomic writes: a temp file in the same folder, then os.replace, so a crash or a full disk never leaves a
half-written result, table, figure or cache file where a good one was."""
import hashlib
import json
import os
import tempfile
from pathlib import Path

from lib.errors import UserError
from lib.sdist import cache_dir


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_atomically(path, write, binary: bool = False) -> None:
    """Call write(file) on a temp file next to `path`, then move it into place. The file gets the permissions
    a plain open() would give it (mkstemp's own are owner-only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _default_mode())
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path, text: str) -> None:
    write_atomically(path, lambda f: f.write(text))


def write_json(path, data, indent=1) -> None:
    write_text(path, json.dumps(data, indent=indent) + "\n")


def check_writable(path, flag: str = "--savedir") -> Path:
    """`path`, checked before any work: its missing folders are made, a file is written there and removed, and the
    folders made are removed again, so a run that fails later leaves no empty folder (the writes make them). A
    UserError naming `flag` where it cannot be written."""
    path = Path(path)
    made = [p for p in (path, *path.parents) if not p.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as e:
        raise UserError(f"cannot write to {flag} {str(path)!r}: {e.strerror or e}") from None
    finally:
        for folder in made:  # deepest first
            try:
                folder.rmdir()
            except OSError:
                pass
    return path


def sha256_of(path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


HASH_CACHE = "weight_hashes.json"  # in the project cache: sha256 by (path, size, modification time)


def file_sha256(path: Path) -> str:
    """sha256 of a file, cached by (path, size, modification time) so each file is read once."""
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


def writable_dir(path: Path, flag: str = "--savedir") -> Path:
    """`path`, made where it is missing and checked writable; a UserError naming `flag` where it is not."""
    check_writable(path, flag).mkdir(parents=True, exist_ok=True)
    return path
