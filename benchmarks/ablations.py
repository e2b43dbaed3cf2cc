"""The paper's three ablations in the procedural world: train, evaluate, tabulate (docs/ablations.md).

    python benchmarks/ablations.py                      # all four runs (reference + 3 ablations), then the table
    python benchmarks/ablations.py --parallel 2         # two runs at a time, one CPU thread each
    python benchmarks/ablations.py --table-only         # rewrite the table from the evaluation reports

Each run is ``mvdream3d train configs/train/ablations/NAME.yaml`` followed by ``mvdream3d evaluate
runs/ablation-NAME/model.safetensors --num-objects 1 --steps 20 --out eval/ablation-NAME``; finished steps
are skipped, so an interrupted script continues where it stopped (training resumes from its checkpoint).
``--base`` also evaluates the starting model (stage 1, ``runs/builtin/model.safetensors``: 10,000 steps of
``configs/train/builtin.yaml``) for the table.
Writes ``OUT/ablations.json`` and ``OUT/ablations.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

RUNS = ("reference", "3d-only", "per-view-attention", "no-camera")
CHANGE = {
    "base": "stage 1 (10,000 steps), not trained further",
    "reference": "built-in recipe, unchanged",
    "3d-only": "no 2D data (p_2d = 0)",
    "per-view-attention": "self-attention within each view only",
    "no-camera": "no camera embedding",
}
METRICS = (
    ("prompt_accuracy", "prompt acc."), ("shape_accuracy", "shape acc."), ("color_accuracy", "colour acc."),
    ("consistency", "consistency"), ("camera_adherence", "camera adh."), ("janus_rate", "Janus rate"),
    ("fid", "Frechet"),
)
ROOT = Path(__file__).resolve().parent.parent


def _cli(*args: str, log: Path, threads: int | None) -> None:
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    with open(log, "a") as f:
        r = subprocess.run([sys.executable, "-m", "mvdream3d.cli", *args], stdout=f, stderr=subprocess.STDOUT,
                           env=env, cwd=ROOT)
    if r.returncode != 0:
        raise RuntimeError(f"mvdream3d {' '.join(args)} failed (exit {r.returncode}); see {log}")


def run_one(name: str, runs: Path, evals: Path, threads: int | None, eval_args: list[str]) -> float:
    """Train (or resume) and evaluate one ablation; returns the seconds spent."""
    t0 = time.perf_counter()
    runs.mkdir(parents=True, exist_ok=True)
    log = runs / f"ablation-{name}.log"
    report = evals / f"ablation-{name}" / "report.json"
    if name == "base":
        model = str(runs / "builtin" / "model.safetensors")  # stage 1, where every ablation starts
    else:
        model = str(runs / f"ablation-{name}" / "model.safetensors")
        if not Path(model).is_file():
            _cli("train", f"configs/train/ablations/{name}.yaml", "--out", str(runs / f"ablation-{name}"),
                 "--resume", log=log, threads=threads)
    if not report.is_file():
        _cli("evaluate", model, *eval_args, "--out", str(report.parent), "--no-progress", log=log, threads=threads)
    return time.perf_counter() - t0


def _train_seconds(run_dir: Path) -> float | None:
    log = run_dir / "train_log.jsonl"
    if not log.is_file():
        return None
    rows = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
    rate = rows[-1].get("steps_per_s") if rows else None
    return rows[-1]["step"] / rate if rate else None


def table(names: list[str], runs: Path, evals: Path) -> tuple[dict, str]:
    """Markdown tables (all prompts; held-out 2D-only concepts) from the evaluation reports."""
    results: dict[str, dict] = {}
    for name in names:
        p = evals / f"ablation-{name}" / "report.json"
        if not p.is_file():
            continue
        rep = json.loads(p.read_text())
        results[name] = {
            "change": CHANGE[name], "overall": rep["overall"]["model"], "ceiling": rep["overall"]["ceiling"],
            "held_out": rep["groups"]["held_out"]["model"], "seen": rep["groups"]["seen"]["model"],
            "with_feature": rep["groups"]["with_feature"]["model"],
            "train_seconds": _train_seconds(runs / f"ablation-{name}"),
        }
    if not results:
        raise SystemExit(f"no evaluation reports under {evals}; run without --table-only first")

    def row(label: str, change: str, m: dict, extra: str | None = None) -> str:
        cells = [label, change, *(f"{m[k]:.1f}" if k == "fid" else f"{m[k]:.3f}" for k, _ in METRICS)]
        return "| " + " | ".join(cells + ([extra] if extra is not None else [])) + " |"

    head = "| run | what changes | " + " | ".join(h for _, h in METRICS) + " | train min |"
    sep = "|" + "---|" * (len(METRICS) + 3)
    lines = ["All 32 prompts (1 object x 4 views each):", "", head, sep]
    for name, r in results.items():
        mins = f"{r['train_seconds'] / 60:.0f}" if r["train_seconds"] else ""
        lines.append(row(name, r["change"], r["overall"], mins))
    any_r = next(iter(results.values()))
    lines.append(row("ground truth", "the ceiling", any_r["ceiling"], ""))
    lines += ["", "Held-out 2D-only concepts (pink, cyan, torus: never on a 3D asset):", "",
              head.replace(" train min |", ""), sep[:-4]]
    for name, r in results.items():
        lines.append(row(name, r["change"], r["held_out"]))
    return results, "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated, from {', '.join(RUNS)}")
    ap.add_argument("--base", action="store_true", help="also evaluate the starting (shipped) model")
    ap.add_argument("--parallel", type=int, default=1, help="runs at a time (each gets 2 // parallel threads)")
    ap.add_argument("--runs-dir", default="runs")
    ap.add_argument("--out", default="eval", help="evaluation reports go to OUT/ablation-NAME/")
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--num-objects", default="1")
    args = ap.parse_args(argv)
    names = [n for n in args.runs.split(",") if n]
    bad = [n for n in names if n not in RUNS]
    if bad:
        ap.error(f"unknown run(s) {bad}; choose from {', '.join(RUNS)}")
    if args.base:
        names = ["base", *names]
    runs, evals = Path(args.runs_dir).resolve(), Path(args.out).resolve()
    if not args.table_only:
        threads = max(1, (os.cpu_count() or 2) // max(1, args.parallel)) if args.parallel > 1 else None
        eval_args = ["--num-objects", args.num_objects, "--steps", "20"]
        with ThreadPoolExecutor(max(1, args.parallel)) as pool:
            for name, secs in zip(names, pool.map(lambda n: run_one(n, runs, evals, threads, eval_args), names),
                                  strict=True):
                print(f"{name}: done in {secs / 60:.1f} min", flush=True)
    results, md = table(names, runs, evals)
    evals.mkdir(parents=True, exist_ok=True)
    (evals / "ablations.json").write_text(json.dumps(results, indent=1) + "\n")
    (evals / "ablations.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
