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
    MAX_SEED,
    DreamBoothJob,
    HeavySlot,
    TextTo3DJob,
    dreambooth_defaults,
    enlarge,
    generate_views,
    milestones_text,
    resume_command,
    shown,
    text_to_3d_recipe,
)
from .models import ModelRegistry
from .progress import JobProgress, duration
from .runs import Run, find_run, list_runs, update_run

log = logging.getLogger("mvdream3d.webapp")
FILE_ORDER_3D = ("mesh.glb", "mesh.obj", "turntable.mp4", "turntable.gif", "views.png", "preview.png", "curves.png")
DISPLAY_HEIGHT = 256  # small pictures are shown enlarged (nearest neighbour) to at least this height
SHUTDOWN_WAIT_S = 60  # how long a stopping server waits for its text-to-3D runs to save a checkpoint


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


def _display(image: str | Path | None) -> Any:
    """The display copy of a picture file (enlarged, sharp); None for a missing file."""
    return enlarge(image, DISPLAY_HEIGHT) if image is not None and Path(image).is_file() else None


def _settings_text(used: dict[str, Any]) -> str:
    """The line of a result that names its settings: "Settings used: steps 20, guidance scale 5, ..."."""
    def value(v: Any) -> str:
        return f"{v:g}" if isinstance(v, float) else html.escape(str(v), quote=False)

    return "Settings used: " + ", ".join(f"{k.replace('_', ' ')} {value(v)}" for k, v in used.items())


def _files(folder: Path, order: tuple[str, ...] = ()) -> list[str]:
    """Downloadable files of a run folder: ``order`` first, then the rest (no hidden files, no run.json)."""
    first = [folder / n for n in order if (folder / n).is_file()]
    rest = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.name != "run.json"
                  and p not in first)
    return [str(p) for p in first + rest]


class Handlers:
    """The handlers of one app: its model registry, output folder, text-to-3D and DreamBooth settings, the
    heavy-job slot and the text-to-3D runs going on in this server (which outlive the pages that started them)."""

    def __init__(self, registry: ModelRegistry, out_dir: Path, config: str | None = None,
                 overrides: tuple[str, ...] = (), dreambooth_settings: dict[str, Any] | None = None) -> None:
        self.registry, self.out_dir, self.config, self.overrides = registry, out_dir, config, tuple(overrides)
        self.dreambooth_settings = dict(dreambooth_settings or {})
        self.slot = HeavySlot()
        self._live: dict[str, TextTo3DJob] = {}  # run id -> a text-to-3D run of this server still going
        self._followed: dict[str, str] = {}  # session -> the text-to-3D run it started or opened (for Cancel)
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- the pages' defaults
    def multiview_defaults(self, model: Any = None) -> dict[str, Any]:
        """Sampler, steps and guidance scale of ``model`` (a picker value): its config's ``sampling``."""
        return dict(self.registry.get(model if isinstance(model, str) else None).sampling_defaults)

    def text_to_3d_defaults(self, model: Any = None) -> dict[str, Any]:
        """Steps, render resolution (0 when the recipe changes it during the run) and guidance scale of the
        text-to-3D recipe this server uses for ``model``, and the recipe's resolutions as text."""
        cfg = text_to_3d_recipe(self.registry.get(model if isinstance(model, str) else None), self.config,
                                self.overrides)
        ms = cfg.cameras.resolution_milestones
        return {"steps": cfg.optim.steps, "resolution": ms[0][1] if len({m[1] for m in ms}) == 1 else 0,
                "guidance_scale": cfg.guidance.guidance_scale, "resolutions": milestones_text(ms)}

    def dreambooth_defaults(self) -> dict[str, Any]:
        """DreamBooth's settings for this server (the defaults and --dreambooth-set)."""
        return dreambooth_defaults(self.dreambooth_settings)

    def on_multiview_model(self, model: Any) -> tuple:
        """The Multi-view fields that follow the chosen model: sampler, steps, guidance scale."""
        d = self.multiview_defaults(model)
        return d["sampler"], d["steps"], d["guidance_scale"]

    def on_text_to_3d_model(self, model: Any) -> tuple:
        """The Text-to-3D fields that follow the chosen model: steps, render resolution, guidance scale."""
        d = self.text_to_3d_defaults(model)
        return (d["steps"], gr.Number(d["resolution"], info=f"the recipe's: {d['resolutions']} (0 keeps it)"),
                d["guidance_scale"])

    # ---------------------------------------------------------------- multi-view
    def generate(self, prompt: Any, negative: Any, views: Any, elevation: Any, azimuth_start: Any,
                 sampler: Any, steps: Any, guidance: Any, seed: Any, model: Any,
                 progress: gr.Progress = gr.Progress()) -> tuple:  # noqa: B008 (gradio's progress idiom)
        """Multi-view tab -> (status, [(view, caption)], grid, cameras summary, files to download).

        The views and the grid are shown enlarged (nearest neighbour); the downloads are the native files."""
        progress(0, desc="loading the model")
        t0 = time.perf_counter()
        rate = JobProgress("sampling")
        rate.stage("sampling", 1)

        def on_step(i: int, n: int) -> None:
            rate.update(i, n)
            left = rate.snapshot()["seconds_left"]
            progress((i, n), desc="sampling" + (f", about {duration(left)} left" if left is not None else ""),
                     unit="steps")

        gen = generate_views(self.registry, self.out_dir, prompt, negative, views, elevation, azimuth_start,
                             sampler, steps, guidance, seed, model, on_step=on_step, slot=self.slot,
                             on_wait=lambda what: progress(0, desc=f"waiting for {what} to finish"))
        cams = gen.cameras
        captions = [f"{i}: az {az:.0f}°, el {el:.0f}°"
                    for i, (az, el) in enumerate(zip(cams["azimuth"], cams["elevation"], strict=True))]
        summary = {"fov_deg": cams["fov_deg"], "size": [cams["width"], cams["height"]],
                   "views": [{"file": v, "azimuth": az, "elevation": el}
                             for v, az, el in zip(cams["views"], cams["azimuth"], cams["elevation"], strict=True)],
                   "c2w": cams["c2w"]}
        status = (f"{len(gen.views)} views of *{html.escape(gen.run.info['prompt'])}* in "
                  f"{time.perf_counter() - t0:.1f} s, run `{gen.run.id}`. {_settings_text(gen.run.info['used'])}")
        return (status, [(_display(p), c) for p, c in zip(gen.views, captions, strict=True)], _display(gen.grid),
                summary, [str(p) for p in gen.files])

    # ---------------------------------------------------------------- text-to-3D
    def text_to_3d(self, prompt: Any, steps: Any, resolution: Any, seed: Any, guidance: Any, model: Any,
                   request: gr.Request) -> Iterator[tuple]:
        """Text-to-3D tab, streamed: (status, preview, current views, files, mesh.glb, turntable.mp4).

        The run goes on when the page is closed; the Runs list reopens it."""
        job = TextTo3DJob(self.registry, self.out_dir, prompt, steps, resolution, seed, guidance, model,
                          self.config, self.overrides, slot=self.slot)
        yield from self._start_and_follow(job, request)

    def _start_and_follow(self, job: TextTo3DJob, request: gr.Request | None) -> Iterator[tuple]:
        with self._lock:
            self._live[job.run.id] = job
            self._followed[self._session(request, job.run.id)] = job.run.id
        job.start()
        threading.Thread(target=self._forget_when_done, args=(job,), daemon=True).start()
        yield from self._follow(job)

    def _forget_when_done(self, job: TextTo3DJob) -> None:
        job.wait()
        with self._lock:
            if self._live.get(job.run.id) is job:
                del self._live[job.run.id]

    @staticmethod
    def _session(request: gr.Request | None, fallback: str) -> str:
        return getattr(request, "session_hash", None) or fallback

    def _follow(self, job: TextTo3DJob) -> Iterator[tuple]:
        """The page's view of a running job until it ends: the status with its progress, the preview (its
        current x0 prediction while it samples), the latest render; pictures are sent when they change."""
        skip = gr.skip()
        sent: dict[str, Any] = {}

        def changed(key: str, value: Any) -> Any:
            if value is None or sent.get(key) is value:
                return skip
            sent[key] = value
            return value

        preview_file = job.run.dir / "preview.png"
        for _ in job.watch():
            if job.finished:
                break
            if "file" not in sent and preview_file.is_file() and job.progress.current is not None and \
                    job.progress.current.name != "multi-view preview":
                preview = changed("file", _display(preview_file))
            else:
                preview = changed("preview", job.preview_live)
            yield self._t3d_status(job), preview, changed("live", job.live), skip, skip, skip
        if job.error is not None:
            raise job.error
        yield self._t3d_final(job)

    def _t3d_status(self, job: TextTo3DJob) -> str:
        return (f"{job.progress.text()}\n\nRun `{job.run.id}` · {_settings_text(job.used())}")

    def _t3d_final(self, job: TextTo3DJob) -> tuple:
        res = job.result
        d = job.run.dir
        preview, views, files = _display(d / "preview.png"), _display(d / "views.png"), _files(d, FILE_ORDER_3D)
        took = duration(job.progress.snapshot()["elapsed"])
        settings = f"{_settings_text(job.used())}\n\nTime: {job.progress.summary()}"
        if res.finished:
            status = (f"Done: {res.steps_done} steps in {took}, run `{job.run.id}`. Drag the 3D view to turn the "
                      f"mesh.\n\n{settings}")
            return status, preview, views, files, res.files.get("glb"), res.files.get("mp4")
        status = (f"Stopped at step {res.steps_done}/{job.steps}; checkpoint kept. Continue it with **Resume** "
                  f"(Runs, on the left) or `{job.resume_command()}`\n\n{settings}")
        return status, preview, views, files, None, None

    @staticmethod
    def show_3d(glb: str | None, mp4: str | None) -> tuple:
        """Hand the finished mesh and video to the 3D viewer and the player (a plain event after the streaming
        one: gr.Model3D does not draw a mesh that arrives as the last of several streamed updates)."""
        return glb, mp4

    def cancel(self, request: gr.Request) -> str:
        """Stop the text-to-3D run this session started or opened, after the step in flight."""
        key = getattr(request, "session_hash", None)
        with self._lock:
            job = self._live.get(self._followed.get(key, "")) if key else None
        if job is None or job.finished:
            return "No text-to-3D run of yours is running."
        job.cancel()
        return "Stopping after the current step; the run keeps what it has ..."

    # ---------------------------------------------------------------- text-to-3D runs: reopen, resume
    def _state(self, run: Run) -> str:
        """A text-to-3D run's state: running (in this server), done, stopped, failed, or interrupted (it was
        running when its server stopped)."""
        with self._lock:
            job = self._live.get(run.id)
        if job is not None and not job.finished:
            return "running"
        status = str(run.info.get("status", "?"))
        return "interrupted" if status == "running" else status

    def _checkpoint_step(self, run: Run) -> int | None:
        state = run.dir / "checkpoints" / "latest" / "state.json"
        try:
            return int(json.loads(state.read_text())["step"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def runs_3d(self) -> gr.Dropdown:
        """The Runs list of the Text-to-3D tab: this server's text-to-3D runs, newest first, with their state."""
        choices = []
        for run in list_runs(self.out_dir, kinds=("text-to-3d",)):
            state = self._state(run)
            if state == "running":
                with self._lock:
                    job = self._live.get(run.id)
                snap = job.progress.snapshot() if job is not None else {}
                state += f", {snap.get('stage') or 'starting'}"
                if snap.get("unit"):
                    state += f" {snap['done']}/{snap['total']}"
            elif state in ("stopped", "interrupted"):
                step = self._checkpoint_step(run)
                state += f", resumable from step {step}" if step is not None else ", no checkpoint yet"
            choices.append((f"{run.info.get('prompt', '')} ({run.info.get('created', '')}, {state})", run.id))
        return gr.Dropdown(choices=choices, value=None)

    def open_3d(self, run_id: Any, request: gr.Request) -> Iterator[tuple]:
        """Reopen a text-to-3D run in the tab: a running one is followed live (Cancel stops it), a finished
        one shows its previews, mesh and video, a stopped or interrupted one what it has and how to resume."""
        run = self._text_to_3d_run(run_id)
        with self._lock:
            job = self._live.get(run.id)
            if job is not None and not job.finished:
                self._followed[self._session(request, run.id)] = run.id
        if job is not None and not job.finished:
            yield from self._follow(job)
            return
        d, state = run.dir, self._state(run)
        used = run.info.get("used") or run.info.get("settings", {})
        if state == "done":
            status = (f"Run `{run.id}`: done, {run.info.get('steps_done', '?')} steps. Drag the 3D view to turn the "
                      f"mesh.")
        elif state in ("stopped", "interrupted"):
            step = self._checkpoint_step(run)
            where = f"its last checkpoint is at step {step}" if step is not None else "it has no checkpoint yet"
            why = "stopped" if state == "stopped" else "interrupted (the server stopped while it ran)"
            status = (f"Run `{run.id}`: {why}; {where}. **Resume** continues it, as does "
                      f"`{resume_command(run.info.get('prompt', ''), d)}`")
        else:
            status = f"Run `{run.id}`: {state}. {html.escape(str(run.info.get('message', '')))}"
        glb, mp4 = d / "mesh.glb", d / "turntable.mp4"
        latest = d / "views.png" if (d / "views.png").is_file() else d / "progress.png"
        yield (f"{status}\n\n{_settings_text(used)}", _display(d / "preview.png"), _display(latest),
               _files(d, FILE_ORDER_3D), str(glb) if state == "done" and glb.is_file() else None,
               str(mp4) if state == "done" and mp4.is_file() else None)

    def resume_3d(self, run_id: Any, request: gr.Request) -> Iterator[tuple]:
        """Continue a stopped or interrupted text-to-3D run from its last checkpoint (from the start when it
        has none), with its own settings and model, and follow it."""
        run = self._text_to_3d_run(run_id)
        state = self._state(run)
        if state not in ("stopped", "interrupted", "failed"):
            raise ValueError(f"run {run.id} is {state}: only a stopped or interrupted run can be resumed")
        job = TextTo3DJob.resume(self.registry, run, slot=self.slot)
        yield from self._start_and_follow(job, request)

    def _text_to_3d_run(self, run_id: Any) -> Run:
        if not run_id or not isinstance(run_id, str):
            raise ValueError(f"pick a text-to-3D run from the Runs list, got {shown(run_id)}")
        run = find_run(self.out_dir, run_id)
        if run.kind != "text-to-3d":
            raise ValueError(f"run {run_id!r} is not a text-to-3D run: pick one from the Runs list")
        return run

    def shutdown(self, timeout_s: float = SHUTDOWN_WAIT_S) -> list[str]:
        """Stop this server's text-to-3D runs and wait (up to ``timeout_s``) for them to save a checkpoint at the
        step in flight; marks them interrupted. Returns the run ids saved (a run still in its preview or export,
        or slower than that, resumes from its last periodic checkpoint)."""
        with self._lock:
            jobs = [j for j in self._live.values() if not j.finished]
        for job in jobs:
            job.cancel()
        deadline = time.monotonic() + timeout_s
        saved = []
        for job in jobs:
            job.wait(max(0.0, deadline - time.monotonic()))
            if job.finished and job.error is None:
                update_run(job.run, status="interrupted", message="the server stopped; resume to continue")
                saved.append(job.run.id)
        return saved

    # ---------------------------------------------------------------- DreamBooth
    def dreambooth(self, photos: Any, token: Any, class_word: Any, steps: Any, lam: Any, model: Any
                   ) -> Iterator[tuple]:
        """DreamBooth tab, streamed -> (status, 4-view grid, files, the three model pickers' updates)."""
        skip = gr.skip()
        job = DreamBoothJob(self.registry, self.out_dir, uploaded_paths(photos, "the photos"), token, class_word,
                            steps, lam, model, settings=self.dreambooth_settings, slot=self.slot).start()
        settings = _settings_text(job.used)
        for _ in job.watch():
            if job.finished:
                break
            yield f"{job.progress.text()}\n\nRun `{job.run.id}` · {settings}", skip, skip, skip, skip, skip
        if job.error is not None:
            raise job.error
        run, res = job.run, job.result
        grid = run.dir / "grid.png"
        warnings = "".join(f"\n- {html.escape(w)}" for w in res.warnings)
        status = (f"Trained *{html.escape(res.prompt)}* for {res.steps_done} steps in "
                  f"{duration(job.progress.snapshot()['elapsed'])}, run `{run.id}`. The model is now in the model "
                  f"pickers: use the prompt \"{html.escape(res.prompt)}\"\n\n{settings}\n\nTime: "
                  f"{job.progress.summary()}" + (f"\n\nWarnings:{warnings}" if warnings else ""))
        choices = self.registry.choices()
        value = f"dreambooth:{run.id.split('/', 1)[1]}"
        # the Multi-view and Text-to-3D pickers switch to the new model; DreamBooth's own keeps its base model
        yield (status, _display(grid), _files(run.dir), gr.Dropdown(choices=choices, value=value),
               gr.Dropdown(choices=choices, value=value), gr.Dropdown(choices=choices))

    def model_choices(self) -> tuple:
        """Fresh picker choices for the three model dropdowns (page load, after DreamBooth)."""
        choices = self.registry.choices()
        return tuple(gr.Dropdown(choices=choices) for _ in range(3))

    # ---------------------------------------------------------------- gallery of runs
    def list_runs(self) -> tuple:
        """Gallery tab -> (thumbnails newest first, their run ids, the run picker)."""
        runs = list_runs(self.out_dir)
        items = [(_display(r.thumbnail), r.label) for r in runs if r.thumbnail is not None]
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
        images = [d / n for n in ("grid.png", "preview.png", "views.png", "progress.png", "curves.png", "loss.png")
                  if (d / n).is_file()]
        if run.kind == "generate":
            images += [d / v for v in json.loads((d / "cameras.json").read_text())["views"]] \
                if (d / "cameras.json").is_file() else []
        state = self._state(run) if run.kind == "text-to-3d" else info.get("status", "?")
        lines = [f"**{run.kind}** `{run.id}`: *{html.escape(info.get('prompt', ''))}*",
                 f"created {info.get('created', '?')}, status **{state}**",
                 _settings_text(info["used"]) if info.get("used") else
                 "settings: " + ", ".join(f"{k}={v}" for k, v in info.get("settings", {}).items())]
        if run.kind == "text-to-3d" and state in ("stopped", "interrupted"):
            lines.append(f"Continue with **Resume** in the Text-to-3D tab's Runs, or "
                         f"`{resume_command(info.get('prompt', ''), d)}`")
        if info.get("message"):
            lines.append(f"message: {html.escape(str(info['message']))}")
        glb, mp4 = d / "mesh.glb", d / "turntable.mp4"
        return ("\n\n".join(lines), [(_display(p), p.name) for p in images],
                str(glb) if glb.is_file() else None, str(mp4) if mp4.is_file() else None, _files(d, FILE_ORDER_3D))
