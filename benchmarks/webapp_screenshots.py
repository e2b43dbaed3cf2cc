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
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUBJECT = "a large cyan pyramid with a pink horn"  # benchmarks/dreambooth_eval.py's unseen subject
TABS = ("multiview", "text-to-3d", "dreambooth", "gallery")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(out: Path, log: Path, timeout: float = 600) -> tuple[subprocess.Popen, str]:
    """``mvdream3d serve`` with its defaults on a free port; returns once the page answers."""
    port = _free_port()
    cmd = [sys.executable, "-m", "mvdream3d.cli", "serve", "--out", str(out), "--port", str(port)]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)  # noqa: SIM115
    url, deadline = f"http://127.0.0.1:{port}/", time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited ({proc.returncode}); see {log}")
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            pass
        time.sleep(0.5)
    proc.terminate()
    raise SystemExit(f"the server did not answer in {timeout:.0f} s; see {log}")


def start_browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver_path = shutil.which("chromedriver")
    if binary is None or driver_path is None:
        raise SystemExit("needs Chromium and its driver: apt-get install -y chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000",
                "--enable-unsafe-swiftshader", "--mute-audio"):
        options.add_argument(arg)
    return webdriver.Chrome(options=options, service=Service(driver_path))


# ------------------------------------------------------------------------------------------- page helpers
def _css(d, css: str) -> list:
    from selenium.webdriver.common.by import By

    return d.find_elements(By.CSS_SELECTOR, css)


def _wait(d, condition, timeout: float, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(d, timeout, poll_frequency=0.5).until(lambda drv: condition(drv), message=what)


def _open(d, url: str, tab: str) -> None:
    from selenium.common.exceptions import ElementClickInterceptedException

    d.get(url)
    _wait(d, lambda drv: _css(drv, "#mv-generate"), 120, "page loaded")
    button = next(b for b in _css(d, "button[role=tab]") if b.text.strip() == tab)

    def selected(drv) -> bool:
        try:
            button.click()
        except ElementClickInterceptedException:
            return False
        return button.get_attribute("aria-selected") == "true"

    _wait(d, selected, 60, f"tab {tab}")


def _fill(d, elem_id: str, value) -> None:
    from selenium.webdriver.common.keys import Keys

    field = _css(d, f"#{elem_id} textarea, #{elem_id} input")[0]
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(Keys.DELETE)
    field.send_keys(str(value))
    field.send_keys(Keys.TAB)


def _loaded(d, css: str) -> list:
    images = _css(d, css)
    return images if images and all(d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0",
                                                     i) for i in images) else []


def _settled(element, timeout: float = 60) -> None:
    """Wait until an element (the 3D viewer's WebGL canvas) shows something and has stopped changing."""
    from PIL import Image, ImageChops, ImageStat

    previous, deadline = None, time.monotonic() + timeout
    while time.monotonic() < deadline:
        image = Image.open(io.BytesIO(element.screenshot_as_png)).convert("L")
        if previous is not None and previous.size == image.size and max(ImageStat.Stat(image).stddev) > 2.0 \
                and ImageChops.difference(previous, image).getbbox() is None:
            return
        previous = image
        time.sleep(1.0)


def _shot(d, path: Path, height: int, drawn: str | None = None) -> None:
    d.set_window_size(1400, height)
    d.execute_script("window.scrollTo(0, 0)")
    time.sleep(1.5)
    if drawn:
        _settled(_css(d, drawn)[0])
        d.execute_script("window.scrollTo(0, 0)")
    d.save_screenshot(str(path))
    d.set_window_size(1400, 1000)
    print(f"  wrote {path}", flush=True)


def _status(d, elem_id: str) -> str:
    found = _css(d, f"#{elem_id}")
    return found[0].text if found else ""


# ------------------------------------------------------------------------------------------------ the tabs
def multiview(d, url: str, shots: Path, prompt: str) -> None:
    _open(d, url, "Multi-view")
    _fill(d, "mv-prompt", prompt)
    _css(d, "#mv-generate")[0].click()
    _wait(d, lambda drv: len(_loaded(drv, "#mv-gallery img")) >= 4, 600, "4 views")
    _wait(d, lambda drv: _loaded(drv, "#mv-grid img"), 60, "the grid")
    _shot(d, shots / "multiview.png", 1300)


def text_to_3d(d, url: str, shots: Path, prompt: str, timeout: float) -> None:
    _open(d, url, "Text-to-3D")
    _fill(d, "t3d-prompt", prompt)
    _css(d, "#t3d-run")[0].click()
    last = [0.0]

    def done(drv) -> bool:
        status = _status(drv, "t3d-status")
        if time.monotonic() - last[0] > 60:
            print("  " + " | ".join(status.split("\n")[:2])[:160], flush=True)
            last[0] = time.monotonic()
        return "Done" in status

    _wait(d, done, timeout, "text-to-3D finished")
    _wait(d, lambda drv: _css(drv, "#t3d-model3d canvas"), 120, "the 3D viewer")
    _shot(d, shots / "text-to-3d.png", 1400, drawn="#t3d-model3d canvas")


def dreambooth(d, url: str, shots: Path, n_photos: int, steps: int, workdir: Path, timeout: float) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from dreambooth_eval import render_photos

    from mvdream3d.evaluation.prompts import prompt_from_text

    photos = workdir / "photos"
    render_photos(prompt_from_text(SUBJECT).attributes, n_photos, 64, photos)
    _open(d, url, "DreamBooth")
    _css(d, "#db-photos input[type=file]")[0].send_keys("\n".join(str(p) for p in sorted(photos.glob("*.png"))))
    _wait(d, lambda drv: "photo" in _css(drv, "#db-photos")[0].text, 120, "photos uploaded")
    _fill(d, "db-class", "toy")
    _fill(d, "db-steps", steps)
    _css(d, "#db-train")[0].click()
    _wait(d, lambda drv: "Trained" in _status(drv, "db-status"), timeout, "DreamBooth finished")
    _wait(d, lambda drv: _loaded(drv, "#db-grid img"), 120, "the subject's 4 views")
    _shot(d, shots / "dreambooth.png", 1300)


def gallery(d, url: str, shots: Path) -> None:
    _open(d, url, "Gallery")
    thumbs = _wait(d, lambda drv: _loaded(drv, "#runs-gallery img"), 120, "run thumbnails")
    thumbs[-1].click()  # the oldest: the multi-view run
    _wait(d, lambda drv: _loaded(drv, "#runs-images img"), 120, "its pictures")
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
        proc, url = start_server(work / "out", work / "server.log")
        d = start_browser()
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
            proc.terminate()
            proc.wait(60)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
