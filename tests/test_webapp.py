"""``mvdream3d serve`` in a real browser (headless Chromium via Selenium) and through gradio_client.

One server (tiny-random model, tiny text-to-3D settings) serves the whole module. The browser tests skip
when Chromium or chromedriver is missing (``apt-get install -y chromium chromium-driver``); everything
here skips without the ``ui`` extra. ``MVDREAM3D_SCREENSHOTS=DIR`` saves a screenshot of each tab (tiny random
model) to DIR; the screenshots in docs/ come from the built-in model (benchmarks/webapp_screenshots.py).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import REQUIRE_BROWSER, skip_unless_required

from mvdream3d.cli import main


def _browser_helpers():
    """``benchmarks/webapp_browser.py``, the helpers the screenshot benchmark uses too (not a package module:
    the package does not depend on selenium)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "webapp_browser.py"
    spec = importlib.util.spec_from_file_location("webapp_browser", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_B = _browser_helpers()
by_css, chromium_paths, fill, http_get, loaded_images = _B.by_css, _B.chromium_paths, _B.fill, _B.http_get, \
    _B.loaded_images
open_tab, screenshot, select_tab, start_browser, start_server = _B.open_tab, _B.screenshot, _B.select_tab, \
    _B.start_browser, _B.start_server
stop_server, wait = _B.stop_server, _B.wait

TINY_3D = [
    "cameras.resolution_milestones=[[0,16,4]]", "guidance.render_size=64", "renderer.num_samples_per_ray=12",
    "material.ambient_only_steps=1", "export.mesh_resolution=24", "export.video_frames=3", "export.video_size=32",
    "export.view_size=32", "output.preview_steps=2", "output.progress_every=1", "geometry.log2_hashmap_size=10",
    "geometry.n_levels=4", "geometry.max_resolution=32",
]
TIMEOUT = 300  # seconds for one job: generous, for a loaded 2-core machine
SERVER_START_TIMEOUT = 600  # imports and the default model's load, on a loaded machine
MAX_QUEUE = 3  # the server's --max-queue: small, so that the queue test fills it with few jobs
BROWSER_HINT = "the browser tests need Chromium: apt-get install -y chromium chromium-driver"


@dataclass
class Server:
    url: str
    out: Path
    log: Path


def _start_server(out: Path, log: Path, extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen, Server]:
    """``mvdream3d serve`` (tiny-random, tiny text-to-3D settings) on a free port, once it answers."""
    args = ["--model", "tiny-random", "--config", "builtin", "--dreambooth-set", "sample_steps=2",
            "--max-queue", str(MAX_QUEUE), *extra]
    for s in TINY_3D:
        args += ["--set", s]
    try:
        proc, url = start_server(out, log, args, timeout=SERVER_START_TIMEOUT)
    except RuntimeError as e:
        pytest.fail(str(e))
    return proc, Server(url, out, log)


def _require_gradio() -> None:
    try:
        import gradio  # noqa: F401
    except ImportError as e:
        skip_unless_required(REQUIRE_BROWSER, f'the web app needs the ui extra: pip install -e ".[dev,ui]" ({e})')


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Server:
    _require_gradio()
    base = tmp_path_factory.mktemp("webapp")
    proc, srv = _start_server(base / "out", base / "server.log")
    try:
        yield srv
    finally:
        stop_server(proc)


@pytest.fixture(scope="module")
def browser():
    try:
        import selenium  # noqa: F401
    except ImportError as e:
        skip_unless_required(REQUIRE_BROWSER, f"the browser tests need selenium (dev extra): {e}")
    if chromium_paths() is None:
        skip_unless_required(REQUIRE_BROWSER, BROWSER_HINT)
    driver = start_browser()
    yield driver
    driver.quit()


# ---------------------------------------------------------------------------------------------- helpers
def _open(d, server: Server, tab: str = "Multi-view") -> None:
    open_tab(d, server.url, tab)


def _value(d, elem_id: str) -> str:
    """What a field shows (a Number's or Textbox's text, a Dropdown's selected label)."""
    return by_css(d, f"#{elem_id} textarea, #{elem_id} input")[0].get_attribute("value")


def _choose(d, elem_id: str, label: str) -> None:
    """Pick the option of a gr.Dropdown whose label contains ``label``."""
    from selenium.common.exceptions import WebDriverException

    def option(drv):
        found = next((o for o in by_css(drv, "[role=option]") if label in o.get_attribute("textContent")), None)
        if found is None:
            try:
                by_css(drv, f"#{elem_id} input")[0].click()  # (again: an update may have closed the list)
            except WebDriverException:
                pass
        return found

    wait(d, option, 60, f"the option {label!r} of #{elem_id}").click()


def _text(d, elem_id: str) -> str:
    return by_css(d, f"#{elem_id}")[0].text


def _record_texts(d, elem_id: str) -> None:
    """Keep every text ``#elem_id`` shows from now on in ``window.seen[elem_id]`` (read with _seen_texts)."""
    d.execute_script("""
        const id = arguments[0], el = document.getElementById(id);
        window.seen = window.seen || {}; const seen = window.seen[id] = [el.innerText];
        new MutationObserver(() => { if (seen[seen.length - 1] !== el.innerText) seen.push(el.innerText); })
            .observe(el, {subtree: true, childList: true, characterData: true});""", elem_id)


def _seen_texts(d, elem_id: str) -> list[str]:
    return d.execute_script("return (window.seen || {})[arguments[0]] || []", elem_id)


def _step(status: str) -> int:
    """The optimisation step a text-to-3D status shows ("... step 12/5000 ..."), 0 when it shows none."""
    import re

    found = re.search(r"optimisation.*?step (\d+)/\d+", status, re.S)
    return int(found.group(1)) if found else 0


def _toasts(d) -> str:
    return " ".join(t.text for t in by_css(d, ".toast-body"))


def _close_toasts(d) -> None:
    d.execute_script("document.querySelectorAll('.toast-close').forEach(b => b.click())")
    wait(d, lambda drv: not by_css(drv, ".toast-body"), 10, "toasts closed")


def _pixel_std(d, img) -> float:
    """Standard deviation of an image's pixel values, computed in the browser (0 for a blank image)."""
    return d.execute_script("""
        const img = arguments[0], c = document.createElement('canvas');
        c.width = img.naturalWidth; c.height = img.naturalHeight;
        const g = c.getContext('2d'); g.drawImage(img, 0, 0);
        const px = g.getImageData(0, 0, c.width, c.height).data;
        let n = 0, s = 0, s2 = 0;
        for (let i = 0; i < px.length; i += 4)
            for (let k = 0; k < 3; k++) { n++; s += px[i + k]; s2 += px[i + k] ** 2; }
        return Math.sqrt(Math.max(0, s2 / n - (s / n) ** 2));""", img)


def _shot(d, name: str, height: int = 1300, drawn: str | None = None) -> None:
    """With MVDREAM3D_SCREENSHOTS=DIR, save the page as DIR/NAME.png (after ``drawn``, e.g. a WebGL canvas,
    shows something, or 30 s)."""
    if not os.environ.get("MVDREAM3D_SCREENSHOTS"):
        return
    shots = Path(os.environ["MVDREAM3D_SCREENSHOTS"])
    shots.mkdir(parents=True, exist_ok=True)
    screenshot(d, shots / f"{name}.png", height, drawn)


def _file_names(d, css: str) -> set[str]:
    """Names of the files a gr.File offers for download."""
    links = [a.get_attribute("href") or "" for a in by_css(d, f"{css} a[href]")]
    return {link.split("?")[0].rsplit("/", 1)[-1] for link in links if "file=" in link}


def _runs(server: Server, kind: str) -> list[dict]:
    """The run.json of every run of ``kind``, oldest first, with the run folder under ``"dir"``."""
    runs = [{**json.loads(p.read_text()), "dir": p.parent} for p in (server.out / kind).glob("*/run.json")]
    return sorted(runs, key=lambda r: r["started_at"])


def _generate(d, prompt: str, views: int = 4, steps: int = 2) -> None:
    fill(d, "mv-prompt", prompt)
    fill(d, "mv-views", views)
    fill(d, "mv-steps", steps)
    by_css(d, "#mv-generate")[0].click()


# ---------------------------------------------------------------------------------------------- browser
def test_multiview_tab_shows_views_grid_cameras_and_downloads(server, browser):
    d = browser
    _open(d, server)
    _generate(d, "a red cube with a yellow nose", views=4, steps=2)
    images = wait(d, lambda drv: len(loaded_images(drv, "#mv-gallery img")) >= 4 and
                   loaded_images(drv, "#mv-gallery img"), TIMEOUT, "4 views in the gallery")
    assert len(images) == 4
    for img in images:
        assert _pixel_std(d, img) > 1.0, "a blank view"
    wait(d, lambda drv: loaded_images(drv, "#mv-grid img"), 30, "the grid")
    downloads = wait(d, lambda drv: _file_names(drv, "#mv-files"), 30, "downloads")
    assert downloads == {"grid.png", "cameras.json"} | {f"view_00_0{i}.png" for i in range(4)}
    assert "az 90°, el 15°" in d.page_source  # the cameras used, as captions
    run = _runs(server, "generate")[-1]
    assert run["status"] == "done" and run["settings"]["steps"] == 2
    _shot(d, "multiview")


def test_bad_input_shows_a_readable_error_and_the_server_goes_on(server, browser):
    d = browser
    _open(d, server)
    _generate(d, "", steps=2)
    wait(d, lambda drv: "prompt is empty" in _toasts(drv), 60, "empty-prompt error")
    _close_toasts(d)
    _generate(d, "a blue sphere", views=0, steps=2)
    wait(d, lambda drv: "number of views must be a whole number between 1 and 16" in _toasts(drv), 60,
          "0-views error")
    assert "Traceback" not in d.page_source
    _close_toasts(d)
    _generate(d, "a blue sphere", views=2, steps=2)
    wait(d, lambda drv: len(loaded_images(drv, "#mv-gallery img")) == 2, TIMEOUT, "the next request works")


def test_text_to_3d_tab_ends_in_a_3d_viewer_and_a_video(server, browser):
    from mvdream3d.threed.config import load_text_to_3d_config
    from mvdream3d.webapp.jobs import T3D_STAGES

    scale = load_text_to_3d_config("builtin").guidance.guidance_scale
    d = browser
    _open(d, server, "Text-to-3D")
    # the fields start at the recipe the server uses for the model (builtin with TINY_3D: its CFG, 16 px)
    assert float(_value(d, "t3d-guidance")) == scale and float(_value(d, "t3d-resolution")) == 16
    fill(d, "t3d-prompt", "a red cube with a yellow nose")
    fill(d, "t3d-steps", 2)
    fill(d, "t3d-resolution", 24)
    by_css(d, "#t3d-run")[0].click()
    status = wait(d, lambda drv: "Done" in _text(drv, "t3d-status") and _text(drv, "t3d-status"),
                  TIMEOUT, "text-to-3D finished")
    run = _runs(server, "text-to-3d")[-1]
    assert run["status"] == "done" and run["used"] == {"steps": 2, "render resolution": "24 px",
                                                       "guidance scale": scale, "seed": 0, "model": "tiny-random"}
    config = yaml.safe_load((run["dir"] / "config.yaml").read_text())
    assert config["cameras"]["resolution_milestones"] == [[0, 24, 4]] and config["guidance"]["guidance_scale"] == scale
    # the result names the settings it used and where the time went, every stage by name
    assert (f"Settings used: steps 2, render resolution 24 px, guidance scale {scale:g}, seed 0, model tiny-random"
            in status)
    time_line = next(line for line in status.split("\n") if line.startswith("Time: "))
    for stage in T3D_STAGES.values():
        assert stage in time_line, (stage, time_line)
    preview = wait(d, lambda drv: loaded_images(drv, "#t3d-preview img"), 30, "multi-view preview")
    assert _pixel_std(d, preview[0]) > 1.0
    link = wait(d, lambda drv: by_css(drv, "#t3d-model3d [data-testid=model3d-download-link]"), 30, "3D viewer")
    glb_url = link[0].get_attribute("href")
    assert glb_url.split("?")[0].endswith(".glb")
    status, body = http_get(glb_url)
    assert status == 200 and body[:4] == b"glTF"
    wait(d, lambda drv: by_css(drv, "#t3d-model3d canvas"), 60, "the 3D viewer's canvas")
    video = by_css(d, "#t3d-video video")[0]
    assert video.get_attribute("src").split("?")[0].endswith(".mp4")
    wait(d, lambda drv: drv.execute_script("return arguments[0].readyState", video) >= 2, 60, "video loaded")
    d.execute_script("arguments[0].play()", video)
    wait(d, lambda drv: drv.execute_script("const v = arguments[0]; return !v.error && !v.paused", video), 30,
          "video playing")
    assert _file_names(d, "#t3d-files") >= {"mesh.glb", "mesh.obj", "turntable.mp4"}
    _shot(d, "text-to-3d", 1400, drawn="#t3d-model3d canvas")
    # after the screenshot (this swaps the images): the built-in model's 4 x 32 px images (128 px wide)
    # must fill their panels too, not sit at natural size
    for panel in ("t3d-preview", "t3d-live"):
        d.execute_script("const c = document.createElement('canvas'); c.width = 128; c.height = 32; "
                         "document.querySelector('#' + arguments[0] + ' img').src = c.toDataURL()", panel)
        wait(d, lambda drv, p=panel: drv.execute_script(
            "const i = document.querySelector('#' + arguments[0] + ' img'); "
            "return i.complete && i.naturalWidth === 128", p), 10, f"#{panel}: a 128 px image")
        img_w, panel_w = d.execute_script(
            "const p = document.querySelector('#' + arguments[0]); "
            "return [p.querySelector('img').getBoundingClientRect().width, p.getBoundingClientRect().width]", panel)
        assert img_w > 0.9 * panel_w, f"#{panel}: a 128 px image drawn {img_w:.0f} px wide in {panel_w:.0f} px"


def test_a_second_user_waits_in_the_queue_and_cancel_keeps_the_run(server, browser):
    """User A's text-to-3D runs until cancelled, so user B's request must wait, whatever the machine's speed."""
    d = browser
    _open(d, server, "Text-to-3D")
    user_a = d.current_window_handle
    fill(d, "t3d-prompt", "a long run")
    fill(d, "t3d-steps", 5000)
    by_css(d, "#t3d-run")[0].click()
    # the progress: the named stage, the step, the rate measured and the time left once two steps are done
    status = wait(d, lambda drv: _step(_text(drv, "t3d-status")) >= 3 and "left in this stage" in _text(
        drv, "t3d-status") and _text(drv, "t3d-status"), TIMEOUT, "A optimising, with a time estimate")
    assert "optimisation (stage 2 of 11)" in status and "/5000" in status and "s/step" in status
    d.switch_to.new_window("tab")
    _open(d, server)
    _generate(d, "second user", views=2, steps=2)
    wait(d, lambda drv: "queue" in by_css(drv, "#mv-gallery")[0].text, 60, "B sees their place in the queue")
    d.switch_to.window(user_a)
    wait(d, lambda drv: loaded_images(drv, "#t3d-live img"), 60, "A's live 4-view render")
    by_css(d, "#t3d-cancel")[0].click()
    status = wait(d, lambda drv: "Stopped at step" in by_css(drv, "#t3d-status")[0].text and
                   by_css(drv, "#t3d-status")[0].text, 120, "A stopped")
    assert "--resume" in status
    d.switch_to.window(d.window_handles[-1])
    wait(d, lambda drv: len(loaded_images(drv, "#mv-gallery img")) == 2, TIMEOUT, "B's request done after A's")
    d.close()
    d.switch_to.window(user_a)
    a, b = _runs(server, "text-to-3d")[-1], _runs(server, "generate")[-1]
    assert a["prompt"] == "a long run" and a["status"] == "stopped" and 1 <= a["steps_done"] < 5000
    assert b["prompt"] == "second user" and b["status"] == "done"
    assert b["started_at"] >= a["finished_at"], "heavy jobs must run one at a time, in order"
    assert (a["dir"] / "checkpoints" / "latest").is_dir()
    assert "model: tiny-random" in (a["dir"] / "config.yaml").read_text()  # what --resume needs


def test_dreambooth_tab_trains_and_adds_the_model_to_the_pickers(server, browser, tmp_path):
    from PIL import Image, ImageDraw

    photos = []
    for i in range(3):
        im = Image.new("RGB", (64, 64), "white")
        ImageDraw.Draw(im).ellipse([10 + 3 * i, 12, 54, 52], fill=(40, 90, 200))
        photos.append(tmp_path / f"photo{i}.png")
        im.save(photos[-1])
    fake = tmp_path / "not_a_photo.png"
    fake.write_text("this is text")
    d = browser
    _open(d, server, "DreamBooth")
    upload = by_css(d, "#db-photos input[type=file]")[0]
    upload.send_keys("\n".join(str(p) for p in [*photos[:2], fake]))
    wait(d, lambda drv: "not_a_photo" in by_css(drv, "#db-photos")[0].text, 60, "uploaded")
    fill(d, "db-class", "toy")
    fill(d, "db-steps", 2)
    by_css(d, "#db-train")[0].click()
    wait(d, lambda drv: "not an image" in _toasts(drv), 60, "bad-upload error")
    _close_toasts(d)
    _open(d, server, "DreamBooth")  # a fresh page: an empty upload box
    by_css(d, "#db-photos input[type=file]")[0].send_keys("\n".join(str(p) for p in photos))
    wait(d, lambda drv: "photo2" in by_css(drv, "#db-photos")[0].text, 60, "uploaded")
    from mvdream3d.training.dreambooth import DreamBoothConfig

    defaults = DreamBoothConfig()
    assert float(_value(d, "db-steps")) == defaults.steps
    assert float(_value(d, "db-lambda")) == defaults.lambda_preservation
    fill(d, "db-class", "toy")
    fill(d, "db-steps", 2)
    _record_texts(d, "db-status")
    by_css(d, "#db-train")[0].click()
    status = wait(d, lambda drv: "Trained" in _text(drv, "db-status") and _text(drv, "db-status"),
                  TIMEOUT, "DreamBooth finished")
    assert "Settings used: steps 2, lambda 1, model tiny-random, training full, sample steps 2" in status
    time_line = next(line for line in status.split("\n") if line.startswith("Time: "))
    for stage in ("loading the model and the photos", "training", "saving the model", "drawing the 4-view grid"):
        assert stage in time_line, (stage, time_line)
    assert any("DreamBooth" in t and "(stage " in t for t in _seen_texts(d, "db-status")), "no progress shown"
    wait(d, lambda drv: loaded_images(drv, "#db-grid img"), 30, "the new subject's 4 views")
    _shot(d, "dreambooth")
    select_tab(d, "Multi-view")
    assert "DreamBooth: a sks toy" in by_css(d, "#mv-model input")[0].get_attribute("value")
    by_css(d, "#mv-model input")[0].click()
    wait(d, lambda drv: any("DreamBooth: a sks toy" in o.text for o in by_css(drv, "[role=option]")), 30,
          "the new model among the Multi-view picker's options")
    _generate(d, "a sks toy", views=4, steps=2)  # the new model generates
    wait(d, lambda drv: len(loaded_images(drv, "#mv-gallery img")) == 4, TIMEOUT, "views from the new model")
    assert _runs(server, "generate")[-1]["settings"]["model"].startswith("dreambooth:")


def test_gallery_lists_runs_newest_first_and_reopens_them(server, browser):
    from gradio_client import Client

    Client(server.url, verbose=False).predict("a gallery entry", "", 2, 15, 0, "ddim", 1, 7.5, 0, "tiny-random",
                                              api_name="/generate")
    d = browser
    _open(d, server, "Gallery")
    thumbs = wait(d, lambda drv: loaded_images(drv, "#runs-gallery img"), 60, "run thumbnails")
    captions = [line for line in by_css(d, "#runs-gallery")[0].text.split("\n") if ": " in line]
    assert "a gallery entry" in captions[0], captions  # newest first
    thumbs[0].click()
    wait(d, lambda drv: "a gallery entry" in by_css(drv, "#runs-info")[0].text, 60, "run reopened")
    wait(d, lambda drv: len(loaded_images(drv, "#runs-images img")) >= 3, 60, "its pictures")
    _shot(d, "gallery")


def test_fields_start_at_the_models_settings_and_examples_fill_the_prompt(server, browser):
    """The Multi-view fields start at the selected model's own sampling settings (its config's ``sampling``)
    and follow the picker; an example prompt fills the prompt field."""
    from mvdream3d.modelinfo import summarize
    from mvdream3d.pipeline import resolve_model
    from mvdream3d.webapp.app import EXAMPLE_PROMPTS

    d = browser
    _open(d, server)
    tiny = resolve_model("tiny-random").sampling_defaults
    assert (_value(d, "mv-sampler"), float(_value(d, "mv-steps")), float(_value(d, "mv-guidance"))) == (
        tiny["sampler"], tiny["steps"], tiny["guidance_scale"])
    example = next(e for e in by_css(d, "#mv-examples button, #mv-examples td") if EXAMPLE_PROMPTS[1] in e.text)
    example.click()
    wait(d, lambda drv: _value(drv, "mv-prompt") == EXAMPLE_PROMPTS[1], 30, "the example in the prompt field")
    builtin = summarize("mvdream3d-tiny")
    if builtin is None:
        pytest.skip("the built-in model's weights are not installed")
    own = builtin[0]["model"]["params"]["sampling"]
    _choose(d, "mv-model", "mvdream3d-tiny")
    wait(d, lambda drv: float(_value(drv, "mv-steps")) == own["steps"], 120, "the built-in model's steps")
    assert float(_value(d, "mv-guidance")) == own["guidance_scale"] and _value(d, "mv-sampler") == own["sampler"]


def test_small_views_are_shown_enlarged_and_downloaded_native(server, browser):
    """The built-in model's small views appear enlarged by nearest neighbour (every pixel a block), the
    downloads are the native files."""
    import io

    import numpy as np
    from PIL import Image

    from mvdream3d.modelinfo import summarize
    from mvdream3d.webapp.handlers import DISPLAY_HEIGHT

    if summarize("mvdream3d-tiny") is None:
        pytest.skip("the built-in model's weights are not installed")
    d = browser
    _open(d, server)
    _choose(d, "mv-model", "mvdream3d-tiny")
    fill(d, "mv-prompt", "a green cylinder with an orange horn")
    fill(d, "mv-steps", 2)
    by_css(d, "#mv-generate")[0].click()
    images = wait(d, lambda drv: len(loaded_images(drv, "#mv-gallery img")) == 4 and
                   loaded_images(drv, "#mv-gallery img"), TIMEOUT, "4 views")
    run = _runs(server, "generate")[-1]
    native = np.asarray(Image.open(run["dir"] / "view_00_00.png").convert("RGB"))
    assert native.shape[0] < DISPLAY_HEIGHT  # a small model: the case this is about
    shown = np.asarray(Image.open(io.BytesIO(http_get(images[0].get_attribute("src"))[1])).convert("RGB"))
    k = shown.shape[0] // native.shape[0]
    assert shown.shape[0] >= DISPLAY_HEIGHT and np.array_equal(shown, native.repeat(k, 0).repeat(k, 1))
    grid = wait(d, lambda drv: loaded_images(drv, "#mv-grid img"), 30, "the grid")[0]
    assert d.execute_script("return arguments[0].naturalHeight", grid) >= DISPLAY_HEIGHT
    assert d.execute_script("return getComputedStyle(arguments[0]).imageRendering", images[0]) == "pixelated"
    downloads = wait(d, lambda drv: _file_names(drv, "#mv-files"), 30, "downloads")
    assert "view_00_00.png" in downloads  # the native file (read above from the run folder)


def test_out_of_range_values_are_refused_naming_the_range_and_never_changed(server, browser):
    d = browser
    _open(d, server)
    _choose(d, "mv-model", "tiny-random")
    fill(d, "mv-prompt", "a purple cone")
    for field, value, message in (
            ("mv-steps", 0, "steps must be a whole number between 1 and 1000, got 0"),
            ("mv-steps", 5000, "steps must be a whole number between 1 and 1000, got 5000"),
            ("mv-guidance", -5, "the guidance scale must be a number between 0.0 and 100.0, got -5"),
            ("mv-views", 2.5, "the number of views must be a whole number between 1 and 16, got 2.5")):
        before = {f: _value(d, f) for f in ("mv-steps", "mv-guidance", "mv-views")}
        fill(d, field, value)
        assert float(_value(d, field)) == value, f"#{field} changed what was typed"
        by_css(d, "#mv-generate")[0].click()
        wait(d, lambda drv, m=message: m in _toasts(drv), 60, message)
        _close_toasts(d)
        assert float(_value(d, field)) == value
        fill(d, field, before[field])
    fill(d, "mv-steps", 3)
    fill(d, "mv-guidance", 4.5)
    fill(d, "mv-views", 2)
    by_css(d, "#mv-generate")[0].click()
    status = wait(d, lambda drv: "views of" in _text(drv, "mv-status") and _text(drv, "mv-status"), TIMEOUT, "views")
    assert ("Settings used: views 2, elevation 15, azimuth start 0, sampler ddim, steps 3, guidance scale 4.5, "
            "seed 0, model tiny-random") in status
    assert _runs(server, "generate")[-1]["used"]["steps"] == 3


def _stop_run_by_api(server: Server, run_id: str) -> None:
    """Cancel a text-to-3D run of the server (clean-up after a failed test): follow it, then cancel."""
    from gradio_client import Client

    client = Client(server.url, verbose=False)
    follow = client.submit(run_id, api_name="/open_3d")
    deadline = time.monotonic() + 60
    while not follow.outputs() and time.monotonic() < deadline:
        time.sleep(0.2)
    client.predict(api_name="/cancel")
    follow.result(TIMEOUT)


def test_a_text_to_3d_run_goes_on_when_its_page_closes_and_the_runs_list_reopens_it(server, browser):
    d = browser
    home = d.current_window_handle
    d.switch_to.new_window("tab")
    _open(d, server, "Text-to-3D")
    fill(d, "t3d-prompt", "a run left alone")
    fill(d, "t3d-steps", 5000)
    by_css(d, "#t3d-run")[0].click()
    wait(d, lambda drv: _step(_text(drv, "t3d-status")) >= 1, TIMEOUT, "optimising")
    run = _runs(server, "text-to-3d")[-1]
    assert run["prompt"] == "a run left alone"
    run_id = f"text-to-3d/{run['dir'].name}"
    d.close()  # the page that started it goes (before, that stopped the run within about 3 s)
    closed = time.monotonic()
    d.switch_to.window(home)
    try:
        time.sleep(2.0)
        _open(d, server, "Text-to-3D")
        _choose(d, "t3d-runs", "a run left alone")
        first = wait(d, lambda drv: _step(_text(drv, "t3d-status")), 60, "the run, followed live")
        wait(d, lambda drv: _step(_text(drv, "t3d-status")) >= first + 3 and time.monotonic() > closed + 6, 120,
              "steps after the page closed")
        assert json.loads((run["dir"] / "run.json").read_text())["status"] == "running"
        assert loaded_images(d, "#t3d-preview img") or wait(
            d, lambda drv: loaded_images(drv, "#t3d-preview img"), 30, "its multi-view preview")
        wait(d, lambda drv: loaded_images(drv, "#t3d-live img"), 30, "its current render")
        by_css(d, "#t3d-cancel")[0].click()  # Cancel stops the run this page reopened
        status = wait(d, lambda drv: "Stopped at step" in _text(drv, "t3d-status") and _text(drv, "t3d-status"),
                       120, "stopped")
    except BaseException:
        _stop_run_by_api(server, run_id)
        raise
    stopped = json.loads((run["dir"] / "run.json").read_text())
    assert stopped["status"] == "stopped" and stopped["steps_done"] > first + 2 and "Resume" in status
    # the list says what each run is; a finished run reopens with its mesh and video
    by_css(d, "#t3d-runs-refresh")[0].click()
    by_css(d, "#t3d-runs input")[0].click()
    options = wait(d, lambda drv: [o.get_attribute("textContent") for o in by_css(drv, "[role=option]")], 30,
                    "the runs")
    assert any("a run left alone" in o and f"stopped, resumable from step {stopped['steps_done']}" in o
               for o in options), options
    by_css(d, "#t3d-runs input")[0].click()
    _choose(d, "t3d-runs", "a red cube with a yellow nose")
    wait(d, lambda drv: "done" in _text(drv, "t3d-status") and "Settings used" in _text(drv, "t3d-status"), 60,
          "the finished run")
    wait(d, lambda drv: by_css(drv, "#t3d-model3d canvas"), 60, "its 3D viewer")
    wait(d, lambda drv: (by_css(drv, "#t3d-video video") or [None])[0] is not None and
          by_css(drv, "#t3d-video video")[0].get_attribute("src").split("?")[0].endswith(".mp4"), 60, "its video")
    assert _file_names(d, "#t3d-files") >= {"mesh.glb", "turntable.mp4", "preview.png"}


@pytest.mark.slow
def test_an_interrupted_run_resumes_from_its_last_checkpoint_after_a_server_restart(tmp_path, browser):
    """A server killed mid-run (kill -9) leaves the run "running" with a checkpoint; the next server lists it
    as interrupted and Resume continues it from that checkpoint, every step logged once."""
    from gradio_client import Client

    out, log, extra = tmp_path / "out", tmp_path / "server.log", ("--set", "output.checkpoint_every=2")
    proc, first = _start_server(out, log, extra)
    try:
        Client(first.url, verbose=False).submit("a restarted run", 5000, 0, 0, 20, "tiny-random",
                                                api_name="/text_to_3d")
        deadline = time.monotonic() + TIMEOUT
        while not list(out.glob("text-to-3d/*/checkpoints/latest/state.json")):
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
    finally:
        proc.kill()
        proc.wait()
    run_dir = next(out.glob("text-to-3d/*"))
    checkpoint = json.loads((run_dir / "checkpoints" / "latest" / "state.json").read_text())["step"]
    assert json.loads((run_dir / "run.json").read_text())["status"] == "running"  # nobody told it
    proc, second = _start_server(out, log, extra)
    try:
        d = browser
        _open(d, second, "Text-to-3D")
        _choose(d, "t3d-runs", f"interrupted, resumable from step {checkpoint}")
        wait(d, lambda drv: f"its last checkpoint is at step {checkpoint}" in _text(drv, "t3d-status"), 60,
              "the interrupted run")
        by_css(d, "#t3d-resume")[0].click()
        wait(d, lambda drv: _step(_text(drv, "t3d-status")) >= checkpoint + 3, TIMEOUT, "the run going on")
        by_css(d, "#t3d-cancel")[0].click()
        status = wait(d, lambda drv: "Stopped at step" in _text(drv, "t3d-status") and _text(drv, "t3d-status"),
                       120, "stopped again")
    finally:
        stop_server(proc)
    done = json.loads((run_dir / "run.json").read_text())["steps_done"]
    assert f"Stopped at step {done}/5000" in status and done >= checkpoint + 3
    steps = [json.loads(line)["step"] for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, done + 1))


# ---------------------------------------------------------------------------------------------- HTTP and API
def test_only_the_output_folder_is_served(server):
    for path in ("/etc/passwd", str(server.log), str(server.out / ".." / "server.log"), "../../../../etc/passwd",
                 str(Path(__file__).resolve())):
        status, body = http_get(f"{server.url}gradio_api/file={path}")
        assert status in (403, 404), (path, status)
        assert b"root:" not in body
    from gradio_client import Client

    Client(server.url, verbose=False).predict("served", "", 1, 15, 0, "ddim", 1, 7.5, 0, "tiny-random",
                                              api_name="/generate")
    grid = next((server.out / "generate").glob("*/grid.png"))
    assert http_get(f"{server.url}gradio_api/file={grid}")[0] == 200


def test_gradio_client_api(server):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    client = Client(server.url, verbose=False)
    assert {"/generate", "/text_to_3d", "/cancel", "/dreambooth", "/list_runs", "/open_run"} <= set(
        client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    status, views, grid, cameras, files = client.predict(
        "a green cone", "", 3, 20, 45, "euler", 2, 5.0, 7, "tiny-random", api_name="/generate")
    assert len(views) == 3 and all(Path(v["image"]).is_file() for v in views) and Path(grid).is_file()
    assert [v["azimuth"] for v in cameras["views"]] == [45.0, 165.0, 285.0]
    assert {Path(f).name for f in files} >= {"grid.png", "cameras.json", "view_00_02.png"}
    with pytest.raises(AppError, match="prompt is empty"):
        client.predict("  ", "", 4, 15, 0, "ddim", 2, 7.5, 0, "tiny-random", api_name="/generate")
    with pytest.raises(AppError, match="unknown model"):
        client.predict("x", "", 4, 15, 0, "ddim", 2, 7.5, 0, "/etc/passwd", api_name="/generate")
    with pytest.raises(AppError, match="no run"):
        client.predict("generate/../../../etc", api_name="/open_run")
    _, choices = client.predict(api_name="/list_runs")  # (thumbnails, the run picker)
    newest = choices["choices"][0][1]
    info, images, *_ = client.predict(newest, api_name="/open_run")
    assert "a green cone" in info and images


def test_gradio_client_requests_wait_their_turn(server):
    from gradio_client import Client
    from gradio_client.utils import Status

    a_client = Client(server.url, verbose=False)
    a = a_client.submit("a long api run", 5000, 0, 0, 20, "tiny-random", api_name="/text_to_3d")
    while _step(str((a.outputs() or [[""]])[-1][0])) < 1:  # optimising: Cancel stops after the step in flight
        assert not a.done(), a.result()
        time.sleep(0.1)
    b = Client(server.url, verbose=False).submit("queued second", "", 2, 15, 0, "ddim", 1, 7.5, 0, "tiny-random",
                                                 api_name="/generate")
    while not (b.status().code == Status.IN_QUEUE and b.status().rank is not None):
        assert not b.done(), "the second request ran beside the first"
        time.sleep(0.1)
    assert "Stopping" in a_client.predict(api_name="/cancel")  # the same session as the run
    status, *_, glb, mp4 = a.result(TIMEOUT)
    assert "Stopped at step" in status and glb is None and mp4 is None
    b.result(TIMEOUT)
    runs_a, runs_b = _runs(server, "text-to-3d"), _runs(server, "generate")
    assert runs_a[-1]["prompt"] == "a long api run" and runs_b[-1]["prompt"] == "queued second"
    assert runs_b[-1]["started_at"] >= runs_a[-1]["finished_at"]


@pytest.fixture(scope="module")
def api_client(server):
    from gradio_client import Client

    return Client(server.url, verbose=False)


@pytest.mark.parametrize("api_name, args, message", [
    ("/generate", ("x", "", 4, 15, 0, "ddim", "abc", 7.5, 0, "tiny-random"),
     "steps must be a whole number between 1 and 1000, got 'abc'"),
    ("/generate", ("x", "", [1, 2], 15, 0, "ddim", 2, 7.5, 0, "tiny-random"),
     "the number of views must be a whole number between 1 and 16, got [1, 2] (a list)"),
    ("/generate", ("x", "", 4, 15, 0, "ddim", 5000, 7.5, 0, "tiny-random"),
     "steps must be a whole number between 1 and 1000, got 5000"),
    ("/generate", ("x", ["no"], 4, 15, 0, "ddim", 2, 7.5, 0, "tiny-random"), "the negative prompt must be text"),
    ("/generate", ("x", "", 4, 15, 0, "nope", 2, 7.5, 0, "tiny-random"), "the sampler must be one of ddim, "),
    ("/generate", ("x", "", 4, 15, 0, "ddim", 2, True, 0, "tiny-random"),
     "the guidance scale must be a number between 0.0 and 100.0, got True (a bool)"),
    ("/generate", (5, "", 4, 15, 0, "ddim", 2, 7.5, 0, "tiny-random"), "the prompt must be text, got 5"),
    ("/generate", ("x", "", 4, 15, 0, "ddim", 2, 7.5, 0, 3), "the model must be one of the picker's entries"),
    ("/text_to_3d", ("x", "abc", 0, 0, 0, "tiny-random"), "steps (0: the recipe's) must be a whole number between 0"),
    ("/text_to_3d", ("x", 2, [24], 0, 0, "tiny-random"), "the render resolution (0: the recipe's) must be a whole"),
    ("/text_to_3d", ("x", 2, 0, -1, 0, "tiny-random"), "the seed must be a whole number between 0 and 4294967295"),
    ("/dreambooth", ("abc", "sks", "toy", 2, 1.0, "tiny-random"), "the photos must be a list of uploaded files"),
    ("/dreambooth", ([1, 2], "sks", "toy", 2, 1.0, "tiny-random"), "the photos must be a list of uploaded files"),
    ("/dreambooth", (None, "sks", "toy", "abc", 1.0, "tiny-random"), "steps must be a whole number between 1 and"),
    ("/dreambooth", (None, 7, "toy", 2, 1.0, "tiny-random"), "the token must be text, got 7"),
    ("/open_run", (["generate/x"],), "the run must be a run id from the gallery"),
])
def test_api_calls_with_wrong_types_get_the_field_and_its_range(server, api_client, api_name, args, message):
    """Values of the wrong type or out of range are answered by the app (not by gradio's generic "upstream app
    has raised an exception"), and the server logs no traceback for them."""
    from gradio_client.exceptions import AppError

    logged = len(server.log.read_text())
    with pytest.raises(AppError) as error:
        api_client.predict(*args, api_name=api_name)
    assert message in str(error.value)
    assert "Traceback" not in server.log.read_text()[logged:]


def test_a_full_queue_refuses_clearly_and_every_accepted_job_completes(server):
    """A text-to-3D run holds the heavy slot while more clients than --max-queue submit at once: MAX_QUEUE of
    them wait and then complete, the others are refused with gradio's "Queue is full", and Cancel (which goes
    around the queue, as the page's button does) still works while the queue is full."""
    import threading

    from gradio_client import Client
    from gradio_client.utils import QueueError, Status

    holder = Client(server.url, verbose=False)
    hold = holder.submit("a queue holder", 5000, 0, 0, 20, "tiny-random", api_name="/text_to_3d")
    while _step(str((hold.outputs() or [[""]])[-1][0])) < 1:
        assert not hold.done(), hold.result()
        time.sleep(0.1)
    extra = 3
    jobs: list = [None] * (MAX_QUEUE + extra)

    def submit(i: int) -> None:
        jobs[i] = Client(server.url, verbose=False).submit(f"queued client {i}", "", 1, 15, 0, "ddim", 1, 7.5, 0,
                                                           "tiny-random", api_name="/generate")

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    deadline = time.monotonic() + 60
    while not all(j.done() or j.status().code == Status.IN_QUEUE for j in jobs):
        assert time.monotonic() < deadline, [j.status() for j in jobs]
        time.sleep(0.1)
    refused = [j for j in jobs if j.done()]
    accepted = [i for i, j in enumerate(jobs) if not j.done()]
    assert len(accepted) == MAX_QUEUE and len(refused) == extra
    for job in refused:
        with pytest.raises(QueueError, match="Queue is full"):
            job.result()
    request = urllib.request.Request(f"{server.url}gradio_api/run/cancel", headers={"Content-Type": "application/json"},
                                     data=json.dumps({"data": [], "session_hash": holder.session_hash}).encode())
    with urllib.request.urlopen(request, timeout=30) as r:
        assert "Stopping" in json.loads(r.read())["data"][0]
    assert "Stopped at step" in hold.result(TIMEOUT)[0]
    for i in accepted:
        assert f"1 views of *queued client {i}*" in jobs[i].result(TIMEOUT)[0]
    runs = {r["prompt"]: r for r in _runs(server, "generate") if r["prompt"].startswith("queued client ")}
    assert sorted(runs) == sorted(f"queued client {i}" for i in accepted)  # the refused ones left no run
    assert all(r["status"] == "done" for r in runs.values())


# ---------------------------------------------------------------------------------------------- no server
def test_serve_without_gradio_is_a_one_line_error(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio -> ImportError
    assert main(["serve", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == 'error: the web app needs gradio: pip install "mvdream3d[ui]"'


def test_upload_checks(tmp_path):
    from PIL import Image

    from mvdream3d.webapp.security import check_photos, parse_auth

    good = []
    for i in range(3):
        good.append(tmp_path / f"p{i}.jpg")
        Image.new("RGB", (16, 16), (i * 80, 0, 0)).save(good[-1])
    assert check_photos(good) == good
    with pytest.raises(ValueError, match="upload 3-10 photos"):
        check_photos(good[:2])
    with pytest.raises(ValueError, match="upload 3-10 photos"):
        check_photos(good * 4)
    fake = tmp_path / "x.png"
    fake.write_bytes(b"<svg></svg>")
    with pytest.raises(ValueError, match="x.png is not an image"):
        check_photos([*good[:2], fake])
    with pytest.raises(ValueError, match="at most"):
        check_photos(good, max_bytes=10)
    gif = tmp_path / "a.gif"
    Image.new("RGB", (8, 8)).save(gif)
    with pytest.raises(ValueError, match="GIF"):
        check_photos([*good[:2], gif])
    assert parse_auth("ann:secret") == [("ann", "secret")]
    (tmp_path / "users").write_text("# logins\nann:a\nbob:b:c\n")
    assert parse_auth(str(tmp_path / "users")) == [("ann", "a"), ("bob", "b:c")]
    with pytest.raises(ValueError, match="USER:PASSWORD"):
        parse_auth("nopassword")


def test_run_ids_cannot_leave_the_output_folder(tmp_path):
    from mvdream3d.webapp.runs import find_run, list_runs, new_run, update_run

    run = new_run(tmp_path, "generate", "A cube!", {"steps": 2})
    update_run(run, status="done")
    assert find_run(tmp_path, run.id).info["status"] == "done" and run.dir.name.endswith("-a-cube")
    assert [r.id for r in list_runs(tmp_path)] == [run.id]
    for bad in ("generate/../../etc", "../generate", "/etc/passwd", "generate/", "dreambooth/" + run.dir.name):
        with pytest.raises(ValueError, match="no run"):
            find_run(tmp_path, bad)


def test_runs_started_in_the_same_second_list_newest_first(tmp_path, monkeypatch):
    from mvdream3d.webapp import runs as R

    monkeypatch.setattr(R.time, "strftime", lambda fmt, *a: "20261202-053237" if "%H%M%S" in fmt else "x")
    made = []
    for i in range(6):  # random name suffixes; the start times decide
        monkeypatch.setattr(R.time, "time", lambda i=i: 1000.0 + i)
        made.append(R.new_run(tmp_path, "generate", f"run {i}", {}))
    assert [r.id for r in R.list_runs(tmp_path)] == [r.id for r in reversed(made)]


def test_progress_estimates_time_left_from_the_measured_rate(monkeypatch):
    from mvdream3d.webapp import progress as P

    now = [100.0]
    monkeypatch.setattr(P.time, "monotonic", lambda: now[0])
    p = P.JobProgress("text-to-3D", ["multi-view preview", "optimisation", "mesh: marching cubes"])
    p.stage("optimisation", 400)
    now[0] += 30.0  # the first step carries the warm-up: not counted
    p.update(1)
    assert p.snapshot()["seconds_left"] is None and "measuring the speed" in p.text()
    for _ in range(9):  # then 0.5 s a step
        now[0] += 0.5
        p.update(p.current.done + 1)
    s = p.snapshot()
    assert s["seconds_per_unit"] == pytest.approx(0.5) and s["seconds_left"] == pytest.approx(390 * 0.5)
    text = p.text()
    assert "optimisation (stage 2 of 3)" in text and "step 10/400" in text and "about 3 min 15 s left" in text
    assert "next: mesh: marching cubes" in text
    for _ in range(P.RATE_WINDOW + 5):  # the rate follows the recent steps (a new resolution milestone)
        now[0] += 2.0
        p.update(p.current.done + 1)
    assert p.snapshot()["seconds_per_unit"] == pytest.approx(2.0)
    p.stage("mesh: marching cubes", unit="")
    now[0] += 4.0
    assert "running for 4 s" in p.text()
    p.finish()
    assert p.summary() == "optimisation 1 min 24 s, mesh: marching cubes 4 s"


def test_example_prompts_are_captions_of_the_builtin_world():
    """The examples name only what the built-in model was trained on: the procedural world's colours, shapes
    and front features, none of its held-out concepts."""
    import re

    from mvdream3d.data.synth import COLORS, DEFAULT_HELD_OUT_COLORS, DEFAULT_HELD_OUT_SHAPES, FEATURES, SHAPES
    from mvdream3d.webapp.app import EXAMPLE_PROMPTS

    colors = "|".join(c for c in COLORS if c not in DEFAULT_HELD_OUT_COLORS)
    shapes = "|".join(s for s in SHAPES if s not in DEFAULT_HELD_OUT_SHAPES)
    thing = rf"an? (?:{colors}) (?:{shapes})"
    caption = re.compile(rf"^{thing}(?: with an? (?:{colors}) (?:{'|'.join(FEATURES)})| and {thing})?$")
    assert len(EXAMPLE_PROMPTS) >= 4
    for prompt in EXAMPLE_PROMPTS:
        assert caption.match(prompt), prompt
    assert {f for f in FEATURES if any(f in p for p in EXAMPLE_PROMPTS)} == set(FEATURES)


@pytest.fixture
def tiny_handlers(tmp_path):
    _require_gradio()
    from mvdream3d.webapp.handlers import Handlers
    from mvdream3d.webapp.models import ModelRegistry

    out = tmp_path / "out"
    return Handlers(ModelRegistry(out, ["tiny-random"], device="cpu"), out, "builtin", tuple(TINY_3D))


def test_a_text_to_3d_job_reports_every_stage_its_preview_and_the_settings_it_used(tiny_handlers):
    from mvdream3d.webapp.jobs import T3D_STAGES, TextTo3DJob

    h = tiny_handlers
    job = TextTo3DJob(h.registry, h.out_dir, "a red cube", 3, 0, 0, None, "tiny-random", h.config, h.overrides,
                      slot=h.slot)
    stages, previews = [], []
    enter = job.progress.stage

    def stage(name, *args, **kwargs):
        stages.append(name)
        previews.append(job.preview_live)
        enter(name, *args, **kwargs)

    job.progress.stage = stage
    for _ in job.start().watch(min_interval_s=0.0):
        pass
    assert job.error is None and job.result.finished
    assert stages == ["starting", *T3D_STAGES.values()]  # every stage, named, in order
    assert previews[1] is None and previews[2] is not None  # the preview's own picture while it samples
    assert previews[2].shape[0] >= 192 and previews[2].shape[1] == 4 * previews[2].shape[0]  # 4 views, enlarged
    assert job.live is not None and job.live.shape[0] >= 192
    assert [n for n, _ in job.progress.history] == stages  # where the time went, for the final status
    info = json.loads((job.run.dir / "run.json").read_text())
    assert info["status"] == "done" and info["settings"]["guidance_scale"] is None
    from mvdream3d.threed.config import load_text_to_3d_config

    scale = load_text_to_3d_config("builtin").guidance.guidance_scale
    assert info["used"] == {"steps": 3, "render resolution": "16 px", "guidance scale": scale, "seed": 0,
                            "model": "tiny-random"}  # the recipe's guidance and resolution (TINY_3D), named


def test_a_stopping_server_checkpoints_its_runs_and_resume_continues_them(tiny_handlers):
    """What a server restart does to a text-to-3D run: the stopping server saves it (interrupted, resumable);
    a new server resumes it from that checkpoint with its own settings, every step logged once."""
    from mvdream3d.webapp.jobs import TextTo3DJob
    from mvdream3d.webapp.runs import find_run

    h = tiny_handlers
    job = TextTo3DJob(h.registry, h.out_dir, "a long run", 5000, 0, 3, 25, "tiny-random", h.config, h.overrides,
                      slot=h.slot)
    h._live[job.run.id] = job
    for _ in job.start().watch(min_interval_s=0.0):
        if job.row is not None and job.row["step"] >= 2:
            break
    assert h.shutdown() == [job.run.id]
    run = find_run(h.out_dir, job.run.id)
    assert run.info["status"] == "interrupted" and h._state(run) == "interrupted"
    stopped_at = h._checkpoint_step(run)
    assert stopped_at == run.info["steps_done"] >= 2
    again = TextTo3DJob.resume(h.registry, run, slot=h.slot)
    assert again.resuming and again.steps == 5000 and again.seed == 3
    assert again.used()["guidance scale"] == 25 and again.progress.plan[0] == "optimisation"  # no new preview
    for _ in again.start().watch(min_interval_s=0.0):
        if again.row is not None and again.row["step"] >= stopped_at + 2:
            again.cancel()
    assert again.error is None and not again.result.finished and again.result.steps_done >= stopped_at + 2
    steps = [json.loads(line)["step"] for line in (run.dir / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, again.result.steps_done + 1))
    assert json.loads((run.dir / "run.json").read_text())["status"] == "stopped"
