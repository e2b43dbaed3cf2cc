"""Output-folder checks shared by every command that writes files."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


class OutputDirError(PermissionError, ValueError):
    """An output folder cannot be created or written (a user error: choose another --out)."""


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` if needed and check that files can be written there, before any heavy work."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise OutputDirError(f"cannot write to output directory {p}: it exists and is not a directory. "
                             f"Choose another --out")
    try:
        p.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=p, prefix=".write-test-"):
            pass
    except OSError as e:
        raise OutputDirError(f"cannot write to output directory {p}: {e.strerror or e}. Choose another --out") from e
    return p
