"""Text-to-3D in the procedural world: multi-view SDS against the DreamFusion-style 2D baseline.

For every prompt and seed, both methods optimise a field with the same config (``builtin`` by default)
and the same model; only the guidance differs (``multiview``: 4 views + cameras; ``2d``: one view, no
camera, "..., front/side/back view" prompts). Each final field is then measured with the evaluation
classifier (``mvdream3d.evaluation``):

- fronts: 36 renders around the object (every 10 degrees, elevation 15); the number of separate arcs of
  views in which the classifier sees the front feature (after a 3-view circular majority vote, which
  removes one-view flips: classifier noise). One front = 1; a multi-face (Janus) object has
  more. ``janus`` = fronts > 1, or the feature seen from every azimuth (also from the back, which a
  single front is not: the ground-truth mesh, measured the same way as a ceiling row, hides it there).
- prompt_ok: shape and colour right in each of the 4 fixed views (azimuth 0/90/180/270).
- feature colour (mesh): the surface share of the exported mesh whose vertex colour is nearest the
  prompt's feature colour in the world's palette, and the azimuth of that part; "in its colour at the
  front" when the share is at least a quarter of the ground-truth mesh's and the part faces within 45
  degrees of the front (``mvdream3d.evaluation.janus.feature_colour``).
- chamfer: symmetric Chamfer distance between the exported mesh and the ground-truth mesh of the
  prompt, both centred and scaled to unit bounding-box diagonal (2,000 surface samples each).

    python benchmarks/text_to_3d_eval.py --out eval3d                     # default prompts, 2 seeds
    python benchmarks/text_to_3d_eval.py --prompts "a red cube with a yellow nose" --seeds 0 1 2 --steps 400
    python benchmarks/text_to_3d_eval.py --out eval3d --resume          # after a stop: finished runs are kept

Writes ``OUT/results.json``, ``OUT/results.md`` (the table), ``OUT/turntables.png`` (a row of turntable
frames per run, every 45 degrees from azimuth 0) and per run the usual text-to-3D outputs.
Runs are independent, so on a multi-core machine start several at once (one thread each, separate
``--out``) and combine them afterwards:

    OMP_NUM_THREADS=1 python benchmarks/text_to_3d_eval.py --out ev_a --seeds 0 &
    OMP_NUM_THREADS=1 python benchmarks/text_to_3d_eval.py --out ev_b --seeds 1 &
    wait; python benchmarks/text_to_3d_eval.py --out eval3d --merge ev_a ev_b
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

# the verdict itself lives in the package (mvdream3d.evaluation.janus); this script only drives it
from mvdream3d.evaluation.janus import (
    chamfer,
    feature_colour,
    front_orientation,
    fronts_verdict,
    ground_truth_mesh,
    measure_mesh,
    mesh_views,
    smooth_visible,
    view_verdicts,
)

DEFAULT_PROMPTS = [
    "a red cube with a yellow nose", "a blue sphere with an orange horn", "a green cylinder with a white nose",
]


def measure_field(run, classifier, prompt, n_azimuths: int = 36, size: int = 64) -> dict:
    from mvdream3d.cameras import camera_distance_for_fov, orbit_c2w
    from mvdream3d.threed.renderer import render_views

    e = run.cfg.export
    az = torch.arange(n_azimuths, dtype=torch.float64) * (360.0 / n_azimuths)
    dist = camera_distance_for_fov(e.fovy, run.cfg.geometry.radius * 0.9)
    c2w = orbit_c2w(torch.full_like(az, e.elevation), az, torch.full_like(az, float(dist))).float()
    rgb = render_views(run.geometry, run.material, run.background, run.renderer, c2w, e.fovy, size)["comp_rgb"]
    v = view_verdicts((rgb.clamp(0, 1) * 255).round().byte().cpu().numpy(), classifier, prompt)
    return {**fronts_verdict(v["visible"]), **v}


def ground_truth_row(prompt, classifier, n_azimuths: int = 36, size: int = 64) -> dict:
    """The ceiling: the same verdict on renders of the prompt's ground-truth mesh (36 azimuths, elevation 15)."""
    gt = ground_truth_mesh(prompt)
    return {"prompt": prompt.text, "method": "ground truth", "seed": None, "seconds": 0.0, "chamfer": 0.0,
            "orientation": front_orientation(gt, gt), "feature_colour": feature_colour(gt, prompt),
            **view_verdicts(mesh_views(gt, n_azimuths, size), classifier, prompt)}


def _mean(xs: list, digits: int = 2) -> str:
    return f"{np.mean(xs):.{digits}f}" if xs else "n/a"


def results_table(rows: list[dict], methods: list[str]) -> str:
    """The Markdown table of ``results.md``; verdicts are recomputed from the stored ``visible`` lists."""
    lines = ["| method | runs | prompt right (4 views) | one front | Janus (fronts > 1 or seen from all round) | "
             "of which seen from all round | mean fronts | mesh: prompt right | mesh: one front | mesh: Janus | "
             "mesh: front by geometry | mean front gain | mesh: feature in its colour at the front | "
             "mean feature colour share | mean Chamfer | s/run |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for method in [*methods, "ground truth"]:
        rs = [r for r in rows if r["method"] == method]
        if not rs:
            continue
        vs = [fronts_verdict(r["visible"]) for r in rs]
        ch = [r["chamfer"] for r in rs if "chamfer" in r]
        # the ground truth is a mesh: its mesh columns are its own row
        ms = [r["mesh"] if "mesh" in r else r for r in rs if "mesh" in r or method == "ground truth"]
        mv = [fronts_verdict(m["visible"]) for m in ms]
        ors = [r["orientation"] for r in rs if "orientation" in r]
        fcs = [m["feature_colour"] for m in ms if (m.get("feature_colour") or {}).get("share") is not None]
        lines.append(f"| {method} | {len(rs)} | {np.mean([r['prompt_ok'] for r in rs]):.2f} | "
                     f"{np.mean([v['one_front'] for v in vs]):.2f} | {np.mean([v['janus'] for v in vs]):.2f} | "
                     f"{np.mean([v['everywhere'] for v in vs]):.2f} | {np.mean([v['fronts'] for v in vs]):.2f} | "
                     f"{_mean([m['prompt_ok'] for m in ms])} | {_mean([v['one_front'] for v in mv])} | "
                     f"{_mean([v['janus'] for v in mv])} | {_mean([o['front_right'] for o in ors])} | "
                     f"{_mean([o['front_gain'] for o in ors], 3)} | {_mean([f['in_colour_at_front'] for f in fcs])} | "
                     f"{_mean([f['share'] for f in fcs], 3)} | "
                     f"{np.mean(ch) if ch else float('nan'):.3f} | {np.mean([r['seconds'] for r in rs]):.0f} |")
    return "\n".join(lines) + "\n"


def _rate(xs: list) -> tuple[float, float]:
    """Mean of 0/1 outcomes and its standard error sqrt(p (1 - p) / n)."""
    p = float(np.mean(xs))
    return p, float(np.sqrt(p * (1 - p) / len(xs)))


def claims_table(rows: list[dict], method: str = "multiview", baseline: str = "2d") -> str:
    """The issue's targets for ``method`` against ``baseline``, each +- one standard error, and whether the
    difference is shown (more than twice its standard error):

    - one front on the exported mesh (classifier on the mesh's 36 renders) and the feature in its prompt
      colour at the front (vertex colours): rates over runs, each with sqrt(p (1 - p) / n); the difference's
      se is the two-proportion test's, from the pooled rate (so that 8 of 8 against 0 of 8 is not se 0);
    - Chamfer to the ground-truth mesh: means, the ratio of means, and the paired difference per (prompt, seed).
    """
    def runs(m: str) -> list[dict]:
        return [r for r in rows if r["method"] == m and "mesh" in r]

    a, b = runs(method), runs(baseline)
    if not a or not b:
        return ""
    lines = [f"| target ({method} against {baseline}) | {method} | {baseline} | difference | shown? |",
             "|---|---|---|---|---|"]

    def rate_row(name: str, get, a: list[dict] = a, b: list[dict] = b) -> None:
        (pa, sa), (pb, sb) = _rate([get(r) for r in a]), _rate([get(r) for r in b])
        pooled = (pa * len(a) + pb * len(b)) / (len(a) + len(b))  # the two-proportion test's se: not 0 at 0 or 1
        se = float(np.sqrt(pooled * (1 - pooled) * (1 / len(a) + 1 / len(b))))
        shown = "yes" if abs(pa - pb) > 2 * se else "no"
        lines.append(f"| {name} | {pa:.2f} +- {sa:.2f} ({len(a)} runs) | {pb:.2f} +- {sb:.2f} ({len(b)} runs) | "
                     f"{pa - pb:+.2f} +- {se:.2f} | {shown} |")

    def one_front(r: dict) -> bool:
        return fronts_verdict(r["mesh"]["visible"])["one_front"]

    rate_row("one front on the exported mesh (target >= 0.80)", one_front)
    for prompt in sorted({r["prompt"] for r in a}):
        rate_row(f"... {prompt}", one_front, [r for r in a if r["prompt"] == prompt],
                 [r for r in b if r["prompt"] == prompt])
    rate_row("Janus on the exported mesh", lambda r: fronts_verdict(r["mesh"]["visible"])["janus"])
    rate_row("feature in its prompt colour, at the front (mesh colours)",
             lambda r: bool((r["mesh"].get("feature_colour") or {}).get("in_colour_at_front")))
    ca, cb = np.array([r["chamfer"] for r in a]), np.array([r["chamfer"] for r in b])
    by_run = {(r["prompt"], r["seed"]): r["chamfer"] for r in b}
    paired = np.array([r["chamfer"] - by_run[(r["prompt"], r["seed"])]
                       for r in a if (r["prompt"], r["seed"]) in by_run])
    se_p = float(paired.std(ddof=1) / np.sqrt(len(paired))) if len(paired) > 1 else float("nan")
    shown = "yes" if len(paired) > 1 and abs(paired.mean()) > 2 * se_p else "no"
    lines.append(f"| Chamfer to the true mesh (target: {method} <= 0.6 x {baseline}) | "
                 f"{ca.mean():.3f} +- {ca.std(ddof=1) / np.sqrt(len(ca)):.3f} | "
                 f"{cb.mean():.3f} +- {cb.std(ddof=1) / np.sqrt(len(cb)):.3f} | ratio {ca.mean() / cb.mean():.2f}; "
                 f"paired {paired.mean():+.4f} +- {se_p:.4f} ({len(paired)} pairs) | {shown} |")
    return "\n".join(lines) + "\n"


def _arcs(visible: list) -> str:
    """The smoothed per-view verdicts as a strip, azimuth 0 first: ``#`` = feature seen, ``.`` = not."""
    return "".join("#" if x else "." for x in smooth_visible(visible))


def runs_table(rows: list[dict]) -> str:
    """One line per run: the field's and the mesh's strips of 36 verdicts and the geometric front."""
    lines = ["| prompt | method | seed | field: feature seen (azimuth 0 -> 350) | mesh: feature seen | "
             "mesh: best turn, front gain | mesh: feature colour share, azimuth | Chamfer |",
             "|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["prompt"], r["method"] != "ground truth", r["method"], r["seed"] or 0)):
        o = r.get("orientation")
        geo = f"{o['best_azimuth']:+.0f}, {o['front_gain']:+.3f}" if o else "n/a"
        mesh = _arcs(r["mesh"]["visible"]) if "mesh" in r else (_arcs(r["visible"]) if r["method"] == "ground truth"
                                                                else "n/a")
        fc = r.get("feature_colour") or (r.get("mesh") or {}).get("feature_colour")
        col = "n/a" if not fc or fc["share"] is None else (
            f"{fc['share']:.3f}, " + ("-" if fc["azimuth"] is None else f"{fc['azimuth']:+.0f}"))
        lines.append(f"| {r['prompt']} | {r['method']} | {'' if r['seed'] is None else r['seed']} | "
                     f"`{_arcs(r['visible'])}` | `{mesh}` | {geo} | {col} | {r.get('chamfer', float('nan')):.3f} |")
    return "\n".join(lines) + "\n"


def run_dir_of(out: Path, prompt: str, method: str, seed: int) -> Path:
    return out / prompt.replace(" ", "_") / f"{method}_seed{seed}"


def turntables_figure(out: Path, rows: list[dict], n_frames: int = 8) -> Path | None:
    """Write ``out/turntables.png``: per run (in the order of the runs table) ``n_frames`` equally spaced
    frames of its ``turntable.gif`` (frame 0 = azimuth 0, the front), labelled "prompt | method | seed".
    Runs without a turntable are left out; returns None when no run has one."""
    import imageio.v3 as iio
    from PIL import Image

    from mvdream3d.evaluation.report import labelled_rows

    labelled = []
    for r in sorted(rows, key=lambda r: (r["prompt"], r["method"], r["seed"] or 0)):
        gif = run_dir_of(out, r["prompt"], r["method"], r["seed"]) / "turntable.gif"
        if r["method"] == "ground truth" or not gif.is_file():
            continue
        frames = iio.imread(gif, index=None)  # (N, H, W, C) uint8
        idx = np.linspace(0, len(frames), n_frames, endpoint=False).astype(int)
        strip = np.concatenate(list(frames[idx, ..., :3]), axis=1)
        labelled.append((f"{r['prompt']} | {r['method']} | seed {r['seed']}", Image.fromarray(strip)))
    if not labelled:
        return None
    canvas = labelled_rows(labelled)
    path = out / "turntables.png"
    canvas.save(path)
    return path


def write_tables(out: Path, rows: list[dict], methods: list[str]) -> None:
    """``out/results.md`` (the summary and the per-run table, also printed) and ``out/turntables.png``."""
    table = results_table(rows, methods) + "\n" + claims_table(rows) + "\n" + runs_table(rows)
    (out / "results.md").write_text(table)
    turntables_figure(out, rows)
    print(table)


def merge_results(out: Path, sources: list[Path]) -> list[dict]:
    """Combine the ``results.json`` of ``sources`` into ``out/results.json`` and link their run folders.

    A run is keyed by (prompt, method, seed): a later source replaces an earlier row of the same run (and
    rows already in ``out``), so a re-run wins; the ground-truth rows are kept once per prompt.
    """
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[tuple, dict] = {}
    if (out / "results.json").is_file():
        rows = {(r["prompt"], r["method"], r["seed"]): r for r in json.loads((out / "results.json").read_text())}
    for src in sources:
        if not (src / "results.json").is_file():
            raise SystemExit(f"--merge: {src / 'results.json'} not found; pass the --out folders of finished runs")
        for r in json.loads((src / "results.json").read_text()):
            rows[(r["prompt"], r["method"], r["seed"])] = r
            if r["method"] == "ground truth" or src.resolve() == out.resolve():
                continue
            run = run_dir_of(src, r["prompt"], r["method"], r["seed"])
            link = run_dir_of(out, r["prompt"], r["method"], r["seed"])
            if not run.is_dir() or (link.exists() and not link.is_symlink()):
                continue  # nothing to link, or a real run folder of out's own
            link.parent.mkdir(parents=True, exist_ok=True)
            link.unlink(missing_ok=True)
            link.symlink_to(run.resolve(), target_is_directory=True)
    merged = list(rows.values())
    (out / "results.json").write_text(json.dumps(merged, indent=1))
    return merged


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="eval3d")
    ap.add_argument("--model", default=None, help="default: the built-in model")
    ap.add_argument("--config", default="builtin")
    ap.add_argument("--prompts", nargs="+", default=DEFAULT_PROMPTS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--methods", nargs="+", default=["multiview", "2d"], choices=["multiview", "2d"])
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--table-only", action="store_true", help="rewrite OUT/results.md from OUT/results.json")
    ap.add_argument("--resume", action="store_true",
                    help="keep the runs already in OUT/results.json and continue an unfinished run from its checkpoint")
    ap.add_argument("--remeasure-meshes", action="store_true",
                    help="add the mesh verdict to the runs in OUT/results.json from their mesh.glb, then the table")
    ap.add_argument("--merge", nargs="+", default=None, metavar="DIR",
                    help="combine the results of earlier --out DIRs into OUT (run folders are linked), then the table")
    args = ap.parse_args(argv)
    if args.merge:
        merge_results(Path(args.out), [Path(d) for d in args.merge])
        args.table_only = True
    if args.remeasure_meshes:
        import trimesh

        from mvdream3d.evaluation.classifier import load_classifier
        from mvdream3d.evaluation.prompts import load_prompts

        out = Path(args.out)
        rows = json.loads((out / "results.json").read_text())
        clf = load_classifier()
        for r in rows:
            prompt = load_prompts([r["prompt"]])[0]
            if r["method"] == "ground truth":
                r["feature_colour"] = feature_colour(ground_truth_mesh(prompt), prompt)
                continue
            glb = run_dir_of(out, r["prompt"], r["method"], r["seed"]) / "mesh.glb"
            if not glb.is_file():
                continue
            mesh, gt = trimesh.load(glb, force="mesh"), ground_truth_mesh(prompt)
            r["mesh"] = measure_mesh(mesh, gt, clf, prompt)
            r["orientation"] = front_orientation(mesh, gt)
        (out / "results.json").write_text(json.dumps(rows, indent=1))
        args.table_only = True
    if args.table_only:
        rows = json.loads((Path(args.out) / "results.json").read_text())
        if not any(r["method"] == "ground truth" for r in rows):
            from mvdream3d.evaluation.classifier import load_classifier
            from mvdream3d.evaluation.prompts import load_prompts

            clf = load_classifier()
            rows += [ground_truth_row(p, clf) for p in load_prompts(sorted({r["prompt"] for r in rows}))]
            (Path(args.out) / "results.json").write_text(json.dumps(rows, indent=1))
        write_tables(Path(args.out), rows, args.methods)
        return 0

    from mvdream3d.evaluation.classifier import load_classifier
    from mvdream3d.evaluation.prompts import load_prompts
    from mvdream3d.pipeline import resolve_model
    from mvdream3d.threed.system import TextTo3D, text_to_3d

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    classifier = load_classifier()
    prompts = load_prompts(args.prompts)
    model = resolve_model(args.model)
    done = {}
    if args.resume and (out / "results.json").is_file():
        done = {(r["prompt"], r["method"], r["seed"]): r for r in json.loads((out / "results.json").read_text())}
    rows = []
    for prompt in prompts:
        rows.append(ground_truth_row(prompt, classifier))
        gt = ground_truth_mesh(prompt)
        for seed in args.seeds:
            for method in args.methods:
                if (prompt.text, method, seed) in done:
                    rows.append(done[(prompt.text, method, seed)])
                    continue
                run_dir = run_dir_of(out, prompt.text, method, seed)
                overrides = [*args.set, f"guidance.name={method}", "output.preview=false"]
                resume = args.resume and (run_dir / "checkpoints" / "latest").is_dir()
                t0 = time.perf_counter()
                res = text_to_3d(prompt.text, model=model, config=args.config, out=run_dir, steps=args.steps,
                                 seed=seed, overrides=overrides, progress=False, resume=resume)
                seconds = time.perf_counter() - t0
                # rebuild the run from its checkpoint to measure the final field
                from mvdream3d.threed.config import load_text_to_3d_config

                cfg = load_text_to_3d_config(str(run_dir / "config.yaml"))
                run = TextTo3D(prompt.text, model, cfg, run_dir)
                run.load_checkpoint()
                row = {"prompt": prompt.text, "seed": seed, "method": method, "seconds": round(seconds, 1),
                       **measure_field(run, classifier, prompt)}
                if "glb" in res.files:
                    import trimesh

                    mesh = trimesh.load(res.files["glb"], force="mesh")
                    row["chamfer"] = round(chamfer(mesh, gt), 4)
                    row["mesh"] = measure_mesh(mesh, gt, classifier, prompt)
                    row["orientation"] = front_orientation(mesh, gt)
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "visible"}), flush=True)
                (out / "results.json").write_text(json.dumps(rows, indent=1))  # after every run: nothing lost
    write_tables(out, rows, args.methods)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
