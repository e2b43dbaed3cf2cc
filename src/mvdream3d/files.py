"""Output folders and their files, shared by every command that writes: writable-folder checks, atomic
writes, and the clean-up after an interrupted run (stale temporaries, append-only logs cut back to the
checkpoint a resume starts from)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import OutputDirError


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


def _file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _file_mode()


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """The one temp-file-then-rename write: yields a temporary path beside ``path`` (``.NAME.XXXXXXXX`` +
    ``suffix``; pass ``path``'s suffix for writers that choose the format by the file's ending) for the block
    to write; when the block ends without an error the file gets the usual permissions (0666 less the umask;
    a temporary file alone would be 0600) and is renamed over ``path``, so a reader (or a run killed
    mid-write) sees the old file or the new one, never half of it. On an error the temporary is removed and
    ``path`` is untouched. The parent folder must exist."""
    p = Path(path)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through :func:`atomic_write`. Returns the path."""
    with atomic_write(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write_bytes` of ``text`` in UTF-8."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def truncate_jsonl(path: str | os.PathLike, step: int, key: str = "step") -> int:
    """Cut an append-only JSON-lines log back to what a checkpoint taken at ``step`` had seen.

    A run killed after its last checkpoint has logged steps that the resumed run takes again; this drops
    every row whose ``key`` is above ``step``, and a last line torn by the kill (not valid JSON), so that
    after the resume each step is in the log once. Rows without ``key`` stay. The file is rewritten
    atomically, and only when something goes; a missing file is nothing to do. Returns the rows dropped.
    """
    p = Path(path)
    if not p.is_file():
        return 0
    kept, dropped = [], 0
    for line in p.read_bytes().decode("utf-8", errors="replace").splitlines():  # a torn line may end mid-character
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            dropped += 1
            continue
        if isinstance(row, dict) and isinstance(row.get(key), int | float) and row[key] > step:
            dropped += 1
            continue
        kept.append(line)
    if dropped:
        atomic_write_text(p, "".join(line + "\n" for line in kept))
    return dropped


def backup_path(final: str | os.PathLike) -> Path:
    """Where :func:`replace_dir` keeps the previous ``final`` while it swaps a new one in."""
    p = Path(final)
    return p.with_name(f".{p.name}.old")


def replace_dir(tmp: str | os.PathLike, final: str | os.PathLike) -> Path:
    """Put the complete folder ``tmp`` in place of ``final`` (e.g. a checkpoint). The old ``final`` is
    renamed to :func:`backup_path` first and removed last, so a kill at any moment leaves a complete folder
    at ``final`` or at the backup, which :func:`remove_stale_temporaries` puts back."""
    tmp, final, backup = Path(tmp), Path(final), backup_path(final)
    shutil.rmtree(backup, ignore_errors=True)
    if final.exists():
        os.replace(final, backup)
    os.replace(tmp, final)
    shutil.rmtree(backup, ignore_errors=True)
    return final


def remove_stale_temporaries(folder: str | os.PathLike, patterns: Iterable[str],
                             restore: Iterable[str | os.PathLike] = ()) -> list[Path]:
    """Clean up what interrupted atomic writes left in ``folder``, at the start of a run that owns it.

    First each folder of ``restore`` that is missing while its :func:`replace_dir` backup exists (a kill
    between the two renames) gets the backup back; then every file or folder directly in ``folder`` whose
    name matches one of the glob ``patterns`` (e.g. ``.tmp_step_*``) is removed, together with any
    remaining backups of ``restore``. Returns the removed paths.
    """
    root = Path(folder)
    for final in map(Path, restore):
        backup = backup_path(final)
        if backup.is_dir() and not final.exists():
            os.replace(backup, final)
    if not root.is_dir():
        return []
    stale = {p for pattern in patterns for p in root.glob(pattern)}
    stale |= {backup_path(final) for final in map(Path, restore) if backup_path(final).exists()}
    for p in sorted(stale):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return sorted(stale)
