"""The 2D image-text source: a folder of captioned images or webdataset-style tar shards, streamed
with a shuffle buffer of sample references. Layout and conventions: :mod:`mvdream3d.data.datasets`."""

from __future__ import annotations

import csv
import json
import os
import tarfile
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .images import (
    _LOAD_ERRORS,
    IMAGE_EXTENSIONS,
    Background,
    _background_colour,
    _check_size,
    _parse_background,
    _warn,
    load_image,
)
from .shards import _BRACE_RE, _CAPTION_EXTENSIONS, _GLOB_CHARS, _caption_from_bytes, _scan_tar, expand_shards
from .streaming import _StreamingDataset, _worker_layout

__all__ = ["ImageTextDataset"]

_OPEN_SHARD_HANDLES = 4


class ImageTextDataset(_StreamingDataset):
    """Streaming 2D image-text dataset (folder with captions, or webdataset-style tar shards).

    Item: ``{"images": float32 (1, 3, H, W) in [-1, 1], "caption": str, "id": str}`` (``id``: the
    image's path relative to the folder, or ``"<shard>/<key>"``). Images are composited on
    ``background`` (if they have alpha), centre-cropped to a square and resized (antialiased), with the
    EXIF orientation applied.

    Args:
        source: a folder of images with ``captions.jsonl`` / ``captions.csv`` / sidecar ``<stem>.txt``
            captions (used in that order of preference; images without a caption are skipped with one
            summary warning), or tar shards: a ``.tar`` path, a glob, a brace pattern
            (``laion-{00000..00099}.tar``), a folder containing only ``*.tar`` files, or a list of these.
        image_size: output side H = W.
        background: as for :class:`MultiViewDataset` (``"random"``: one colour per image).
        seed: base of all randomness.
        epochs: passes to make from the start point; None = infinite.
        rank, world_size: explicit distributed split (default: torch.distributed if initialised).
        shuffle_buffer: shuffle buffer size (samples) per (rank, worker) for tar shards; <= 1 disables.
        drop_remainder: folder sources: every rank gets ``N // world_size`` items per epoch.
    """

    def __init__(
        self,
        source: str | os.PathLike | Sequence[str | os.PathLike],
        image_size: int = 32,
        background: Background = "white",
        seed: int = 0,
        *,
        epochs: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        shuffle_buffer: int = 1000,
        drop_remainder: bool = True,
    ) -> None:
        super().__init__(seed, epochs, rank, world_size)
        self.image_size = _check_size(image_size)
        self.background = background
        self._bg = _parse_background(background)
        self.shuffle_buffer = int(shuffle_buffer)
        self.drop_remainder = bool(drop_remainder)
        self.source = source
        self.folder: Path | None = None
        self.files: list[str] = []
        self._captions: list[str | None] = []
        self.shards: list[str] = []
        self._saved_layout: tuple[int, int] | None = None
        self._handles: dict[int, Any] = {}
        if isinstance(source, str | os.PathLike) and os.path.isdir(source):
            folder = Path(source)
            names = os.listdir(folder)
            has_images = any(n.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS for n in names if "." in n)
            has_captions = any(n in ("captions.jsonl", "captions.csv") for n in names)
            if not has_images and not has_captions and any(".tar" in n for n in names):
                self.shards = expand_shards(source)
            else:
                self.folder = folder
                self._scan_folder(folder)
        elif isinstance(source, str | os.PathLike) and not os.path.exists(source) and not (
            _GLOB_CHARS.search(os.fspath(source)) or _BRACE_RE.search(os.fspath(source))
        ):
            raise ValueError(
                f"image-text source {os.fspath(source)!r} does not exist; pass a folder of images with "
                "captions (captions.jsonl, captions.csv or <stem>.txt sidecars) or tar shard(s)"
            )
        else:
            self.shards = expand_shards(source)
        if self.shards:
            self._check_first_shard()

    # ---- folder sources

    def _scan_folder(self, folder: Path) -> None:
        hint = ("it should contain images (png/jpg/jpeg/webp) captioned by captions.jsonl "
                "({'file', 'caption'} per line), captions.csv (columns file, caption) or <stem>.txt sidecars")
        images: list[str] = []
        texts: set[str] = set()
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            rel = os.path.relpath(dirpath, folder)
            for name in filenames:
                if name.startswith("."):
                    continue
                path = name if rel == "." else os.path.join(rel, name)
                ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
                if ext in IMAGE_EXTENSIONS:
                    images.append(path)
                elif ext == "txt":
                    texts.add(path)
        images.sort()
        jsonl, csv_path = folder / "captions.jsonl", folder / "captions.csv"
        pairs: list[tuple[str, str | None]] = []
        if jsonl.is_file() or csv_path.is_file():
            entries = self._read_caption_file(jsonl if jsonl.is_file() else csv_path)
            image_set = set(images)
            missing = [f for f, _ in entries if os.path.normpath(f) not in image_set
                       and not (folder / f).is_file()]
            if missing:
                _warn(f"{folder}: {len(missing)} captioned file(s) do not exist and are skipped "
                      f"(e.g. {', '.join(missing[:3])})")
            missing_set = set(missing)
            pairs = [(os.path.normpath(f), c) for f, c in entries if f not in missing_set]
        else:
            if not images:
                raise ValueError(f"image folder {str(folder)!r} contains no images; " + hint)
            uncaptioned = 0
            for path in images:
                if os.path.splitext(path)[0] + ".txt" in texts:
                    pairs.append((path, None))
                else:
                    uncaptioned += 1
            if uncaptioned and pairs:
                _warn(f"{folder}: {uncaptioned} image(s) have no caption (<stem>.txt) and are skipped")
        if not pairs:
            raise ValueError(f"image folder {str(folder)!r} has no captioned images "
                             f"({len(images)} image(s) found); " + hint)
        self.files = [p for p, _ in pairs]
        self._captions = [c for _, c in pairs]

    @staticmethod
    def _read_caption_file(path: Path) -> list[tuple[str, str]]:
        entries: list[tuple[str, str]] = []
        bad = 0
        if path.suffix == ".jsonl":
            with open(path, encoding="utf-8") as f:
                for line in f:
                    if not line.strip():
                        continue
                    try:
                        obj = json.loads(line)
                        file, caption = obj["file"], obj["caption"]
                    except (ValueError, KeyError, TypeError):
                        bad += 1
                        continue
                    if isinstance(file, str) and isinstance(caption, str):
                        entries.append((file, caption))
                    else:
                        bad += 1
        else:
            with open(path, encoding="utf-8", newline="") as f:
                reader = csv.DictReader(f)
                if reader.fieldnames is None or not {"file", "caption"} <= set(reader.fieldnames):
                    raise ValueError(f"{path} must have a header with columns 'file' and 'caption', "
                                     f"got {reader.fieldnames}")
                for row in reader:
                    if row.get("file") and row.get("caption") is not None:
                        entries.append((row["file"], row["caption"]))
                    else:
                        bad += 1
        if bad:
            _warn(f"{path}: skipped {bad} malformed line(s)")
        return entries

    # ---- shard sources

    def _check_first_shard(self) -> None:
        path = self.shards[0]
        try:
            for _, parts in _scan_tar(path):
                if any(e in parts for e in IMAGE_EXTENSIONS) and any(e in parts for e in _CAPTION_EXTENSIONS):
                    return
        except (OSError, tarfile.TarError, EOFError) as err:
            raise ValueError(f"tar shard {path!r} is not a readable tar file: {err}") from err
        raise ValueError(f"tar shard {path!r} holds no image-text sample: expected members key.png|jpg|jpeg|webp "
                         "with key.txt or key.json (with 'caption')")

    @property
    def is_sharded(self) -> bool:
        return bool(self.shards)

    @property
    def num_items(self) -> int | None:
        """Number of images of a folder source (all ranks); None for tar shards (unknown)."""
        return None if self.shards else len(self.files)

    def __repr__(self) -> str:
        what = f"shards={len(self.shards)}" if self.shards else f"{str(self.folder)!r}, images={len(self.files)}"
        return f"ImageTextDataset({what}, image_size={self.image_size}, background={self.background!r})"

    def _shard_samples(self, shard: int) -> Iterator[tuple]:
        path = self.shards[shard]
        incomplete = 0
        try:
            for key, parts in _scan_tar(path):
                img_ext = next((e for e in IMAGE_EXTENSIONS if e in parts), None)
                cap_ext = next((e for e in _CAPTION_EXTENSIONS if e in parts), None)
                if img_ext is None or cap_ext is None:
                    incomplete += 1
                    continue
                yield (shard, key, img_ext, parts[img_ext], cap_ext, parts[cap_ext])
        except (OSError, tarfile.TarError, EOFError) as err:
            if ("shard", shard) not in self._bad:
                self._bad.add(("shard", shard))
                _warn(f"tar shard {path} is unreadable or truncated ({type(err).__name__}: {err}); "
                      "skipped the rest of it")
        if incomplete and ("incomplete", shard) not in self._bad:
            self._bad.add(("incomplete", shard))
            _warn(f"tar shard {path}: {incomplete} sample(s) without an image or a caption were skipped")

    def _shard_stream(self, epoch: int, gid: int, total: int) -> Iterator[tuple]:
        """Sample references of (rank, worker) ``gid`` of ``total`` for one epoch, shuffled."""
        n = len(self.shards)
        order = np.random.default_rng([self.seed, epoch, 0x5A4D]).permutation(n)
        by_shard = n >= total
        mine = order[gid::total] if by_shard else order
        rng = np.random.default_rng([self.seed, epoch, gid, total, 0xB0F])
        size = self.shuffle_buffer
        buffer: list[tuple] = []
        counter = 0
        for shard in mine:
            for ref in self._shard_samples(int(shard)):
                if not by_shard:
                    counter += 1
                    if (counter - 1) % total != gid:
                        continue
                if size <= 1:
                    yield ref
                elif len(buffer) < size:
                    buffer.append(ref)
                else:
                    i = int(rng.integers(size))
                    yield buffer[i]
                    buffer[i] = ref
        rng.shuffle(buffer)
        yield from buffer

    def _resume_role(self, wid: int, nw: int) -> tuple[int, int]:
        """(logical worker, items to skip) for DataLoader worker ``wid`` of ``nw`` after a resume.

        The DataLoader asks worker 0 for the first batch, so after ``full`` consumed batches the worker
        roles are rotated by ``full`` to keep the round-robin order of the interrupted run.
        """
        k = self._start_items
        if k == 0:
            return wid, 0
        block = max(1, int(self.loader_batch_size)) if nw > 1 else 1
        saved = self._saved_layout or (nw, block)
        if saved != (nw, block):
            if wid == 0:
                _warn(f"data state was saved with (workers, batch size) = {saved}, now {(nw, block)}: "
                      "resuming approximately")
            return wid, k // nw + (1 if wid < k % nw else 0)
        full, rem = divmod(k, block)  # batches fully consumed, items of a partial one (in-process only)
        role = (wid + full) % nw
        return role, block * (full // nw + (1 if role < full % nw else 0)) + (rem if full % nw == role else 0)

    def _read(self, shard: int, loc: Any) -> bytes:
        if isinstance(loc, bytes):
            return loc
        offset, size = loc
        f = self._handles.get(shard)
        if f is None:
            if len(self._handles) >= _OPEN_SHARD_HANDLES:
                self._handles.pop(next(iter(self._handles))).close()
            f = self._handles[shard] = open(self.shards[shard], "rb")  # noqa: SIM115 - cached handle
        f.seek(offset)
        data = f.read(size)
        if len(data) != size:
            raise OSError(f"truncated member ({len(data)} of {size} bytes)")
        return data

    def _decode_ref(self, ref: tuple, epoch: int) -> dict:
        shard, key, img_ext, img_loc, cap_ext, cap_loc = ref
        name = f"{os.path.basename(self.shards[shard])}/{key}"
        caption = _caption_from_bytes(cap_ext, self._read(shard, cap_loc))
        rng = np.random.default_rng([self.seed, epoch, zlib.crc32(name.encode()), 2])
        bg = _background_colour(self._bg, rng)
        image = load_image(self._read(shard, img_loc), self.image_size, bg, exif_transpose=True)
        return {"images": torch.from_numpy(image)[None], "caption": caption, "id": name}

    def _generate_shards(self) -> Iterator[dict]:
        rank, world = self._dist()
        wid, nw = _worker_layout()
        role, skip = self._resume_role(wid, nw)
        gid, total = rank * nw + role, world * nw
        failures = 0
        try:
            for epoch in self._epoch_range(self._start_epoch):
                produced = 0
                for ref in self._shard_stream(epoch, gid, total):
                    produced += 1
                    if skip:
                        skip -= 1
                        continue
                    name = (ref[0], ref[1])
                    if name in self._bad:
                        continue
                    try:
                        item = self._decode_ref(ref, epoch)
                    except _LOAD_ERRORS as err:
                        what = f"sample {ref[1]!r} of tar shard {self.shards[ref[0]]}"
                        failures = self._skip_failed(name, what, err, failures)
                        continue
                    failures = 0
                    yield item
                if produced == 0:
                    _warn(f"rank {rank} worker {wid}: no sample in its tar shards; this stream ends")
                    return
        finally:
            for f in self._handles.values():
                f.close()
            self._handles.clear()

    # ---- folder items

    def get(self, index: int, epoch: int = 0) -> dict:
        """Map-style access to image ``index`` of a folder source (raises on unreadable data)."""
        if self.shards:
            raise TypeError("get() needs a folder source; tar shards can only be streamed")
        if not -len(self.files) <= int(index) < len(self.files):
            raise IndexError(f"image index {index} out of range ({len(self.files)} images)")
        return self._load(int(index) % len(self.files), int(epoch))

    def _load(self, index: int, epoch: int) -> dict:
        assert self.folder is not None
        rel = self.files[index]
        path = self.folder / rel
        caption = self._captions[index]
        if caption is None:
            caption = path.with_suffix(".txt").read_text(encoding="utf-8").strip()
        bg = _background_colour(self._bg, np.random.default_rng([self.seed, epoch, index, 2]))
        image = load_image(path, self.image_size, bg, exif_transpose=True)
        return {"images": torch.from_numpy(image)[None], "caption": caption, "id": rel}

    def _generate(self) -> Iterator[dict]:
        if self.shards:
            yield from self._generate_shards()
            return
        yield from self._loaded_items(len(self.files), self.folder, lambda i: f"image {self.folder / self.files[i]}")

    # ---- state

    def state_dict(self) -> dict:
        """This rank's stream position: ``{"epoch", "items_yielded", ...}`` (see the module docstring)."""
        if not self.shards:
            return {**self._indexed_state(len(self.files)), "source": "folder"}
        rank, world = self._dist()
        workers = max(1, int(self.loader_num_workers))
        block = max(1, int(self.loader_batch_size)) if workers > 1 else 1
        if self._consumed == 0 and self._saved_layout is not None:
            workers, block = self._saved_layout  # nothing consumed since the resume: keep its layout
        return {
            "epoch": self._start_epoch,
            "items_yielded": self._start_items + self._consumed,
            "seed": self.seed,
            "rank": rank,
            "world_size": world,
            "num_shards": len(self.shards),
            "num_workers": workers,
            "loader_batch_size": block,
            "source": "shards",
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue the stream where ``state`` (from :meth:`state_dict`) stopped."""
        if state.get("source", "shards" if self.shards else "folder") != ("shards" if self.shards else "folder"):
            raise ValueError(f"data state is for a {state.get('source')} source, this dataset reads "
                             f"{'tar shards' if self.shards else 'a folder'}")
        self._load_common_state(state, None if self.shards else len(self.files))
        if self.shards:
            if state.get("num_shards", len(self.shards)) != len(self.shards):
                _warn(f"data state was saved with {state['num_shards']} shards, now {len(self.shards)}")
            workers = int(state.get("num_workers", 1))
            self._saved_layout = (workers, int(state.get("loader_batch_size", 1)) if workers > 1 else 1)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self._saved_layout = None
