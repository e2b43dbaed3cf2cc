"""What the web app's buttons do: :mod:`.jobs` called with the page's values, results shaped for gradio.

The endpoints with inputs run with gradio's ``preprocess=False`` (see :mod:`.app`): a handler gets each value
as the page or API client sent it, and :mod:`.jobs` checks its type and range, so a bad API call (steps
``"abc"``, views ``[1, 2]``) gets a message naming the field and its valid range. Every handler turns errors
into ``gr.Error`` (a readable message on the page, never a traceback); only unexpected ones are logged, with
their traceback, on the server.
"""

import functools
import html
import inspect
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gradio as gr

from ..cli import USER_ERRORS
from .jobs import (
    MAX_DREAMBOOTH_STEPS,
    MAX_SEED,
    TextTo3DJob,
    _int,
    enlarge,
    generate_views,
    resume_command,
    shown,
    train_dreambooth,
)
from .models import ModelRegistry
from .runs import find_run, list_runs

log = logging.getLogger("mvdream3d.webapp")
FILE_ORDER_3D = ("mesh.glb", "mesh.obj", "turntable.mp4", "turntable.gif", "views.png", "preview.png", "curves.png")
STATUS_EVERY_S = 0.5


def _as_page_error(e: BaseException) -> gr.Error:
    if isinstance(e, gr.Error):
        return e
    if isinstance(e, USER_ERRORS):
        return gr.Error(html.escape(str(e), quote=False), title="Cannot do that", print_exception=False)
    log.error("internal error", exc_info=e)
    message = f"internal error ({type(e).__name__}: {e}); the server log has the details"
    return gr.Error(html.escape(message, quote=False), print_exception=False)


def page_errors(fn: Callable) -> Callable:
    """Wrap a handler (plain or generator) so every exception reaches the page as a gr.Error."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen(*args: Any, **kwargs: Any) -> Iterator[Any]:
            try:
                yield from fn(*args, **kwargs)
            except Exception as e:
                raise _as_page_error(e) from None
        return gen

    @functools.wraps(fn)
    def plain(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            raise _as_page_error(e) from None
    return plain


def random_seed() -> int:
    """A fresh seed for the "random" buttons."""
    return random.randint(0, min(MAX_SEED, 2**31 - 1))


UPLOADS = "a list of uploaded files (gradio_client: [handle_file(path), ...])"


def uploaded_paths(value: Any, name: str) -> list[str] | None:
    """The paths of a ``gr.File(file_count="multiple")`` value as gradio hands it over without preprocessing:
    None or a list of FileData dicts whose files gradio has already checked and moved into its upload folder."""
    if value is None or value == []:
        return None
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(f, dict) and isinstance(f.get("path"), str) for f in items):
        raise ValueError(f"{name} must be {UPLOADS}, got {shown(value)}")
    return [f["path"] for f in items]


def _files(folder: Path, order: tuple[str, ...] = ()) -> list[str]:
    """Downloadable files of a run folder: ``order`` first, then the rest (no hidden files, no run.json)."""
    first = [folder / n for n in order if (folder / n).is_file()]
    rest = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.name != "run.json"
                  and p not in first)
    return [str(p) for p in first + rest]


class Handlers:
    """The handlers of one app: its model registry, output folder and text-to-3D settings."""

    def __init__(self, registry: ModelRegistry, out_dir: Path, config: str | None = None,
                 overrides: tuple[str, ...] = (), dreambooth_settings: dict[str, Any] | None = None) -> None:
        self.registry, self.out_dir, self.config, self.overrides = registry, out_dir, config, tuple(overrides)
        self.dreambooth_settings = dict(dreambooth_settings or {})
        self._jobs: dict[str, TextTo3DJob] = {}
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- multi-view
    def generate(self, prompt: Any, negative: Any, views: Any, elevation: Any, azimuth_start: Any,
                 sampler: Any, steps: Any, guidance: Any, seed: Any, model: Any,
                 progress: gr.Progress = gr.Progress()) -> tuple:  # noqa: B008 (gradio's progress idiom)
        """Multi-view tab -> (status, [(view, caption)], grid, cameras summary, files to download)."""
        progress(0, desc="loading the model")
        t0 = time.perf_counter()
        gen = generate_views(self.registry, self.out_dir, prompt, negative, views, elevation, azimuth_start,
                             sampler, steps, guidance, seed, model,
                             on_step=lambda i, n: progress((i, n), desc="sampling", unit="steps"))
        cams = gen.cameras
        captions = [f"{i}: az {az:.0f}°, el {el:.0f}°"
                    for i, (az, el) in enumerate(zip(cams["azimuth"], cams["elevation"], strict=True))]
        summary = {"fov_deg": cams["fov_deg"], "size": [cams["width"], cams["height"]],
                   "views": [{"file": v, "azimuth": az, "elevation": el}
                             for v, az, el in zip(cams["views"], cams["azimuth"], cams["elevation"], strict=True)],
                   "c2w": cams["c2w"]}
        status = (f"{len(gen.views)} views of *{html.escape(gen.run.info['prompt'])}* in "
                  f"{time.perf_counter() - t0:.1f} s, run `{gen.run.id}`")
        return (status, [(str(p), c) for p, c in zip(gen.views, captions, strict=True)], str(gen.grid), summary,
                [str(p) for p in gen.files])

    # ---------------------------------------------------------------- text-to-3D
    def text_to_3d(self, prompt: Any, steps: Any, resolution: Any, seed: Any, guidance: Any, model: Any,
                   request: gr.Request, progress: gr.Progress = gr.Progress()  # noqa: B008
                   ) -> Iterator[tuple]:
        """Text-to-3D tab, streamed: (status, preview, current views, files, mesh.glb, turntable.mp4)."""
        job = TextTo3DJob(self.registry, self.out_dir, prompt, steps, resolution, seed, guidance, model,
                          self.config, self.overrides)
        key = getattr(request, "session_hash", None) or job.run.id
        with self._lock:
            self._jobs[key] = job
        skip = gr.skip()
        preview_shown, last_status, row = False, 0.0, None
        yield (f"Starting `{job.run.id}`: the multi-view preview first ...", None, None, None, None, None)
        try:
            for kind, data in job.events():
                if kind == "row":
                    row = data
                    progress((row["step"], job.steps), desc="optimising", unit="steps")
                    preview = skip
                    if not preview_shown and (job.run.dir / "preview.png").is_file():
                        preview, preview_shown = str(job.run.dir / "preview.png"), True
                    live = data["views"] if "views" in data else skip
                    now = time.monotonic()
                    if preview is skip and live is skip and now - last_status < STATUS_EVERY_S:
                        continue
                    last_status = now
                    status = f"step {row['step']}/{job.steps}, loss {row['loss']:.4g}, t {row.get('t', '?')}"
                    yield status, preview, live, skip, skip, skip
                elif kind == "error":
                    raise data
                elif kind == "done":
                    yield self._t3d_final(job, data)
        finally:
            with self._lock:
                if self._jobs.get(key) is job:
                    del self._jobs[key]

    def _t3d_final(self, job: TextTo3DJob, res: Any) -> tuple:
        d = job.run.dir
        preview = str(d / "preview.png") if (d / "preview.png").is_file() else None
        views = enlarge(d / "views.png") if (d / "views.png").is_file() else None
        files = _files(d, FILE_ORDER_3D)
        if res.finished:
            status = (f"Done: {res.steps_done} steps, run `{job.run.id}`. Drag the 3D view to turn the mesh.")
            return status, preview, views, files, res.files.get("glb"), res.files.get("mp4")
        status = (f"Stopped at step {res.steps_done}/{job.steps}; checkpoint kept. Continue with "
                  f"`{job.resume_command()}`")
        return status, preview, views, files, None, None

    @staticmethod
    def show_3d(glb: str | None, mp4: str | None) -> tuple:
        """Hand the finished mesh and video to the 3D viewer and the player (a plain event after the streaming
        one: gr.Model3D does not draw a mesh that arrives as the last of several streamed updates)."""
        return glb, mp4

    def cancel(self, request: gr.Request) -> str:
        """Stop this session's text-to-3D run after the step in flight."""
        key = getattr(request, "session_hash", None)
        with self._lock:
            job = self._jobs.get(key) if key else None
        if job is None:
            return "No text-to-3D run of yours is running."
        job.cancel()
        return "Stopping after the current step; the run keeps what it has ..."

    # ---------------------------------------------------------------- DreamBooth
    def dreambooth(self, photos: Any, token: Any, class_word: Any, steps: Any, lam: Any, model: Any,
                   progress: gr.Progress = gr.Progress()  # noqa: B008
                   ) -> tuple:
        """DreamBooth tab -> (status, 4-view grid, files, the three model pickers' updates)."""
        progress(0, desc="checking the photos")
        try:
            total = _int(steps, "steps", 1, MAX_DREAMBOOTH_STEPS)  # for the progress bar
        except ValueError:
            total = 1  # train_dreambooth reports it
        run, res = train_dreambooth(
            self.registry, self.out_dir, uploaded_paths(photos, "the photos"), token, class_word, steps, lam, model,
            on_step=lambda row: progress((int(row["step"]), total), desc=f"training, loss {row['loss']:.4f}",
                                         unit="steps"), settings=self.dreambooth_settings)
        grid = run.dir / "grid.png"
        warnings = "".join(f"\n- {html.escape(w)}" for w in res.warnings)
        status = (f"Trained *{html.escape(res.prompt)}* for {res.steps_done} steps in {res.seconds:.0f} s, run "
                  f"`{run.id}`. The model is now in the model pickers: use the prompt \"{html.escape(res.prompt)}\""
                  + (f"\n\nWarnings:{warnings}" if warnings else ""))
        choices = self.registry.choices()
        value = f"dreambooth:{run.id.split('/', 1)[1]}"
        # the Multi-view and Text-to-3D pickers switch to the new model; DreamBooth's own keeps its base model
        return (status, str(grid) if grid.is_file() else None, _files(run.dir),
                gr.Dropdown(choices=choices, value=value), gr.Dropdown(choices=choices, value=value),
                gr.Dropdown(choices=choices))

    def model_choices(self) -> tuple:
        """Fresh picker choices for the three model dropdowns (page load, after DreamBooth)."""
        choices = self.registry.choices()
        return tuple(gr.Dropdown(choices=choices) for _ in range(3))

    # ---------------------------------------------------------------- gallery of runs
    def list_runs(self) -> tuple:
        """Gallery tab -> (thumbnails newest first, their run ids, the run picker)."""
        runs = list_runs(self.out_dir)
        items = [(str(r.thumbnail), r.label) for r in runs if r.thumbnail is not None]
        ids = [r.id for r in runs if r.thumbnail is not None]
        choices = [(r.label, r.id) for r in runs]
        return items, ids, gr.Dropdown(choices=choices, value=None)

    def select_run(self, ids: list[str], evt: gr.SelectData) -> str:
        """The run id of a clicked thumbnail."""
        return ids[evt.index]

    def open_run(self, run_id: Any) -> tuple:
        """A run of the gallery -> (description, pictures, mesh.glb, turntable.mp4, files)."""
        if not run_id:
            return "Pick a run.", [], None, None, []
        if not isinstance(run_id, str):
            raise ValueError(f"the run must be a run id from the gallery (text such as generate/NAME), got "
                             f"{shown(run_id)}")
        run = find_run(self.out_dir, run_id)
        d, info = run.dir, run.info
        images = [str(d / n) for n in ("grid.png", "preview.png", "views.png", "progress.png", "curves.png",
                                       "loss.png") if (d / n).is_file()]
        if run.kind == "generate":
            images += [str(d / v) for v in json.loads((d / "cameras.json").read_text())["views"]] \
                if (d / "cameras.json").is_file() else []
        lines = [f"**{run.kind}** `{run.id}`: *{html.escape(info.get('prompt', ''))}*",
                 f"created {info.get('created', '?')}, status **{info.get('status', '?')}**",
                 "settings: " + ", ".join(f"{k}={v}" for k, v in info.get("settings", {}).items())]
        if run.kind == "text-to-3d" and info.get("status") == "stopped":
            lines.append(f"Continue with `{resume_command(info.get('prompt', ''), d)}`")
        if info.get("message"):
            lines.append(f"message: {html.escape(str(info['message']))}")
        glb, mp4 = d / "mesh.glb", d / "turntable.mp4"
        return ("\n\n".join(lines), images, str(glb) if glb.is_file() else None, str(mp4) if mp4.is_file() else None,
                _files(d, FILE_ORDER_3D))
