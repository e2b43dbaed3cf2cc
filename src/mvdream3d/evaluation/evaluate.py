"""``mvdream3d evaluate``: measure the paper's claims in the procedural world.

For every prompt of a prompt set (default: ``evaluation/prompts.txt``, 32 prompts, a third of them with
held-out 2D-only concepts), generate ``num_objects`` objects x 4 views at fixed cameras (elevation 15,
azimuths 0, 90, 180, 270), read every view with the view classifier (:mod:`.classifier`) and compute
(:mod:`.metrics`) prompt accuracy, cross-view consistency, camera adherence, Janus rate and the Frechet
distance of classifier features to ground-truth renders of the same prompts and cameras. The same
metrics on ground-truth renders (a second draw of whatever a prompt leaves open, e.g. the size) give
the ceiling; ``--ground-truth`` evaluates ground-truth renders in place of a model.

Outputs in ``--out``: ``report.json`` (everything, per view), ``report.md``, ``report.html`` (tables,
per-group breakdown, bar plot and sample grids embedded), ``metrics.png``, ``grids/prompt_XXX.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..data import synth
from ..data.render import AssetWarning
from ..errors import print_warnings_plainly
from ..files import ensure_writable_dir
from .classifier import (
    _nan_to_none,
    azimuth_bin,
    default_classifier_path,
    load_classifier,
    render_views,
    to_input_array,
)
from .metrics import METRIC_NAMES, background_speckle, frechet_distance, object_metrics, summarize
from .prompts import Prompt, default_prompts_path, load_prompts
from .report import bar_plot, format_table, sample_grid, write_reports

__all__ = [
    "EVAL_AZIMUTHS",
    "EVAL_ELEVATION",
    "METRIC_NAMES",
    "add_evaluate_subparser",
    "cmd_evaluate",
    "evaluate",
    "fill_open_attributes",
    "frechet_distance",
    "object_metrics",
    "render_ground_truth",
    "summarize",
]

EVAL_ELEVATION = 15.0
EVAL_AZIMUTHS = (0.0, 90.0, 180.0, 270.0)
GROUPS = ("seen", "held_out", "with_feature", "without_feature")
_REFERENCE_STREAM, _CEILING_STREAM = 11, 12


def _eval_fov() -> float:
    from ..cameras import DEFAULT_FOVY_DEG

    return float(DEFAULT_FOVY_DEG)  # the field of view the pipeline assumes for its cameras


def fill_open_attributes(attributes: dict, rng: np.random.Generator) -> dict:
    """Draw what a prompt leaves open (size; the feature's colour, never the body's) with ``rng``."""
    a = {k: attributes.get(k) for k in synth.ATTRIBUTE_KEYS}
    if a["size"] is None and not a.get("second_shape"):
        a["size"] = list(synth.SIZES)[int(rng.integers(len(synth.SIZES)))]
    if a["feature"] is not None and a["feature_color"] is None:
        pool = [c for c in synth.COLORS if c != a["color"]]
        a["feature_color"] = pool[int(rng.integers(len(pool)))]
    return a


def render_ground_truth(
    prompts: Sequence[Prompt], num_objects: int, size: int, seed: int, stream: int,
    elevation: float = EVAL_ELEVATION, azimuths: Sequence[float] = EVAL_AZIMUTHS, fov_deg: float | None = None,
    progress: bool = False, desc: str = "ground truth",
) -> tuple[np.ndarray, list[list[dict]]]:
    """Ground-truth views (P, O, V, size, size, 3) uint8 on white and the drawn attributes per object.

    Object ``o`` of prompt ``p`` draws its open attributes from ``default_rng([seed, stream, p, o])``.
    Cameras: orbit at ``elevation``/``azimuths`` with the pipeline's field of view, at the world recipe's
    distance ``WORLD_RADIUS / sin(fov / 2)``.
    """
    from tqdm.auto import tqdm

    from ..data.render import Renderer

    fov = _eval_fov() if fov_deg is None else float(fov_deg)
    v = len(azimuths)
    out = np.empty((len(prompts), num_objects, v, size, size, 3), np.uint8)
    drawn: list[list[dict]] = []
    with Renderer(size) as renderer:
        for p, prompt in enumerate(tqdm(prompts, desc=desc, unit="prompt", disable=not progress)):
            row = []
            for o in range(num_objects):
                a = fill_open_attributes(prompt.attributes, np.random.default_rng([int(seed), stream, p, o]))
                mesh = synth.build_mesh(a)
                out[p, o] = render_views(renderer, mesh, [elevation] * v, list(azimuths), [fov] * v)
                row.append(a)
            drawn.append(row)
    return out, drawn


def _load_pipeline(model: str, device: str, dtype: str):
    from ..checkpoints import CheckpointError
    from ..pipeline import MultiViewPipeline

    try:
        return MultiViewPipeline.from_pretrained(model, device, dtype)
    except (FileNotFoundError, CheckpointError):
        raise
    except Exception as e:  # a file that is no checkpoint, a config mismatch, ...
        raise ValueError(f"cannot load model {model!r}: {type(e).__name__}: {e}") from e


def _generate(
    pipe: Any, prompts: Sequence[Prompt], num_objects: int, steps: int, guidance: float, size: int, seed: int,
    sampler: str, suffix: str, progress: bool, guidance_rescale: float = 0.0,
) -> np.ndarray:
    """Generated views (P, O, V, size, size, 3) uint8; prompt ``i`` uses seed ``SeedSequence([seed, i])``."""
    from tqdm.auto import tqdm

    v = len(EVAL_AZIMUTHS)
    out = np.empty((len(prompts), num_objects, v, size, size, 3), np.uint8)
    for i, prompt in enumerate(tqdm(prompts, desc="generating", unit="prompt", disable=not progress)):
        s = int(np.random.SeedSequence([int(seed), i]).generate_state(1)[0])
        res = pipe(
            [prompt.text], num_views=v, elevation=EVAL_ELEVATION, azimuth_start=EVAL_AZIMUTHS[0], azimuth_span=360,
            num_inference_steps=steps, guidance_scale=guidance, sampler=sampler, seed=s, num_objects=num_objects,
            height=size, width=size, prompt_suffix=suffix, guidance_rescale=guidance_rescale,
        )
        az = res.cameras.get("azimuth")
        if az is not None and not np.allclose(az, EVAL_AZIMUTHS):
            raise RuntimeError(f"pipeline used azimuths {az}, expected {list(EVAL_AZIMUTHS)}")
        for k, im in enumerate(res.images):
            out[i, k // v, k % v] = np.asarray(im.convert("RGB"))
    return out


def _classify(clf: Any, views: np.ndarray) -> dict[str, np.ndarray]:
    """Classifier outputs for (P, O, V, H, W, 3) views, reshaped to (P, O, V, ...)."""
    lead = views.shape[:3]
    pred = clf.predict(to_input_array(views.reshape(-1, *views.shape[3:]), clf.input_size))
    return {k: np.asarray(v).reshape(*lead, *np.asarray(v).shape[1:]) for k, v in pred.items()}


def _score(prompts: Sequence[Prompt], pred: dict[str, np.ndarray], clf: Any) -> list[list[dict]]:
    shapes, colors = clf.config.shapes, clf.config.colors
    res = []
    for p, prompt in enumerate(prompts):
        a = prompt.attributes
        row = []
        for o in range(pred["shape"].shape[1]):
            m = object_metrics(
                pred["shape"][p, o], pred["color"][p, o], pred["visible"][p, o], pred["azimuth"][p, o],
                shapes.index(a["shape"]), colors.index(a["color"]), prompt.has_feature, EVAL_AZIMUTHS,
                clf.config.azimuth_bins,
            )
            m["views"] = [
                {"azimuth": az, "shape": str(pred["shape_name"][p, o, v]),
                 "color": str(pred["color_name"][p, o, v]), "feature_visible": bool(pred["visible"][p, o, v]),
                 "azimuth_bin_deg": float(pred["azimuth_deg"][p, o, v]),
                 "shape_confidence": round(float(pred["shape_prob"][p, o, v].max()), 4),
                 "color_confidence": round(float(pred["color_prob"][p, o, v].max()), 4)}
                for v, az in enumerate(EVAL_AZIMUTHS)
            ]
            row.append(m)
        res.append(row)
    return res


def _fid(feats: np.ndarray, ref: np.ndarray, idx: Sequence[int]) -> float | None:
    if not len(idx):
        return None
    a = feats[list(idx)].reshape(-1, feats.shape[-1])
    b = ref[list(idx)].reshape(-1, ref.shape[-1])
    return round(frechet_distance(a, b), 4)


def _caption(pred: dict[str, np.ndarray], p: int, o: int, v: int) -> str:
    vis = " F" if pred["visible"][p, o, v] else ""
    return f"{pred['color_name'][p, o, v]} {pred['shape_name'][p, o, v]}\naz {int(pred['azimuth_deg'][p, o, v])}{vis}"


def _grid_row(label: str, views: np.ndarray, pred: dict[str, np.ndarray], prompt: Prompt, p: int, o: int) -> tuple:
    n = views.shape[2]
    oks = [bool(pred["shape_name"][p, o, v] == prompt.attributes["shape"]
                and pred["color_name"][p, o, v] == prompt.attributes["color"]) for v in range(n)]
    return label, list(views[p, o]), [_caption(pred, p, o, v) for v in range(n)], oks


def evaluate(
    model: str | None,
    out: str | os.PathLike,
    prompts: str | os.PathLike | Sequence[str] | None = None,
    num_objects: int = 2,
    steps: int | None = None,
    guidance: float | None = None,
    size: int | None = None,
    seed: int = 0,
    ground_truth: bool = False,
    classifier: str | os.PathLike | None = None,
    sampler: str | None = None,
    suffix: str = "",
    device: str = "cpu",
    dtype: str = "fp32",
    held_out_colors: Sequence[str] = synth.DEFAULT_HELD_OUT_COLORS,
    held_out_shapes: Sequence[str] = synth.DEFAULT_HELD_OUT_SHAPES,
    progress: bool = True,
    guidance_rescale: float | None = None,
) -> dict:
    """Evaluate ``model`` (anything ``MultiViewPipeline.from_pretrained`` takes), or ground-truth renders with
    ``ground_truth=True``, and write the reports into ``out``. Returns the report (report.json's content).

    ``steps``, ``guidance``, ``sampler`` and ``guidance_rescale`` left at None take the model's
    ``sampling_defaults`` (what ``generate`` uses), so the report measures what a user gets.

    Raises:
        ValueError: bad arguments, a bad prompt file or model; FileNotFoundError: missing files;
        OutputDirError (a PermissionError and ValueError): an unusable ``out``.
    """
    t0 = time.perf_counter()
    num_objects, size = _check_arguments(model, ground_truth, num_objects, steps, size, guidance, guidance_rescale,
                                         held_out_colors, held_out_shapes)
    out_dir = ensure_writable_dir(out)
    plist = load_prompts(prompts, held_out_colors, held_out_shapes)
    clf, clf_path, card = _classifier_for(classifier, plist)

    seconds: dict[str, float] = {}
    pipe = None
    if not ground_truth:
        t = time.perf_counter()
        pipe = _load_pipeline(str(model), device, dtype)
        size, steps, guidance, sampler, guidance_rescale = _model_settings(
            pipe.model, size, steps, guidance, sampler, guidance_rescale)
        seconds["load_model"] = round(time.perf_counter() - t, 2)

    t = time.perf_counter()
    ref, _ = render_ground_truth(plist, num_objects, size, seed, _REFERENCE_STREAM, progress=progress,
                                 desc="ground truth (reference)")
    ceil, ceil_attrs = render_ground_truth(plist, num_objects, size, seed, _CEILING_STREAM, progress=progress,
                                           desc="ground truth (ceiling)")
    seconds["render_ground_truth"] = round(time.perf_counter() - t, 2)
    if ground_truth:
        gen = ceil
    else:
        t = time.perf_counter()
        gen = _generate(pipe, plist, num_objects, int(steps), float(guidance), size, seed, sampler, suffix, progress,
                        float(guidance_rescale))
        seconds["generate"] = round(time.perf_counter() - t, 2)

    t = time.perf_counter()
    pred_ref = _classify(clf, ref)
    pred_ceil = _classify(clf, ceil)
    pred_gen = pred_ceil if ground_truth else _classify(clf, gen)
    seconds["classify"] = round(time.perf_counter() - t, 2)

    speckle = background_speckle(gen.reshape(-1, *gen.shape[-3:]))
    obj_gen = _score(plist, pred_gen, clf)
    obj_ceil = obj_gen if ground_truth else _score(plist, pred_ceil, clf)
    preds = {"model": pred_gen, "ceiling": pred_ceil, "reference": pred_ref}
    overall, groups, per_prompt = _tables(plist, obj_gen, obj_ceil, preds, ceil_attrs)

    name = "ground-truth" if ground_truth else str(model)
    report = _nan_to_none({
        "format": "mvdream3d-evaluation",
        "version": 1,
        "model": name,
        "settings": {
            "prompts": _prompts_label(prompts),
            "num_objects": num_objects, "steps": steps, "size": size, "seed": int(seed),
            "guidance": None if guidance is None else float(guidance),
            "guidance_rescale": None if guidance_rescale is None else float(guidance_rescale), "sampler": sampler,
            "suffix": suffix, "device": device, "dtype": dtype,
            "held_out_concepts": [*held_out_colors, *held_out_shapes], "ground_truth": bool(ground_truth),
        },
        "views": {"elevation": EVAL_ELEVATION, "azimuths": list(EVAL_AZIMUTHS), "fov_deg": _eval_fov(),
                  "azimuth_bins": [int(b) for b in azimuth_bin(np.asarray(EVAL_AZIMUTHS), clf.config.azimuth_bins)]},
        "classifier": {"path": str(clf_path), "input_size": clf.input_size,
                       "test_accuracy": card.get("test_accuracy"),
                       "test_accuracy_held_out_concepts": card.get("test_accuracy_held_out_concepts")},
        "metric_definitions": dict(_METRIC_DEFINITIONS),
        "overall": overall,
        "background": {"speckle_mean": float(speckle.mean()), "speckle_max": float(speckle.max()),
                       "views_over_1_percent": float(np.mean(speckle > 0.01)),
                       "definition": "share of background pixels off white by more than 10/255 (the object, "
                                     "grown by 2 px, excluded)"},
        "groups": groups,
        "prompts": per_prompt,
    })
    plot = _metrics_plot(name, overall, groups)
    grids = _sample_grids(plist, num_objects, ground_truth, gen, ref, pred_gen, pred_ref)
    seconds["total"] = round(time.perf_counter() - t0, 2)
    report["seconds"] = seconds
    report["files"] = write_reports(report, out_dir, plot, grids)
    return report


_METRIC_DEFINITIONS = {
    "prompt_accuracy": "objects whose 4 views all show the prompt's shape and colour",
    "shape_accuracy": "views showing the prompt's shape", "color_accuracy": "views showing the prompt's colour",
    "consistency": "objects whose 4 views agree on shape and colour (right or wrong)",
    "camera_adherence": "views of featured objects whose predicted azimuth bin is the camera's",
    "janus_rate": "featured objects with the feature seen in the back view or more than one front view",
    "fid": "Frechet distance of classifier penultimate features to reference ground-truth renders",
}


def _check_arguments(model: str | None, ground_truth: bool, num_objects: int, steps: int | None, size: int | None,
                     guidance: float | None, guidance_rescale: float | None, held_out_colors: Sequence[str],
                     held_out_shapes: Sequence[str]) -> tuple[int, int | None]:
    """Refuse bad arguments before any work; returns ``num_objects`` and ``size`` as ints (``size`` 64 for
    ground truth when not given, None: the model's native size)."""
    if ground_truth and model is not None:
        raise ValueError("give either MODEL or --ground-truth, not both")
    if not ground_truth and model is None:
        raise ValueError("give a MODEL to evaluate (a name or checkpoint path, e.g. tiny-random) or --ground-truth")
    num_objects = int(num_objects)
    size = int(size) if size is not None else (64 if ground_truth else None)
    if num_objects < 1:
        raise ValueError(f"--num-objects must be >= 1, got {num_objects}")
    if steps is not None and int(steps) < 1:
        raise ValueError(f"--steps must be >= 1, got {steps}")
    if size is not None and size < 8:
        raise ValueError(f"--size must be >= 8 pixels, got {size}")
    if guidance is not None and not math.isfinite(float(guidance)):
        raise ValueError(f"--guidance must be a number, got {guidance}")
    if guidance_rescale is not None and not 0.0 <= float(guidance_rescale) <= 1.0:
        raise ValueError(f"--guidance-rescale must be in [0, 1], got {guidance_rescale}")
    for c in held_out_colors:
        if c not in synth.COLORS:
            raise ValueError(f"unknown held-out colour {c!r}; known: {', '.join(synth.COLORS)}")
    for s in held_out_shapes:
        if s not in synth.SHAPES:
            raise ValueError(f"unknown held-out shape {s!r}; known: {', '.join(synth.SHAPES)}")
    return num_objects, size


def _classifier_for(classifier: str | os.PathLike | None, plist: Sequence[Prompt]) -> tuple[Any, Path, dict]:
    """The view classifier, its path and its card (``.json`` beside it; {} if none); refuses prompts whose
    shape or colour it does not know."""
    clf = load_classifier(classifier)
    clf_path = Path(classifier) if classifier is not None else default_classifier_path()
    card_path = clf_path.with_suffix(".json")
    card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    for prompt in plist:
        for key, names in (("shape", clf.config.shapes), ("color", clf.config.colors)):
            if prompt.attributes[key] not in names:
                raise ValueError(f"the classifier does not know the {key} of prompt {prompt.text!r}")
    return clf, clf_path, card


def _model_settings(m: Any, size: int | None, steps: int | None, guidance: float | None, sampler: str | None,
                    guidance_rescale: float | None) -> tuple[int, int, float, str, float]:
    """The sampling settings left at None filled from the model's ``sampling_defaults`` (size: its native
    size), checked against the model: (size, steps, guidance, sampler, guidance_rescale)."""
    size = m.native_size if size is None else size
    defaults = m.sampling_defaults
    steps = int(defaults["steps"]) if steps is None else steps
    guidance = float(defaults["guidance_scale"]) if guidance is None else guidance
    sampler = str(defaults["sampler"]) if sampler is None else sampler
    guidance_rescale = float(defaults["guidance_rescale"]) if guidance_rescale is None else guidance_rescale
    factor = m.downsample_factor * m.unet.downsample_factor
    if size % factor:
        raise ValueError(f"--size must be a multiple of {factor} for this model, got {size}")
    return size, steps, guidance, sampler, guidance_rescale


def _tables(plist: Sequence[Prompt], obj_gen: list, obj_ceil: list, preds: dict[str, dict], ceil_attrs: list
            ) -> tuple[dict, dict, list[dict]]:
    """The report's summaries: overall, per group and per prompt, each for the model and the ceiling.
    ``preds``: the classifier's readings of the ``model``, ``ceiling`` and ``reference`` views."""

    def block(idx: Sequence[int]) -> dict:
        b: dict[str, Any] = {"prompts": len(idx)}
        for name, objs, pred in (("model", obj_gen, preds["model"]), ("ceiling", obj_ceil, preds["ceiling"])):
            s = summarize([o for i in idx for o in objs[i]])
            s["fid"] = _fid(pred["features"], preds["reference"]["features"], idx)
            b[name] = s
        return b

    all_idx = list(range(len(plist)))
    groups = {g: block([i for i, p in enumerate(plist) if g in p.groups]) for g in GROUPS}
    overall = block(all_idx)
    per_prompt = []
    for i, p in enumerate(plist):
        b = block([i])
        per_prompt.append({
            "text": p.text, "attributes": p.attributes, "groups": p.groups, "held_out_concepts": p.held_out_concepts,
            "model": {**b["model"], "objects_detail": [{k: v for k, v in o.items()} for o in obj_gen[i]]},
            "ceiling": {**b["ceiling"], "objects_detail": obj_ceil[i], "drawn_attributes": ceil_attrs[i]},
        })
    return overall, groups, per_prompt


def _prompts_label(prompts: str | os.PathLike | Sequence[str] | None) -> str:
    """How report.json names the prompt set: the file given, the shipped file, or ``<list>``."""
    if prompts is None:
        return str(default_prompts_path())
    return "<list>" if isinstance(prompts, list | tuple) else str(prompts)


def _metrics_plot(name: str, overall: dict, groups: dict) -> Any:
    """The bar plot: every metric, and prompt accuracy per group, model next to the ground-truth ceiling."""
    names = list(METRIC_NAMES.values())
    keys = list(METRIC_NAMES)
    gkeys = [g for g in GROUPS if groups[g]["prompts"]]
    panels = [
        ("All prompts: model vs ground-truth ceiling", names,
         {name: [overall["model"][k] for k in keys], "ground-truth ceiling": [overall["ceiling"][k] for k in keys]}),
        ("Prompt accuracy by group", [GROUPS_LABEL[g] for g in gkeys],
         {name: [groups[g]["model"]["prompt_accuracy"] for g in gkeys],
          "ground-truth ceiling": [groups[g]["ceiling"]["prompt_accuracy"] for g in gkeys]}),
    ]
    fm, fc = overall["model"]["fid"], overall["ceiling"]["fid"]
    return bar_plot(panels, note=f"Frechet distance of classifier features to ground truth: model {fm:.3f}, "
                                 f"ceiling {fc:.3f} (lower is better)")


def _sample_grids(plist: Sequence[Prompt], num_objects: int, ground_truth: bool, gen: np.ndarray, ref: np.ndarray,
                  pred_gen: dict, pred_ref: dict) -> list:
    """One labelled grid per prompt: its objects' views (and a ground-truth row for a model), each view
    captioned with what the classifier read."""
    grids = []
    for p, prompt in enumerate(plist):
        label = "truth" if ground_truth else "sample"
        rows = [_grid_row(f"{label} {o + 1}", gen, pred_gen, prompt, p, o) for o in range(num_objects)]
        if not ground_truth:
            rows.append(_grid_row("truth", ref, pred_ref, prompt, p, 0))
        grids.append(sample_grid(f"{p}: {prompt.text}", rows, [f"azimuth {int(a)}" for a in EVAL_AZIMUTHS]))
    return grids


GROUPS_LABEL = {"seen": "seen concepts", "held_out": "held-out 2D-only concepts", "with_feature": "with front feature",
                "without_feature": "without front feature"}


# --------------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------------


def add_evaluate_subparser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``evaluate`` to a ``parser.add_subparsers()`` object (handler: ``cmd_evaluate``)."""
    p = subparsers.add_parser(
        "evaluate",
        help="measure prompt accuracy, multi-view consistency, camera adherence, Janus rate and FID in the "
             "procedural world, next to the ground-truth ceiling",
        description="Generate NUM_OBJECTS objects x 4 views (elevation 15, azimuths 0/90/180/270) per prompt, "
        "classify every view with the shipped view classifier and write DIR/report.json, report.md and "
        "report.html (tables per prompt and per group: seen vs held-out 2D-only concepts, with vs without a "
        "front feature; a bar plot; sample grids), comparing with ground-truth renders (the ceiling).",
    )
    p.add_argument("model", nargs="?", default=None, metavar="MODEL",
                   help="built-in model name, 'tiny-random', a published name or a checkpoint path")
    p.add_argument("--ground-truth", action="store_true",
                   help="evaluate ground-truth renders instead of a model (the ceiling)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--prompts", default=None, metavar="FILE",
                   help="prompt file, one prompt per line (default: the shipped held-out prompt set)")
    p.add_argument("--num-objects", type=int, default=2, help="objects per prompt (default 2)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (default: the model's)")
    p.add_argument("--guidance-rescale", type=float, default=None, help="guidance rescale 0-1 (default: the model's)")
    p.add_argument("--size", type=int, default=None,
                   help="image size in pixels (default: the model's native size; 64 for --ground-truth)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sampler", default=None, choices=["ddim", "dpmpp_2m", "unipc", "euler", "euler_a"],
                   help="default: the model's")
    p.add_argument("--suffix", default="", help="appended to every prompt (default none: the world's captions)")
    p.add_argument("--classifier", default=None, metavar="FILE",
                   help="view classifier weights (default: the shipped one)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--holdout-colors", nargs="*", default=list(synth.DEFAULT_HELD_OUT_COLORS), metavar="COLOR",
                   help="colours that form the held-out group (default: the world's, pink cyan)")
    p.add_argument("--holdout-shapes", nargs="*", default=list(synth.DEFAULT_HELD_OUT_SHAPES), metavar="SHAPE",
                   help="shapes that form the held-out group (default: the world's, torus)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_evaluate)
    return p


def cmd_evaluate(args: argparse.Namespace) -> int:
    with print_warnings_plainly(AssetWarning):
        report = evaluate(
            args.model, args.out, prompts=args.prompts, num_objects=args.num_objects, steps=args.steps,
            guidance=args.guidance, size=args.size, seed=args.seed, ground_truth=args.ground_truth,
            classifier=args.classifier, sampler=args.sampler, suffix=args.suffix, device=args.device,
            dtype=args.dtype, held_out_colors=args.holdout_colors, held_out_shapes=args.holdout_shapes,
            progress=not args.no_progress, guidance_rescale=args.guidance_rescale,
        )
    print(f"\nmodel: {report['model']}  ({len(report['prompts'])} prompts x {args.num_objects} objects x 4 views; "
          f"ceiling = ground-truth renders)")
    print(format_table(report))
    print(f"\nwrote {', '.join(report['files'][k] for k in ('json', 'markdown', 'html', 'plot'))} and "
          f"{len(report['files']['grids'])} sample grids to {args.out} in {report['seconds']['total']:.1f} s")
    return 0
