"""The web app's heavy jobs, free of any UI code: multi-view generation, text-to-3D, DreamBooth.

Each job validates its inputs first (ValueError with a readable message), records a run under the output
folder (:mod:`.runs`) and calls the library functions the CLI uses, so a run's files are those of
``mvdream3d generate`` / ``text-to-3d`` / ``dreambooth``.
"""

from __future__ import annotations

import math
import queue
import shlex
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..diffusion.sampling import SAMPLERS
from .models import ModelRegistry
from .runs import Run, new_run, update_run

MAX_VIEWS, MAX_STEPS, MAX_3D_STEPS, MAX_DREAMBOOTH_STEPS, MAX_SEED = 16, 1000, 100_000, 100_000, 2**32 - 1


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


def generate_views(registry: ModelRegistry, out_dir: Path, prompt: str, negative_prompt: str = "",
                   num_views: int = 4, elevation: float = 15.0, azimuth_start: float = 0.0, sampler: str = "ddim",
                   steps: int = 30, guidance_scale: float = 7.5, seed: int = 0, model: str | None = None,
                   on_step: Callable[[int, int], None] | None = None) -> Generation:
    """Generate ``num_views`` views of ``prompt`` with the picker's ``model``; writes the files of
    ``mvdream3d generate`` (view PNGs, grid.png, cameras.json) into a new run folder."""
    from ..cli import write_generation
    from ..pipeline import MultiViewPipeline

    prompt = _prompt(prompt)
    negative_prompt = _text(negative_prompt, "the negative prompt")
    num_views = _int(num_views, "the number of views", 1, MAX_VIEWS)
    steps = _int(steps, "steps", 1, MAX_STEPS)
    seed = _int(seed, "the seed", 0, MAX_SEED)
    guidance_scale = _float(guidance_scale, "the guidance scale", 0.0, 100.0)
    elevation = _float(elevation, "the elevation", -90.0, 90.0)
    azimuth_start = _float(azimuth_start, "the azimuth start", -360.0, 360.0)
    sampler = _choice(sampler, "the sampler", SAMPLERS)
    model = _model(model)
    settings = {"negative_prompt": negative_prompt, "num_views": num_views, "elevation": elevation,
                "azimuth_start": azimuth_start, "sampler": sampler, "steps": steps, "guidance_scale": guidance_scale,
                "seed": seed, "model": model or registry.default}
    mdl = registry.get(model)
    run = new_run(out_dir, "generate", prompt, settings)
    try:
        res = MultiViewPipeline(mdl)(
            prompt, negative_prompt=negative_prompt, num_views=num_views, elevation=elevation,
            azimuth_start=azimuth_start, guidance_scale=guidance_scale, num_inference_steps=steps, sampler=sampler,
            seed=seed, callback=(lambda i, t, x0: on_step(i + 1, steps)) if on_step else None)
        cams = write_generation(res, run.dir, prompt=prompt, seed=seed, steps=steps, guidance=guidance_scale,
                                sampler=sampler)
    except BaseException as e:
        update_run(run, status="failed", message=str(e))
        raise
    update_run(run, status="done")
    return Generation(run, [run.dir / v for v in cams["views"]], run.dir / "grid.png", cams)


def views_strip(views: Any, min_height: int = 192) -> np.ndarray:
    """A (4, H, W, 3) render tensor in [0, 1] as one uint8 picture, the views side by side, enlarged (nearest
    neighbour) to at least ``min_height`` pixels so that small renders stay visible on the page."""
    arr = (np.asarray(views.detach().cpu().float() if hasattr(views, "detach") else views) * 255).round()
    return enlarge(np.concatenate(list(arr.clip(0, 255).astype(np.uint8)), axis=1), min_height)


def enlarge(image: np.ndarray | str | Path, min_height: int = 192) -> np.ndarray:
    """An (H, W, 3) uint8 picture (or an image file) repeated to at least ``min_height`` pixels high."""
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

    path = out / "config.yaml"
    if path.is_file():
        cfg = yaml.safe_load(path.read_text()) or {}
        if cfg.get("model") != reference:
            cfg["model"] = reference
            path.write_text(yaml.safe_dump(cfg, sort_keys=False))


class TextTo3DJob:
    """A text-to-3D run in a worker thread; :meth:`events` yields its progress for the page.

    Events: ``("row", row)`` after each step (``row["views"]``: a uint8 strip of 4 fresh renders on progress
    steps), ``("done", TextTo3DResult)`` or ``("error", exception)``. :meth:`cancel` stops it after the
    step in flight; the run keeps its checkpoint and can be resumed from the CLI.
    """

    def __init__(self, registry: ModelRegistry, out_dir: Path, prompt: str, steps: int | None = None,
                 resolution: int = 0,
                 seed: int = 0, guidance_scale: float | None = None, model: str | None = None,
                 config: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> None:
        from ..threed.config import default_config_name, load_text_to_3d_config

        self.prompt = _prompt(prompt)
        # steps, resolution and guidance: 0, empty or None keep the recipe's value
        steps = _int(0 if _unset(steps) else steps, "steps (0: the recipe's)", 0, MAX_3D_STEPS) or None
        self.seed = _int(seed, "the seed", 0, MAX_SEED)
        resolution = _int(0 if _unset(resolution) else resolution, "the render resolution (0: the recipe's)", 0, 512)
        _check(resolution == 0 or resolution >= 8, "the render resolution must be 0 (the recipe's) or >= 8 px")
        # a guidance of 0 (no text guidance) is no use for score distillation: 0 means the recipe's
        guidance_scale = _float(0 if _unset(guidance_scale) else guidance_scale,
                                "the guidance scale (0: the recipe's)", 0.0, 500.0) or None
        model = _model(model)
        ui = [] if guidance_scale is None else [f"guidance.guidance_scale={guidance_scale}"]
        self.reference = registry.reference(model)
        mdl = registry.get(model)
        cfg = load_text_to_3d_config(config or default_config_name(mdl.vae is None),
                                     ["output.progress_every=10", *overrides, *ui])
        if resolution:
            cfg.cameras.resolution_milestones = [[m[0], resolution, m[2]] for m in cfg.cameras.resolution_milestones]
        self.steps = steps or cfg.optim.steps  # 0 or empty: the recipe's
        self.config = cfg.to_dict()
        # low_memory drops the shared model's VAE decoder: such runs load a model of their own
        self.model = self.reference if cfg.output.low_memory else mdl
        self.run = new_run(out_dir, "text-to-3d", self.prompt, {
            "steps": self.steps, "resolution": resolution, "seed": self.seed, "guidance_scale": guidance_scale,
            "model": model or registry.default, "config": config})
        self._events: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="text-to-3d", daemon=True)

    def _work(self) -> None:
        from ..threed import text_to_3d

        def callback(row: dict[str, Any]) -> None:
            if row.get("step") == 1 or "views" in row:
                _record_model(self.run.dir, self.reference)
            if "views" in row:
                row = {**row, "views": views_strip(row["views"])}
            self._events.put(("row", row))

        try:
            res = text_to_3d(self.prompt, model=self.model, config=self.config, out=self.run.dir, steps=self.steps,
                             seed=self.seed, callback=callback, should_stop=self._stop.is_set, progress=False)
            _record_model(self.run.dir, self.reference)
            update_run(self.run, status="done" if res.finished else "stopped", steps_done=res.steps_done,
                       files=res.files)
            self._events.put(("done", res))
        except BaseException as e:  # reported on the page by the consumer
            update_run(self.run, status="failed", message=str(e))
            self._events.put(("error", e))

    def cancel(self) -> None:
        """Stop after the step in flight (checkpoint and views kept)."""
        self._stop.set()

    @property
    def cancelled(self) -> bool:
        return self._stop.is_set()

    def events(self, poll_s: float = 0.25) -> Iterator[tuple[str, Any]]:
        """Start the run and yield its events until it ends; ``("tick", None)`` every ``poll_s`` seconds
        without news. Closing the iterator early cancels the run and waits for it to save."""
        self._thread.start()
        try:
            while True:
                try:
                    kind, data = self._events.get(timeout=poll_s)
                except queue.Empty:
                    yield "tick", None
                    continue
                yield kind, data
                if kind in ("done", "error"):
                    return
        finally:
            if self._thread.is_alive():
                self.cancel()
                self._thread.join()

    def resume_command(self) -> str:
        """The CLI line that continues this run."""
        return resume_command(self.prompt, self.run.dir)


def resume_command(prompt: str, run_dir: Path) -> str:
    """The CLI line that continues a stopped text-to-3D run."""
    return f"mvdream3d text-to-3d {shlex.quote(prompt)} --out {shlex.quote(str(run_dir))} --resume"


def train_dreambooth(registry: ModelRegistry, out_dir: Path, photos: list[str] | None, token: str = "sks",
                     class_word: str = "", steps: int = 200, lambda_preservation: float = 1.0,
                     model: str | None = None, on_step: Callable[[dict[str, float]], None] | None = None,
                     settings: dict[str, Any] | None = None) -> tuple[Run, Any]:
    """Fine-tune the picker's ``model`` on 3-10 uploaded photos (checked and re-encoded into the run folder);
    ``settings``: further :class:`~mvdream3d.training.dreambooth.DreamBoothConfig` fields (the server's
    ``--dreambooth-set``). The result joins the model picker as ``dreambooth:<run>``. Returns (run, result)."""
    try:
        from ..training.dreambooth import check_token, dreambooth
    except ImportError as e:
        raise ValueError("DreamBooth is not available in this build") from e
    from .security import check_photos, copy_photos

    _check(photos is None or (isinstance(photos, list | tuple) and all(isinstance(p, str | Path) for p in photos)),
           f"the photos must be a list of 3-10 uploaded image files, got {shown(photos)}")
    token = _text(token, "the token", "give a rare word that will name the subject, e.g. sks")
    class_word = _text(class_word, "the class word", "say what the subject is, e.g. toy")
    steps = _int(steps, "steps", 1, MAX_DREAMBOOTH_STEPS)
    lambda_preservation = _float(lambda_preservation, "lambda", 0.0, 1000.0)
    model = _model(model)
    files = check_photos(photos)
    check_token(token, class_word)
    reference = registry.reference(model)
    run = new_run(out_dir, "dreambooth", f"a {token} {class_word}", {
        "token": token, "class_word": class_word, "steps": steps, "lambda_preservation": lambda_preservation,
        "model": model or registry.default, "photos": len(files), **(settings or {})})
    try:
        images = copy_photos(files, run.dir / "photos")
        res = dreambooth(str(images), token=token, class_word=class_word, model=reference, out=run.dir,
                         callback=on_step, progress=False,
                         **{**(settings or {}), "steps": steps, "lambda_preservation": lambda_preservation})
    except BaseException as e:
        update_run(run, status="failed", message=str(e))
        raise
    update_run(run, status="done" if res.finished else "stopped", model_file=str(res.model_path),
               warnings=res.warnings, steps_done=res.steps_done)
    if res.finished:
        registry.put(str(run.dir.resolve()), res.model.eval())
    return run, res
