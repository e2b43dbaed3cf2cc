"""Compare models over several evaluation seeds: pooled rates +- standard error, differences, verdicts.

Each model is given as a name and one or more ``mvdream3d evaluate`` reports (report.json), usually the
same prompts under different ``--seed`` values. The objects of a model's reports are pooled (objects are
the independent draws, as in :func:`mvdream3d.evaluation.metrics.summarize`) overall and per group
(seen / held-out 2D-only concepts, with / without a front feature). Every model after the first is
compared with the first: difference +- sqrt(se_a^2 + se_b^2), "shown" when beyond twice that.

It also reports where the front feature goes, from the views of featured objects: of the views in which
the classifier sees the feature, the share whose azimuth bin lies within 45 degrees of the camera's
("within one bin"; camera adherence asks for the exact 45-degree bin), and the share of back views
(azimuth 180) in which the feature is seen (what makes an object Janus).

    python benchmarks/compare_models.py \\
        --model v2.0 docs/model_card_v2.0_eval.json eval/v2.0-seed1/report.json \\
        --model v2.1 docs/model_card_v2_eval.json eval/v2.1-seed1/report.json --json docs/recipes_v2.json

Prints a Markdown table; ``--json`` writes the pooled summaries, the differences and every object's
per-object values (enough to recompute each number).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from mvdream3d.evaluation.classifier import AZIMUTH_BINS, azimuth_bin
from mvdream3d.evaluation.metrics import summarize

METRICS = ("prompt_accuracy", "shape_accuracy", "color_accuracy", "consistency", "camera_adherence", "janus_rate")
GROUPS = ("all", "seen", "held_out", "with_feature", "without_feature")
OBJECT_KEYS = ("correct", "consistent", "shape_accuracy", "color_accuracy", "camera", "janus")
# feature placement: each pooled share and the (numerator, denominator) counts it is made of
PLACEMENT = {"within_one_bin": ("views_seen_within_one_bin", "views_seen"),
             "back_seen": ("back_views_seen", "back_views")}


def load_objects(reports: list[Path]) -> list[dict]:
    """Every object of the reports, with its prompt, groups and the report's seed."""
    objects = []
    for path in reports:
        report = json.loads(Path(path).read_text())
        if report["settings"].get("ground_truth"):
            raise ValueError(f"{path} is a ground-truth report; give model reports")
        for prompt in report["prompts"]:
            for o in prompt["model"]["objects_detail"]:
                objects.append({"prompt": prompt["text"], "groups": prompt["groups"],
                                "seed": report["settings"]["seed"], **{k: o[k] for k in OBJECT_KEYS},
                                **(_placement(o["views"]) if o["camera"] is not None else {})})
    if not objects:
        raise ValueError(f"no objects in {reports}")
    return objects


def _placement(views: list[dict]) -> dict:
    """Counts for one featured object: views with the feature seen, of them those whose predicted azimuth
    bin is within one bin of the camera's (as the classifier's ``azimuth_within_1_bin``), back views, back
    views with the feature seen."""
    seen = [v for v in views if v["feature_visible"]]
    off = [(azimuth_bin(v["azimuth_bin_deg"]) - azimuth_bin(v["azimuth"])) % AZIMUTH_BINS for v in seen]
    near = [d for d in off if d in (0, 1, AZIMUTH_BINS - 1)]
    back = [v for v in views if azimuth_bin(v["azimuth"]) == AZIMUTH_BINS // 2]
    return {"views_seen": len(seen), "views_seen_within_one_bin": len(near), "back_views": len(back),
            "back_views_seen": sum(bool(v["feature_visible"]) for v in back)}


def placement(objects: list[dict]) -> dict:
    """Pooled feature placement of the featured objects (see the module docstring)."""
    total = {k: sum(o.get(k, 0) for o in objects) for pair in PLACEMENT.values() for k in pair}
    return {**total, **{share: total[num] / total[den] if total[den] else None
                        for share, (num, den) in PLACEMENT.items()}}


def pooled(objects: list[dict]) -> dict[str, dict]:
    """summarize() of the objects overall ("all") and per group."""
    out = {}
    for group in GROUPS:
        members = [o for o in objects if group == "all" or group in o["groups"]]
        if members:
            out[group] = summarize(members)
    return out


def difference(a: dict, b: dict, metric: str) -> dict | None:
    """b - a for one metric of two summaries, its standard error and the verdict."""
    if a.get(metric) is None or b.get(metric) is None:
        return None
    se = math.sqrt((a["se"][metric] or 0.0) ** 2 + (b["se"][metric] or 0.0) ** 2)
    d = b[metric] - a[metric]
    return {"difference": d, "se": se, "shown": bool(se > 0 and abs(d) > 2 * se)}


def compare(models: list[tuple[str, list[Path]]]) -> dict:
    names = [n for n, _ in models]
    if len(set(names)) != len(names):
        raise ValueError(f"model names must differ: {names}")
    objects = {name: load_objects(reports) for name, reports in models}
    summaries = {name: pooled(objs) for name, objs in objects.items()}
    base = names[0]
    diffs = {name: {g: {m: difference(summaries[base][g], summaries[name][g], m) for m in METRICS}
                    for g in GROUPS if g in summaries[base] and g in summaries[name]}
             for name in names[1:]}
    return {"baseline": base, "reports": {n: [str(p) for p in r] for n, r in models},
            "pooled": summaries, "placement": {n: placement(objs) for n, objs in objects.items()},
            "differences": diffs, "objects": objects}


def markdown(result: dict, groups: tuple[str, ...] = ("all", "seen", "held_out")) -> str:
    names = list(result["pooled"])
    base = result["baseline"]
    head = ["group", "metric", *names, *(f"{n} - {base}" for n in names[1:])]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g in groups:
        for m in METRICS:
            cells = []
            for n in names:
                s = result["pooled"][n].get(g)
                v = s.get(m) if s else None
                cells.append("-" if v is None else f"{v:.3f} +- {s['se'][m]:.3f}")
            for n in names[1:]:
                d = result["differences"][n].get(g, {}).get(m)
                cells.append("-" if d is None else
                             f"{d['difference']:+.3f} +- {d['se']:.3f}" + (" **shown**" if d["shown"] else ""))
            if any(c != "-" for c in cells):
                lines.append(f"| {g} | {m} | " + " | ".join(cells) + " |")
    counts = ", ".join(f"{n}: {result['pooled'][n]['all']['objects']} objects" for n in names)
    place = ["", "| feature placement | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for key, label in (("within_one_bin", "seen within 45 degrees of the camera"),
                       ("back_seen", "seen from the back")):
        num, den = PLACEMENT[key]
        cells = []
        for n in names:
            pl = result["placement"][n]
            cells.append("-" if pl[key] is None else f"{pl[key]:.2f} ({pl[num]} / {pl[den]})")
        place.append(f"| {label} | " + " | ".join(cells) + " |")
    return ("\n".join(lines) + f"\n\n({counts}; +- 1 standard error; shown = beyond 2 se)\n"
            + "\n".join(place) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", nargs="+", action="append", required=True, metavar=("NAME", "REPORT"),
                   help="a name and its report.json files; the first --model is the baseline")
    p.add_argument("--json", type=Path, help="write the comparison here")
    args = p.parse_args(argv)
    models = []
    for spec in args.model:
        if len(spec) < 2:
            p.error(f"--model {spec[0]}: give the name, then at least one report.json")
        models.append((spec[0], [Path(s) for s in spec[1:]]))
    if len(models) < 2:
        p.error("give at least two --model entries (the first is the baseline)")
    result = compare(models)
    print(markdown(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
