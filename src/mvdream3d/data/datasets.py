"""Training data for joint multi-view + 2D training: streaming, shuffled, sharded, resumable datasets.

Two sources feed MVDream training:

* :class:`MultiViewDataset` reads rendered multi-view folders (one folder per asset)::

      ROOT/<asset_id>/rgba_000.png ...        RGBA renders
      ROOT/<asset_id>/meta.json              {"asset", "caption", "size", "attributes" (optional),
                                              "views": [{"file", "c2w", "model_camera", "elevation",
                                                         "azimuth", "distance", "fov_deg"}, ...]}

  ``c2w`` is the OpenGL-world camera-to-world matrix of :mod:`mvdream3d.cameras`; the model cameras
  returned are always recomputed from it with :func:`~mvdream3d.cameras.c2w_to_model_camera` (a
  stored ``model_camera`` that disagrees triggers one warning per process).

* :class:`ImageTextDataset` reads 2D image-text pairs, either a folder of images (png/jpg/jpeg/webp)
  captioned by ``captions.jsonl`` (``{"file", "caption"}`` per line), ``captions.csv`` (columns
  ``file,caption``) or sidecar ``<stem>.txt`` files (checked in that order), or webdataset-style tar
  shards (members ``key.png|jpg|jpeg|webp`` plus ``key.txt`` or ``key.json`` with ``"caption"``,
  the layout of img2dataset / LAION shards).

Tar shards are read with the standard :mod:`tarfile` module, no extra dependency: a shard is scanned
header by header (payloads are skipped with seeks), the shuffle buffer holds only (offset, size)
references, and the image/caption bytes are read when an item is decoded. This keeps the buffer tiny
and makes skipping on resume cheap (no decoding, no payload reads). Compressed tars (``.tar.gz`` ...)
also work but are read sequentially with their payloads held in memory.

Order, splitting and determinism
    Every stream is a deterministic function of ``seed`` and the epoch number. Folder sources (assets,
    image folders) are permuted per epoch (``numpy.random.default_rng([seed, epoch, ...])``); rank ``r``
    of ``W`` ranks takes positions ``r, r + W, ...`` of the permutation (``drop_remainder=True``, the
    default, truncates every rank to ``N // W`` items per epoch so ranks stay in lockstep; the dropped
    items differ every epoch). Within a rank, the rank's stream is cut into blocks of
    ``loader_batch_size`` items and DataLoader worker ``w`` of ``K`` takes blocks ``w, w + K, ...``: this
    is exactly the round-robin order in which a ``DataLoader`` returns its workers' batches, so the
    batches come out in the rank's stream order. Tar shards are permuted per epoch and dealt to the
    ``W * K`` (rank, worker) pairs; with fewer shards than pairs every pair reads all shards and keeps
    every ``(W*K)``-th sample. Each (rank, worker) then shuffles its samples through a buffer of
    ``shuffle_buffer`` references (reset every epoch). Ranks come from explicit ``rank``/``world_size``
    arguments, else from ``torch.distributed`` when it is initialised, else 0/1.

    No two (rank, worker) pairs yield the same item in an epoch. Per-item randomness (the random start
    view, the "random" background colour) comes from ``default_rng([seed, epoch, item])``, so it does not
    depend on the worker layout.

Resuming (``state_dict`` / ``load_state_dict``)
    The state is ``{"epoch": e, "items_yielded": k, ...}``: the stream continues ``k`` items after the
    start of epoch ``e`` of this rank. Items are counted in the process that consumes them: by the
    dataset itself when iterated in-process (``for item in ds`` or ``DataLoader(num_workers=0)``), by
    :func:`infinite_loader` (which calls :meth:`note_consumed` per batch) when workers are used. Each
    rank saves and restores its own state.

    * Folder sources: exact (item granularity) whatever the number of workers before and after, as long
      as batches come from :func:`infinite_loader` (or a DataLoader whose ``batch_size`` was copied to
      ``dataset.loader_batch_size``); ``k`` is normalised to ``0 <= k < items per epoch``.
    * Tar shards: ``e`` is the epoch the stream was (re)started at and ``k`` may span several epochs;
      every worker skips the number of items it had contributed (references only, nothing decoded).
      Exact when the worker count and batch size are the same as when the state was saved; otherwise
      approximate (``k`` is split evenly across the new workers, with a warning).
    * A skipped corrupt item shifts its worker's stream by one item, so after corrupt items the resume
      point can be off by that many items.

Corrupt or unreadable data never crashes a stream: the item is skipped with a :class:`DataWarning`
(once per process; it is not retried in later epochs) and the next item is yielded. A stream raises
``RuntimeError`` only when ``1000`` consecutive items could not be loaded (almost certainly a broken
dataset or path).
"""

from __future__ import annotations

import csv
import glob
import io
import itertools
import json
import os
import re
import struct
import tarfile
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..cameras import c2w_to_model_camera

__all__ = [
    "IMAGE_EXTENSIONS",
    "DataWarning",
    "ImageTextDataset",
    "MultiViewDataset",
    "collate_multiview",
    "expand_shards",
    "infinite_loader",
    "load_image",
    "select_views",
]

IMAGE_EXTENSIONS: tuple[str, ...] = ("png", "jpg", "jpeg", "webp")
_CAPTION_EXTENSIONS = ("txt", "json")
_MAX_CONSECUTIVE_FAILURES = 1000
_OPEN_SHARD_HANDLES = 4

# Everything image decoding / metadata parsing can raise on bad files (PIL raises a zoo of these).
_LOAD_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ValueError,
    KeyError,
    IndexError,
    TypeError,
    SyntaxError,
    EOFError,
    struct.error,
    zlib.error,
    tarfile.TarError,
    Image.DecompressionBombError,
)


class DataWarning(UserWarning):
    """Skipped assets / corrupt items and other recoverable data problems."""


def _warn(message: str) -> None:
    warnings.warn(message, DataWarning, stacklevel=3)


# --------------------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------------------

Background = str | Sequence[float]
_NAMED_BACKGROUNDS = {"white": 1.0, "black": 0.0, "gray": 0.5, "grey": 0.5}


def _parse_background(background: Background) -> np.ndarray | str:
    """``"random"`` or a (3,) float32 colour in [0, 1]."""
    if isinstance(background, str):
        name = background.lower()
        if name == "random":
            return "random"
        if name in _NAMED_BACKGROUNDS:
            return np.full(3, _NAMED_BACKGROUNDS[name], dtype=np.float32)
        raise ValueError(
            f"background must be 'white', 'black', 'gray', 'random' or 3 floats in [0, 1], got {background!r}"
        )
    try:
        colour = np.asarray(background, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"background must be a name or 3 floats in [0, 1], got {background!r}") from None
    if colour.shape != (3,) or not np.all(np.isfinite(colour)) or colour.min() < 0 or colour.max() > 1:
        raise ValueError(f"background colour must be 3 floats in [0, 1] (r, g, b), got {background!r}")
    return colour.astype(np.float32)


def _background_colour(spec: np.ndarray | str, rng: np.random.Generator) -> np.ndarray:
    if isinstance(spec, str):  # "random"
        return rng.random(3).astype(np.float32)
    return spec


def _check_size(image_size: int) -> int:
    size = int(image_size)
    if size < 1 or size != image_size:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
    return size


def load_image(
    source: str | os.PathLike | bytes,
    size: int,
    background: Sequence[float] | np.ndarray = (1.0, 1.0, 1.0),
    exif_transpose: bool = False,
) -> np.ndarray:
    """Decode an image, composite it on ``background`` and resize it to a ``size`` x ``size`` square.

    Non-square images are centre-cropped to a square first. Resizing is antialiased (PIL bicubic, whose
    kernel is widened by the downscale factor). Images with alpha (RGBA, LA, palette or RGB with a
    transparent colour) are resized premultiplied and then composited ``rgb + background * (1 - alpha)``
    in float, so a fully transparent pixel becomes exactly the background colour and transparent
    pixels never bleed their (arbitrary) colour into the object's edges.

    Args:
        source: a path or the encoded bytes.
        size: output side in pixels.
        background: (r, g, b) in [0, 1].
        exif_transpose: apply the EXIF orientation (photos); renders do not need it.

    Returns:
        (3, size, size) float32 array in [-1, 1].

    Raises:
        whatever PIL raises for unreadable data (``OSError`` / ``PIL.UnidentifiedImageError`` mostly).
    """
    bg = np.asarray(background, dtype=np.float32).reshape(3)
    fp = io.BytesIO(source) if isinstance(source, bytes | bytearray | memoryview) else source
    with Image.open(fp) as img:
        if img.format == "JPEG":
            img.draft("RGB", (2 * size, 2 * size))  # DCT-domain downscale, still >= 2x the target
        img.load()
        im = ImageOps.exif_transpose(img) if exif_transpose else img
        w, h = im.size
        if w != h:
            s = min(w, h)
            left, top = (w - s) // 2, (h - s) // 2
            im = im.crop((left, top, left + s, top + s))
        bands = im.getbands()
        has_alpha = "A" in bands or "a" in bands or "transparency" in im.info
        if has_alpha:
            if im.mode != "RGBa":
                im = (im if im.mode == "RGBA" else im.convert("RGBA")).convert("RGBa")
        elif im.mode != "RGB":
            im = im.convert("RGB")
        if im.size != (size, size):
            im = im.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)
        arr = np.asarray(im, dtype=np.float32) * (1.0 / 255.0)
    if has_alpha:  # premultiplied colour + background * (1 - alpha)
        out = arr[..., :3] + bg * (1.0 - arr[..., 3:4])
    else:
        out = arr
    out = np.clip(out * 2.0 - 1.0, -1.0, 1.0)
    return np.ascontiguousarray(out.transpose(2, 0, 1))


# --------------------------------------------------------------------------------------------------
# multi-view view selection
# --------------------------------------------------------------------------------------------------


def _orbit_angles(c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Azimuth in [0, 360) and elevation (degrees) of c2w camera positions (cameras.py convention)."""
    pos = c2w[:, :3, 3]
    az = np.degrees(np.arctan2(pos[:, 0], pos[:, 2])) % 360.0
    el = np.degrees(np.arctan2(pos[:, 1], np.hypot(pos[:, 0], pos[:, 2])))
    return az, el


def select_views(c2w: np.ndarray, start: int, num_views: int, elevation_tol: float = 1.0) -> list[int]:
    """Indices of ``num_views`` views at equally spaced azimuths starting at view ``start``.

    View ``k`` is the not yet chosen view whose azimuth (taken from the c2w camera position) is nearest
    to ``azimuth[start] + k * 360 / num_views`` (ties: lower index), looking first among the views whose
    elevation is within ``elevation_tol`` degrees of the start view's (renders with several elevation
    rings), or among all views if that ring has fewer than ``num_views``. For the usual renders (V views
    at uniformly spaced azimuths, one elevation, ``V % num_views == 0``) this is exactly every
    ``V / num_views``-th view; otherwise the nearest azimuths.

    Args:
        c2w: (V, 4, 4) OpenGL camera-to-world matrices, V >= num_views.
        start: index of the first view.
        num_views: F.

    Returns:
        F distinct view indices, the first being ``start``, in order of increasing azimuth.
    """
    c2w = np.asarray(c2w, dtype=np.float64)
    v = c2w.shape[0]
    if not 0 <= start < v:
        raise IndexError(f"start view {start} out of range for {v} views")
    if num_views > v:
        raise ValueError(f"cannot pick {num_views} distinct views out of {v}")
    az, el = _orbit_angles(c2w)
    candidates = np.flatnonzero(np.abs(el - el[start]) <= elevation_tol)
    if candidates.size < num_views:
        candidates = np.arange(v)
    chosen = [int(start)]
    used = np.zeros(v, dtype=bool)
    used[start] = True
    for k in range(1, num_views):
        target = az[start] + k * 360.0 / num_views
        dist = np.abs((az[candidates] - target + 180.0) % 360.0 - 180.0)
        dist = np.where(used[candidates], np.inf, dist)
        best = int(candidates[int(np.argmin(dist))])  # argmin: first minimum -> lowest index on ties
        chosen.append(best)
        used[best] = True
    return chosen


# --------------------------------------------------------------------------------------------------
# shared streaming machinery
# --------------------------------------------------------------------------------------------------


def _worker_layout() -> tuple[int, int]:
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


class _StreamingDataset(IterableDataset):
    """Common part: seed, epochs, rank/world size, worker layout, consumption counting, state."""

    def __init__(
        self,
        seed: int,
        epochs: int | None,
        rank: int | None,
        world_size: int | None,
    ) -> None:
        super().__init__()
        self.seed = _check_seed(seed)
        if epochs is not None and (int(epochs) != epochs or epochs < 1):
            raise ValueError(f"epochs must be None (infinite) or a positive integer, got {epochs!r}")
        self.epochs = None if epochs is None else int(epochs)
        if (rank is None) != (world_size is None):
            raise ValueError("pass both rank and world_size, or neither (then torch.distributed decides)")
        if world_size is not None and not (int(world_size) >= 1 and 0 <= int(rank) < int(world_size)):
            raise ValueError(f"need world_size >= 1 and 0 <= rank < world_size, got rank={rank}, {world_size=}")
        self._dist_fixed: tuple[int, int] | None = None if rank is None else (int(rank), int(world_size))
        #: batch size of the DataLoader reading this dataset (set by infinite_loader); decides how the
        #: rank's stream is dealt to workers so that the loader returns it in order.
        self.loader_batch_size = 1
        #: number of DataLoader workers (0 and 1 are the same: in-process) consuming the stream.
        self.loader_num_workers = 1
        self._start_epoch = 0
        self._start_items = 0
        self._consumed = 0
        self._bad: set = set()

    # ---- ranks and workers

    def _dist(self) -> tuple[int, int]:
        if self._dist_fixed is not None:
            return self._dist_fixed
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def freeze_distributed(self) -> None:
        """Record the current torch.distributed rank/world size (done before handing to workers)."""
        self._dist_fixed = self._dist()

    def __getstate__(self) -> dict:
        # Workers started with 'spawn'/'forkserver' have no process group: carry the rank with us.
        state = self.__dict__.copy()
        state["_dist_fixed"] = self._dist()
        if "_handles" in state:
            state["_handles"] = {}  # open shard files stay with their process
        return state

    def _epoch_range(self, first: int) -> Iterable[int]:
        return itertools.count(first) if self.epochs is None else range(first, first + self.epochs)

    # ---- consumption and state

    def note_consumed(self, n: int) -> None:
        """Count ``n`` more items as consumed by the training loop (used with DataLoader workers)."""
        self._consumed += int(n)

    def set_epoch(self, epoch: int) -> None:
        """Start the next iteration at the beginning of ``epoch`` (like DistributedSampler.set_epoch)."""
        if int(epoch) != epoch or epoch < 0:
            raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}")
        self._start_epoch, self._start_items, self._consumed = int(epoch), 0, 0

    def __iter__(self) -> Iterator[dict]:
        in_process = get_worker_info() is None
        if in_process:
            self._consumed = 0
            self.loader_num_workers = 1
        for item in self._generate():
            if in_process:
                self._consumed += 1
            yield item

    def _generate(self) -> Iterator[dict]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _skip_failed(self, key: Any, what: str, err: BaseException, failures: int) -> int:
        self._bad.add(key)
        _warn(f"skipping {what}: {type(err).__name__}: {err}")
        failures += 1
        if failures >= _MAX_CONSECUTIVE_FAILURES:
            raise RuntimeError(
                f"{failures} consecutive items could not be loaded (last: {what}: {err}); is the data broken?"
            ) from err
        return failures

    # ---- folder sources: a permutation per epoch, split across ranks, dealt to workers in blocks

    def _rank_length(self, n: int, rank: int, world: int) -> int:
        length = n // world if self.drop_remainder else len(range(rank, n, world))
        if length == 0:
            raise ValueError(f"{n} items cannot be split across {world} ranks (rank {rank} gets none)")
        return length

    def _rank_indices(self, n: int, epoch: int, rank: int, world: int) -> np.ndarray:
        perm = np.random.default_rng([self.seed, epoch, 0x5EED]).permutation(n)
        return perm[rank::world][: self._rank_length(n, rank, world)]

    def _index_stream(self, n: int) -> Iterator[tuple[int, int]]:
        """(epoch, item index) pairs of this rank and worker, from the start point on."""
        rank, world = self._dist()
        wid, nw = _worker_layout()
        block = max(1, int(self.loader_batch_size)) if nw > 1 else 1
        length = self._rank_length(n, rank, world)
        epoch = self._start_epoch + self._start_items // length
        offset = self._start_items % length
        seen = 0  # positions of the rank's stream walked so far (all workers)
        for e in self._epoch_range(epoch):
            indices = self._rank_indices(n, e, rank, world)
            pos = np.arange(offset, length)
            mine = pos[((seen + pos - offset) // block) % nw == wid]
            seen += length - offset
            offset = 0
            for p in mine:
                yield e, int(indices[p])

    def _indexed_state(self, n: int) -> dict:
        rank, world = self._dist()
        length = self._rank_length(n, rank, world)
        total = self._start_items + self._consumed
        return {
            "epoch": self._start_epoch + total // length,
            "items_yielded": total % length,
            "seed": self.seed,
            "rank": rank,
            "world_size": world,
            "num_items": n,
        }

    def _load_common_state(self, state: dict, n: int | None) -> None:
        if int(state["epoch"]) < 0 or int(state["items_yielded"]) < 0:
            raise ValueError(f"invalid data state {state}")
        rank, world = self._dist()
        for key, now in (("seed", self.seed), ("world_size", world), ("rank", rank), ("num_items", n)):
            if key in state and now is not None and state[key] != now:
                _warn(f"data state was saved with {key}={state[key]}, now {now}: the stream continues, "
                      "but not exactly where it stopped")
        self._start_epoch, self._start_items, self._consumed = int(state["epoch"]), int(state["items_yielded"]), 0


# --------------------------------------------------------------------------------------------------
# multi-view dataset
# --------------------------------------------------------------------------------------------------


def load_feature_mask(folder: str | os.PathLike, view_file: str, size: int) -> np.ndarray:
    """(size, size) float32 in [0, 1]: the front feature's pixel coverage in view ``view_file`` of an asset
    folder (``feature_XXX.png`` written by ``mvdream3d synth``; all zeros when the view has no mask file)."""
    from .synth import feature_mask_name

    path = Path(folder) / feature_mask_name(view_file)
    if not path.is_file():
        return np.zeros((size, size), np.float32)
    with Image.open(path) as img:
        m = img.convert("L")
        side = min(m.size)
        if m.size[0] != m.size[1]:  # the views' centre crop
            left, top = (m.size[0] - side) // 2, (m.size[1] - side) // 2
            m = m.crop((left, top, left + side, top + side))
        m = m.resize((size, size), Image.BOX)
        return np.asarray(m, np.float32) / 255.0


class MultiViewDataset(_StreamingDataset):
    """Streaming multi-view dataset over rendered asset folders.

    Each item is F = ``num_views`` views of one asset at equally spaced azimuths: a random start view
    (``fixed_start`` to pin it; taken modulo the asset's view count), then the views nearest to
    ``start_azimuth + k * 360 / F`` (every ``V / F``-th view for V uniformly spaced renders with
    ``V % F == 0``; see :func:`select_views`), in order of increasing azimuth, at the rendered elevation.

    Item::

        {"images": float32 (F, 3, H, W) in [-1, 1], "cameras": float32 (F, 16) model cameras,
         "caption": str, "asset_id": str (folder name), "attributes": dict (may be empty)}

    Args:
        root: folder with one sub-folder per asset (``meta.json`` + RGBA views), or a list of such folders.
        num_views: F, views per item.
        image_size: output side H = W.
        background: ``"white"``, ``"black"``, ``"gray"``, ``"random"`` (one random colour per item) or
            (r, g, b) floats in [0, 1]; composited using the alpha channel.
        fixed_start: view index every item starts at (evaluation), instead of a random one.
        seed: base of all randomness (shuffle, start views, random backgrounds).
        epochs: passes to make from the start point (a resumed, partly consumed epoch counts as one);
            None = infinite.
        rank, world_size: explicit distributed split (default: torch.distributed if initialised).
        drop_remainder: give every rank ``N // world_size`` items per epoch (ranks stay in lockstep);
            False gives the first ``N % world_size`` ranks one more.
        validate: read every meta.json at construction and skip (with one summary warning) assets with
            fewer than F views, no caption or unreadable metadata. False only lists the folders (fast
            start for very large sets); bad assets are then skipped while streaming.
    """

    def __init__(
        self,
        root: str | os.PathLike | Sequence[str | os.PathLike],
        num_views: int = 4,
        image_size: int = 32,
        background: Background = "white",
        fixed_start: int | None = None,
        seed: int = 0,
        *,
        epochs: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        drop_remainder: bool = True,
        validate: bool = True,
        feature_masks: bool = False,
    ) -> None:
        super().__init__(seed, epochs, rank, world_size)
        if isinstance(num_views, bool) or int(num_views) != num_views or num_views < 1:
            raise ValueError(f"num_views must be a positive integer, got {num_views!r}")
        self.num_views = int(num_views)
        self.image_size = _check_size(image_size)
        self.background = background
        self._bg = _parse_background(background)
        if fixed_start is not None and (int(fixed_start) != fixed_start or fixed_start < 0):
            raise ValueError(f"fixed_start must be None or a non-negative view index, got {fixed_start!r}")
        self.fixed_start = None if fixed_start is None else int(fixed_start)
        self.drop_remainder = bool(drop_remainder)
        roots = [Path(root)] if isinstance(root, str | os.PathLike) else [Path(r) for r in root]
        if not roots:
            raise ValueError("no multi-view data folder given")
        self.root = roots[0]
        # several roots: asset ids are "<root name>/<asset>" so they stay unique
        self._folders: dict[str, Path] = {}
        for r in roots:
            self.root = r
            for name in self._scan(validate):
                self._folders[name if len(roots) == 1 else f"{r.name}/{name}"] = r / name
        self.roots = roots
        self.asset_ids: list[str] = list(self._folders)
        self._camera_mismatch_warned = False
        self.feature_masks = bool(feature_masks)
        if self.feature_masks and not any(any(f.glob("feature_*.png")) for f in list(self._folders.values())[:200]):
            raise ValueError(
                f"feature masks were asked for (train.feature_loss_weight > 0) but {self.root} has no "
                "feature_XXX.png files: re-run the same `mvdream3d synth` command to add them (the renders are kept)"
            )

    _LAYOUT_HINT = (
        "it should contain one sub-folder per asset, each with meta.json ({'caption', 'views': [{'file', "
        "'c2w', ...}]}) and the RGBA view images (rgba_000.png, ...)"
    )

    def _scan(self, validate: bool) -> list[str]:
        root = self.root
        if not root.is_dir():
            raise ValueError(f"multi-view data folder {str(root)!r} does not exist or is not a folder; "
                             + self._LAYOUT_HINT)
        names = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
        ids: list[str] = []
        skipped: dict[str, list[str]] = {}
        for name in names:
            meta_path = root / name / "meta.json"
            if not meta_path.is_file():
                skipped.setdefault("no meta.json", []).append(name)
                continue
            if validate:
                try:
                    meta = json.loads(meta_path.read_text(encoding="utf-8"))
                    views = meta["views"]
                    if not isinstance(meta.get("caption"), str):
                        skipped.setdefault("no caption", []).append(name)
                        continue
                    if len(views) < self.num_views:
                        skipped.setdefault(f"fewer than {self.num_views} views", []).append(name)
                        continue
                except (OSError, ValueError, KeyError, TypeError) as err:
                    skipped.setdefault(f"unreadable meta.json ({type(err).__name__})", []).append(name)
                    continue
            ids.append(name)
        if skipped:
            parts = [f"{len(v)} with {why} (e.g. {', '.join(v[:3])})" for why, v in skipped.items()]
            _warn(f"{root}: skipped {sum(len(v) for v in skipped.values())} asset folder(s): " + "; ".join(parts))
        if not ids:
            raise ValueError(f"multi-view data folder {str(root)!r} contains no usable asset "
                             f"({len(names)} sub-folder(s) found); " + self._LAYOUT_HINT)
        return ids

    @property
    def num_items(self) -> int:
        """Number of assets (all ranks)."""
        return len(self.asset_ids)

    def epoch_length(self) -> int:
        """Items this rank yields per epoch (before corrupt items are skipped)."""
        rank, world = self._dist()
        return self._rank_length(self.num_items, rank, world)

    def __repr__(self) -> str:
        roots = [str(r) for r in self.roots]
        return (f"MultiViewDataset({roots!r}, assets={self.num_items}, num_views={self.num_views}, "
                f"image_size={self.image_size}, background={self.background!r})")

    # ---- items

    def get(self, index: int | str, start: int | None = None, epoch: int = 0) -> dict:
        """Map-style access: the item of asset ``index`` (position or asset id) as streamed in ``epoch``.

        ``start`` pins the first view (``0 <= start < V``); default: ``fixed_start`` or the start view the
        stream would draw for this asset and epoch. Raises on unreadable data (the stream skips instead).
        """
        if isinstance(index, str):
            try:
                index = self.asset_ids.index(index)
            except ValueError:
                raise KeyError(f"no asset {index!r} in {self.roots}") from None
        if not -self.num_items <= int(index) < self.num_items:
            raise IndexError(f"asset index {index} out of range ({self.num_items} assets)")
        return self._load(int(index) % self.num_items, int(epoch), start)

    def _load(self, index: int, epoch: int, start: int | None = None) -> dict:
        asset_id = self.asset_ids[index]
        folder = self._folders[asset_id]
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        views = meta["views"]
        caption = meta["caption"]
        if not isinstance(caption, str):
            raise ValueError(f"meta.json caption must be a string, got {type(caption).__name__}")
        v = len(views)
        if v < self.num_views:
            raise ValueError(f"asset has {v} views, fewer than num_views={self.num_views}")
        c2w = np.asarray([view["c2w"] for view in views], dtype=np.float64)
        if c2w.shape != (v, 4, 4) or not np.all(np.isfinite(c2w)):
            raise ValueError(f"views' c2w must be finite 4x4 matrices, got array of shape {c2w.shape}")
        if start is None:
            if self.fixed_start is not None:
                start = self.fixed_start % v
            else:
                start = int(np.random.default_rng([self.seed, epoch, index, 1]).integers(v))
        elif not 0 <= int(start) < v:
            raise IndexError(f"start view {start} out of range: asset {asset_id} has {v} views")
        chosen = select_views(c2w, int(start), self.num_views)
        bg = _background_colour(self._bg, np.random.default_rng([self.seed, epoch, index, 2]))
        images = np.stack([load_image(folder / views[i]["file"], self.image_size, bg) for i in chosen])
        cameras = c2w_to_model_camera(torch.from_numpy(c2w[chosen]))
        self._check_stored_cameras(asset_id, views, chosen, cameras)
        attributes = meta.get("attributes") or {}
        item = {
            "images": torch.from_numpy(images),
            "cameras": cameras.float(),
            "caption": caption,
            "asset_id": asset_id,
            "attributes": dict(attributes) if isinstance(attributes, dict) else {},
        }
        if self.feature_masks:
            item["feature_weights"] = torch.from_numpy(
                np.stack([self._load_mask(folder, views[i]["file"]) for i in chosen]))
        return item

    def _load_mask(self, folder: Path, view_file: str) -> np.ndarray:
        return load_feature_mask(folder, view_file, self.image_size)

    def _check_stored_cameras(self, asset_id: str, views: list, chosen: list[int], cameras: torch.Tensor) -> None:
        if self._camera_mismatch_warned:
            return
        try:
            stored = torch.tensor([views[i]["model_camera"] for i in chosen], dtype=torch.float64)
        except (KeyError, TypeError, ValueError):
            return
        if stored.shape != cameras.shape or not torch.allclose(stored, cameras, atol=1e-4, rtol=0):
            self._camera_mismatch_warned = True
            _warn(f"{self._folders[asset_id]}/meta.json: stored model_camera differs from "
                  "c2w_to_model_camera(c2w); using the value recomputed from c2w (renderer convention bug?)")

    def _generate(self) -> Iterator[dict]:
        failures = 0
        for epoch, index in self._index_stream(self.num_items):
            if index in self._bad:
                failures += 1
                if failures >= _MAX_CONSECUTIVE_FAILURES:
                    raise RuntimeError(f"{failures} consecutive items could not be loaded from {self.roots}")
                continue
            try:
                item = self._load(index, epoch)
            except _LOAD_ERRORS as err:
                failures = self._skip_failed(index, f"asset {self._folders[self.asset_ids[index]]}", err, failures)
                continue
            failures = 0
            yield item

    # ---- state

    def state_dict(self) -> dict:
        """``{"epoch", "items_yielded", "seed", "rank", "world_size", "num_items"}`` of this rank."""
        return self._indexed_state(self.num_items)

    def load_state_dict(self, state: dict) -> None:
        """Continue the stream where ``state`` (from :meth:`state_dict`) stopped."""
        self._load_common_state(state, self.num_items)


# --------------------------------------------------------------------------------------------------
# 2D image-text dataset
# --------------------------------------------------------------------------------------------------

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
        failures = 0
        for epoch, index in self._index_stream(len(self.files)):
            if index in self._bad:
                failures += 1
                if failures >= _MAX_CONSECUTIVE_FAILURES:
                    raise RuntimeError(f"{failures} consecutive items could not be loaded from {self.folder}")
                continue
            try:
                item = self._load(index, epoch)
            except _LOAD_ERRORS as err:
                failures = self._skip_failed(index, f"image {self.folder / self.files[index]}", err, failures)
                continue
            failures = 0
            yield item

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


# --------------------------------------------------------------------------------------------------
# batching and loading
# --------------------------------------------------------------------------------------------------


def collate_multiview(items: Sequence[dict]) -> dict:
    """Stack items into an object-major batch (works for multi-view and 2D items alike).

    Returns:
        ``{"images": (B*F, 3, H, W), "cameras": (B*F, 16) or None (2D items), "captions": [B str],
        "num_frames": F}``, plus ``"feature_weights"`` (B*F, H, W) when every item has them, and
        ``"asset_ids"`` / ``"attributes"`` / ``"ids"`` lists when the items
        have them. Views of object b are rows ``b*F .. b*F + F - 1``.
    """
    if not items:
        raise ValueError("cannot collate an empty list of items")
    images = [torch.as_tensor(it["images"]) for it in items]
    first = tuple(images[0].shape)
    if len(first) != 4:
        raise ValueError(f"item images must be (F, C, H, W), got {first}")
    for im in images[1:]:
        if tuple(im.shape) != first:
            raise ValueError(f"items of one batch must have equal image shapes, got {first} and {tuple(im.shape)}")
    num_frames = first[0]
    with_cameras = [it.get("cameras") is not None for it in items]
    if all(with_cameras):
        cams = [torch.as_tensor(it["cameras"]) for it in items]
        for c in cams:
            if tuple(c.shape) != (num_frames, 16):
                raise ValueError(f"item cameras must be ({num_frames}, 16), got {tuple(c.shape)}")
        cameras: torch.Tensor | None = torch.cat(cams, dim=0)
    elif not any(with_cameras):
        cameras = None
    else:
        raise ValueError("cannot mix items with and without cameras in one batch")
    batch = {
        "images": torch.cat(images, dim=0),
        "cameras": cameras,
        "captions": [str(it["caption"]) for it in items],
        "num_frames": num_frames,
    }
    if all("feature_weights" in it for it in items):
        batch["feature_weights"] = torch.cat([torch.as_tensor(it["feature_weights"]) for it in items], dim=0)
    for key, out in (("asset_id", "asset_ids"), ("attributes", "attributes"), ("id", "ids")):
        if all(key in it for it in items):
            batch[out] = [it[key] for it in items]
    return batch


def _batch_size_of(batch: Any, default: int) -> int:
    if isinstance(batch, dict) and isinstance(batch.get("captions"), list):
        return len(batch["captions"])
    return default


def _ignore_stop_signals(worker_id: int) -> None:
    """DataLoader workers ignore SIGINT/SIGTERM: Ctrl-C (sent to the whole process group) or a kill of
    the job must reach only the training process, which saves a checkpoint and then shuts them down."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def infinite_loader(
    dataset: IterableDataset,
    batch_size: int,
    num_workers: int = 0,
    collate_fn: Callable[[list], Any] | None = collate_multiview,
    *,
    pin_memory: bool = False,
    prefetch_factor: int | None = None,
) -> Iterator[Any]:
    """Batches from ``dataset`` forever.

    Uses a ``DataLoader`` with persistent workers when ``num_workers > 0``. For this module's datasets it
    also (1) tells the dataset the batch size / worker count, so that the workers' batches come out in
    the rank's stream order, (2) counts consumed items (``dataset.state_dict()`` in the main process is
    then the position after the last batch yielded) and (3) fixes the torch.distributed rank before the
    workers start. A finite dataset (``epochs`` set) is simply iterated again when it ends; use
    ``epochs=None`` to stream continuously. A partial last batch of a finite pass is dropped.

    The dataset is configured when this is called (not at the first batch), so ``dataset.state_dict()``
    is right at any time after it.
    """
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if int(num_workers) < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    ours = isinstance(dataset, _StreamingDataset)
    if ours:
        dataset.freeze_distributed()
        dataset.loader_batch_size = int(batch_size)
        dataset.loader_num_workers = max(1, int(num_workers))
        dataset._consumed = 0
    kwargs: dict[str, Any] = dict(
        batch_size=int(batch_size), num_workers=int(num_workers), collate_fn=collate_fn,
        pin_memory=pin_memory, drop_last=True,
    )
    if num_workers > 0:
        kwargs["persistent_workers"] = True
        kwargs["worker_init_fn"] = _ignore_stop_signals
        if prefetch_factor is not None:
            kwargs["prefetch_factor"] = prefetch_factor
    loader = DataLoader(dataset, **kwargs)
    # In-process the dataset counts the items itself; with workers the main process counts batches.
    return _forever(loader, dataset if ours and num_workers > 0 else None, int(batch_size))


def _forever(loader: DataLoader, counter: _StreamingDataset | None, batch_size: int) -> Iterator[Any]:
    while True:
        got = False
        for batch in loader:
            got = True
            if counter is not None:
                counter.note_consumed(_batch_size_of(batch, batch_size))
            yield batch
        if not got:
            raise RuntimeError("the dataset yielded no complete batch; it is empty or smaller than batch_size")
