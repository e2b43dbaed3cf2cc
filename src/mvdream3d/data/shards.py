"""Webdataset-style tar shards: shard lists from paths, globs, brace patterns and folders
(:func:`expand_shards`), and a header-by-header scanner that groups a shard's members into samples
without reading their payloads (uncompressed tars)."""

from __future__ import annotations

import glob
import json
import os
import re
import tarfile
from collections.abc import Iterator, Sequence
from typing import Any

from .images import IMAGE_EXTENSIONS

__all__ = ["expand_shards"]

_CAPTION_EXTENSIONS = ("txt", "json")
_BRACE_RE = re.compile(r"\{([^{}]*)\}")
_GLOB_CHARS = re.compile(r"[*?\[]")
# webdataset's key/extension split: key = path up to the first dot of the basename.
_TAR_KEY_RE = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")


def _expand_braces(pattern: str) -> list[str]:
    m = _BRACE_RE.search(pattern)
    if m is None:
        return [pattern]
    body = m.group(1)
    numeric = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if numeric:
        lo, hi = numeric.groups()
        options = [str(i).zfill(len(lo)) for i in range(int(lo), int(hi) + 1)]
    else:
        options = body.split(",")
    out: list[str] = []
    for option in options:
        out.extend(_expand_braces(pattern[: m.start()] + option + pattern[m.end() :]))
    return out


def expand_shards(source: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Shard paths from a path, a glob (``data/*.tar``), a brace pattern (``shard-{000..099}.tar``),
    a folder of ``*.tar`` files, or a list of any of these. Raises ValueError if any is missing."""
    specs = [source] if isinstance(source, str | os.PathLike) else list(source)
    out: list[str] = []
    for spec in specs:
        spec = os.fspath(spec)
        if os.path.isdir(spec):
            found = sorted(glob.glob(os.path.join(glob.escape(spec), "*.tar*")))
            if not found:
                raise ValueError(f"folder {spec!r} contains no *.tar shards")
            out.extend(found)
            continue
        for pattern in _expand_braces(spec):
            if _GLOB_CHARS.search(pattern):
                found = sorted(glob.glob(pattern))
                if not found:
                    raise ValueError(f"no tar shard matches {pattern!r}")
                out.extend(found)
            elif os.path.isfile(pattern):
                out.append(pattern)
            else:
                raise ValueError(f"tar shard {pattern!r} does not exist")
    if not out:
        raise ValueError(f"no tar shards in {source!r}")
    return out


def _scan_tar(path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(key, {ext: (offset, size) or bytes}) per sample, grouping consecutive members by key.

    Uncompressed tars are scanned header by header (payloads skipped by seeking); compressed ones are
    streamed and their image/caption payloads kept in memory.
    """
    try:
        tf = tarfile.open(path, mode="r:")
        lazy = True
    except tarfile.ReadError:
        tf = tarfile.open(path, mode="r:*")
        lazy = False
    with tf:
        key, parts = None, {}
        for member in tf:
            if not member.isfile():
                continue
            m = _TAR_KEY_RE.match(member.name)
            if m is None or os.path.basename(m.group(1)).startswith("."):
                continue
            k, ext = m.group(1), m.group(2).lower()
            if k != key:
                if key is not None:
                    yield key, parts
                key, parts = k, {}
            if ext in IMAGE_EXTENSIONS or ext in _CAPTION_EXTENSIONS:
                parts[ext] = (member.offset_data, member.size) if lazy else tf.extractfile(member).read()
        if key is not None:
            yield key, parts


def _caption_from_bytes(ext: str, data: bytes) -> str:
    if ext == "txt":
        return data.decode("utf-8").strip()
    obj = json.loads(data.decode("utf-8"))
    for name in ("caption", "text", "TEXT"):
        if isinstance(obj, dict) and isinstance(obj.get(name), str):
            return obj[name].strip()
    raise ValueError("json member has no string 'caption'")
