"""Atomic writes of result files: a temp file in the same folder, then os.replace, so a crash or a full disk
never leaves a half-written JSON or table where a good one was."""
import json
import os
import tempfile
from pathlib import Path


def write_text(path, text: str) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path, data, indent=1) -> None:
    write_text(path, json.dumps(data, indent=indent) + "\n")
