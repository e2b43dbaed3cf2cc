"""Which sampler, steps, guidance scale and guidance rescale give a model its best quality per second?

Evaluates one model (``mvdream3d evaluate``: the shipped classifier, the held-out prompt set) once per
setting and writes a table with standard errors (``OUT/table.md``), the numbers (``OUT/table.json``) and the
raw reports (``OUT/<setting>/report.json``). A setting is ``SAMPLER:STEPS:GUIDANCE:RESCALE``::

    python benchmarks/sampling_sweep.py runs/builtin/model.safetensors --out eval/sampling-sweep \\
        --settings ddim:20:5:0 ddim:20:3:0 ddim:20:5:0.7 dpmpp_2m:10:5:0.7

Seconds per object are the generation time of the evaluation divided by the objects generated (4 views
each, batch of ``--num-objects`` objects per prompt), measured in this process; compare rows of one run only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mvdream3d.diffusion.sampling import parse_sampling_setting
from mvdream3d.evaluation.evaluate import evaluate

METRICS = ("prompt_accuracy", "shape_accuracy", "color_accuracy", "consistency", "camera_adherence", "janus_rate")


def parse_setting(text: str) -> dict:
    """``SAMPLER:STEPS:GUIDANCE:RESCALE`` -> dict (the package's parser), exiting with its message if malformed."""
    try:
        st = parse_sampling_setting(text)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    return {"sampler": st["sampler"], "steps": st["steps"], "guidance": st["guidance_scale"],
            "guidance_rescale": st["guidance_rescale"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--settings", nargs="+", required=True, metavar="SAMPLER:STEPS:GUIDANCE:RESCALE")
    ap.add_argument("--num-objects", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    settings = [parse_setting(s) for s in args.settings]
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for text, st in zip(args.settings, settings, strict=True):
        name = text.replace(":", "_")
        done = args.out / name / "report.json"
        if done.is_file():  # evaluated before (same folder and setting): reuse it
            report = json.loads(done.read_text())
        else:
            report = evaluate(args.model, args.out / name, num_objects=args.num_objects, steps=st["steps"],
                              guidance=st["guidance"], sampler=st["sampler"], guidance_rescale=st["guidance_rescale"],
                              progress=False)
        o = report["overall"]["model"]
        objects = len(report["prompts"]) * report["settings"]["num_objects"]
        rows.append({"setting": text, **st, "s_per_object": report["seconds"]["generate"] / objects,
                     "fid": o["fid"], "background": report["background"]["speckle_mean"],
                     **{m: o[m] for m in METRICS}, "se": o["se"]})
        print(f"{text}: " + ", ".join(f"{m} {o[m]:.3f}" for m in METRICS if o[m] is not None), flush=True)
    lines = ["| setting | s / object | " + " | ".join(METRICS) + " | Frechet | speckle |",
             "|---" * (len(METRICS) + 4) + "|"]
    for r in rows:
        cells = [f"{r[m]:.3f} +- {r['se'][m]:.3f}" if r[m] is not None and r["se"][m] is not None else "n/a"
                 for m in METRICS]
        lines.append(f"| {r['setting']} | {r['s_per_object']:.2f} | " + " | ".join(cells)
                     + f" | {r['fid']:.1f} | {r['background']:.4f} |")
    table = "\n".join(lines)
    (args.out / "table.md").write_text(table + "\n")
    (args.out / "table.json").write_text(json.dumps({"model": args.model, "num_objects": args.num_objects,
                                                     "rows": rows}, indent=1))
    print(table)


if __name__ == "__main__":
    main()
