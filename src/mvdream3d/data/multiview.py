"""The multi-view source: rendered asset folders (``meta.json`` + RGBA views), F views per item at
equally spaced azimuths (:func:`select_views`). Layout and conventions: :mod:`mvdream3d.data.datasets`."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..cameras import c2w_to_model_camera
from .images import Background, _background_colour, _check_size, _parse_background, _warn, load_image
from .streaming import _StreamingDataset

__all__ = ["MultiViewDataset", "load_feature_mask", "select_views"]


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
        yield from self._loaded_items(self.num_items, self.roots,
                                      lambda i: f"asset {self._folders[self.asset_ids[i]]}")

    # ---- state

    def state_dict(self) -> dict:
        """``{"epoch", "items_yielded", "seed", "rank", "world_size", "num_items"}`` of this rank."""
        return self._indexed_state(self.num_items)

    def load_state_dict(self, state: dict) -> None:
        """Continue the stream where ``state`` (from :meth:`state_dict`) stopped."""
        self._load_common_state(state, self.num_items)
