"""The streaming engine shared by the data sets: seed and epochs, the rank/world split, dealing the
stream to DataLoader workers, consumption counting, skipping corrupt items and resumable state.

Order, splitting and resuming are described in :mod:`mvdream3d.data.datasets`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from .images import _LOAD_ERRORS, _warn

_MAX_CONSECUTIVE_FAILURES = 1000


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

    def _loaded_items(self, n: int, source: Any, describe: Callable[[int], str]) -> Iterator[dict]:
        """``self._load(index, epoch)`` along this rank's index stream over ``n`` items, skipping items known
        to be bad or failing to load (``describe(index)`` names one in the warning); too many failures in a
        row is an error naming ``source``."""
        failures = 0
        for epoch, index in self._index_stream(n):
            if index in self._bad:
                failures += 1
                if failures >= _MAX_CONSECUTIVE_FAILURES:
                    raise RuntimeError(f"{failures} consecutive items could not be loaded from {source}")
                continue
            try:
                item = self._load(index, epoch)
            except _LOAD_ERRORS as err:
                failures = self._skip_failed(index, describe(index), err, failures)
                continue
            failures = 0
            yield item

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
