"""Small files that must survive a crash: written whole or not at all, and on disk once written.

    write_durably(recovery_dir / "freshet-start" / "0-events", "1234")

The text goes to a hidden temporary file beside ``path``, which is fsynced, renamed over
``path`` and its directory fsynced: a reader sees the old content or the new one, never a
part, and after the call returns a power loss does not undo it.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["fsync_dir", "write_durably"]


def fsync_dir(path: Path) -> None:
    """Make the entries of directory ``path`` (a rename into it) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, text: str) -> None:
    """Replace ``path``'s content with ``text`` atomically and durably (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
