"""End-to-end 4-view generation time of the built-in model on this CPU (target: under 10 s).

Times what `mvdream3d generate "PROMPT"` does after start-up (text encoding, sampling with CFG, decoding)
with the model's default settings (``model.sampling_defaults``: DDIM, 20 steps, CFG 5 for the built-in
model), against the published models' DDIM-50 and a faster solver (DPM-Solver++ 2M, 20 steps) in the
same process, and prints the ratios. Model loading is timed separately.

    python benchmarks/generate_speed.py [--model NAME_OR_PATH] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="default: the built-in model")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--prompt", default="a red cube with a yellow nose")
    args = ap.parse_args()

    from mvdream3d import MultiViewPipeline

    t0 = time.perf_counter()
    pipe = MultiViewPipeline.from_pretrained(args.model)
    load_s = time.perf_counter() - t0
    print(f"model load: {load_s:.2f} s ({sum(pipe.model.parameter_counts().values()):,d} parameters, "
          f"{torch.get_num_threads()} threads)")
    d = pipe.model.sampling_defaults
    default_name = f"{d['sampler']}-{d['steps']} (default)"
    settings = {default_name: dict(sampler=d["sampler"], num_inference_steps=int(d["steps"]),
                                   guidance_scale=float(d["guidance_scale"])),
                "ddim-50": dict(sampler="ddim", num_inference_steps=50),
                "dpmpp_2m-20": dict(sampler="dpmpp_2m", num_inference_steps=20)}
    times = {}
    for name, kw in settings.items():
        pipe(args.prompt, seed=0, **kw)  # warm-up
        runs = []
        for r in range(args.repeats):
            t0 = time.perf_counter()
            pipe(args.prompt, num_views=4, seed=r, **kw)
            runs.append(time.perf_counter() - t0)
        times[name] = statistics.median(runs)
        print(f"{name:>22}: {times[name]:.2f} s for 4 views (median of {args.repeats})")
    base = times[default_name]
    for name in ("ddim-50", "dpmpp_2m-20"):
        print(f"ratio {name} / {default_name}: {times[name] / base:.2f}x")
    verdict = "MET" if base < 10 else "NOT MET"
    print(f"target: default 4-view generate under 10 s: {verdict} ({base:.2f} s, + {load_s:.2f} s model load)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
