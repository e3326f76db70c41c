"""Owner-only file writes: private material never exists with wider permissions."""

from __future__ import annotations

import os
from pathlib import Path

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def ensure_private_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (and parents) as 0700 and tighten it if it already exists."""
    directory = Path(path)
    directory.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    os.chmod(directory, PRIVATE_DIR_MODE)
    return directory


def write_private(path: str | os.PathLike[str], data: bytes, mode: int = PRIVATE_FILE_MODE) -> Path:
    """Atomically replace ``path`` with ``data``, created with ``mode`` from the start.

    The temporary file is opened with the final mode, so the content is never
    readable by others, and ``os.replace`` makes a crash leave either the old or
    the new file, never half of one.
    """
    target = Path(path)
    ensure_private_dir(target.parent)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def write_public(path: str | os.PathLike[str], data: bytes) -> Path:
    """Certificates and configs without secrets: 0644, still written atomically."""
    return write_private(path, data, mode=0o644)
