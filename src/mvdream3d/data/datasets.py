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

Where each part lives: image decoding in :mod:`~mvdream3d.data.images`, the streaming engine in
:mod:`~mvdream3d.data.streaming`, the multi-view source in :mod:`~mvdream3d.data.multiview`, tar shards
in :mod:`~mvdream3d.data.shards`, the image-text source in :mod:`~mvdream3d.data.image_text`, and
collation / loaders in :mod:`~mvdream3d.data.loader`. This module re-exports their public names.
"""

from __future__ import annotations

from .image_text import ImageTextDataset
from .images import IMAGE_EXTENSIONS, Background, DataWarning, load_image
from .loader import collate_multiview, infinite_loader
from .multiview import MultiViewDataset, load_feature_mask, select_views
from .shards import expand_shards

__all__ = [
    "IMAGE_EXTENSIONS",
    "Background",
    "DataWarning",
    "ImageTextDataset",
    "MultiViewDataset",
    "collate_multiview",
    "expand_shards",
    "infinite_loader",
    "load_feature_mask",
    "load_image",
    "select_views",
]
