"""Text binding and camera use of multi-view models: does the model put the front feature where the
camera sees it? (see :mod:`mvdream3d.evaluation.binding` for the definitions)

    python benchmarks/feature_binding.py                                   # the built-in model
    python benchmarks/feature_binding.py runs/builtin/model.safetensors runs/other/model.safetensors
    python benchmarks/feature_binding.py --objects 32 --draws 2 --out binding.json

Prints a Markdown table (one row per model and timestep): text binding = 1 - E(caption) / E(caption
without the feature clause), camera use = 1 - E(true cameras) / E(opposite cameras), E the squared x0
error on the feature's pixels; 0 = ignored, 1 = the ground truth. The same objects and noise for every
model, so the rows compare models directly.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from mvdream3d.evaluation.binding import BINDING_TIMESTEPS, binding_cases, feature_binding, format_binding_table
from mvdream3d.pipeline import resolve_model


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", default=["mvdream3d-tiny"],
                    help="built-in names or checkpoint paths (default: the built-in model)")
    ap.add_argument("--objects", type=int, default=16, help="featured objects (default 16)")
    ap.add_argument("--draws", type=int, default=2, help="noise draws per object and timestep (default 2)")
    ap.add_argument("--timesteps", type=int, nargs="+", default=list(BINDING_TIMESTEPS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="also write the results as JSON here")
    args = ap.parse_args(argv)

    cases_by_size: dict[int, list] = {}  # the same objects, rendered at each model's native size
    results = {}
    for name in args.models:
        model = resolve_model(name)
        model.unet.eval()
        size = model.native_size
        if size not in cases_by_size:
            cases_by_size[size] = binding_cases(args.objects, seed=args.seed, size=size)
        cases = cases_by_size[size]
        t0 = time.perf_counter()
        results[name] = feature_binding(model, cases, args.timesteps, args.draws, seed=args.seed)
        results[name]["seconds"] = round(time.perf_counter() - t0, 1)
        print(f"{name}: {results[name]['seconds']} s", flush=True)
    print(format_binding_table(results))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=1)
    return 0


if __name__ == "__main__":
    torch.manual_seed(0)
    raise SystemExit(main())
