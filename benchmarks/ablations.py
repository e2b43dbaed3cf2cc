"""The paper's three ablations in the procedural world: train, evaluate, tabulate (docs/ablations.md).

    python benchmarks/ablations.py                      # all four runs (reference + 3 ablations), then the table
    python benchmarks/ablations.py --parallel 2         # two runs at a time, one CPU thread each
    python benchmarks/ablations.py --table-only         # rewrite the table from the evaluation reports

Each run is ``mvdream3d train configs/train/ablations/NAME.yaml`` (1,000 steps continued from the v2
built-in model) followed by ``mvdream3d evaluate runs/ablation-NAME/model.safetensors --num-objects 4 --out
eval/ablation-NAME`` (the model's own sampling defaults); finished steps are skipped, so an interrupted
script continues where it stopped (training resumes from its checkpoint). ``--base`` also evaluates the
starting model (``runs/builtin-v2.0/model.safetensors``: ``configs/train/experiments/v2.0-late-weight.yaml``,
the built-in model v2.0) for the table.
Each claim of the paper is judged on the difference between its ablation and the reference: "shown" when
the difference points the paper's way and exceeds twice its standard error
(sqrt(se_reference^2 + se_ablation^2), the objects being independent draws).
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
    "base": "v2 as shipped, not trained further",
    "reference": "v2 recipe, unchanged",
    "3d-only": "no 2D data (p_2d = 0)",
    "per-view-attention": "self-attention within each view only",
    "no-camera": "no camera embedding",
}
METRICS = (
    ("prompt_accuracy", "prompt acc."), ("shape_accuracy", "shape acc."), ("color_accuracy", "colour acc."),
    ("consistency", "consistency"), ("camera_adherence", "camera adh."), ("janus_rate", "Janus rate"),
    ("fid", "Frechet"),
)
# (claim, ablation run, metric, group, +1 when the paper says the full model scores higher, -1 when lower)
CLAIMS = (
    ("3D self-attention makes the views consistent", "per-view-attention", "consistency", "overall", +1),
    ("3D self-attention makes the views consistent", "per-view-attention", "janus_rate", "with_feature", -1),
    ("the camera embedding places view-dependent content", "no-camera", "camera_adherence", "with_feature", +1),
    ("the camera embedding places view-dependent content", "no-camera", "janus_rate", "with_feature", -1),
    ("joint 2D + 3D training keeps concepts only 2D data has", "3d-only", "prompt_accuracy", "held_out", +1),
    ("joint 2D + 3D training keeps concepts only 2D data has", "3d-only", "color_accuracy", "held_out", +1),
    ("joint 2D + 3D training keeps concepts only 2D data has", "3d-only", "fid", "held_out", -1),
    # added after the first v2 table was read (exploratory): the held-out concepts include a shape (torus)
    ("joint 2D + 3D training keeps concepts only 2D data has", "3d-only", "shape_accuracy", "held_out", +1),
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
            _share_latent_cache(runs, runs / f"ablation-{name}")
            _cli("train", f"configs/train/ablations/{name}.yaml", "--out", str(runs / f"ablation-{name}"),
                 "--resume", log=log, threads=threads)
    if not report.is_file():
        _cli("evaluate", model, *eval_args, "--out", str(report.parent), "--no-progress", log=log, threads=threads)
    return time.perf_counter() - t0


def _share_latent_cache(runs: Path, run_dir: Path) -> None:
    """Hard-link the built-in run's latent cache into ``run_dir``: same data and autoencoder, so the run
    skips re-encoding (the trainer checks the cache's key and rebuilds it, atomically, when it differs)."""
    src, dst = runs / "builtin" / "latent_cache.safetensors", run_dir / "latent_cache.safetensors"
    if src.is_file() and not dst.exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dst)
        except OSError:
            pass  # another file system: the trainer builds its own


def _train_seconds(run_dir: Path) -> float | None:
    log = run_dir / "train_log.jsonl"
    if not log.is_file():
        return None
    rows = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
    rate = rows[-1].get("steps_per_s") if rows else None
    return rows[-1]["step"] / rate if rate else None


def _cell(m: dict, key: str) -> str:
    v = m.get(key)
    if v is None:
        return "-"
    if key == "fid":
        return f"{v:.1f}"
    se = (m.get("se") or {}).get(key)
    return f"{v:.3f} +- {se:.3f}" if se is not None else f"{v:.3f}"


def judge(results: dict) -> list[dict]:
    """Each claim's effect (reference minus ablation, signed so that positive is the paper's way), its
    standard error and the verdict: shown when the effect exceeds twice its standard error."""
    out = []
    ref = results.get("reference")
    for claim, run, key, group, sign in CLAIMS:
        if ref is None or run not in results:
            continue
        a, b = ref[group], results[run][group]
        if a.get(key) is None or b.get(key) is None:
            continue
        effect = sign * (a[key] - b[key])
        se_a, se_b = (a.get("se") or {}).get(key), (b.get("se") or {}).get(key)
        se = (se_a ** 2 + se_b ** 2) ** 0.5 if se_a is not None and se_b is not None else None
        verdict = ("shown" if effect > 2 * se else "not shown") if se else "no standard error (Frechet)"
        out.append({"claim": claim, "ablation": run, "metric": key, "group": group, "reference": a[key],
                    "ablated": b[key], "effect": effect, "se": se, "verdict": verdict})
    return out


def table(names: list[str], runs: Path, evals: Path) -> tuple[dict, str]:
    """Markdown tables (all prompts; held-out 2D-only concepts; the claims judged) from the reports."""
    results: dict[str, dict] = {}
    for name in names:
        p = evals / f"ablation-{name}" / "report.json"
        if not p.is_file():
            continue
        rep = json.loads(p.read_text())
        g = rep["groups"]
        strip = lambda m: {k: v for k, v in m.items() if k != "objects_detail"}  # noqa: E731
        results[name] = {
            "change": CHANGE[name], "overall": strip(rep["overall"]["model"]),
            "ceiling": strip(rep["overall"]["ceiling"]), "held_out": strip(g["held_out"]["model"]),
            "seen": strip(g["seen"]["model"]), "with_feature": strip(g["with_feature"]["model"]),
            "settings": {k: rep["settings"].get(k) for k in ("num_objects", "steps", "guidance", "sampler", "seed")},
            "train_seconds": _train_seconds(runs / f"ablation-{name}"),
        }
    if not results:
        raise SystemExit(f"no evaluation reports under {evals}; run without --table-only first")

    def row(label: str, change: str, m: dict, extra: str | None = None) -> str:
        cells = [label, change, *(_cell(m, k) for k, _ in METRICS)]
        return "| " + " | ".join(cells + ([extra] if extra is not None else [])) + " |"

    head = "| run | what changes | " + " | ".join(h for _, h in METRICS) + " | train min |"
    sep = "|" + "---|" * (len(METRICS) + 3)
    n_obj = next(iter(results.values()))["settings"]["num_objects"]
    lines = [f"All 32 prompts ({n_obj} objects x 4 views each; value +- standard error):", "", head, sep]
    for name, r in results.items():
        mins = f"{r['train_seconds'] / 60:.0f}" if r["train_seconds"] else ""
        lines.append(row(name, r["change"], r["overall"], mins))
    any_r = next(iter(results.values()))
    lines.append(row("ground truth", "the ceiling", any_r["ceiling"], ""))
    lines += ["", "Held-out 2D-only concepts (never on a 3D asset):", "",
              head.replace(" train min |", ""), sep[:-4]]
    for name, r in results.items():
        lines.append(row(name, r["change"], r["held_out"]))
    verdicts = judge(results)
    if verdicts:
        lines += ["", "The claims, judged (effect = reference minus ablation, signed so that positive is the "
                  "paper's way; shown when effect > 2 se):", "",
                  "| claim | ablation | metric (prompts) | reference | ablated | effect +- se | verdict |",
                  "|---|---|---|---|---|---|---|"]
        for v in verdicts:
            se = f" +- {v['se']:.3f}" if v["se"] else ""
            lines.append(f"| {v['claim']} | {v['ablation']} | {v['metric']} ({v['group']}) | {v['reference']:.3f} | "
                         f"{v['ablated']:.3f} | {v['effect']:+.3f}{se} | {v['verdict']} |")
    results["_claims"] = verdicts
    return results, "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated, from {', '.join(RUNS)}")
    ap.add_argument("--base", action="store_true", help="also evaluate the starting (shipped) model")
    ap.add_argument("--parallel", type=int, default=1, help="runs at a time (each gets 2 // parallel threads)")
    ap.add_argument("--runs-dir", default="runs")
    ap.add_argument("--out", default="eval", help="evaluation reports go to OUT/ablation-NAME/")
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--num-objects", default="4", help="objects per prompt (4: a rate's se <= 0.04 overall)")
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
        eval_args = ["--num-objects", args.num_objects]  # the model's own sampler, steps and guidance
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
