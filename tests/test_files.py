"""The output-folder helpers shared by training, DreamBooth and text-to-3D: atomic writes, logs cut back to a
checkpoint, folder swaps that survive a kill, and the clean-up of what interrupted writes leave."""

from __future__ import annotations

import json
import os
import stat

import pytest

from mvdream3d.files import (
    atomic_write,
    atomic_write_bytes,
    atomic_write_text,
    backup_path,
    ensure_writable_dir,
    remove_stale_temporaries,
    replace_dir,
    truncate_jsonl,
)


def _rows(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_truncate_jsonl_keeps_the_checkpoints_steps_and_drops_later_and_torn_rows(tmp_path):
    log = tmp_path / "log.jsonl"
    lines = [json.dumps({"step": s, "loss": 1.0 / s}) for s in (1, 2, 3, 4, 5)]
    log.write_text("\n".join([json.dumps({"note": "no step"}), *lines]) + '\n{"step": 6, "lo')  # torn by a kill
    assert truncate_jsonl(log, 3) == 3  # steps 4, 5 and the torn line
    assert _rows(log) == [{"note": "no step"}] + [{"step": s, "loss": 1.0 / s} for s in (1, 2, 3)]
    before = os.stat(log).st_mtime_ns, log.read_text()
    assert truncate_jsonl(log, 3) == 0 and (os.stat(log).st_mtime_ns, log.read_text()) == before  # not rewritten
    assert truncate_jsonl(log, 0) == 3 and _rows(log) == [{"note": "no step"}]
    assert truncate_jsonl(tmp_path / "missing.jsonl", 5) == 0 and not (tmp_path / "missing.jsonl").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["log.jsonl"]  # no temporary left behind
    log.write_bytes(b'{"step": 1}\n{"step": 2, "x": "\xc3')  # torn inside a UTF-8 character
    assert truncate_jsonl(log, 1) == 1 and _rows(log) == [{"step": 1}]


def test_atomic_write_text_replaces_whole_files(tmp_path):
    path = tmp_path / "a.json"
    atomic_write_text(path, "old")
    atomic_write_text(path, "new")
    assert path.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["a.json"]
    with pytest.raises(FileNotFoundError):
        atomic_write_text(tmp_path / "no" / "such" / "dir.json", "x")


def test_atomic_write_bytes_gives_the_usual_permissions(tmp_path):
    path = atomic_write_bytes(tmp_path / "a.bin", b"\x00\xff")
    assert path.read_bytes() == b"\x00\xff" and [p.name for p in tmp_path.iterdir()] == ["a.bin"]
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask  # not the 0600 of a temporary file


def test_atomic_write_renames_a_complete_file_and_leaves_the_old_one_on_an_error(tmp_path):
    path = tmp_path / "clip.mp4"
    with atomic_write(path, suffix=path.suffix) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".clip.mp4.") and tmp.suffix == ".mp4"
        assert not path.exists()  # nothing at the target until the block ends
        tmp.write_bytes(b"new")
    assert path.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    with pytest.raises(RuntimeError, match="writer failed"), atomic_write(path) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("writer failed")
    assert path.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]


def _folder(path, text):
    path.mkdir()
    (path / "state.json").write_text(text)
    return path


def test_replace_dir_keeps_a_complete_folder_at_every_point_and_restore_puts_a_backup_back(tmp_path):
    final = tmp_path / "latest"
    replace_dir(_folder(tmp_path / ".tmp_1", "1"), final)
    replace_dir(_folder(tmp_path / ".tmp_2", "2"), final)
    assert (final / "state.json").read_text() == "2" and sorted(p.name for p in tmp_path.iterdir()) == ["latest"]
    # a kill between the two renames: the previous folder at its backup name, the new one still a temporary
    final.rename(backup_path(final))
    _folder(tmp_path / ".tmp_3", "3")
    other = tmp_path / "notes.txt"
    other.write_text("not ours")
    removed = remove_stale_temporaries(tmp_path, [".tmp_*"], restore=[final])
    assert removed == [tmp_path / ".tmp_3"]
    assert (final / "state.json").read_text() == "2" and sorted(p.name for p in tmp_path.iterdir()) == [
        "latest", "notes.txt"]
    # a kill after the second rename: the new folder in place, the backup not yet removed
    _folder(backup_path(final), "old")
    assert remove_stale_temporaries(tmp_path, [".tmp_*"], restore=[final]) == [backup_path(final)]
    assert (final / "state.json").read_text() == "2"
    assert remove_stale_temporaries(tmp_path / "absent", [".tmp_*"]) == []


def test_ensure_writable_dir_leaves_no_test_file(tmp_path):
    assert ensure_writable_dir(tmp_path / "out") == tmp_path / "out"
    assert list((tmp_path / "out").iterdir()) == []
