"""Stack the ``views.png`` (or another picture) of several text-to-3D runs into one labelled figure.

    python benchmarks/views_figure.py runs/t3d-tune/g20 runs/t3d-tune/g3alb_r32 \\
        --labels "CFG 20 (old recipe)" "CFG 3, albedo, grid to 32" --out docs/images/t3d_v2_tuning.png

Each row is one run's picture (``--file``, default ``views.png``: the final field from azimuth 0/90/180/270)
under its label; the first row may be another file of the first run (``--first preview.png``: the
model's own views).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from PIL import Image

    from mvdream3d.evaluation.report import labelled_rows

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="text-to-3D output folders")
    ap.add_argument("--labels", nargs="+", default=None, help="one per run (default: the folder names)")
    ap.add_argument("--file", default="views.png", help="the picture of each run")
    ap.add_argument("--first", default=None, help="also put this file of the first run on top (e.g. preview.png)")
    ap.add_argument("--first-label", default="the model's own 4 views (preview.png)")
    ap.add_argument("--zoom", type=int, default=2)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    labels = args.labels or [Path(r).name for r in args.runs]
    if len(labels) != len(args.runs):
        raise SystemExit(f"--labels: {len(labels)} labels for {len(args.runs)} runs; give one per run")
    rows = [(label, Path(run) / args.file) for label, run in zip(labels, args.runs, strict=True)]
    if args.first:
        rows.insert(0, (args.first_label, Path(args.runs[0]) / args.first))
    missing = [str(p) for _, p in rows if not p.is_file()]
    if missing:
        raise SystemExit(f"not found: {', '.join(missing)} (a finished run writes views.png)")
    canvas = labelled_rows([(label, Image.open(p).convert("RGB")) for label, p in rows], args.zoom)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    canvas.save(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
