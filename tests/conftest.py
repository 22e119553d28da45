"""Session-wide settings: one thread count for every test module, and a check that the tests write nothing into the
checkout (everything they make belongs under tmp_path)."""
import os
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# what a test run may make or change in the checkout: interpreter caches, pytest's own cache, the project cache
NOT_WATCHED = {".git", "__pycache__", ".pytest_cache", ".cache"}

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))


def _watched(name: str) -> bool:
    return name not in NOT_WATCHED and not name.startswith(".venv")


def checkout_state(busy=()) -> set:
    """git's view of the checkout (modified, untracked and ignored files) and every file and folder in it with its
    size and modification time: git alone sees neither a new empty folder nor a rewritten ignored file. The folders
    in `busy` are listed but not entered (training runs may be writing there while the tests run)."""
    status = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--ignored"], capture_output=True,
                            text=True).stdout.splitlines()
    state = {("git", line) for line in status
             if all(_watched(part) for part in Path(line[3:]).parts) and not any(line[3:].startswith(b) for b in busy)}
    for folder, dirs, files in os.walk(ROOT):
        here = Path(folder)
        dirs[:] = [d for d in dirs if _watched(d)]
        state.update(("folder", str((here / d).relative_to(ROOT))) for d in dirs)
        dirs[:] = [d for d in dirs if str((here / d).relative_to(ROOT)) + "/" not in busy]
        for name in files:
            stat = (here / name).lstat()
            state.add(("file", str((here / name).relative_to(ROOT)), stat.st_size, stat.st_mtime_ns))
    return state


@pytest.fixture(scope="session", autouse=True)
def checkout_unchanged():
    """Fails the session when the tests left a file or folder in the checkout, or changed one."""
    busy = {str(p.relative_to(ROOT)) + "/" for pattern in ("out*", "logs*") for p in (ROOT / "gpt-2").glob(pattern)
            if p.is_dir()}  # training runs' folders and their console logs
    before = checkout_state(busy)
    yield
    changed = sorted({entry[1] for entry in checkout_state(busy) ^ before})
    if changed:
        pytest.fail("the tests changed the checkout (they must write only under tmp_path): " + ", ".join(changed[:20]))
