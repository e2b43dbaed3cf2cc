"""What multi-view guidance asks of an object: the guided x0 target for the ground-truth body *without* its
front feature, averaged over noise draws, at several timesteps.

If the model binds the feature to the camera, the target adds the feature on the front (azimuth 0), at the
left edge of the azimuth-90 view, at the right edge of the azimuth-270 view, and nowhere from the back
(azimuth 180). This is the signal score distillation has to grow the feature from.

    python benchmarks/guidance_target.py --prompt "a blue sphere with an orange horn" --out target.png
    python benchmarks/guidance_target.py --prompt "a blue sphere with an orange horn" --guidance-scale 3 20

Writes a grid (one block of 4 columns per guidance scale, left to right): the first row is the body's
renders (azimuth 0/90/180/270, elevation 15, the world's cameras), then one row per timestep of the mean
guided x0 (the target of the x0-reconstruction loss; for a latent model, each draw's x0 latent decoded by
its autoencoder).
Prints, per view and timestep, the mean change |x0 - render| (summed over RGB, in [-1, 1] units) on the
feature's pixels and elsewhere.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch


def to_pixels(model, x0: torch.Tensor) -> torch.Tensor:
    """The guidance's x0 estimate (B, C, h, w) in model space -> images (B, 3, H, W) in [-1, 1]."""
    if model.vae is None:
        return x0
    with torch.no_grad():
        return model.decode_latents(x0).float()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompt", default="a red cube with a yellow nose")
    ap.add_argument("--model", default=None, help="default: the built-in model")
    ap.add_argument("--guidance-scale", type=float, nargs="+", default=[20.0],
                    help="one or more CFG scales; each gets its own block of columns, left to right")
    ap.add_argument("--timesteps", type=float, nargs="+", default=[0.2, 0.4, 0.6, 0.8], help="fractions of 1000")
    ap.add_argument("--draws", type=int, default=8, help="noise draws averaged per timestep")
    ap.add_argument("--out", default="guidance_target.png")
    args = ap.parse_args(argv)

    import imageio.v2 as imageio

    from mvdream3d.cameras import DEFAULT_FOVY_DEG, create_camera_to_world_matrix
    from mvdream3d.data import synth
    from mvdream3d.data.render import Renderer, view_distance
    from mvdream3d.evaluation.classifier import render_views
    from mvdream3d.evaluation.evaluate import fill_open_attributes
    from mvdream3d.evaluation.prompts import load_prompts
    from mvdream3d.pipeline import resolve_model
    from mvdream3d.threed.guidance import build_guidance

    prompt = load_prompts([args.prompt])[0]
    a = fill_open_attributes(prompt.attributes, np.random.default_rng(0))
    if not a.get("feature"):
        raise SystemExit(f"{args.prompt!r} has no front feature; use a prompt such as 'a red cube with a yellow nose'")
    body = {k: v for k, v in a.items() if k not in ("feature", "feature_color")}
    model = resolve_model(args.model)
    size = model.native_size
    az = [0.0, 90.0, 180.0, 270.0]
    dist = float(view_distance(1.0, synth.WORLD_RADIUS, DEFAULT_FOVY_DEG))
    c2w_np = np.stack([create_camera_to_world_matrix(15.0, x, dist) for x in az])
    with Renderer(size) as r:
        views = render_views(r, synth.build_mesh(body), [15.0] * 4, az, [DEFAULT_FOVY_DEG] * 4)
        mask_mesh = synth.feature_mask_mesh(synth.build_mesh(a), a)
        mask = np.stack([synth.feature_pixels(r.render(mask_mesh, c, DEFAULT_FOVY_DEG)) for c in c2w_np])
    rgb = torch.tensor(views, dtype=torch.float32) / 255
    c2w = torch.tensor(c2w_np, dtype=torch.float32)
    x = rgb.permute(0, 3, 1, 2) * 2 - 1
    m = torch.tensor(mask)
    blocks = []
    for scale in args.guidance_scale:
        rows = [np.concatenate(list(views), 1)]
        print(f"{args.prompt!r}, guidance scale {scale:g}: mean |x0 - render| on the feature's pixels "
              "(elsewhere), azimuth 0 / 90 / 180 / 270")
        for t in args.timesteps:
            g = build_guidance("multiview", model, guidance_scale=scale, loss_type="x0_recon", recon_std_rescale=0.5,
                               t_range_start=(t, t), t_range_end=(t, t), anneal_steps=1, n_view=4)
            gen = torch.Generator().manual_seed(0)
            # a latent model's x0 target is a latent: each draw is decoded to pixels before averaging
            x0 = sum(to_pixels(model, g(rgb, c2w, prompt.text, 0, generator=gen)["x0_pred"])
                     for _ in range(args.draws)) / args.draws
            x0 = x0.float().clamp(-1, 1)
            d = (x0 - x).abs().sum(1)
            cells = [f"{float(d[i][m[i]].mean()):.2f} ({float(d[i][~m[i]].mean()):.2f})" if m[i].any()
                     else f"hidden ({float(d[i].mean()):.2f})" for i in range(4)]
            print(f"  t={int(t * 1000):4d}: " + " / ".join(cells))
            rows.append(np.concatenate(list(((x0.permute(0, 2, 3, 1).numpy() + 1) * 127.5).round().astype(np.uint8)),
                                       1))
        blocks.append(np.concatenate(rows, 0))
    gap = np.full((blocks[0].shape[0], size // 4, 3), 255, np.uint8)  # a white gutter between the scales
    grid = np.concatenate([b for blk in blocks for b in (blk, gap)][:-1], 1)
    zoom = 4 if len(blocks) == 1 else 2
    imageio.imwrite(args.out, np.kron(grid, np.ones((zoom, zoom, 1), np.uint8)))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
