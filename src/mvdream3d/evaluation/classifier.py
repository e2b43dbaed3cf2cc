"""A small view classifier for the procedural world: the "Inception network" of this world's FID.

One CNN (about 0.2 M parameters, RGB on white, ``input_size`` x ``input_size``, default 32) with four
heads, trained on ground-truth renders that the generator and renderer of :mod:`mvdream3d.data.synth`
make on the fly (every concept, the held-out 2D-only ones included; single objects only):

``shape``
    one of ``synth.SHAPES`` (cube, sphere, cylinder, cone, torus, pyramid);
``color``
    the colour of the main object (not of its front feature), one of ``synth.COLORS``;
``visible``
    whether the front feature (nose, horn or face) shows in this view (label: at least ``visible_min_px``
    pixels of it, measured in ``input_size`` pixels, are seen; objects without a feature: no);
``azimuth``
    the camera azimuth in 8 bins of 45 degrees centred on 0, 45, ..., 315 (bin ``round(az / 45) % 8``);
    learned only on objects with a front feature, the only ones whose azimuth is defined.

``features`` (the 128-d penultimate layer) feed the Frechet distance of :mod:`.metrics`.

Train with ``mvdream3d train-classifier --out FILE``; the package ships one trained that way
(``mvdream3d/weights/classifier.safetensors`` and its JSON card), loaded by :func:`load_classifier`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data import synth
from ..files import atomic_write, atomic_write_text

__all__ = [
    "AZIMUTH_BINS",
    "ClassifierConfig",
    "ViewClassifier",
    "add_train_classifier_subparser",
    "azimuth_bin",
    "cmd_train_classifier",
    "default_classifier_path",
    "feature_area",
    "load_classifier",
    "make_training_data",
    "render_views",
    "save_classifier",
    "to_input_array",
    "train_classifier",
]

AZIMUTH_BINS = 8
FORMAT = "mvdream3d-view-classifier"
FORMAT_VERSION = 1


def azimuth_bin(azimuth: float | np.ndarray, bins: int = AZIMUTH_BINS) -> np.ndarray:
    """Bin index of azimuths in degrees: bins of ``360 / bins`` centred on 0, 45, ... (``round(az / w) % bins``)."""
    w = 360.0 / bins
    return (np.floor(np.mod(np.asarray(azimuth, dtype=np.float64), 360.0) / w + 0.5).astype(np.int64)) % bins


@dataclass
class ClassifierConfig:
    """Architecture and label spaces; stored inside the weights file, so a file is self-describing."""

    input_size: int = 32
    widths: tuple[int, int, int] = (16, 32, 64)
    feature_dim: int = 128
    shapes: list[str] = field(default_factory=lambda: list(synth.SHAPES))
    colors: list[str] = field(default_factory=lambda: list(synth.COLORS))
    azimuth_bins: int = AZIMUTH_BINS
    visible_min_px: float = 1.5

    @classmethod
    def from_dict(cls, d: dict) -> ClassifierConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if "widths" in known:
            known["widths"] = tuple(int(w) for w in known["widths"])
        return cls(**known)


def _block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class ViewClassifier(nn.Module):
    """The CNN. ``forward(x)`` takes (N, 3, S, S) in [-1, 1] (RGB on white) and returns a dict of logits
    ``shape``, ``color``, ``visible`` (2 classes), ``azimuth`` and the penultimate ``features``."""

    def __init__(self, config: ClassifierConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or ClassifierConfig()
        w0, w1, w2 = c.widths
        self.body = nn.Sequential(
            *_block(3, w0), nn.MaxPool2d(2),
            *_block(w0, w1), *_block(w1, w1), nn.MaxPool2d(2),
            *_block(w1, w2), *_block(w2, w2), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(),
            nn.Linear(w2 * 16, c.feature_dim), nn.ReLU(inplace=True),
        )
        self.dropout = nn.Dropout(0.1)
        self.heads = nn.ModuleDict({
            "shape": nn.Linear(c.feature_dim, len(c.shapes)),
            "color": nn.Linear(c.feature_dim, len(c.colors)),
            "visible": nn.Linear(c.feature_dim, 2),
            "azimuth": nn.Linear(c.feature_dim, c.azimuth_bins),
        })

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.body(x)
        h = self.dropout(feats)
        out = {k: head(h) for k, head in self.heads.items()}
        out["features"] = feats
        return out

    # -- inference ---------------------------------------------------------------------------------

    @property
    def input_size(self) -> int:
        return int(self.config.input_size)

    @torch.no_grad()
    def predict(self, images: Any, batch_size: int = 256) -> dict[str, Any]:
        """Classify views (PIL images, (H, W, 3|4) uint8 arrays, or an (N, H, W, 3|4) uint8 array).

        Returns numpy arrays (N,): ``shape``/``color``/``azimuth`` (indices), ``visible`` (bool), their
        names ``shape_name``/``color_name``, the azimuth bin centre ``azimuth_deg``, per-head softmax
        ``*_prob`` (N, K) and ``features`` (N, feature_dim).
        """
        arr = to_input_array(images, self.input_size)
        was_training = self.training
        self.eval()
        outs: dict[str, list[np.ndarray]] = {}
        try:
            for i in range(0, len(arr), batch_size):
                x = _to_tensor(arr[i:i + batch_size])
                o = self(x)
                for k, v in o.items():
                    v = v if k == "features" else F.softmax(v.float(), dim=-1)
                    outs.setdefault(k, []).append(v.float().numpy())
        finally:
            self.train(was_training)
        c = self.config
        if not outs:
            dims = {"shape": len(c.shapes), "color": len(c.colors), "visible": 2, "azimuth": c.azimuth_bins,
                    "features": c.feature_dim}
            outs = {k: [np.zeros((0, d), np.float32)] for k, d in dims.items()}
        res: dict[str, Any] = {}
        for k in ("shape", "color", "visible", "azimuth"):
            p = np.concatenate(outs[k])
            res[f"{k}_prob"] = p
            res[k] = p.argmax(-1)
        res["visible"] = res["visible"].astype(bool)
        res["features"] = np.concatenate(outs["features"])
        res["shape_name"] = np.array([c.shapes[i] for i in res["shape"]], dtype=object)
        res["color_name"] = np.array([c.colors[i] for i in res["color"]], dtype=object)
        res["azimuth_deg"] = res["azimuth"] * (360.0 / c.azimuth_bins)
        return res

    def features(self, images: Any) -> np.ndarray:
        """Penultimate features (N, feature_dim) of views (as in :meth:`predict`)."""
        return self.predict(images)["features"]


# --------------------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------------------


def _on_white(a: np.ndarray) -> np.ndarray:
    """(..., H, W, 3|4) uint8 -> (..., H, W, 3) uint8, straight alpha composited on white."""
    if a.shape[-1] == 3:
        return a
    alpha = a[..., 3:4].astype(np.float32) / 255.0
    rgb = a[..., :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def _resize(rgb: np.ndarray, size: int) -> np.ndarray:
    if rgb.shape[0] == size and rgb.shape[1] == size:
        return rgb
    from PIL import Image

    h, w = rgb.shape[:2]
    if h != w:  # centre square crop, like the training data loader
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        rgb = rgb[top:top + s, left:left + s]
    im = Image.fromarray(np.ascontiguousarray(rgb)).resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)
    return np.asarray(im)


def to_input_array(images: Any, size: int) -> np.ndarray:
    """Views -> (N, size, size, 3) uint8 RGB on white (alpha composited on white, then resized, bicubic)."""
    from PIL import Image

    if isinstance(images, np.ndarray) and images.ndim == 4:
        items: Sequence[Any] = list(images)
    elif isinstance(images, np.ndarray | Image.Image):
        items = [images]
    else:
        items = list(images)
    out = np.empty((len(items), size, size, 3), dtype=np.uint8)
    for i, im in enumerate(items):
        if isinstance(im, Image.Image):
            im = np.asarray(im.convert("RGBA") if im.mode in ("RGBA", "LA", "P", "PA") else im.convert("RGB"))
        a = np.asarray(im)
        if a.ndim != 3 or a.shape[-1] not in (3, 4):
            raise ValueError(f"expected (H, W, 3|4) images, got shape {a.shape}")
        if a.dtype != np.uint8:
            a = np.clip(np.round(a.astype(np.float64) * (255.0 if a.max() <= 1.0 else 1.0)), 0, 255).astype(np.uint8)
        out[i] = _resize(_on_white(a), size)
    return out


def _to_tensor(arr: np.ndarray) -> torch.Tensor:
    """(N, S, S, 3) uint8 -> (N, 3, S, S) float in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


# --------------------------------------------------------------------------------------------------
# ground-truth renders and labels
# --------------------------------------------------------------------------------------------------


def feature_area(renderer: Any, mask_mesh: Any, c2w: np.ndarray, fov_deg: float, input_size: int) -> float:
    """Visible area of the front feature in ``input_size``-pixel units (a render of ``mask_mesh``, from
    :func:`mvdream3d.data.synth.feature_mask_mesh`)."""
    lit = synth.feature_pixels(renderer.render(mask_mesh, c2w, fov_deg))
    return float(lit.sum()) * (input_size / renderer.width) * (input_size / renderer.height)


def render_views(
    renderer: Any, mesh: Any, elevations: Sequence[float], azimuths: Sequence[float], fovs: Sequence[float],
    distances: Sequence[float] | None = None,
) -> np.ndarray:
    """RGB-on-white renders (V, H, W, 3) uint8 of ``mesh`` from orbit cameras (world recipe distances by default)."""
    from ..cameras import create_camera_to_world_matrix
    from ..data.render import view_distance

    out = []
    for i, (el, az, fov) in enumerate(zip(elevations, azimuths, fovs, strict=True)):
        d = float(view_distance(1.0, synth.WORLD_RADIUS, fov)) if distances is None else float(distances[i])
        out.append(_on_white(renderer.render(mesh, create_camera_to_world_matrix(el, az, d), float(fov))))
    return np.stack(out)


def make_training_data(
    num_assets: int = 2400,
    views: int = 8,
    size: int = 32,
    seed: int = 0,
    elevation_range: Sequence[float] = (0.0, 30.0),
    fov_range: Sequence[float] = (15.0, 60.0),
    distance_range: Sequence[float] = (0.9, 1.1),
    p_feature: float = 0.75,
    visible_min_px: float = 1.5,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Render labelled ground-truth views of fresh single-object assets of every concept.

    Asset ``i`` comes from ``synth.make_asset(default_rng([seed, 5, i]), p_pair=0)`` (all colours, shapes
    and features, the held-out ones included); its ``views`` views get random azimuths in [0, 360),
    elevations, fields of view and relative distances from the world recipe's ranges
    (``distance = d * WORLD_RADIUS / sin(fov / 2)``). Even assets are rendered at ``size``, odd ones at
    ``2 * size`` and resized (bicubic) like any larger input. Labels of the feature's visibility come
    from a second render in which only the feature is lit.

    Returns:
        arrays ``images`` (N, size, size, 3) uint8, ``shape``, ``color`` (indices into ``synth.SHAPES`` /
        ``synth.COLORS``), ``visible`` (0/1), ``has_feature`` (0/1), ``azimuth`` (degrees), ``asset``
        (index of the asset), N = num_assets * views.
    """
    from tqdm.auto import tqdm

    from ..cameras import create_camera_to_world_matrix
    from ..data.render import Renderer, view_distance

    shapes, colors = list(synth.SHAPES), list(synth.COLORS)
    n = int(num_assets) * int(views)
    data = {
        "images": np.empty((n, size, size, 3), np.uint8),
        "shape": np.empty(n, np.int64), "color": np.empty(n, np.int64), "visible": np.empty(n, np.int64),
        "has_feature": np.empty(n, np.int64), "azimuth": np.empty(n, np.float64), "asset": np.empty(n, np.int64),
    }
    renderers = [Renderer(size), Renderer(2 * size)]
    try:
        k = 0
        for i in tqdm(range(int(num_assets)), desc="rendering", unit="asset", disable=not progress):
            rng = np.random.default_rng([int(seed), 5, i])
            mesh, _, a = synth.make_asset(rng, p_feature=p_feature, p_pair=0.0)
            rend = renderers[i % 2]
            mask = synth.feature_mask_mesh(mesh, a) if a["feature"] else None
            az = rng.uniform(0.0, 360.0, views)
            el = rng.uniform(*elevation_range, views)
            fov = rng.uniform(*fov_range, views)
            dist = view_distance(rng.uniform(*distance_range, views), synth.WORLD_RADIUS, fov)
            for v in range(views):
                c2w = create_camera_to_world_matrix(el[v], az[v], float(dist[v]))
                rgb = _on_white(rend.render(mesh, c2w, float(fov[v])))
                data["images"][k] = _resize(rgb, size)
                vis = mask is not None and feature_area(rend, mask, c2w, float(fov[v]), size) >= visible_min_px
                data["visible"][k] = int(vis)
                data["shape"][k] = shapes.index(a["shape"])
                data["color"][k] = colors.index(a["color"])
                data["has_feature"][k] = int(a["feature"] is not None)
                data["azimuth"][k] = az[v]
                data["asset"][k] = i
                k += 1
    finally:
        for r in renderers:
            r.release()
    return data


# --------------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------------


def _augment(x: torch.Tensor, az: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror (azimuth -> -azimuth: the world's assets are mirror-symmetric in x), shift by up to 2 px
    (white fill), slight brightness change and pixel noise. ``x`` in [-1, 1]."""
    n, _, s, _ = x.shape
    flip = torch.rand(n, generator=g) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    az = torch.where(flip, (360.0 - az) % 360.0, az)
    pad = 2
    xp = F.pad(x, (pad, pad, pad, pad), value=1.0)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    rows = (dy[:, None] + torch.arange(s)[None]).clamp_max(s + 2 * pad - 1)
    cols = (dx[:, None] + torch.arange(s)[None]).clamp_max(s + 2 * pad - 1)
    idx = torch.arange(n)[:, None, None, None]
    ch = torch.arange(3)[None, :, None, None]
    x = xp[idx, ch, rows[:, None, :, None], cols[:, None, None, :]]
    scale = 1.0 + 0.06 * (torch.rand(n, 1, 1, 1, generator=g) - 0.5)
    x = (x + 1.0) * scale - 1.0
    sigma = 0.06 * torch.rand(n, 1, 1, 1, generator=g)
    x = x + sigma * torch.randn(x.shape, generator=g)
    return x.clamp(-1.0, 1.0), az


def _losses(out: dict[str, torch.Tensor], y: dict[str, torch.Tensor], bins: int) -> dict[str, torch.Tensor]:
    losses = {
        "shape": F.cross_entropy(out["shape"], y["shape"], label_smoothing=0.05),
        "color": F.cross_entropy(out["color"], y["color"], label_smoothing=0.05),
        "visible": F.cross_entropy(out["visible"], y["visible"]),
    }
    m = y["has_feature"].bool()
    if m.any():
        target = torch.from_numpy(azimuth_bin(y["azimuth"][m].numpy(), bins))
        losses["azimuth"] = F.cross_entropy(out["azimuth"][m], target, label_smoothing=0.05)
    return losses


@torch.no_grad()
def evaluate_accuracy(model: ViewClassifier, data: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, float]:
    """Per-head accuracy on ``data[idx]`` (azimuth: views of featured objects only)."""
    p = model.predict(data["images"][idx])
    feat = data["has_feature"][idx].astype(bool)
    acc = {
        "shape": float(np.mean(p["shape"] == data["shape"][idx])),
        "color": float(np.mean(p["color"] == data["color"][idx])),
        "visible": float(np.mean(p["visible"].astype(int) == data["visible"][idx])),
        "azimuth": float(np.mean(p["azimuth"][feat] == azimuth_bin(data["azimuth"][idx][feat],
                                                                        model.config.azimuth_bins)))
        if feat.any() else float("nan"),
    }
    # azimuth within one bin (45 degrees): a softer measure of the camera head
    if feat.any():
        d = (p["azimuth"][feat] - azimuth_bin(data["azimuth"][idx][feat], model.config.azimuth_bins)) % \
            model.config.azimuth_bins
        acc["azimuth_within_1_bin"] = float(np.mean((d <= 1) | (d >= model.config.azimuth_bins - 1)))
    return acc


def _per_class_accuracy(model: ViewClassifier, data: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, dict]:
    p = model.predict(data["images"][idx])
    res: dict[str, dict] = {"shape": {}, "color": {}}
    for head, names in (("shape", model.config.shapes), ("color", model.config.colors)):
        for j, name in enumerate(names):
            m = data[head][idx] == j
            if m.any():
                res[head][name] = round(float(np.mean(p[head][m] == j)), 4)
    return res


def train_classifier(
    out: str | os.PathLike,
    num_assets: int = 2000,
    views: int = 8,
    size: int = 32,
    steps: int = 1500,
    seed: int = 0,
    batch_size: int = 128,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    test_fraction: float = 0.1,
    threads: int | None = 1,
    p_feature: float = 0.75,
    progress: bool = True,
    command: str | None = None,
) -> dict:
    """Render a labelled set, train a :class:`ViewClassifier` with AdamW (one-cycle LR), measure held-out
    accuracy per head on unseen assets, and write ``out`` (.safetensors) plus ``out`` with ``.json``
    (the card). Returns the card."""
    from tqdm.auto import tqdm

    num_assets, views, size, steps, batch_size = int(num_assets), int(views), int(size), int(steps), int(batch_size)
    if num_assets < 10:
        raise ValueError(f"--num-assets must be >= 10 (a test split is held out), got {num_assets}")
    if views < 1 or steps < 1 or batch_size < 1:
        raise ValueError(f"--views, --steps and --batch-size must be >= 1, got {views}, {steps}, {batch_size}")
    if size < 8:
        raise ValueError(f"--size must be >= 8 pixels, got {size}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test fraction must be in (0, 1), got {test_fraction}")
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"--out must end in .safetensors, got {out}")
    _check_writable_file(out)
    if threads:
        torch.set_num_threads(int(threads))

    config = ClassifierConfig(input_size=size)
    recipe = {
        "num_assets": num_assets, "views": views, "size": size, "render_sizes": [size, 2 * size],
        "elevation_range": [0.0, 30.0], "fov_range": [15.0, 60.0], "distance_range": [0.9, 1.1],
        "distance_rule": "d * WORLD_RADIUS / sin(fov / 2)", "azimuth": "uniform [0, 360)",
        "asset_rng": f"synth.make_asset(numpy.random.default_rng([seed, 5, i]), p_feature={p_feature}, p_pair=0)",
        "concepts": {"shapes": list(synth.SHAPES), "colors": list(synth.COLORS), "features": list(synth.FEATURES)},
        "held_out_2d_only_included": {"colors": list(synth.DEFAULT_HELD_OUT_COLORS),
                                      "shapes": list(synth.DEFAULT_HELD_OUT_SHAPES)},
        "test_fraction": test_fraction, "steps": steps, "batch_size": batch_size, "optimizer": "AdamW",
        "lr": lr, "weight_decay": weight_decay, "schedule": "one-cycle (10% warm-up, cosine)",
        "augmentation": "mirror (azimuth -> -azimuth), +-2 px shift, brightness +-3%, noise sigma <= 0.06",
        "visible_label": f"feature area >= {config.visible_min_px} px at {size} px",
    }
    t0 = time.perf_counter()
    data = make_training_data(num_assets, views, size, seed, p_feature=p_feature,
                              visible_min_px=config.visible_min_px, progress=progress)
    t_render = time.perf_counter() - t0

    n_test_assets = max(1, int(round(num_assets * test_fraction)))
    test_mask = data["asset"] >= num_assets - n_test_assets
    train_idx, test_idx = np.flatnonzero(~test_mask), np.flatnonzero(test_mask)

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(int(seed))
    model = ViewClassifier(config)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    images = torch.from_numpy(data["images"])
    labels = {k: torch.from_numpy(data[k]) for k in ("shape", "color", "visible", "has_feature", "azimuth")}
    model.train()
    t1 = time.perf_counter()
    bar = tqdm(range(steps), desc="training", unit="step", disable=not progress)
    running: dict[str, float] = {}
    for _ in bar:
        b = torch.from_numpy(train_idx)[torch.randint(len(train_idx), (batch_size,), generator=g)]
        x = images[b].permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
        y = {k: v[b] for k, v in labels.items()}
        x, y["azimuth"] = _augment(x, y["azimuth"], g)
        losses = _losses(model(x), y, config.azimuth_bins)
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        for k, v in losses.items():
            val = v.item()
            running[k] = 0.95 * running.get(k, val) + 0.05 * val
        bar.set_postfix({k: f"{v:.3f}" for k, v in running.items()}, refresh=False)
    t_train = time.perf_counter() - t1
    model.eval()
    acc = evaluate_accuracy(model, data, test_idx)
    train_acc = evaluate_accuracy(model, data, train_idx[: len(test_idx)])
    per_class = _per_class_accuracy(model, data, test_idx)
    ho_c = [list(synth.COLORS).index(c) for c in synth.DEFAULT_HELD_OUT_COLORS]
    ho_s = [list(synth.SHAPES).index(s) for s in synth.DEFAULT_HELD_OUT_SHAPES]
    ho_idx = test_idx[np.isin(data["color"][test_idx], ho_c) | np.isin(data["shape"][test_idx], ho_s)]
    held_out_acc = evaluate_accuracy(model, data, ho_idx) if len(ho_idx) else {}

    card = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": _config_dict(config),
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "test_accuracy": {k: round(v, 4) for k, v in acc.items()},
        "test_accuracy_held_out_concepts": {k: round(v, 4) for k, v in held_out_acc.items()},
        "test_accuracy_per_class": per_class,
        "train_accuracy_sample": {k: round(v, 4) for k, v in train_acc.items()},
        "test_split": {"assets": n_test_assets, "views": int(len(test_idx)),
                       "featured_views": int(data["has_feature"][test_idx].sum()),
                       "rule": "the last test_fraction of asset indices (unseen assets)"},
        "train_split": {"assets": num_assets - n_test_assets, "views": int(len(train_idx))},
        "recipe": recipe,
        "seed": int(seed),
        "command": command or f"mvdream3d train-classifier --out {out} --num-assets {num_assets} --views {views} "
                              f"--size {size} --steps {steps} --seed {seed}",
        "seconds": {"render": round(t_render, 1), "train": round(t_train, 1),
                    "total": round(time.perf_counter() - t0, 1)},
        "threads": torch.get_num_threads(),
        "environment": {"torch": torch.__version__, "python": platform.python_version(),
                        "machine": platform.machine(), "cpu_count": os.cpu_count()},
    }
    card = _nan_to_none(card)
    save_classifier(out, model, card)
    return card


def _nan_to_none(x: Any) -> Any:
    """JSON has no NaN: undefined values (e.g. azimuth accuracy without featured views) become None."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_nan_to_none(v) for v in x]
    return x


def _config_dict(config: ClassifierConfig) -> dict:
    d = asdict(config)
    d["widths"] = list(d["widths"])
    return d


def _check_writable_file(path: Path) -> None:
    parent = path.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PermissionError(f"cannot create {parent}: {e.strerror or e}") from e
    if not os.access(parent, os.W_OK):
        raise PermissionError(f"cannot write to {parent}: choose another --out")


def save_classifier(path: str | os.PathLike, model: ViewClassifier, card: dict | None = None) -> Path:
    """Write the weights (config embedded in the safetensors metadata) and, with ``card``, ``path.json``."""
    from safetensors.torch import save_file

    path = Path(path)
    _check_writable_file(path)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "config": json.dumps(_config_dict(model.config))}
    with atomic_write(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    if card is not None:
        atomic_write_text(path.with_suffix(".json"), json.dumps(card, indent=1) + "\n")
    return path


def default_classifier_path() -> Path:
    """The shipped classifier (``mvdream3d/weights/classifier.safetensors``)."""
    return Path(str(resources.files("mvdream3d").joinpath("weights", "classifier.safetensors")))


def load_classifier(path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> ViewClassifier:
    """Load a trained classifier (default: the one shipped with the package), in eval mode.

    Raises:
        FileNotFoundError: no such file (or no shipped classifier in this installation).
        ValueError: the file is not a view-classifier file.
    """
    from safetensors import safe_open

    p = Path(path) if path is not None else default_classifier_path()
    if not p.is_file():
        hint = ("train one with `mvdream3d train-classifier --out FILE` and pass it with --classifier"
                if path is None else "check the path")
        raise FileNotFoundError(f"classifier weights not found: {p} ({hint})")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise ValueError(f"{p} is not a readable safetensors file: {e}") from e
    if meta.get("format") != FORMAT:
        raise ValueError(f"{p} is not a mvdream3d view-classifier file (metadata format={meta.get('format')!r})")
    model = ViewClassifier(ClassifierConfig.from_dict(json.loads(meta["config"])))
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()


# --------------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------------


def add_train_classifier_subparser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``train-classifier`` to a ``parser.add_subparsers()`` object (handler: ``cmd_train_classifier``)."""
    p = subparsers.add_parser(
        "train-classifier",
        help="train the evaluation view classifier (shape, colour, feature visibility, azimuth) on fresh renders",
        description="Render labelled ground-truth views of procedural single objects of every concept "
        "(held-out 2D-only ones included), train a small CNN with AdamW, report held-out accuracy per "
        "head and write FILE (.safetensors) and FILE with .json (the card: accuracies, recipe, timing).",
    )
    p.add_argument("--out", required=True, metavar="FILE", help="output weights file (.safetensors)")
    p.add_argument("--num-assets", type=int, default=2000, help="procedural assets to render (default 2000)")
    p.add_argument("--views", type=int, default=8, help="random views per asset (default 8)")
    p.add_argument("--size", type=int, default=32, help="classifier input size in pixels (default 32)")
    p.add_argument("--steps", type=int, default=1500, help="optimisation steps (default 1500)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3, help="peak AdamW learning rate (default 3e-3)")
    p.add_argument("--test-fraction", type=float, default=0.1, help="share of assets held out (default 0.1)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: small convolutions gain little from more, and "
                        "a shared CPU is fastest with one)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_train_classifier)
    return p


def cmd_train_classifier(args: argparse.Namespace) -> int:
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    command = "mvdream3d " + " ".join(_quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["train-classifier"] \
        else None
    card = train_classifier(
        args.out, num_assets=args.num_assets, views=args.views, size=args.size, steps=args.steps, seed=args.seed,
        batch_size=args.batch_size, lr=args.lr, test_fraction=args.test_fraction, threads=args.threads,
        command=command,
    )
    acc = card["test_accuracy"]
    ho = card["test_accuracy_held_out_concepts"]
    s = card["seconds"]
    print(f"held-out accuracy ({card['test_split']['views']} views of {card['test_split']['assets']} unseen assets): "
          + ", ".join(f"{k} {v:.1%}" for k, v in acc.items() if v is not None))
    if ho:
        print("  of which views of held-out 2D-only concepts: "
              + ", ".join(f"{k} {v:.1%}" for k, v in ho.items() if v is not None))
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.json')} "
          f"({card['parameters']:,d} parameters; render {s['render']:.0f} s, train {s['train']:.0f} s)")
    return 0


def _quote(a: str) -> str:
    import shlex

    return shlex.quote(a)
