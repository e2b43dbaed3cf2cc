"""Training and data throughput on this machine, for the tiny configs.

Measures, in one process:
  1. the renderer: renders/s (procedural assets at --size px, 16 views each);
  2. the loaders: MultiViewDataset items/s (4 views each) and ImageTextDataset items/s, 0 vs 1 worker;
  3. the joint trainer on the tiny-random latent model: steps/s, samples (images)/s, and the share of
     step time spent waiting for data, with data loaded in the training process (num_workers=0, the
     baseline) and in a background worker (num_workers=1). Target: data wait under 10% of step time.

    python benchmarks/train_speed.py [--steps 30] [--size 64] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch


def bench_render(out: Path, num_assets: int, views: int, size: int) -> dict:
    from mvdream3d.data.synth import generate_world

    t0 = time.perf_counter()
    generate_world(out, num_3d=num_assets, num_2d=num_assets * 4, views=views, size=size, seed=0, workers=1)
    dt = time.perf_counter() - t0
    renders = num_assets * views + num_assets * 4
    return {"renders": renders, "seconds": dt, "renders_per_s": renders / dt}


def bench_loader(ds, n_batches: int, batch_size: int, workers: int) -> float:
    from mvdream3d.data import collate_multiview, infinite_loader

    it = infinite_loader(ds, batch_size, workers, collate_multiview)
    next(it)  # start-up (worker spawn) excluded
    t0 = time.perf_counter()
    for _ in range(n_batches):
        next(it)
    return n_batches * batch_size / (time.perf_counter() - t0)


def bench_train(world: Path, out: Path, steps: int, size: int, workers: int) -> dict:
    from mvdream3d.training.config import config_from_dict
    from mvdream3d.training.trainer import train

    raw = {
        "model": {"config": "tiny-random"},
        "data": {"multiview": str(world / "multiview"), "image_text": str(world / "image_text"), "num_views": 4,
                 "image_size": size, "batch_size": 2, "p_2d": 0.3, "num_workers": workers},
        "train": {"steps": steps, "seed": 0},
        "output": {"dir": str(out), "checkpoint_every": steps, "log_every": 1, "sample_every": 0},
    }
    t0 = time.perf_counter()
    train(config_from_dict(raw))
    total = time.perf_counter() - t0
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    last = log[-1]
    images = sum(8 for _ in log)  # 2 objects x 4 views, or 8 single images for 2D batches
    return {"workers": workers, "steps_per_s": last["steps_per_s"], "images_per_s": images / total,
            "data_wait_share": last["data_wait_share"], "wall_s_incl_setup": total}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--assets", type=int, default=24)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    results: dict = {"threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        world = Path(tmp) / "world"
        results["render"] = r = bench_render(world, args.assets, 16, args.size)
        print(f"renderer: {r['renders_per_s']:.0f} renders/s ({r['renders']} renders at {args.size} px, "
              "PNG writing included)")

        from mvdream3d.data import ImageTextDataset, MultiViewDataset

        loaders = {}
        for w in (0, 1):
            mv = bench_loader(MultiViewDataset(world / "multiview", 4, args.size), 20, 2, w)
            im = bench_loader(ImageTextDataset(world / "image_text", args.size), 20, 8, w)
            loaders[w] = {"multiview_items_per_s": mv, "image_text_items_per_s": im}
            print(f"loaders, {w} worker(s): multi-view {mv:.0f} items/s (4 views each), image-text {im:.0f} items/s")
        results["loaders"] = loaders

        runs = {}
        for w in (0, 1):
            runs[w] = bench_train(world, Path(tmp) / f"run{w}", args.steps, args.size, w)
            r = runs[w]
            print(f"train, {w} worker(s): {r['steps_per_s']:.2f} steps/s, {r['images_per_s']:.1f} images/s, "
                  f"data wait {100 * r['data_wait_share']:.1f}% of step time")
        results["train"] = runs
    base, best = runs[0], runs[1]
    print(f"ratio steps/s (1 worker / in-process data): {best['steps_per_s'] / base['steps_per_s']:.2f}x")
    share = min(base["data_wait_share"], best["data_wait_share"])
    verdict = "MET" if share < 0.10 else "NOT MET"
    print(f"target data wait < 10% of step time: {verdict} ({100 * share:.1f}%)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
