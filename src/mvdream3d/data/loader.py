"""Batching and loading: object-major collation of multi-view and 2D items, and an endless,
resumable DataLoader iterator over the streaming data sets."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset

from .streaming import _StreamingDataset

__all__ = ["collate_multiview", "infinite_loader"]


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
