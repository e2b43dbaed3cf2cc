"""Where a text-to-3D step spends its time on this CPU, and what the CPU recipe buys.

Runs the ``builtin`` text-to-3D config with the built-in model for a few steps and prints seconds per
step split into render (field + volume rendering), guidance (encode + UNet with CFG) and backward (+ the
optimiser), then the same loop with the published recipe's field and renderer settings (16 levels,
2^19 table, max resolution 4096, 64 hidden, analytic normals, 64 samples per ray) as the baseline in the
same process, and the ratio. Also times the export (mesh + turntable).

    python benchmarks/text_to_3d_speed.py [--steps 20] [--model PATH]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

PUBLISHED_FIELD = ["geometry.n_levels=16", "geometry.log2_hashmap_size=19", "geometry.base_resolution=16",
                   "geometry.max_resolution=4096", "geometry.mlp_hidden=64", "geometry.normal_type=analytic",
                   "renderer.num_samples_per_ray=64"]


def time_steps(model, overrides: list[str], steps: int, warmup: int = 2) -> dict[str, float]:
    from mvdream3d.threed.config import load_text_to_3d_config
    from mvdream3d.threed.system import TextTo3D

    cfg = load_text_to_3d_config("builtin", overrides + ["material.ambient_only_steps=0"])
    with tempfile.TemporaryDirectory() as tmp:
        run = TextTo3D("a red cube with a yellow nose", model, cfg, Path(tmp))
        for _ in range(warmup):
            run.train_step()
        acc = {"render": 0.0, "guidance": 0.0, "backward": 0.0}
        t0 = time.perf_counter()
        for _ in range(steps):
            row = run.train_step()
            for k in acc:
                acc[k] += row[f"time_{k}"]
        total = time.perf_counter() - t0
        t1 = time.perf_counter()
        from mvdream3d.threed.system import export_run

        export_run(run, Path(tmp))
        export = time.perf_counter() - t1
    return {**{k: v / steps for k, v in acc.items()}, "step": total / steps, "export": export}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--model", default=None)
    args = ap.parse_args(argv)
    from mvdream3d.pipeline import resolve_model

    model = resolve_model(args.model)
    print(f"torch threads: {torch.get_num_threads()}")
    ours = time_steps(model, [], args.steps)
    base = time_steps(model, PUBLISHED_FIELD, max(3, args.steps // 4))
    print("| settings | s/step | render | guidance | backward | it/s | export (mesh + video) |")
    print("|---|---|---|---|---|---|---|")
    for name, r in (("builtin (CPU recipe)", ours), ("published field + renderer", base)):
        print(f"| {name} | {r['step']:.3f} | {r['render']:.3f} | {r['guidance']:.3f} | {r['backward']:.3f} | "
              f"{1 / r['step']:.2f} | {r['export']:.1f} s |")
    print(f"speed-up of a step, CPU recipe vs published field settings: {base['step'] / ours['step']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
