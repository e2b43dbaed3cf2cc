"""The web app's screenshots in docs/ (docs/webapp.md, README), taken from the built-in model as a user sees it.

Starts ``mvdream3d serve`` with its defaults (the built-in model, its own sampling settings and text-to-3D
recipe), drives each tab in a headless Chromium as a user would, every field left at its default except
the prompt, and saves the page after each result:

- ``multiview.png``: 4 views of ``--prompt``;
- ``text-to-3d.png``: a full default text-to-3D run of ``--t3d-prompt`` (minutes on a 2-core CPU), with
  the 3D viewer drawn;
- ``dreambooth.png``: DreamBooth on ``--db-photos`` photos of an unseen subject (rendered from the
  procedural world, as in benchmarks/dreambooth_eval.py), ``--db-steps`` steps;
- ``gallery.png``: the Gallery with the multi-view run reopened.

    python benchmarks/webapp_screenshots.py                       # all four, into docs/screenshots/
    python benchmarks/webapp_screenshots.py --only multiview,gallery

Needs the ui and dev extras (gradio, selenium) and Chromium with its driver
(``apt-get install -y chromium chromium-driver``). Prints the seconds each tab's work took.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from webapp_browser import (  # this script's folder
    by_css,
    fill,
    loaded_images,
    open_tab,
    screenshot,
    start_browser,
    start_server,
    stop_server,
    wait,
)

ROOT = Path(__file__).resolve().parent.parent
SUBJECT = "a large cyan pyramid with a pink horn"  # benchmarks/dreambooth_eval.py's unseen subject
TABS = ("multiview", "text-to-3d", "dreambooth", "gallery")


def _shot(d, path: Path, height: int, drawn: str | None = None) -> None:
    screenshot(d, path, height, drawn, settle_s=1.5, drawn_timeout=60)
    print(f"  wrote {path}", flush=True)


def _status(d, elem_id: str) -> str:
    found = by_css(d, f"#{elem_id}")
    return found[0].text if found else ""


# ------------------------------------------------------------------------------------------------ the tabs
def multiview(d, url: str, shots: Path, prompt: str) -> None:
    open_tab(d, url, "Multi-view", 120)
    fill(d, "mv-prompt", prompt)
    by_css(d, "#mv-generate")[0].click()
    wait(d, lambda drv: len(loaded_images(drv, "#mv-gallery img")) >= 4, 600, "4 views")
    wait(d, lambda drv: loaded_images(drv, "#mv-grid img"), 60, "the grid")
    _shot(d, shots / "multiview.png", 1300)


def text_to_3d(d, url: str, shots: Path, prompt: str, timeout: float) -> None:
    open_tab(d, url, "Text-to-3D", 120)
    fill(d, "t3d-prompt", prompt)
    by_css(d, "#t3d-run")[0].click()
    last = [0.0]

    def done(drv) -> bool:
        status = _status(drv, "t3d-status")
        if time.monotonic() - last[0] > 60:
            print("  " + " | ".join(status.split("\n")[:2])[:160], flush=True)
            last[0] = time.monotonic()
        return "Done" in status

    wait(d, done, timeout, "text-to-3D finished")
    wait(d, lambda drv: by_css(drv, "#t3d-model3d canvas"), 120, "the 3D viewer")
    _shot(d, shots / "text-to-3d.png", 1400, drawn="#t3d-model3d canvas")


def dreambooth(d, url: str, shots: Path, n_photos: int, steps: int, workdir: Path, timeout: float) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from dreambooth_eval import render_photos

    from mvdream3d.evaluation.prompts import prompt_from_text

    photos = workdir / "photos"
    render_photos(prompt_from_text(SUBJECT).attributes, n_photos, 64, photos)
    open_tab(d, url, "DreamBooth", 120)
    by_css(d, "#db-photos input[type=file]")[0].send_keys("\n".join(str(p) for p in sorted(photos.glob("*.png"))))
    wait(d, lambda drv: "photo" in by_css(drv, "#db-photos")[0].text, 120, "photos uploaded")
    fill(d, "db-class", "toy")
    fill(d, "db-steps", steps)
    by_css(d, "#db-train")[0].click()
    wait(d, lambda drv: "Trained" in _status(drv, "db-status"), timeout, "DreamBooth finished")
    wait(d, lambda drv: loaded_images(drv, "#db-grid img"), 120, "the subject's 4 views")
    _shot(d, shots / "dreambooth.png", 1300)


def gallery(d, url: str, shots: Path) -> None:
    open_tab(d, url, "Gallery", 120)
    thumbs = wait(d, lambda drv: loaded_images(drv, "#runs-gallery img"), 120, "run thumbnails")
    thumbs[-1].click()  # the oldest: the multi-view run
    wait(d, lambda drv: loaded_images(drv, "#runs-images img"), 120, "its pictures")
    _shot(d, shots / "gallery.png", 1300)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "screenshots"), help="where the PNGs go")
    ap.add_argument("--only", default=",".join(TABS), help=f"comma-separated, from {', '.join(TABS)}")
    ap.add_argument("--prompt", default="a red cube with a yellow nose")
    ap.add_argument("--t3d-prompt", default="a blue sphere with an orange horn")
    ap.add_argument("--db-photos", type=int, default=4)
    ap.add_argument("--db-steps", type=int, default=200, help="DreamBooth steps (the tab's default is 200)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds for a text-to-3D or DreamBooth run")
    args = ap.parse_args(argv)
    tabs = [t for t in args.only.split(",") if t]
    bad = [t for t in tabs if t not in TABS]
    if bad:
        ap.error(f"unknown tab(s) {bad}; choose from {', '.join(TABS)}")
    shots = Path(args.out)
    shots.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mvdream3d-shots-") as tmp:
        work = Path(tmp)
        try:
            proc, url = start_server(work / "out", work / "server.log", timeout=600)
            d = start_browser()
        except RuntimeError as e:
            raise SystemExit(str(e)) from None
        try:
            for tab in tabs:
                t0 = time.perf_counter()
                print(f"{tab} ...", flush=True)
                if tab == "multiview":
                    multiview(d, url, shots, args.prompt)
                elif tab == "text-to-3d":
                    text_to_3d(d, url, shots, args.t3d_prompt, args.timeout)
                elif tab == "dreambooth":
                    dreambooth(d, url, shots, args.db_photos, args.db_steps, work, args.timeout)
                else:
                    gallery(d, url, shots)
                print(f"{tab}: {time.perf_counter() - t0:.0f} s", flush=True)
        finally:
            d.quit()
            stop_server(proc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
