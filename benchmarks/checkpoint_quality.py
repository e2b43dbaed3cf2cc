"""Quality of training runs at given CPU budgets: the pilot (which space, for the same CPU minutes?) and
the quality-against-minutes table of a run.

For each run (a ``mvdream3d train`` output folder) and each budget in CPU seconds it picks the newest
checkpoint whose ``cpu_s`` (CPU seconds of training, summed over resumed parts; in ``state.json``) is
within the budget, exports its EMA weights, evaluates them with ``mvdream3d evaluate`` (the shipped
classifier; every model at its native size) and writes a table with standard errors (``OUT/table.md``),
the numbers (``OUT/table.json``) and the raw reports to ``OUT``::

    python benchmarks/checkpoint_quality.py runs/builtin runs/pilot-pixel32 --cpu-s 2400 --out eval/pilot
    python benchmarks/checkpoint_quality.py runs/builtin --cpu-s 1800 3600 7200 --out eval/builtin-minutes

With two runs and one budget it says, per metric, whether the difference is shown (larger than twice
its standard error).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
from pathlib import Path

from mvdream3d.evaluation.evaluate import evaluate
from mvdream3d.training.trainer import export_checkpoint

METRICS = ("prompt_accuracy", "shape_accuracy", "color_accuracy", "consistency", "camera_adherence", "janus_rate")


def checkpoint_within(run: Path, cpu_s: float) -> tuple[Path, dict]:
    """The newest checkpoint of ``run`` whose recorded CPU time is at most ``cpu_s``."""
    best = None
    for ckpt in sorted((run / "checkpoints").glob("step_*")):
        state_file = ckpt / "state.json"
        if not state_file.is_file():
            continue
        state = json.loads(state_file.read_text())
        if "cpu_s" in state and state["cpu_s"] <= cpu_s:
            best = (ckpt, state)
    if best is None:
        raise SystemExit(f"{run}: no checkpoint with cpu_s <= {cpu_s} (was it trained with CPU-time logging?)")
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--cpu-s", type=float, nargs="+", required=True,
                    help="CPU-second budgets: for each, the newest checkpoint that used no more")
    ap.add_argument("--num-objects", type=int, default=4)
    ap.add_argument("--steps", type=int, default=None, help="default: each model's sampling defaults")
    ap.add_argument("--guidance", type=float, default=None, help="default: each model's sampling defaults")
    ap.add_argument("--guidance-rescale", type=float, default=None, help="default: each model's sampling defaults")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for run, budget in itertools.product(args.runs, args.cpu_s):
        ckpt, state = checkpoint_within(run, budget)
        name = f"{run.name}-step{state['step']}"
        done = args.out / name / "report.json"
        if done.is_file():  # evaluated before (same folder): reuse it
            report = json.loads(done.read_text())
        else:
            model = export_checkpoint(ckpt, args.out / f"{name}.safetensors")
            report = evaluate(str(model), args.out / name, num_objects=args.num_objects, steps=args.steps,
                              guidance=args.guidance, guidance_rescale=args.guidance_rescale, progress=False)
        o = report["overall"]["model"]
        rows.append({"run": str(run), "checkpoint": str(ckpt), "step": state["step"], "cpu_s": state["cpu_s"],
                     "size": report["settings"]["size"], "fid": o["fid"], "background": report["background"],
                     **{m: o[m] for m in METRICS}, "se": o["se"]})
    lines = ["| metric | " + " | ".join(f"{Path(r['run']).name} (step {r['step']}, {r['cpu_s'] / 60:.0f} CPU-min)"
                                          for r in rows) + " |", "|---" * (len(rows) + 1) + "|"]
    for m in METRICS:
        cells = [f"{r[m]:.3f} +- {r['se'][m]:.3f}" if r[m] is not None and r["se"][m] is not None else "n/a"
                 for r in rows]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines.append("| Frechet distance | " + " | ".join(f"{r['fid']:.1f}" for r in rows) + " |")
    lines.append("| background speckle | " + " | ".join(f"{r['background']['speckle_mean']:.4f}" for r in rows) + " |")
    if len(args.runs) == 2 and len(args.cpu_s) == 1:
        a, b = rows
        verdicts = []
        for m in METRICS:
            if a[m] is None or b[m] is None:
                continue
            d, se = a[m] - b[m], math.hypot(a["se"][m] or 0.0, b["se"][m] or 0.0)
            better = (d < 0) if m == "janus_rate" else (d > 0)
            shown = abs(d) > 2 * se
            verdicts.append(f"- {m}: {Path(a['run']).name} - {Path(b['run']).name} = {d:+.3f} (se {se:.3f}): "
                            + (f"{Path((a if better else b)['run']).name} better, shown" if shown else "not shown"))
        lines += ["", *verdicts]
    table = "\n".join(lines)
    (args.out / "table.md").write_text(table + "\n")
    (args.out / "table.json").write_text(json.dumps({"cpu_s_budgets": args.cpu_s, "rows": rows}, indent=1))
    print(table)


if __name__ == "__main__":
    main()
