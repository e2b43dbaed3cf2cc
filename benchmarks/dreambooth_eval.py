"""Multi-view DreamBooth in the procedural world: subject fidelity, consistency, Janus rate and forgetting.

An unseen subject (default "a large cyan pyramid with a pink horn": both colours are 2D-only concepts of
the world, never in its 3D set) is rendered from ``--photos`` single views (random-looking azimuths and
elevations, none at an evaluation camera) as the "photos". Then, per run of ``--runs`` (``MODE:LAMBDA``),
``mvdream3d dreambooth`` fine-tunes ``--model`` on them with the prompt "a sks toy", and the fine-tuned
model (and the base model, for reference) is measured:

- subject: ``--objects`` objects x 4 views of "a sks toy" at the evaluation cameras (elevation 15,
  azimuths 0/90/180/270), read by the view classifier: subject accuracy (shape and colour of the subject
  in all 4 views), shape / colour accuracy, cross-view consistency, camera adherence and Janus rate (the
  subject has a front feature), and the mean distance of classifier features to renders of the subject
  at the same cameras;
- forgetting: ``mvdream3d evaluate`` on unrelated prompts (the shipped evaluation set, or its first
  ``--max-prompts`` spread over it): prompt accuracy and consistency, compared with the base model.

    python benchmarks/dreambooth_eval.py --out runs/dreambooth-eval                     # built-in model
    python benchmarks/dreambooth_eval.py --model tiny-random --size 64 --out /tmp/db-smoke \\
        --steps 2 --gen-steps 2 --objects 1 --eval-objects 1 --max-prompts 2 --runs full:1,lora:1   # smoke

Writes ``OUT/photos/``, ``OUT/runs/<run>/`` (the DreamBooth outputs, ``subject.png``, ``eval/``),
``OUT/results.json``, ``OUT/results.md`` (values +- standard errors) and ``OUT/figure.png`` (the photos,
then two generated objects per run).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

SUBJECT_CAMERAS_SEED = 7


def render_photos(attributes: dict, n: int, size: int, folder: Path) -> np.ndarray:
    """``n`` single views (n, size, size, 3) of the subject on white, written as PNG "photos"."""
    from PIL import Image

    from mvdream3d.cameras import DEFAULT_FOVY_DEG
    from mvdream3d.data import synth
    from mvdream3d.data.render import Renderer
    from mvdream3d.evaluation.classifier import render_views

    rng = np.random.default_rng(SUBJECT_CAMERAS_SEED)
    azimuths = (np.linspace(0, 360, n, endpoint=False) + 25 + rng.uniform(-10, 10, n)) % 360
    elevations = rng.uniform(0, 30, n)
    with Renderer(size) as renderer:
        views = render_views(renderer, synth.build_mesh(attributes), list(elevations), list(azimuths),
                             [DEFAULT_FOVY_DEG] * n)
    folder.mkdir(parents=True, exist_ok=True)
    for i, v in enumerate(views):
        Image.fromarray(v).save(folder / f"photo_{i:02d}_az{int(azimuths[i]):03d}_el{int(elevations[i]):02d}.png")
    return views


def subject_metrics(model_ref: str, prompt: str, attributes: dict, truth: np.ndarray, clf, args, grid: Path) -> dict:
    """Generate ``args.objects`` 4-view objects of ``prompt`` and score them against the subject."""
    from mvdream3d.evaluation.evaluate import EVAL_AZIMUTHS, EVAL_ELEVATION
    from mvdream3d.evaluation.metrics import object_metrics, summarize
    from mvdream3d.pipeline import MultiViewPipeline, image_grid

    pipe = MultiViewPipeline.from_pretrained(model_ref)
    v = len(EVAL_AZIMUTHS)
    res = pipe(prompt, num_views=v, elevation=EVAL_ELEVATION, azimuth_start=EVAL_AZIMUTHS[0], azimuth_span=360,
               num_objects=args.objects, num_inference_steps=args.gen_steps, guidance_scale=args.guidance,
               seed=args.seed, height=args.size, width=args.size)
    image_grid(res.images, args.objects).save(grid)
    views = np.stack([np.asarray(im.convert("RGB")) for im in res.images])
    pred = clf.predict(views)
    truth_feats = clf.predict(truth)["features"]
    shape, color = clf.config.shapes.index(attributes["shape"]), clf.config.colors.index(attributes["color"])
    objects = []
    for o in range(args.objects):
        s = slice(o * v, (o + 1) * v)
        objects.append(object_metrics(pred["shape"][s], pred["color"][s], pred["visible"][s], pred["azimuth"][s],
                                      shape, color, attributes.get("feature") is not None, EVAL_AZIMUTHS,
                                      clf.config.azimuth_bins))
    summary = summarize(objects)
    summary["subject_accuracy"] = summary.pop("prompt_accuracy")
    summary["se"]["subject_accuracy"] = summary["se"].pop("prompt_accuracy")
    dist = np.linalg.norm(pred["features"].reshape(args.objects, v, -1) - truth_feats[None], axis=-1)
    summary["feature_distance"] = float(dist.mean())
    return summary


def forgetting_metrics(model_ref: str, prompts: list[str], out: Path, args) -> dict:
    from mvdream3d.evaluation.evaluate import evaluate

    rep = evaluate(model_ref, out, prompts=prompts, num_objects=args.eval_objects, steps=args.gen_steps,
                   guidance=args.guidance, size=args.size, seed=args.seed, progress=False)
    return _forgetting_from_report(rep)


def _forgetting_from_report(rep: dict) -> dict:
    m = rep["overall"]["model"]
    out = {k: m[k] for k in ("prompt_accuracy", "consistency", "camera_adherence", "janus_rate", "fid")}
    out["se"] = {k: m["se"][k] for k in ("prompt_accuracy", "consistency", "camera_adherence", "janus_rate")}
    return out


def add_missing_se(results: dict, out: Path) -> None:
    """Forgetting standard errors for runs recorded before they were kept, from each run's eval report."""
    for name, r in results["runs"].items():
        report = out / "runs" / ("base" if name.startswith("base") else name) / "eval" / "report.json"
        if "se" not in r["forgetting"] and report.is_file():
            r["forgetting"] = _forgetting_from_report(json.loads(report.read_text()))
        if "prompt_accuracy" in r["subject"]["se"]:  # the subject's prompt accuracy is its subject accuracy
            r["subject"]["se"]["subject_accuracy"] = r["subject"]["se"].pop("prompt_accuracy")


def parse_runs(text: str) -> list[tuple[str, float]]:
    runs = []
    for item in text.split(","):
        mode, _, lam = item.strip().partition(":")
        if mode not in ("full", "attention", "lora") or not lam:
            raise ValueError(f"--runs items are MODE:LAMBDA with MODE full|attention|lora, got {item!r}")
        runs.append((mode, float(lam)))
    return runs


def _fmt(x, se=None) -> str:
    if x is None:
        return "n/a"
    text = f"{x:.3f}" if isinstance(x, float) else str(x)
    return text if se is None else f"{text} +- {se:.3f}"


def write_markdown(results: dict, path: Path) -> None:
    cols = [("subject", "subject_accuracy"), ("subject", "shape_accuracy"), ("subject", "color_accuracy"),
            ("subject", "consistency"), ("subject", "camera_adherence"), ("subject", "janus_rate"),
            ("subject", "feature_distance"), ("forgetting", "prompt_accuracy"), ("forgetting", "consistency")]
    head = ["run"] + [f"{a}: {b.replace('_', ' ')}" for a, b in cols] + ["train s", "file MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results["runs"].items():
        cells = [name] + [_fmt(r[a][b], r[a].get("se", {}).get(b)) for a, b in cols]
        cells += [_fmt(r.get("train_seconds")), _fmt(r.get("file_mb"))]
        lines.append("| " + " | ".join(cells) + " |")
    s = results["settings"]
    path.write_text(f"# Multi-view DreamBooth: {s['subject']!r} as {s['prompt']!r}\n\nmodel: {s['model']}, "
                    f"{s['photos']} photos, {s['steps']} steps, {s['objects']} objects x 4 views, "
                    f"{s['max_prompts'] or 'all'} unrelated prompts x {s['eval_objects']} objects\n\n"
                    + "\n".join(lines) + "\n")


def write_figure(results: dict, out: Path, path: Path, objects: int = 2) -> None:
    """The photos in a row, then per run its first ``objects`` generated objects (4 views each), labelled."""
    from PIL import Image

    from mvdream3d.evaluation.report import labelled_rows

    photos = [Image.open(f).convert("RGB") for f in sorted((out / "photos").glob("*.png"))]
    rows: list[tuple[str, Image.Image]] = []
    if photos:
        strip = Image.new("RGB", (sum(p.width for p in photos), photos[0].height), "white")
        for i, p in enumerate(photos):
            strip.paste(p, (i * p.width, 0))
        rows.append(("the photos", strip))
    for name in results["runs"]:
        grid = out / "runs" / ("base" if name.startswith("base") else name) / "subject.png"
        if grid.is_file():
            g = Image.open(grid).convert("RGB")
            cell = g.width // 4  # subject.png: one object per row, 4 views
            rows.append((name, _side_by_side([g.crop((0, i * cell, g.width, (i + 1) * cell)) for i in range(objects)])))
    if rows:
        labelled_rows(rows, zoom=2).save(path)


def _side_by_side(images: list) -> object:
    from PIL import Image

    gap = 8
    strip = Image.new("RGB", (sum(im.width for im in images) + gap * (len(images) - 1), images[0].height), "white")
    x = 0
    for im in images:
        strip.paste(im, (x, 0))
        x += im.width + gap
    return strip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--model", default=None, help="base model (default: the built-in one)")
    p.add_argument("--subject", default="a large cyan pyramid with a pink horn")
    p.add_argument("--token", default="sks")
    p.add_argument("--class-word", default="toy")
    p.add_argument("--photos", type=int, default=5)
    p.add_argument("--runs", default="full:1,full:0,attention:1,lora:1", help="MODE:LAMBDA,...")
    p.add_argument("--steps", type=int, default=200, help="DreamBooth steps per run")
    p.add_argument("--size", type=int, default=None, help="photo, training and generation size (default: native)")
    p.add_argument("--gen-steps", type=int, default=None, help="sampling steps (default: the base model's own)")
    p.add_argument("--guidance", type=float, default=None, help="CFG scale (default: the base model's own)")
    p.add_argument("--objects", type=int, default=8, help="objects of the subject prompt per model")
    p.add_argument("--eval-objects", type=int, default=2, help="objects per unrelated prompt")
    p.add_argument("--max-prompts", type=int, default=None, help="unrelated prompts (default: all 32)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from mvdream3d.evaluation.classifier import load_classifier
    from mvdream3d.evaluation.evaluate import EVAL_AZIMUTHS, EVAL_ELEVATION, render_ground_truth
    from mvdream3d.evaluation.prompts import load_prompts, prompt_from_text
    from mvdream3d.files import ensure_writable_dir
    from mvdream3d.pipeline import resolve_model
    from mvdream3d.training.dreambooth import dreambooth

    out = ensure_writable_dir(args.out)
    runs = parse_runs(args.runs)
    subject = prompt_from_text(args.subject)
    base = resolve_model(args.model)  # fails early (and clearly) when the model is missing
    args.size = args.size or base.native_size
    defaults = base.sampling_defaults  # the settings the model is evaluated with (its config's `sampling`)
    args.gen_steps = args.gen_steps or int(defaults["steps"])
    args.guidance = float(defaults["guidance_scale"]) if args.guidance is None else args.guidance
    del base
    prompt = f"a {args.token} {args.class_word}"
    all_prompts = [q.text for q in load_prompts(None)]
    if args.max_prompts:
        idx = np.linspace(0, len(all_prompts) - 1, min(args.max_prompts, len(all_prompts))).round().astype(int)
        all_prompts = [all_prompts[i] for i in sorted(set(idx))]
    clf = load_classifier()
    render_photos(subject.attributes, args.photos, args.size, out / "photos")
    truth, _ = render_ground_truth([subject], 1, args.size, args.seed, 0, EVAL_ELEVATION, EVAL_AZIMUTHS)
    truth = truth[0, 0]
    base_ref = args.model or "mvdream3d-tiny"
    results: dict = {"settings": {**vars(args), "prompt": prompt, "unrelated_prompts": all_prompts}, "runs": {}}
    done_path = out / "results.json"
    if done_path.is_file():  # an interrupted benchmark: keep the runs finished with the same settings
        old = json.loads(done_path.read_text())
        def same(a: dict) -> str:  # the run list may grow between invocations: more runs, same settings
            return json.dumps({k: v for k, v in a.items() if k != "runs"}, default=str)

        if same(old.get("settings", {})) == same(results["settings"]):
            results["runs"] = old["runs"]
            print(f"resuming: {', '.join(results['runs'])} done", file=sys.stderr)

    def save() -> None:
        tmp = done_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(results, indent=1, default=str))
        tmp.replace(done_path)

    if "base (no fine-tuning)" not in results["runs"]:
        t = time.perf_counter()
        base_dir = out / "runs" / "base"
        base_dir.mkdir(parents=True, exist_ok=True)
        results["runs"]["base (no fine-tuning)"] = {
            "subject": subject_metrics(base_ref, prompt, subject.attributes, truth, clf, args,
                                       base_dir / "subject.png"),
            "forgetting": forgetting_metrics(base_ref, all_prompts, base_dir / "eval", args),
            "eval_seconds": round(time.perf_counter() - t, 1)}
        save()
    for mode, lam in runs:
        name = f"{mode}-lambda{lam:g}"
        if name in results["runs"]:
            continue
        run_dir = out / "runs" / name
        print(f"== {name}", file=sys.stderr)
        res = dreambooth(out / "photos", args.token, args.class_word, model=args.model, out=run_dir, train=mode,
                         lambda_preservation=lam, steps=args.steps, image_size=args.size, seed=args.seed,
                         sample_steps=args.gen_steps, sample_guidance=args.guidance)
        t = time.perf_counter()
        ref = str(res.model_path)
        results["runs"][name] = {
            "subject": subject_metrics(ref, prompt, subject.attributes, truth, clf, args, run_dir / "subject.png"),
            "forgetting": forgetting_metrics(ref, all_prompts, run_dir / "eval", args),
            "train_seconds": round(res.seconds, 1), "eval_seconds": round(time.perf_counter() - t, 1),
            "file_mb": round(res.model_path.stat().st_size / 2**20, 3),
            "final_preservation": res.history[-1]["preservation"]}
        save()
    add_missing_se(results, out)
    save()
    write_markdown(results, out / "results.md")
    write_figure(results, out, out / "figure.png")
    print((out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
