"""Report files of ``mvdream3d evaluate``: report.md, report.html, a bar plot and sample grids (PIL only)."""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .metrics import METRIC_NAMES

__all__ = ["bar_plot", "format_table", "sample_grid", "write_reports"]

MODEL_RGB = (52, 101, 164)
CEILING_RGB = (170, 170, 170)
GOOD_RGB = (46, 160, 67)
BAD_RGB = (214, 39, 40)
GROUP_NAMES = {
    "overall": "all prompts",
    "seen": "seen concepts",
    "held_out": "held-out 2D-only concepts",
    "with_feature": "with front feature",
    "without_feature": "without front feature",
}


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow built without FreeType
        return ImageFont.load_default()


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


# --------------------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------------------


def _text_w(draw: ImageDraw.ImageDraw, text: str, font: Any) -> int:
    b = draw.textbbox((0, 0), text, font=font)
    return int(b[2] - b[0])


def bar_plot(
    panels: Sequence[tuple[str, list[str], dict[str, list[float | None]]]], note: str = "",
) -> Image.Image:
    """Grouped bar charts side by side: each panel is ``(title, category labels, {series: values in [0, 1]})``."""
    pw, ph = 560, 380
    left, right, top, bottom = 50, 16, 74, 96
    title_font, font, small = _font(16), _font(12), _font(11)
    note_h = 22 if note else 0
    img = Image.new("RGB", (pw * len(panels), ph + note_h), "white")
    d = ImageDraw.Draw(img)
    for p, (title, cats, series) in enumerate(panels):
        x0 = p * pw
        d.text((x0 + left, 10), title, fill="black", font=title_font)
        # legend
        lx = x0 + left
        for k, name in enumerate(series):
            colour = MODEL_RGB if k == 0 else CEILING_RGB
            d.rectangle([lx, 36, lx + 12, 48], fill=colour)
            d.text((lx + 16, 35), name, fill="black", font=font)
            lx += 24 + _text_w(d, name, font)
        y_top, y_bot = top, ph - bottom
        x_l, x_r = x0 + left, x0 + pw - right
        for t in range(6):
            v = t / 5
            y = y_bot - v * (y_bot - y_top)
            d.line([x_l, y, x_r, y], fill=(230, 230, 230))
            d.text((x_l - 30, y - 7), f"{v:.1f}", fill="black", font=small)
        d.line([x_l, y_top, x_l, y_bot], fill="black")
        d.line([x_l, y_bot, x_r, y_bot], fill="black")
        n_cat, n_ser = len(cats), max(1, len(series))
        slot = (x_r - x_l) / max(1, n_cat)
        bw = slot * 0.7 / n_ser
        for c, cat in enumerate(cats):
            cx = x_l + slot * c + slot * 0.15
            for k, (_, values) in enumerate(series.items()):
                v = values[c]
                colour = MODEL_RGB if k == 0 else CEILING_RGB
                bx = cx + k * bw
                if v is None or (isinstance(v, float) and math.isnan(v)):
                    d.text((bx + 2, y_bot - 14), "n/a", fill=(120, 120, 120), font=small)
                    continue
                vv = min(max(float(v), 0.0), 1.0)
                y = y_bot - vv * (y_bot - y_top)
                d.rectangle([bx, y, bx + bw - 2, y_bot], fill=colour)
                label = f"{float(v):.2f}"
                d.text((bx + (bw - 2 - _text_w(d, label, small)) / 2, y - 14), label, fill="black", font=small)
            # category label, wrapped onto up to 3 lines
            words, lines, cur = cat.split(), [], ""
            for w in words:
                if cur and _text_w(d, cur + " " + w, small) > slot - 4:
                    lines.append(cur)
                    cur = w
                else:
                    cur = (cur + " " + w).strip()
            lines.append(cur)
            for i, ln in enumerate(lines[:4]):
                d.text((x_l + slot * c + (slot - _text_w(d, ln, small)) / 2, y_bot + 6 + 14 * i), ln,
                       fill="black", font=small)
    if note:
        d.text((10, ph + 2), note, fill=(60, 60, 60), font=font)
    return img


def labelled_rows(rows: Sequence[tuple[str, Image.Image]], zoom: int = 1) -> Image.Image:
    """[(label, PIL image), ...] -> one white PIL image: each picture under its one-line label, top to bottom,
    left-aligned; ``zoom`` enlarges the whole figure by pixel repetition (small renders stay sharp)."""
    width, label_h = max(im.width for _, im in rows), 14
    canvas = Image.new("RGB", (width, sum(im.height + label_h for _, im in rows)), "white")
    draw, y = ImageDraw.Draw(canvas), 0
    for label, im in rows:
        draw.text((2, y + 1), label, fill="black")
        canvas.paste(im, (0, y + label_h))
        y += im.height + label_h
    return canvas.resize((canvas.width * zoom, canvas.height * zoom), Image.NEAREST) if zoom != 1 else canvas


def sample_grid(
    title: str,
    rows: Sequence[tuple[str, Sequence[np.ndarray], Sequence[str], Sequence[bool]]],
    column_titles: Sequence[str],
    cell: int = 96,
) -> Image.Image:
    """One prompt's views: each row ``(label, images (H, W, 3) uint8, captions, ok flags)``; a green
    frame marks a view whose predicted shape and colour are right, a red one a wrong view."""
    font, small, title_font = _font(12), _font(11), _font(14)
    h0, w0 = rows[0][1][0].shape[:2]
    scale = max(1, math.ceil(cell / max(h0, w0)))
    ch, cw = h0 * scale, w0 * scale
    pad, label_w, cap_h, head_h = 4, 78, 30, 40
    n_cols = len(column_titles)
    width = label_w + n_cols * (cw + 2 * pad)
    height = head_h + len(rows) * (ch + 2 * pad + cap_h)
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    d.text((6, 4), title, fill="black", font=title_font)
    for j, t in enumerate(column_titles):
        x = label_w + j * (cw + 2 * pad)
        d.text((x + (cw + 2 * pad - _text_w(d, t, small)) / 2, 24), t, fill=(80, 80, 80), font=small)
    for r, (label, images, captions, oks) in enumerate(rows):
        y = head_h + r * (ch + 2 * pad + cap_h)
        d.text((4, y + ch / 2), label, fill="black", font=font)
        for j, (im, cap, ok) in enumerate(zip(images, captions, oks, strict=True)):
            x = label_w + j * (cw + 2 * pad)
            d.rectangle([x, y, x + cw + 2 * pad - 1, y + ch + 2 * pad - 1], fill=GOOD_RGB if ok else BAD_RGB)
            tile = Image.fromarray(np.ascontiguousarray(im)).resize((cw, ch), Image.Resampling.NEAREST)
            img.paste(tile, (x + pad, y + pad))
            for k, ln in enumerate(cap.split("\n")[:2]):
                d.text((x + pad, y + ch + 2 * pad + 1 + 13 * k), ln, fill="black", font=small)
    return img


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------------------


def _summary_row_values(s: dict) -> list[Any]:
    return [s.get(k) for k in METRIC_NAMES] + [s.get("fid")]


def format_table(report: dict) -> str:
    """Plain-text side-by-side table (model vs ground-truth ceiling) of the overall and group metrics."""
    cols = ["overall", *report["groups"]]
    head = f"{'metric':<30}" + "".join(f"{GROUP_NAMES.get(c, c)[:24]:>26}" for c in cols)
    lines = [head, f"{'':<30}" + "".join(f"{'model / ceiling':>26}" for _ in cols)]
    metric_keys = [*METRIC_NAMES, "fid"]
    names = {**METRIC_NAMES, "fid": "Frechet distance (features)"}
    for k in metric_keys:
        row = f"{names[k]:<30}"
        for c in cols:
            block = report["overall"] if c == "overall" else report["groups"][c]
            se = (block["model"].get("se") or {}).get(k)
            model = _fmt(block["model"].get(k)) + (f"+-{se:.3f}" if se is not None else "")
            row += f"{model + ' / ' + _fmt(block['ceiling'].get(k)):>26}"
        lines.append(row)
    row = f"{'prompts (objects)':<30}"
    for c in cols:
        block = report["overall"] if c == "overall" else report["groups"][c]
        row += f"{str(block['prompts']) + ' (' + str(block['model']['objects']) + ')':>26}"
    lines.append(row)
    if report.get("background"):
        b = report["background"]
        lines.append(f"{'background speckle':<30}{_fmt(b['speckle_mean'], 4):>26}  (mean share of background "
                     f"pixels off white by > 10/255; views over 1 %: {_fmt(b['views_over_1_percent'])})")
    lines.append("(model values: mean +- standard error over objects)")
    return "\n".join(lines)


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def _pair(a: Any, b: Any) -> str:
    return f"{_fmt(a)} / {_fmt(b)}"


def _group_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    cols = ["overall", *report["groups"]]
    header = ["metric (model / ceiling)"] + [GROUP_NAMES.get(c, c) for c in cols]
    names = {**METRIC_NAMES, "fid": "Frechet distance (classifier features)"}
    rows = []
    for k in [*METRIC_NAMES, "fid"]:
        r = [names[k]]
        for c in cols:
            b = report["overall"] if c == "overall" else report["groups"][c]
            r.append(_pair(b["model"].get(k), b["ceiling"].get(k)))
        rows.append(r)
    r = ["prompts / objects per side"]
    for c in cols:
        b = report["overall"] if c == "overall" else report["groups"][c]
        r.append(f"{b['prompts']} / {b['model']['objects']}")
    rows.append(r)
    return header, rows


def _prompt_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    header = ["#", "prompt", "group", "prompt acc.", "consistency", "camera", "Janus", "shape acc.", "colour acc."]
    rows = []
    for i, p in enumerate(report["prompts"]):
        m, c = p["model"], p["ceiling"]
        rows.append([
            str(i), p["text"], ", ".join(p["groups"]),
            _pair(m["prompt_accuracy"], c["prompt_accuracy"]), _pair(m["consistency"], c["consistency"]),
            _pair(m["camera_adherence"], c["camera_adherence"]), _pair(m["janus_rate"], c["janus_rate"]),
            _pair(m["shape_accuracy"], c["shape_accuracy"]), _pair(m["color_accuracy"], c["color_accuracy"]),
        ])
    return header, rows


def _settings_lines(report: dict) -> list[str]:
    s = report["settings"]
    v = report["views"]
    clf = report["classifier"]
    acc = clf.get("test_accuracy") or {}
    lines = [
        f"model: `{report['model']}`",
        f"prompts: {len(report['prompts'])} from `{s['prompts']}`; {s['num_objects']} object(s) per prompt; "
        f"held-out concepts: {', '.join(s['held_out_concepts'])}",
        f"sampling: {s['steps']} {s['sampler']} steps, guidance {s['guidance']} "
        f"(rescale {s.get('guidance_rescale') or 0}), {s['size']} px, seed {s['seed']}, "
        f"prompt suffix {s['suffix']!r}" if report["model"] != "ground-truth" else
        f"ground-truth renders at {s['size']} px (seed {s['seed']}): the ceiling evaluated as a model",
        f"views: elevation {v['elevation']}, azimuths {', '.join(str(a) for a in v['azimuths'])}, fov {v['fov_deg']}",
        f"classifier: `{clf['path']}`" + (
            " (held-out test accuracy: " + ", ".join(f"{k} {x:.3f}" for k, x in acc.items()) + ")" if acc else ""),
        "ceiling: the same metrics on ground-truth renders of the same prompts and cameras (a second draw of "
        "the attributes a prompt leaves open); Frechet distances are to a reference draw of ground-truth renders",
    ]
    return lines


def write_reports(report: dict, out: Path, plot: Image.Image, grids: Sequence[Image.Image]) -> dict[str, str]:
    """Write report.json, report.md, report.html, metrics.png and grids/prompt_XXX.png into ``out``."""
    out = Path(out)
    (out / "grids").mkdir(exist_ok=True)
    plot_png = _png_bytes(plot)
    (out / "metrics.png").write_bytes(plot_png)
    grid_files, grid_pngs = [], []
    for i, g in enumerate(grids):
        b = _png_bytes(g)
        name = f"grids/prompt_{i:03d}.png"
        (out / name).write_bytes(b)
        grid_files.append(name)
        grid_pngs.append(b)
    files = {"json": "report.json", "markdown": "report.md", "html": "report.html", "plot": "metrics.png",
             "grids": grid_files}
    report = dict(report, files=files)
    (out / "report.json").write_text(json.dumps(report, indent=1, default=_json_default) + "\n")

    gh, gr = _group_rows(report)
    ph_, pr = _prompt_rows(report)
    md = [f"# Evaluation of `{report['model']}`", ""]
    md += [f"- {ln}" for ln in _settings_lines(report)]
    md += ["", "## Metrics (model / ground-truth ceiling)", "", _md_table(gh, gr), "",
           "![metrics vs ceiling](metrics.png)", "", "## Per prompt (model / ceiling)", "", _md_table(ph_, pr), "",
           "## Samples", "",
           "Rows: generated objects, then a ground-truth render; green frame: shape and colour read right, red: "
           "wrong. Under each view: the classifier's colour and shape, azimuth bin, and `F` if it sees the "
           "front feature.", ""]
    for p, f in zip(report["prompts"], grid_files, strict=True):
        md += [f"### {p['text']}", "", f"![{p['text']}]({f})", ""]
    (out / "report.md").write_text("\n".join(md))

    def table(header: list[str], rows: list[list[str]]) -> str:
        h = "".join(f"<th>{html.escape(x)}</th>" for x in header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(x)}</td>" for x in r) + "</tr>" for r in rows)
        return f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"

    def data_uri(b: bytes) -> str:
        return "data:image/png;base64," + base64.b64encode(b).decode("ascii")

    doc = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>mvdream3d evaluation: {html.escape(report['model'])}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;"
        "margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left}"
        "th{background:#f0f0f0}.grids{display:flex;flex-wrap:wrap;gap:12px}.grids figure{margin:0}"
        "</style></head><body>",
        f"<h1>Evaluation of <code>{html.escape(report['model'])}</code></h1><ul>",
        *[f"<li>{_code(html.escape(ln))}</li>" for ln in _settings_lines(report)],
        "</ul><h2>Metrics (model / ground-truth ceiling)</h2>", table(gh, gr),
        f"<img alt='metrics vs ceiling' src='{data_uri(plot_png)}'>",
        "<h2>Per prompt (model / ceiling)</h2>", table(ph_, pr),
        "<h2>Samples</h2><p>Rows: generated objects, then a ground-truth render; green frame: shape and colour "
        "read right, red: wrong. Under each view: the classifier's colour and shape, azimuth bin, and F if it "
        "sees the front feature.</p><div class='grids'>",
        *[f"<figure><img alt='{html.escape(p['text'])}' src='{data_uri(b)}'></figure>"
          for p, b in zip(report["prompts"], grid_pngs, strict=True)],
        "</div></body></html>",
    ]
    (out / "report.html").write_text("\n".join(doc))
    return files


def _code(text: str) -> str:
    """Markdown `code` spans -> <code> (on already escaped text)."""
    import re

    return re.sub(r"`([^`]*)`", r"<code>\1</code>", text)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
