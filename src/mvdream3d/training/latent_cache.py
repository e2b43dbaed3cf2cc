"""Latents (and text embeddings) computed once, so that training never re-encodes.

A latent model's training step otherwise spends much of its time in the frozen VAE encoder and the
frozen text encoder, on the same few thousand images and captions every epoch. With
``data.cache_latents: true`` the trainer encodes every view of every asset and every 2D image once
(posterior mean, times the model's ``scale_factor``) into ``OUT/latent_cache.safetensors`` and draws
its batches from memory. For a pixel-space model the "latents" are the resized images themselves.

Batches from the cache follow :class:`~mvdream3d.data.datasets.MultiViewDataset`'s conventions: F
views at equally spaced azimuths from a random start view (:func:`~mvdream3d.data.datasets.select_views`),
object-major ``(B*F, C, h, w)``, cameras recomputed from the stored c2w, white background. Every random
choice of a batch comes from the step's generator, so a resumed run draws the same batches.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

CACHE_FILE = "latent_cache.safetensors"


def _source_key(model: Any, multiview: list[str], image_text: list[str], image_size: int) -> str:
    """What the cache depends on: the data folders, the image size and the VAE weights."""
    h = hashlib.sha256(json.dumps([multiview, image_text, image_size]).encode())
    if model.vae is not None:
        for k, v in sorted(model.vae.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().float().cpu().numpy().tobytes())
        h.update(str(model.scale_factor).encode())
    return h.hexdigest()[:16]


@torch.no_grad()
def _encode(model: Any, images: list[np.ndarray], batch: int = 64) -> torch.Tensor:
    out = []
    for i in range(0, len(images), batch):
        x = torch.from_numpy(np.stack(images[i:i + batch]))
        out.append(model.encode_images(x.to(model.device)).float().cpu())
    return torch.cat(out)


def _as_list(x: str | list[str] | None) -> list[str]:
    return [] if x is None else [x] if isinstance(x, str | os.PathLike) else [str(p) for p in x]


class LatentCache:
    """In-memory latents of a training set.

    ``mv_latents`` (A, V, C, h, w), ``mv_c2w`` (A, V, 4, 4) float64, ``mv_captions`` [A],
    ``mv_masks`` (A, V, h, w) feature coverage at latent resolution or None; ``im_latents`` (N, C, h, w),
    ``im_captions`` [N]. Assets with fewer than the largest view count are left out (one message).
    """

    def __init__(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.mv_latents = tensors.get("mv_latents")
        self.mv_c2w = tensors["mv_c2w"].double().numpy() if "mv_c2w" in tensors else None
        self.mv_masks = tensors.get("mv_masks")
        self.im_latents = tensors.get("im_latents")
        self.mv_captions: list[str] = meta.get("mv_captions", [])
        self.im_captions: list[str] = meta.get("im_captions", [])
        self.key = meta.get("key")

    # ---- building

    @classmethod
    def build(cls, model: Any, multiview: str | list[str] | None, image_text: str | list[str] | None,
              image_size: int, progress: bool = True) -> LatentCache:
        """Encode every view of every asset and every 2D image (white background)."""
        from tqdm.auto import tqdm

        from ..data.datasets import ImageTextDataset, MultiViewDataset, load_feature_mask, load_image

        tensors: dict[str, torch.Tensor] = {}
        meta: dict[str, Any] = {}
        mv_roots, im_roots = _as_list(multiview), _as_list(image_text)
        if mv_roots:
            ds = MultiViewDataset(mv_roots if len(mv_roots) > 1 else mv_roots[0], num_views=1,
                                  image_size=image_size)
            folders = [ds._folders[a] for a in ds.asset_ids]
            metas = [json.loads((f / "meta.json").read_text(encoding="utf-8")) for f in folders]
            v = max(len(m["views"]) for m in metas)
            keep = [i for i, m in enumerate(metas) if len(m["views"]) == v]
            if len(keep) < len(metas):
                print(f"latent cache: {len(metas) - len(keep)} asset(s) with fewer than {v} views left out")
            lat, c2w, masks, caps = [], [], [], []
            any_mask = False
            for i in tqdm(keep, desc="cache multi-view latents", unit="asset", disable=not progress):
                views = metas[i]["views"]
                imgs = [load_image(folders[i] / view["file"], image_size) for view in views]
                lat.append(_encode(model, imgs))
                c2w.append(torch.tensor([view["c2w"] for view in views], dtype=torch.float64))
                m = np.stack([load_feature_mask(folders[i], view["file"], image_size) for view in views])
                any_mask |= bool(m.any())
                masks.append(torch.from_numpy(m))
                caps.append(metas[i]["caption"])
            tensors["mv_latents"] = torch.stack(lat)
            tensors["mv_c2w"] = torch.stack(c2w)
            if any_mask:
                h = tensors["mv_latents"].shape[-1]
                m = torch.stack(masks).flatten(0, 1)[:, None]
                tensors["mv_masks"] = F.interpolate(m, size=(h, h), mode="area")[:, 0].unflatten(0, (len(keep), v))
            meta["mv_captions"] = caps
        if im_roots:
            imgs, caps = [], []
            for root in im_roots:
                ds2 = ImageTextDataset(root, image_size=image_size)
                for j in tqdm(range(len(ds2.files)), desc=f"cache 2D latents ({Path(root).name})", unit="img",
                              disable=not progress):
                    item = ds2.get(j)
                    imgs.append(item["images"][0].numpy())
                    caps.append(item["caption"])
            tensors["im_latents"] = _encode(model, imgs)
            meta["im_captions"] = caps
        return cls(tensors, meta)

    # ---- files

    def save(self, path: str | os.PathLike, key: str) -> Path:
        from safetensors.torch import save

        from ..data.render import _atomic_write_bytes

        tensors = {k: v.contiguous() for k, v in (("mv_latents", self.mv_latents), ("mv_masks", self.mv_masks),
                                                   ("im_latents", self.im_latents)) if v is not None}
        if self.mv_c2w is not None:
            tensors["mv_c2w"] = torch.from_numpy(self.mv_c2w)
        meta = {"key": key, "mv_captions": self.mv_captions, "im_captions": self.im_captions}
        path = Path(path)
        _atomic_write_bytes(path, save(tensors, metadata={"meta": json.dumps(meta)}))
        self.key = key
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> LatentCache:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["meta"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        return cls(tensors, meta)

    @classmethod
    def for_training(cls, model: Any, out: Path, multiview: str | list[str] | None,
                     image_text: str | list[str] | None, image_size: int, main: bool = True) -> LatentCache:
        """``OUT/latent_cache.safetensors`` if it was made from the same data and VAE, else build and write it."""
        key = _source_key(model, _as_list(multiview), _as_list(image_text), image_size)
        path = Path(out) / CACHE_FILE
        if path.is_file():
            cache = cls.load(path)
            if cache.key == key:
                return cache
            print(f"latent cache {path} was made from other data or another VAE: rebuilding it")
        cache = cls.build(model, multiview, image_text, image_size, progress=main)
        if main:
            cache.save(path, key)
        return cache

    # ---- batches

    @property
    def num_assets(self) -> int:
        return 0 if self.mv_latents is None else int(self.mv_latents.shape[0])

    @property
    def num_images(self) -> int:
        return 0 if self.im_latents is None else int(self.im_latents.shape[0])

    def multiview_batch(self, g: torch.Generator, batch_size: int, num_views: int, masks: bool = False) -> dict:
        """``{"latents": (B*F, C, h, w), "cameras": (B*F, 16), "captions": [B], "num_frames": F}`` (+
        ``"feature_weights"`` (B*F, h, w) with ``masks``), B assets drawn uniformly with replacement."""
        from ..cameras import c2w_to_model_camera
        from ..data.datasets import select_views

        if self.mv_latents is None:
            raise ValueError("the latent cache holds no multi-view data")
        a = torch.randint(0, self.num_assets, (batch_size,), generator=g).tolist()
        v = self.mv_latents.shape[1]
        starts = torch.randint(0, v, (batch_size,), generator=g).tolist()
        lat, cams, wts = [], [], []
        for i, s in zip(a, starts, strict=True):
            chosen = select_views(self.mv_c2w[i], s, num_views)
            lat.append(self.mv_latents[i, chosen])
            cams.append(c2w_to_model_camera(torch.from_numpy(self.mv_c2w[i, chosen])).float())
            if masks and self.mv_masks is not None:
                wts.append(self.mv_masks[i, chosen])
        batch = {"latents": torch.cat(lat), "cameras": torch.cat(cams), "captions": [self.mv_captions[i] for i in a],
                 "num_frames": num_views}
        if masks:
            if self.mv_masks is None:
                raise ValueError("feature masks were asked for but the cached data has none (no feature_XXX.png)")
            batch["feature_weights"] = torch.cat(wts)
        return batch

    def image_batch(self, g: torch.Generator, batch_size: int) -> dict:
        """``{"latents": (B, C, h, w), "cameras": None, "captions": [B], "num_frames": 1}``."""
        if self.im_latents is None:
            raise ValueError("the latent cache holds no 2D data")
        idx = torch.randint(0, self.num_images, (batch_size,), generator=g).tolist()
        return {"latents": self.im_latents[idx], "cameras": None, "captions": [self.im_captions[i] for i in idx],
                "num_frames": 1}


class CachedTextEncoder:
    """``encode_text(captions)`` through a frozen text encoder, each distinct caption computed once."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.table: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def encode_text(self, captions: list[str]) -> torch.Tensor:
        for c in captions:
            if c not in self.table:  # one at a time: the result must not depend on which captions came first
                self.table[c] = self.model.encode_text([c])[0]
        return torch.stack([self.table[c] for c in captions])
