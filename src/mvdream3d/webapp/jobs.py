"""The web app's heavy jobs, free of any UI code: multi-view generation, text-to-3D, DreamBooth.

Each job validates its inputs first (ValueError with a readable message naming the field and its valid
range; nothing is clamped), records a run under the output folder (:mod:`.runs`, with the settings it
used) and calls the library functions the CLI uses, so a run's files are those of ``mvdream3d generate`` /
``text-to-3d`` / ``dreambooth``.

Text-to-3D and DreamBooth run in worker threads (:class:`BackgroundJob`) that do not depend on the page
that started them: the page follows a job (:meth:`BackgroundJob.watch`) and shows its
:class:`~.progress.JobProgress`; a text-to-3D job runs on when the page is closed and can be resumed from
its checkpoint (:meth:`TextTo3DJob.resume`). :class:`HeavySlot` keeps the heavy work one job at a time.
"""

from __future__ import annotations

import math
import shlex
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..diffusion.sampling import SAMPLERS
from .models import ModelRegistry
from .progress import JobProgress
from .runs import Run, new_run, update_run

# the valid ranges of the page's fields (the page's inputs use the same bounds; docs/webapp.md lists them)
MAX_VIEWS, MAX_STEPS, MAX_3D_STEPS, MAX_DREAMBOOTH_STEPS, MAX_SEED = 16, 1000, 100_000, 100_000, 2**32 - 1
MAX_GUIDANCE, MAX_3D_GUIDANCE, MAX_LAMBDA = 100.0, 500.0, 1000.0
MIN_ELEVATION, MAX_ELEVATION, MIN_AZIMUTH, MAX_AZIMUTH = -90.0, 90.0, -360.0, 360.0
MIN_RESOLUTION, MAX_RESOLUTION = 8, 512


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def shown(value: Any) -> str:
    """A caller's value in a message: its repr, shortened, and its type when that is not obvious."""
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    obvious = value is None or (isinstance(value, int | float | str) and not isinstance(value, bool))
    return text if obvious else f"{text} (a {type(value).__name__})"


def _number(value: Any, name: str, lo: float, hi: float, whole: bool) -> float:
    """``value`` as a finite number in [lo, hi] (a number or a numeric string; no bools, lists, None ...)."""
    kind = "a whole number" if whole else "a number"
    number: float | None = None
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    elif isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    if number is None or not math.isfinite(number) or (whole and number != int(number)) or not lo <= number <= hi:
        raise ValueError(f"{name} must be {kind} between {lo} and {hi}, got {shown(value)}")
    return number


def _int(value: Any, name: str, lo: int, hi: int) -> int:
    return int(_number(value, name, lo, hi, whole=True))


def _float(value: Any, name: str, lo: float, hi: float) -> float:
    return _number(value, name, lo, hi, whole=False)


def _text(value: Any, name: str, example: str = "") -> str:
    """A text field (``None`` counts as empty); ``example`` given: it must not be empty. Returns it stripped."""
    _check(value is None or isinstance(value, str), f"{name} must be text, got {shown(value)}")
    text = (value or "").strip()
    _check(bool(text) or not example, f"{name} is empty: {example}")
    return text


def _prompt(prompt: Any) -> str:
    return _text(prompt, "the prompt", "describe an object, e.g. \"a red cube with a yellow nose\"")


def _choice(value: Any, name: str, choices: Iterable[str]) -> str:
    choices = list(choices)
    _check(isinstance(value, str) and value in choices,
           f"{name} must be one of {', '.join(choices)}, got {shown(value)}")
    return value


def _unset(value: Any) -> bool:
    """An optional number left at "the recipe's": None, empty text or 0."""
    return value is None or (isinstance(value, str) and not value.strip()) or (
        isinstance(value, int | float) and not isinstance(value, bool) and value == 0)


def _model(value: Any) -> str | None:
    """The model picker's value: a string the registry checks, or empty/None for the default."""
    _check(value is None or isinstance(value, str),
           f"the model must be one of the picker's entries (a string), got {shown(value)}")
    return value or None


@dataclass
class Generation:
    """A multi-view run: its folder, the view images, the grid and the cameras.json data."""

    run: Run
    views: list[Path]
    grid: Path
    cameras: dict[str, Any]

    @property
    def files(self) -> list[Path]:
        return [self.grid, *self.views, self.run.dir / "cameras.json"]


def _or_default(value: Any, default: Any) -> Any:
    """An optional field: None or empty text takes ``default`` (the model's own setting)."""
    return default if value is None or (isinstance(value, str) and not value.strip()) else value


def generate_views(registry: ModelRegistry, out_dir: Path, prompt: str, negative_prompt: str = "",
                   num_views: int = 4, elevation: float = 15.0, azimuth_start: float = 0.0, sampler: str | None = None,
                   steps: int | None = None, guidance_scale: float | None = None, seed: int = 0,
                   model: str | None = None, on_step: Callable[[int, int], None] | None = None,
                   slot: HeavySlot | None = None, on_wait: Callable[[str], None] | None = None) -> Generation:
    """Generate ``num_views`` views of ``prompt`` with the picker's ``model``; writes the files of
    ``mvdream3d generate`` (view PNGs, grid.png, cameras.json) into a new run folder. ``sampler``, ``steps``,
    ``guidance_scale`` None: the model's own (its config's ``sampling``). The work waits for ``slot``
    (telling ``on_wait`` what it waits for)."""
    from ..cli import write_generation
    from ..pipeline import MultiViewPipeline

    prompt = _prompt(prompt)
    negative_prompt = _text(negative_prompt, "the negative prompt")
    num_views = _int(num_views, "the number of views", 1, MAX_VIEWS)
    seed = _int(seed, "the seed", 0, MAX_SEED)
    elevation = _float(elevation, "the elevation", MIN_ELEVATION, MAX_ELEVATION)
    azimuth_start = _float(azimuth_start, "the azimuth start", MIN_AZIMUTH, MAX_AZIMUTH)
    model = _model(model)
    # None or empty: the model's own (read below, once the model is loaded)
    sampler = None if _or_default(sampler, None) is None else _choice(sampler, "the sampler", SAMPLERS)
    steps = None if _or_default(steps, None) is None else _int(steps, "steps", 1, MAX_STEPS)
    guidance_scale = (None if _or_default(guidance_scale, None) is None else
                      _float(guidance_scale, "the guidance scale", 0.0, MAX_GUIDANCE))
    mdl = registry.get(model)
    defaults = mdl.sampling_defaults
    sampler = _or_default(sampler, defaults["sampler"])
    steps = int(_or_default(steps, defaults["steps"]))
    guidance_scale = float(_or_default(guidance_scale, defaults["guidance_scale"]))
    guidance_rescale = float(defaults.get("guidance_rescale", 0.0))  # the model's own: the page has no field
    settings = {"negative_prompt": negative_prompt, "num_views": num_views, "elevation": elevation,
                "azimuth_start": azimuth_start, "sampler": sampler, "steps": steps, "guidance_scale": guidance_scale,
                "seed": seed, "model": model or registry.default}
    with (slot or HeavySlot()).hold(lambda: f"the multi-view generation of *{prompt}*", on_wait):
        run = new_run(out_dir, "generate", prompt, settings)
        try:
            res = MultiViewPipeline(mdl)(
                prompt, negative_prompt=negative_prompt, num_views=num_views, elevation=elevation,
                azimuth_start=azimuth_start, guidance_scale=guidance_scale, num_inference_steps=steps,
                guidance_rescale=guidance_rescale, sampler=sampler, seed=seed,
                callback=(lambda i, t, x0: on_step(i + 1, steps)) if on_step else None)
            cams = write_generation(res, run.dir, prompt=prompt, seed=seed, steps=steps, guidance=guidance_scale,
                                    sampler=sampler, guidance_rescale=guidance_rescale)
        except BaseException as e:
            update_run(run, status="failed", message=str(e))
            raise
    used = {"views": num_views, "elevation": elevation, "azimuth start": azimuth_start, "sampler": sampler,
            "steps": steps, "guidance scale": guidance_scale, "seed": seed, "model": settings["model"]}
    if guidance_rescale:
        used["guidance rescale"] = guidance_rescale
    update_run(run, status="done", used=used)
    return Generation(run, [run.dir / v for v in cams["views"]], run.dir / "grid.png", cams)


def views_strip(views: Any, min_height: int = 192) -> np.ndarray:
    """A (4, H, W, 3) render tensor in [0, 1] as one uint8 picture, the views side by side, enlarged (nearest
    neighbour) to at least ``min_height`` pixels so that small renders stay visible on the page."""
    arr = (np.asarray(views.detach().cpu().float() if hasattr(views, "detach") else views) * 255).round()
    return enlarge(np.concatenate(list(arr.clip(0, 255).astype(np.uint8)), axis=1), min_height)


def enlarge(image: np.ndarray | str | Path, min_height: int = 192) -> np.ndarray:
    """An (H, W, 3) uint8 picture (or an image file) repeated to at least ``min_height`` pixels high: the
    display copy of a small picture, sharp (nearest neighbour); the downloads keep the native files."""
    if not isinstance(image, np.ndarray):
        from PIL import Image

        with Image.open(image) as im:
            image = np.asarray(im.convert("RGB"))
    k = max(1, -(-min_height // image.shape[0]))
    return image.repeat(k, axis=0).repeat(k, axis=1) if k > 1 else image


def _record_model(out: Path, reference: str) -> None:
    """Name the model in the run's config.yaml (text_to_3d records a model object by its repr), so that
    ``mvdream3d text-to-3d PROMPT --out RUN --resume`` finds it."""
    import yaml

    from ..files import atomic_write_text

    path = out / "config.yaml"
    if path.is_file():
        cfg = yaml.safe_load(path.read_text()) or {}
        if cfg.get("model") != reference:
            cfg["model"] = reference
            atomic_write_text(path, yaml.safe_dump(cfg, sort_keys=False))


# ---------------------------------------------------------------------------------------------- jobs in threads
class HeavySlot:
    """One heavy job at a time across the app. Gradio's queue runs the page's requests one by one; a
    text-to-3D run goes on after its page is closed (which frees gradio's slot), so the work itself also
    holds this lock: a later request waits for it, and says what it waits for."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.holder: Callable[[], str] | None = None  # describes the job holding the slot

    def describe(self) -> str:
        holder = self.holder
        return holder() if holder is not None else "the job before this one"

    @contextmanager
    def hold(self, describe: Callable[[], str], waiting: Callable[[str], None] | None = None,
             poll_s: float = 0.5) -> Iterator[None]:
        """Wait for the slot (calling ``waiting(what holds it)`` every ``poll_s`` seconds), hold it in the block."""
        while not self._lock.acquire(timeout=poll_s):
            if waiting is not None:
                waiting(self.describe())
        self.holder = describe
        try:
            yield
        finally:
            self.holder = None
            self._lock.release()


class BackgroundJob:
    """Work in a worker thread, independent of the page that started it (closing the page does not stop it).

    The thread waits for the app's :class:`HeavySlot`, runs :meth:`_work` and records the outcome:
    ``result`` or ``error``, then ``finished``. Pages follow it with :meth:`watch`; ``progress`` says where it
    is (:class:`~.progress.JobProgress`). :meth:`cancel` asks the work to stop at its next check.
    """

    title = "job"

    def __init__(self, run: Run, plan: list[str], slot: HeavySlot | None = None) -> None:
        self.run = run
        self.slot = slot or HeavySlot()
        self.progress = JobProgress(self.title, plan)
        self.result: Any = None
        self.error: BaseException | None = None
        self.finished = False
        self._stop = threading.Event()
        self._changed = threading.Condition()
        self._version = 0
        self._thread = threading.Thread(target=self._main, name=f"{self.title}:{run.id}", daemon=True)

    def describe(self) -> str:
        """What the job is doing, in a few words (for requests that wait for it)."""
        s = self.progress.snapshot()
        where = f"{s['stage']} {s['done']}/{s['total']}" if s.get("stage") and s.get("unit") else s.get("stage")
        return f"the {self.title} run *{self.run.info.get('prompt', '')}* ({where or 'starting'})"

    def start(self) -> BackgroundJob:
        self._thread.start()
        return self

    def _main(self) -> None:
        def waiting(what: str) -> None:
            if self.progress.current is None or self.progress.current.name != "waiting":
                self.progress.stage("waiting", unit="")
            self.progress.set_note(f"waiting for {what} to finish")
            self.changed()

        try:
            with self.slot.hold(self.describe, waiting):
                self.progress.stage("starting", unit="")
                self.changed()
                self.result = self._work()
        except BaseException as e:  # reported on the page by whoever watches
            self.error = e
            self._failed(e)
        finally:
            self.progress.finish()
            self.finished = True
            self.changed()

    def _work(self) -> Any:
        raise NotImplementedError

    def _failed(self, error: BaseException) -> None:
        update_run(self.run, status="failed", message=str(error))

    def changed(self) -> None:
        """Wake the watchers (new progress, a new picture, the end)."""
        with self._changed:
            self._version += 1
            self._changed.notify_all()

    def watch(self, min_interval_s: float = 0.5, tick_s: float = 1.0) -> Iterator[None]:
        """Yield after each change, at most every ``min_interval_s`` seconds, and every ``tick_s`` seconds
        without one (the elapsed time moves on); the last yield comes after the job has finished."""
        seen, last = -1, 0.0
        while True:
            time.sleep(max(0.0, last + min_interval_s - time.monotonic()))
            with self._changed:
                if self._version == seen and not self.finished:
                    self._changed.wait(tick_s)
                seen, done = self._version, self.finished
            last = time.monotonic()
            yield
            if done:
                return

    def cancel(self) -> None:
        """Stop at the next check (text-to-3D: after the step in flight; checkpoint and views kept)."""
        self._stop.set()

    @property
    def cancelled(self) -> bool:
        return self._stop.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the thread to end; True when it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()


# text_to_3d's stage names -> what the page calls them, in the order a run goes through them
T3D_STAGES = {"preview": "multi-view preview", "optimisation": "optimisation", "saving": "saving checkpoint and views",
              "density grid": "mesh: density grid", "choosing the threshold": "mesh: choosing the threshold",
              "marching cubes": "mesh: marching cubes", "vertex colours": "mesh: vertex colours (texture)",
              "saving the mesh": "mesh: saving .glb and .obj", "turntable frames": "video: turntable frames",
              "encoding the video": "video: encoding", "curves": "loss curves"}
T3D_UNITS = {"preview": "steps", "optimisation": "steps", "density grid": "chunks", "turntable frames": "frames"}
PREVIEW_EVERY_S = 0.5  # how often the preview's current x0 prediction is decoded for the page, at most
PREVIEW_DECODE_SHARE = 0.2  # and so that decoding it (a VAE decode for latent models) takes at most this share


def milestones_text(milestones: list) -> str:
    """The render resolutions of a run, e.g. "32 px" or "64 px, 256 px from step 5000"."""
    parts = [f"{m[1]} px" if i == 0 else f"{m[1]} px from step {m[0]}" for i, m in enumerate(milestones)]
    return ", ".join(parts)


def text_to_3d_recipe(model: Any, config: str | None, overrides: list[str] | tuple[str, ...] = ()) -> Any:
    """The text-to-3D config the app uses for ``model`` (a loaded model): ``config`` (the server's --config)
    or the model's default recipe, the app's progress renders every 10 steps, then the server's --set."""
    from ..threed.config import default_config_for, load_text_to_3d_config

    return load_text_to_3d_config(config or default_config_for(model),
                                  ["output.progress_every=10", *overrides])


class TextTo3DJob(BackgroundJob):
    """A text-to-3D run: validated inputs, a run folder, then :func:`mvdream3d.threed.text_to_3d` in a thread.

    It runs to the end unless cancelled, whether or not a page watches it; :meth:`resume` continues a
    stopped or interrupted run (e.g. by a server restart) from its last checkpoint. For the page:
    ``progress``, ``row`` (the last step's log row), ``preview_live`` (the preview's current x0 prediction,
    4 views side by side) and ``live`` (the latest 4-view render of the object), both enlarged uint8 pictures.
    """

    title = "text-to-3D"

    def __init__(self, registry: ModelRegistry, out_dir: Path, prompt: str, steps: int | None = None,
                 resolution: int = 0,
                 seed: int = 0, guidance_scale: float | None = None, model: str | None = None,
                 config: str | None = None, overrides: list[str] | tuple[str, ...] = (),
                 slot: HeavySlot | None = None, _resume: Run | None = None) -> None:
        if _resume is not None:
            self._init_resume(registry, _resume, slot)
            return
        self.prompt = _prompt(prompt)
        # steps, resolution and guidance: 0, empty or None keep the recipe's value
        steps = _int(0 if _unset(steps) else steps, "steps (0: the recipe's)", 0, MAX_3D_STEPS) or None
        self.seed = _int(seed, "the seed", 0, MAX_SEED)
        resolution = _int(0 if _unset(resolution) else resolution, "the render resolution (0: the recipe's)", 0,
                          MAX_RESOLUTION)
        _check(resolution == 0 or resolution >= MIN_RESOLUTION,
               f"the render resolution must be 0 (the recipe's) or a whole number between {MIN_RESOLUTION} and "
               f"{MAX_RESOLUTION}, got {resolution}")
        # a guidance of 0 (no text guidance) is no use for score distillation: 0 means the recipe's
        guidance_scale = _float(0 if _unset(guidance_scale) else guidance_scale,
                                "the guidance scale (0: the recipe's)", 0.0, MAX_3D_GUIDANCE) or None
        model = _model(model)
        self.reference = registry.reference(model)
        mdl = registry.get(model)
        cfg = text_to_3d_recipe(mdl, config, overrides)
        if guidance_scale is not None:
            cfg.guidance.guidance_scale = guidance_scale
        if resolution:
            cfg.cameras.resolution_milestones = [[m[0], resolution, m[2]] for m in cfg.cameras.resolution_milestones]
        self.steps = steps or cfg.optim.steps  # 0 or empty: the recipe's
        cfg.optim.steps = self.steps
        self.config = cfg.to_dict()
        self.resuming = False
        # low_memory drops the shared model's VAE decoder: such runs load a model of their own
        self.model = self.reference if cfg.output.low_memory else mdl
        self.config["model"] = self.reference  # config.yaml names the model: what --resume needs
        run = new_run(out_dir, "text-to-3d", self.prompt, {
            "steps": self.steps, "resolution": resolution, "seed": self.seed, "guidance_scale": guidance_scale,
            "model": model or registry.default, "config": config})
        self._setup(run, slot, cfg.output.preview)
        update_run(run, used=self.used())

    def _init_resume(self, registry: ModelRegistry, run: Run, slot: HeavySlot | None) -> None:
        import yaml

        info, settings = run.info, run.info.get("settings", {})
        self.prompt = str(info.get("prompt", ""))
        self.seed = int(settings.get("seed", 0))
        self.steps = int(settings.get("steps") or 0) or None  # type: ignore[assignment]
        model = settings.get("model")
        self.reference = registry.reference(model)
        mdl = registry.get(model)
        saved = run.dir / "config.yaml"
        if not saved.is_file():
            raise ValueError(f"run {run.id} has no config.yaml: it cannot be resumed; start a new run")
        self.config = yaml.safe_load(saved.read_text())
        self.config["model"] = self.reference
        self.steps = self.steps or int(self.config["optim"]["steps"])
        self.resuming = (run.dir / "checkpoints" / "latest" / "state.json").is_file()
        low_memory = bool(self.config.get("output", {}).get("low_memory"))
        self.model = self.reference if low_memory else mdl
        update_run(run, status="running", resumed_at=time.time(), message="")
        self._setup(run, slot, preview=not self.resuming and bool(self.config.get("output", {}).get("preview")))

    def _setup(self, run: Run, slot: HeavySlot | None, preview: bool) -> None:
        plan = list(T3D_STAGES.values())
        if not preview:
            plan.remove(T3D_STAGES["preview"])
        super().__init__(run, plan, slot)
        self.row: dict[str, Any] | None = None
        self.preview_live: np.ndarray | None = None
        self.live: np.ndarray | None = None
        self._preview_decoded, self._decode_s = 0.0, 0.0

    @classmethod
    def resume(cls, registry: ModelRegistry, run: Run, slot: HeavySlot | None = None) -> TextTo3DJob:
        """A job that continues ``run`` from its last checkpoint (from the start when it has none yet), with
        the run's own config.yaml and model."""
        _check(run.kind == "text-to-3d", f"run {run.id} is not a text-to-3D run")
        return cls(registry, Path(run.dir).parent.parent, run.info.get("prompt", ""), slot=slot, _resume=run)

    def used(self) -> dict[str, Any]:
        """The settings this run uses (the recipe's where the page left them to it), as run.json records them."""
        cfg = self.config
        return {"steps": self.steps, "render resolution": milestones_text(cfg["cameras"]["resolution_milestones"]),
                "guidance scale": cfg["guidance"]["guidance_scale"], "seed": self.seed,
                "model": self.run.info.get("settings", {}).get("model")}

    def _on_row(self, row: dict[str, Any]) -> None:
        if row.get("step") == 1 or "views" in row:
            _record_model(self.run.dir, self.reference)
        p = self.progress
        if p.current is None or p.current.name != T3D_STAGES["optimisation"]:
            p.stage(T3D_STAGES["optimisation"], self.steps, "steps", done=int(row["step"]) - 1)
        if "views" in row:
            self.live = views_strip(row["views"])
            row = {k: v for k, v in row.items() if k != "views"}
        self.row = row
        p.update(int(row["step"]), note=f"loss {row['loss']:.4g}, diffusion timestep {row.get('t', '?')}")
        self.changed()

    def _on_stage(self, name: str, done: int, total: int, images: Callable[[], Any] | None) -> None:
        label = T3D_STAGES.get(name, name)
        p = self.progress
        if p.current is None or p.current.name != label:
            p.stage(label, total, T3D_UNITS.get(name, ""))
        p.update(done, total)
        # the preview's last estimate is preview.png, written next: not decoded here
        wait = max(PREVIEW_EVERY_S, self._decode_s / PREVIEW_DECODE_SHARE)
        if images is not None and done < total and time.monotonic() - self._preview_decoded >= wait:
            t0 = time.monotonic()
            self.preview_live = views_strip(images())
            self._preview_decoded = time.monotonic()
            self._decode_s = self._preview_decoded - t0
        self.changed()

    def _work(self) -> Any:
        from ..threed import text_to_3d

        if self.resuming:
            self.progress.set_note("continuing from the last checkpoint ...")
        res = text_to_3d(self.prompt, model=self.model, config=self.config, out=self.run.dir, steps=self.steps,
                         seed=self.seed, resume=self.resuming, callback=self._on_row, should_stop=self._stop.is_set,
                         progress=False, on_stage=self._on_stage)
        _record_model(self.run.dir, self.reference)
        update_run(self.run, status="done" if res.finished else "stopped", steps_done=res.steps_done,
                   files=res.files)
        return res

    def resume_command(self) -> str:
        """The CLI line that continues this run."""
        return resume_command(self.prompt, self.run.dir)


def resume_command(prompt: str, run_dir: Path) -> str:
    """The CLI line that continues a stopped text-to-3D run."""
    return f"mvdream3d text-to-3d {shlex.quote(prompt)} --out {shlex.quote(str(run_dir))} --resume"


DREAMBOOTH_STAGES = {"preparing": "loading the model and the photos", "training": "training",
                     "saving the model": "saving the model", "drawing the grid": "drawing the 4-view grid",
                     "loss plot": "loss plot and summary"}


def dreambooth_defaults(settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """DreamBooth's settings for a run of this server: :class:`DreamBoothConfig`'s defaults, then the server's
    ``--dreambooth-set`` (``settings``)."""
    import dataclasses

    from ..training.dreambooth import DreamBoothConfig

    return {**dataclasses.asdict(DreamBoothConfig()), **(settings or {})}


class DreamBoothJob(BackgroundJob):
    """DreamBooth on 3-10 uploaded photos (checked and re-encoded into the run folder), in a thread:
    :func:`mvdream3d.training.dreambooth.dreambooth` with ``settings`` (the server's ``--dreambooth-set``)
    under the page's steps and lambda. When it finishes, the model joins the pickers as ``dreambooth:<run>``."""

    title = "DreamBooth"

    def __init__(self, registry: ModelRegistry, out_dir: Path, photos: list[str] | None, token: str = "sks",
                 class_word: str = "", steps: int | None = None, lambda_preservation: float | None = None,
                 model: str | None = None, settings: dict[str, Any] | None = None,
                 slot: HeavySlot | None = None, on_step: Callable[[dict[str, float]], None] | None = None) -> None:
        try:
            from ..training.dreambooth import check_token
        except ImportError as e:
            raise ValueError("DreamBooth is not available in this build") from e
        from .security import check_photos

        defaults = dreambooth_defaults(settings)
        _check(photos is None or (isinstance(photos, list | tuple) and all(isinstance(p, str | Path) for p in photos)),
               f"the photos must be a list of 3-10 uploaded image files, got {shown(photos)}")
        token = _text(token, "the token", "give a rare word that will name the subject, e.g. sks")
        class_word = _text(class_word, "the class word", "say what the subject is, e.g. toy")
        steps = _int(_or_default(steps, defaults["steps"]), "steps", 1, MAX_DREAMBOOTH_STEPS)
        lambda_preservation = _float(_or_default(lambda_preservation, defaults["lambda_preservation"]), "lambda",
                                     0.0, MAX_LAMBDA)
        model = _model(model)
        self.files = check_photos(photos)
        check_token(token, class_word)
        self.registry, self.reference = registry, registry.reference(model)
        self.token, self.class_word = token, class_word
        self.steps, self.lambda_preservation = steps, lambda_preservation
        self.on_step = on_step
        self.settings = dict(settings or {})
        run = new_run(out_dir, "dreambooth", f"a {token} {class_word}", {
            "token": token, "class_word": class_word, "steps": steps, "lambda_preservation": lambda_preservation,
            "model": model or registry.default, "photos": len(self.files), **self.settings})
        self.used = {"steps": steps, "lambda": lambda_preservation, "model": model or registry.default,
                     "training": defaults["train"], "sample steps": defaults["sample_steps"],
                     "sample guidance": defaults["sample_guidance"], "seed": defaults["seed"]}
        update_run(run, used=self.used)
        super().__init__(run, list(DREAMBOOTH_STAGES.values()), slot)

    def _on_step(self, row: dict[str, float]) -> None:
        p = self.progress
        if p.current is None or p.current.name != DREAMBOOTH_STAGES["training"]:
            p.stage(DREAMBOOTH_STAGES["training"], self.steps, "steps")
        p.update(int(row["step"]), note=f"loss {row['loss']:.4f}")
        self.changed()
        if self.on_step is not None:
            self.on_step(row)

    def _on_stage(self, name: str, done: int, total: int) -> None:
        label = DREAMBOOTH_STAGES.get(name, name)
        if self.progress.current is None or self.progress.current.name != label:
            self.progress.stage(label, total, "steps" if name == "drawing the grid" else "")
        self.progress.update(done, total)
        self.changed()

    def _work(self) -> Any:
        from ..training.dreambooth import dreambooth
        from .security import copy_photos

        self.progress.stage(DREAMBOOTH_STAGES["preparing"], unit="")
        self.changed()
        images = copy_photos(self.files, self.run.dir / "photos")
        res = dreambooth(str(images), token=self.token, class_word=self.class_word, model=self.reference,
                         out=self.run.dir, callback=self._on_step, should_stop=self._stop.is_set, progress=False,
                         on_stage=self._on_stage, **{**self.settings, "steps": self.steps,
                                                     "lambda_preservation": self.lambda_preservation})
        update_run(self.run, status="done" if res.finished else "stopped", model_file=str(res.model_path),
                   warnings=res.warnings, steps_done=res.steps_done)
        if res.finished:
            self.registry.put(str(self.run.dir.resolve()), res.model.eval())
        return res


def train_dreambooth(registry: ModelRegistry, out_dir: Path, photos: list[str] | None, token: str = "sks",
                     class_word: str = "", steps: int | None = None, lambda_preservation: float | None = None,
                     model: str | None = None, on_step: Callable[[dict[str, float]], None] | None = None,
                     settings: dict[str, Any] | None = None) -> tuple[Run, Any]:
    """Fine-tune the picker's ``model`` on 3-10 uploaded photos and wait for it (a :class:`DreamBoothJob`);
    ``steps`` / ``lambda_preservation`` None: the defaults (with ``settings``, the server's
    ``--dreambooth-set``). The result joins the model picker as ``dreambooth:<run>``. Returns (run, result)."""
    job = DreamBoothJob(registry, out_dir, photos, token, class_word, steps, lambda_preservation, model, settings,
                        on_step=on_step)
    job.start().wait()
    if job.error is not None:
        raise job.error
    return job.run, job.result
