"""Wall time of the first command a newcomer runs, `mvdream3d generate PROMPT --out DIR` with the built-in
model (target: at most 5 s on this 2-core CPU, start-up included), and where the time goes.

1. Cold runs: the command in a fresh process, as a user runs it: first with an empty trace cache (the very
   first run after installing: it imports diffusers and transformers and writes the traces,
   ``mvdream3d.models.traced_cache``), then ``--repeats`` more (median; traces cached), then once more
   under ``python -X importtime`` to split its start-up into the packages it imports (torch,
   transformers, diffusers, ...; self time summed per top-level package).
2. Warm runs in this process: the pipeline call alone with the model's default settings
   (``model.sampling_defaults``) against the published models' DDIM-50 and DPM-Solver++ 2M, 20 steps;
   prints the ratios.

    python benchmarks/generate_speed.py [--model NAME_OR_PATH] [--repeats 3] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_S = 5.0


def _cold(cmd: list[str], repeats: int, env: dict | None = None) -> list[float]:
    """Wall seconds of ``repeats`` runs of ``cmd --out TMP``, each in a fresh process."""
    runs = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as out:
            t0 = time.perf_counter()
            subprocess.run([*cmd, "--out", out], check=True, capture_output=True, env=env)
            runs.append(time.perf_counter() - t0)
    return runs


def _import_breakdown(cmd: list[str], env: dict | None = None) -> dict[str, float]:
    """Seconds of import self time per top-level package in one cold run of ``cmd``."""
    with tempfile.TemporaryDirectory() as out:
        r = subprocess.run([sys.executable, "-X", "importtime", "-m", "mvdream3d.cli", *cmd[1:], "--out", out],
                           check=True, capture_output=True, text=True, env=env)
    per = collections.Counter()
    for line in r.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, _, name = (x.strip() for x in line[len("import time:"):].split("|"))
        per[name.split(".")[0]] += int(self_us) / 1e6
    return dict(per.most_common())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="default: the built-in model")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--prompt", default="a red cube with a yellow nose")
    ap.add_argument("--json", type=Path, default=None, help="write the numbers here")
    args = ap.parse_args()

    cmd = ["mvdream3d", "generate", args.prompt] + (["--model", args.model] if args.model else [])
    # an empty trace cache of its own (mvdream3d.models.traced_cache): the very first run builds the traces
    cache = tempfile.TemporaryDirectory(prefix="mvdream3d-trace-cache-")
    env = {**os.environ, "MVDREAM3D_CACHE_DIR": cache.name}
    first = _cold(cmd, 1, env)[0]
    print(f"first run, empty trace cache (imports diffusers and transformers, traces): {first:.2f} s")
    cold = _cold(cmd, args.repeats, env)
    cold_s = statistics.median(cold)
    print(f"cold `{' '.join(cmd)} --out DIR` (fresh process, traces cached): {cold_s:.2f} s (median of "
          f"{args.repeats}: {', '.join(f'{c:.2f}' for c in cold)})")
    imports = _import_breakdown(cmd, env)
    cache.cleanup()
    total_import = sum(imports.values())
    print(f"start-up imports: {total_import:.2f} s of which "
          + ", ".join(f"{k} {v:.2f}" for k, v in list(imports.items())[:8]))

    import torch

    from mvdream3d import MultiViewPipeline

    t0 = time.perf_counter()
    pipe = MultiViewPipeline.from_pretrained(args.model)
    load_s = time.perf_counter() - t0
    print(f"model load (imports already paid): {load_s:.2f} s "
          f"({sum(pipe.model.parameter_counts().values()):,d} parameters, {torch.get_num_threads()} threads)")
    d = pipe.model.sampling_defaults
    default_name = f"{d['sampler']}-{d['steps']} (default)"
    settings = {default_name: dict(sampler=d["sampler"], num_inference_steps=int(d["steps"]),
                                   guidance_scale=float(d["guidance_scale"]),
                                   guidance_rescale=float(d["guidance_rescale"])),
                "ddim-50": dict(sampler="ddim", num_inference_steps=50),
                "dpmpp_2m-20": dict(sampler="dpmpp_2m", num_inference_steps=20)}
    warm = {}
    for name, kw in settings.items():
        pipe(args.prompt, seed=0, **kw)  # warm-up
        runs = []
        for r in range(args.repeats):
            t0 = time.perf_counter()
            pipe(args.prompt, num_views=4, seed=r, **kw)
            runs.append(time.perf_counter() - t0)
        warm[name] = statistics.median(runs)
        print(f"{name:>22}: {warm[name]:.2f} s for 4 views in a warm process (median of {args.repeats})")
    base = warm[default_name]
    for name in ("ddim-50", "dpmpp_2m-20"):
        print(f"ratio {name} / {default_name}: {warm[name] / base:.2f}x")
    verdict = "MET" if cold_s <= TARGET_S else "NOT MET"
    print(f"target: cold 4-view generate at most {TARGET_S:.0f} s: {verdict} ({cold_s:.2f} s; start-up imports "
          f"{total_import:.2f} s, sampling {base:.2f} s)")
    if args.json:
        numbers = {"first_run_empty_cache_s": first, "cold_s": cold, "imports_s": imports, "model_load_s": load_s,
                   "warm_s": warm, "threads": torch.get_num_threads()}
        args.json.write_text(json.dumps(numbers, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
