"""Does a model know where the front feature goes? Text binding and camera use, measured on the denoiser.

Text-to-3D can only give an object one front if the multi-view model, asked for "a red cube with a
yellow nose" from a camera, puts the nose where that camera sees it. This module measures the two
halves of that directly on the denoiser, without sampling (seconds, not minutes):

For single objects with a front feature (seen concepts of the procedural world), ground-truth views at
the evaluation cameras (azimuth 0/90/180/270, elevation 15) are noised at timestep ``t`` and denoised
(x0 prediction, no guidance) three ways, with the same noise:

``full``    the caption ("a large red cube with a yellow nose") and the true cameras;
``plain``   the caption without the feature clause ("a large red cube"), true cameras;
``turned``  the caption, but every view given the camera of the view opposite it (azimuth + 180).

The error ``E`` is the squared x0 error on the feature's pixels (weights from a render of the feature
alone, so partly covered pixels count partly), summed over the 4 views. Then

- **text binding** ``1 - E_full / E_plain``: how much of the feature's error naming the feature removes
  (0: the clause is ignored; 1: the feature is drawn exactly);
- **camera use** ``1 - E_full / E_turned``: how much the true camera helps against the opposite one
  (0: the camera is ignored; a model that draws the feature where the camera says scores near 1).

Both are ratios of means over objects and noise draws. The ground truth itself (``E_full = 0``) scores 1.
At large ``t`` the noise hides the feature, so the numbers at ``t`` >= 300 say what the model knows
rather than what it copies from the noisy input; at small ``t`` every model copies it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..data import synth

__all__ = ["BINDING_TIMESTEPS", "binding_cases", "feature_binding", "format_binding_table"]

BINDING_TIMESTEPS: tuple[int, ...] = (100, 300, 500, 700)
_AZIMUTHS = (0.0, 90.0, 180.0, 270.0)


def binding_cases(num_objects: int, seed: int = 0, size: int = 32, supersample: int = 2) -> list[dict]:
    """``num_objects`` featured single objects with their views, feature weights and cameras.

    Each case: ``attributes``, ``caption``, ``plain_caption``, ``images`` (4, 3, size, size) float in
    [-1, 1] on white, ``weights`` (4, size, size) float in [0, 1] (the feature's pixel coverage),
    ``cameras`` (4, 16) model cameras (:func:`mvdream3d.cameras.c2w_to_model_camera`), views at azimuth
    0/90/180/270 (view k + 2 is opposite view k). Rendered at ``size * supersample`` and area-averaged.
    """
    from ..cameras import DEFAULT_FOVY_DEG, c2w_to_model_camera, create_camera_to_world_matrix
    from ..data.render import Renderer, view_distance
    from .classifier import _on_white
    from .evaluate import EVAL_ELEVATION

    if num_objects < 1:
        raise ValueError(f"num_objects must be >= 1, got {num_objects}")
    colors = [c for c in synth.COLORS if c not in synth.DEFAULT_HELD_OUT_COLORS]
    no_feature = (*synth.DEFAULT_HELD_OUT_SHAPES, *synth.SHAPES_WITHOUT_FEATURE)
    shapes = [s for s in synth.SHAPES if s not in no_feature]
    fov = float(DEFAULT_FOVY_DEG)
    dist = float(view_distance(1.0, synth.WORLD_RADIUS, fov))
    c2w = [create_camera_to_world_matrix(EVAL_ELEVATION, az, dist) for az in _AZIMUTHS]
    cams = c2w_to_model_camera(torch.tensor(np.stack(c2w), dtype=torch.float32)).reshape(len(c2w), 16)
    big = size * supersample

    def down(a: np.ndarray) -> np.ndarray:  # (H, W, C) -> area average
        return a.reshape(size, supersample, size, supersample, -1).mean((1, 3))

    cases = []
    with Renderer(big) as renderer:
        for i in range(num_objects):
            rng = np.random.default_rng([int(seed), 11, i])
            a = synth.make_attributes(rng, colors, shapes, p_feature=1.0, p_pair=0.0)
            mesh = synth.build_mesh(a)
            mask_mesh = synth.feature_mask_mesh(mesh, a)
            imgs, weights = [], []
            for m in c2w:
                rgb = _on_white(renderer.render(mesh, m, fov)).astype(np.float32)
                imgs.append(down(rgb) / 127.5 - 1.0)
                lit = synth.feature_pixels(renderer.render(mask_mesh, m, fov)).astype(np.float32)
                weights.append(down(lit[..., None])[..., 0])
            plain = {k: (None if k in ("feature", "feature_color") else v) for k, v in a.items()}
            cases.append({
                "attributes": a, "caption": synth.caption_of(a), "plain_caption": synth.caption_of(plain),
                "images": torch.tensor(np.stack(imgs)).permute(0, 3, 1, 2).contiguous(),
                "weights": torch.tensor(np.stack(weights)), "cameras": cams.clone(),
            })
    return cases


@torch.no_grad()
def feature_binding(
    model: Any, cases: Sequence[dict], timesteps: Sequence[int] = BINDING_TIMESTEPS, noise_draws: int = 2,
    seed: int = 0,
) -> dict[str, Any]:
    """Text binding and camera use of ``model`` (an :class:`~mvdream3d.models.model.MVDreamModel` with a
    camera-conditioned multi-view UNet) on ``cases`` (:func:`binding_cases`), per timestep.

    Returns ``{"timesteps": [...], "rows": [{"t", "text_binding", "camera_use", "feature_error": {full,
    plain, turned}, "body_error"}], "objects": len(cases)}``; errors are per object (sum over views of the
    weighted squared x0 error), averaged.
    """
    if not cases:
        raise ValueError("no cases: make some with binding_cases(num_objects)")
    unet = model.unet
    if not unet.has_camera:
        raise ValueError("camera use needs a model with camera input; this one has none")
    sched = model.noise_schedule
    device = next(unet.parameters()).device
    dtype = next(unet.parameters()).dtype
    g = torch.Generator("cpu").manual_seed(int(seed))
    sums: dict[int, dict[str, float]] = {int(t): dict.fromkeys(("full", "plain", "turned", "body"), 0.0)
                                         for t in timesteps}
    opposite = [(k + 2) % len(_AZIMUTHS) for k in range(len(_AZIMUTHS))]
    for case in cases:
        images = case["images"].to(device)
        x0 = model.encode_images(images.to(dtype))
        f = x0.shape[0]
        x0_3, images_3 = x0.repeat(3, 1, 1, 1), images.repeat(3, 1, 1, 1)
        w = case["weights"].to(device)[:, None]
        obj = (images < 0.98).any(1, keepdim=True).float() * (1 - w)
        ctx = model.encode_text([case["caption"], case["plain_caption"]]).to(device, dtype)
        ctx = torch.cat([ctx[:1].expand(f, -1, -1), ctx[1:].expand(f, -1, -1), ctx[:1].expand(f, -1, -1)])
        cam = case["cameras"].to(device, dtype)
        cams = torch.cat([cam, cam, cam[opposite]])
        for t in timesteps:
            tt = torch.full((3 * f,), int(t), device=device)
            for _ in range(noise_draws):
                noise = torch.randn(x0.shape, generator=g).to(device, dtype).repeat(3, 1, 1, 1)
                x_t = sched.q_sample(x0_3, tt, noise)
                out = unet(x_t, tt, context=ctx, camera=cams, num_frames=f)
                x0_hat = model.decode_latents(sched.to_x0(out, x_t, tt)).float()
                err = (x0_hat - images_3).square().sum(1, keepdim=True)
                full, plain, turned = err.split(f)
                s = sums[int(t)]
                s["full"] += float((full * w).sum()) / noise_draws
                s["plain"] += float((plain * w).sum()) / noise_draws
                s["turned"] += float((turned * w).sum()) / noise_draws
                s["body"] += float((full * obj).sum() / obj.sum().clamp_min(1)) / noise_draws
    n = len(cases)
    rows = []
    for t in timesteps:
        s = {k: v / n for k, v in sums[int(t)].items()}
        rows.append({
            "t": int(t),
            "text_binding": 1.0 - s["full"] / s["plain"] if s["plain"] > 0 else float("nan"),
            "camera_use": 1.0 - s["full"] / s["turned"] if s["turned"] > 0 else float("nan"),
            "feature_error": {k: s[k] for k in ("full", "plain", "turned")},
            "body_error": s["body"],
        })
    return {"timesteps": [int(t) for t in timesteps], "rows": rows, "objects": n}


def format_binding_table(results: dict[str, dict]) -> str:
    """A Markdown table, one row per (model, t), from ``{model_name: feature_binding(...)}``."""
    lines = ["| model | t | text binding | camera use | feature error: full / plain / turned | "
             "body error (per pixel) |", "|---|---|---|---|---|---|"]
    for name, res in results.items():
        for r in res["rows"]:
            e = r["feature_error"]
            lines.append(f"| {name} | {r['t']} | {r['text_binding']:.3f} | {r['camera_use']:.3f} | "
                         f"{e['full']:.2f} / {e['plain']:.2f} / {e['turned']:.2f} | {r['body_error']:.4f} |")
    return "\n".join(lines) + "\n"
