"""Driving the web app in a headless Chromium, as a user would: what its browser tests
(``tests/test_webapp.py``) and the screenshot benchmark (``benchmarks/webapp_screenshots.py``) share.

Needs the dev extra (selenium) and Chromium with its driver (``apt-get install -y chromium chromium-driver``).
It lives beside the benchmarks, not in the package, because the package does not depend on selenium; the
tests load it by its path. ``d`` is a selenium WebDriver; element ids are the app's
``elem_id`` values (``mv-prompt``, ``t3d-run``, ...).
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

CHROMIUM_HINT = "the browser needs Chromium and its driver: apt-get install -y chromium chromium-driver"
CHROMIUM_ARGS = ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000",
                 "--autoplay-policy=no-user-gesture-required", "--enable-unsafe-swiftshader", "--mute-audio")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 30) -> tuple[int, bytes]:
    """(status, body) of a GET; an HTTP error status comes back with an empty body instead of raising."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, b""


def start_server(out: Path, log: Path, args: Sequence[str] = (), timeout: float = 600) -> tuple[subprocess.Popen, str]:
    """``mvdream3d serve --out OUT --port PORT *args`` on a free port, output appended to ``log``; returns
    (process, page URL) once the page answers. Raises RuntimeError, with the log, when the server exits or
    does not answer within ``timeout`` seconds (it is stopped then)."""
    port = free_port()
    cmd = [sys.executable, "-m", "mvdream3d.cli", "serve", "--out", str(out), "--port", str(port), *args]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    with open(log, "a") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    url, deadline = f"http://127.0.0.1:{port}/", time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited ({proc.returncode}):\n{Path(log).read_text()}")
        try:
            if http_get(url, timeout=10)[0] == 200:
                return proc, url
        except OSError:
            pass
        if time.monotonic() > deadline:
            stop_server(proc)
            raise RuntimeError(f"the server did not answer in {timeout:.0f} s:\n{Path(log).read_text()}")
        time.sleep(0.5)


def stop_server(proc: subprocess.Popen) -> None:
    """Terminate the server, killing it if it has not exited after 60 s."""
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def chromium_paths() -> tuple[str, str] | None:
    """(browser binary, chromedriver) found on PATH, or None when either is missing."""
    binary = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver = shutil.which("chromedriver")
    return (binary, driver) if binary and driver else None


def start_browser() -> Any:
    """A headless Chromium WebDriver (1400 x 1000 window); RuntimeError naming the packages when missing."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    paths = chromium_paths()
    if paths is None:
        raise RuntimeError(CHROMIUM_HINT)
    options = webdriver.ChromeOptions()
    options.binary_location = paths[0]
    for arg in CHROMIUM_ARGS:
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(paths[1]))
    driver.set_script_timeout(30)
    return driver


def by_css(d: Any, css: str) -> list:
    """The page's elements matching a CSS selector (empty list when none)."""
    from selenium.webdriver.common.by import By

    return d.find_elements(By.CSS_SELECTOR, css)


def wait(d: Any, condition: Callable[[Any], Any], timeout: float, what: str = "", poll: float = 0.2) -> Any:
    """Poll ``condition(d)`` until it returns something truthy (returned) or ``timeout`` s pass (a
    TimeoutException that says ``what`` was awaited)."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(d, timeout, poll_frequency=poll).until(lambda drv: condition(drv), message=what)


def select_tab(d: Any, name: str) -> None:
    """Click the tab labelled ``name`` until it is selected (the page's first load may still cover it)."""
    from selenium.common.exceptions import ElementClickInterceptedException

    button = next(b for b in by_css(d, "button[role=tab]") if b.text.strip() == name)

    def selected(drv: Any) -> bool:
        try:
            button.click()
        except ElementClickInterceptedException:
            return False
        return button.get_attribute("aria-selected") == "true"

    wait(d, selected, 60, f"tab {name}")


def open_tab(d: Any, url: str, tab: str, timeout: float = 60) -> None:
    """Load the app's page and select ``tab``."""
    d.get(url)
    wait(d, lambda drv: by_css(drv, "#mv-generate"), timeout, "page loaded")
    select_tab(d, tab)


def fill(d: Any, elem_id: str, value: Any) -> None:
    """Replace the text of a Textbox/Number ``#elem_id`` with ``value`` as typed keys, then Tab out of it."""
    from selenium.webdriver.common.keys import Keys

    field = by_css(d, f"#{elem_id} textarea, #{elem_id} input")[0]
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(Keys.DELETE)
    if str(value):
        field.send_keys(str(value))
    field.send_keys(Keys.TAB)


def loaded_images(d: Any, css: str) -> list:
    """The ``img`` elements matching ``css`` when there are some and all have loaded, else an empty list."""
    images = by_css(d, css)
    return images if images and all(d.execute_script("return arguments[0].complete && "
                                                     "arguments[0].naturalWidth > 0", i) for i in images) else []


def settled_drawing(element: Any, timeout: float = 30) -> None:
    """Wait until an element (e.g. the 3D viewer's WebGL canvas) shows something and has stopped changing,
    or ``timeout`` s pass."""
    from PIL import Image, ImageChops, ImageStat

    previous, deadline = None, time.monotonic() + timeout
    while time.monotonic() < deadline:
        image = Image.open(io.BytesIO(element.screenshot_as_png)).convert("L")
        if previous is not None and previous.size == image.size and max(ImageStat.Stat(image).stddev) > 2.0 \
                and ImageChops.difference(previous, image).getbbox() is None:
            return
        previous = image
        time.sleep(1.0)


def screenshot(d: Any, path: Path, height: int = 1300, drawn: str | None = None, settle_s: float = 1.0,
               drawn_timeout: float = 30) -> None:
    """Save the page, ``height`` px tall from its top, as ``path`` (after ``drawn``, a CSS selector such as
    a WebGL canvas, shows something); the window goes back to 1400 x 1000."""
    d.set_window_size(1400, height)
    d.execute_script("window.scrollTo(0, 0)")
    time.sleep(settle_s)
    if drawn:
        settled_drawing(by_css(d, drawn)[0], drawn_timeout)
        d.execute_script("window.scrollTo(0, 0)")
    d.save_screenshot(str(path))
    d.set_window_size(1400, 1000)
