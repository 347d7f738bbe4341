"""Crash-safe file writes: a reader sees the old file or the whole new one, never a part.

Write to a temp file in the target's folder (``.<name>.<random>.tmp``), flush and fsync it,
then ``os.replace`` it onto the target: the rename is atomic on POSIX and Windows, so a
process killed at any moment (SIGKILL included) leaves at worst a stray temp file, which
readers ignore because its name starts with a dot and ends in ``.tmp``.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

TEMP_SUFFIX = ".tmp"


def is_temp_file(path: Path) -> bool:
    """True for the temp files :func:`atomic_write_bytes` leaves behind when killed mid-write."""
    return path.name.startswith(".") and path.name.endswith(TEMP_SUFFIX)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; results and figures are meant to be shared
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def to_json_text(obj: Any) -> str:
    """Canonical JSON text (sorted keys, one-space indent); numpy arrays and scalars become lists and numbers."""
    return json.dumps(obj, indent=1, sort_keys=True, default=_jsonable) + "\n"


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, to_json_text(obj).encode())


def _jsonable(x: Any) -> Any:
    if hasattr(x, "tolist"):  # numpy / torch arrays and numpy scalars
        return x.tolist()
    raise TypeError(f"not JSON-serialisable: {type(x).__name__}")
