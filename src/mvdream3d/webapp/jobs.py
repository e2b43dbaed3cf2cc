"""The web app's heavy jobs, free of any UI code: multi-view generation, text-to-3D, DreamBooth.

Each job validates its inputs first (ValueError with a readable message), records a run under the output
folder (:mod:`.runs`) and calls the library functions the CLI uses, so a run's files are those of
``mvdream3d generate`` / ``text-to-3d`` / ``dreambooth``.
"""

from __future__ import annotations

import queue
import shlex
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..diffusion.sampling import SAMPLERS
from .models import ModelRegistry
from .runs import Run, new_run, update_run

MAX_VIEWS, MAX_STEPS, MAX_3D_STEPS, MAX_SEED = 16, 1000, 100_000, 2**32 - 1


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _prompt(prompt: Any) -> str:
    _check(isinstance(prompt, str) and bool(prompt.strip()), "the prompt is empty: describe an object, e.g. "
                                                             "\"a red cube with a yellow nose\"")
    return prompt.strip()


def _int(value: Any, name: str, lo: int, hi: int) -> int:
    _check(value is not None and float(value) == int(float(value)), f"{name} must be a whole number, got {value}")
    value = int(float(value))
    _check(lo <= value <= hi, f"{name} must be between {lo} and {hi}, got {value}")
    return value


def _float(value: Any, name: str, lo: float, hi: float) -> float:
    _check(value is not None, f"{name} is missing")
    value = float(value)
    _check(lo <= value <= hi, f"{name} must be between {lo} and {hi}, got {value}")
    return value


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
    num_views = _int(num_views, "the number of views", 1, MAX_VIEWS)
    steps = _int(steps, "steps", 1, MAX_STEPS)
    seed = _int(seed, "the seed", 0, MAX_SEED)
    guidance_scale = _float(guidance_scale, "the guidance scale", 0.0, 100.0)
    elevation = _float(elevation, "the elevation", -90.0, 90.0)
    azimuth_start = _float(azimuth_start, "the azimuth start", -360.0, 360.0)
    _check(sampler in SAMPLERS, f"unknown sampler {sampler!r}: choose one of {', '.join(SAMPLERS)}")
    settings = {"negative_prompt": negative_prompt or "", "num_views": num_views, "elevation": elevation,
                "azimuth_start": azimuth_start, "sampler": sampler, "steps": steps, "guidance_scale": guidance_scale,
                "seed": seed, "model": model or registry.default}
    mdl = registry.get(model)
    run = new_run(out_dir, "generate", prompt, settings)
    try:
        res = MultiViewPipeline(mdl)(
            prompt, negative_prompt=negative_prompt or "", num_views=num_views, elevation=elevation,
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
        steps = None if steps in (None, "", 0) else _int(steps, "steps", 1, MAX_3D_STEPS)
        self.seed = _int(seed, "the seed", 0, MAX_SEED)
        resolution = _int(resolution or 0, "the render resolution", 0, 512)
        _check(resolution == 0 or resolution >= 8, "the render resolution must be 0 (the recipe's) or >= 8 px")
        if guidance_scale in ("", None, 0):  # 0 (no text guidance) is no use for score distillation
            guidance_scale = None
        else:
            guidance_scale = _float(guidance_scale, "the guidance scale", 0.0, 500.0)
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

    files = check_photos(photos)
    token, class_word = (token or "").strip(), (class_word or "").strip()
    _check(bool(token), "the token is empty: give a rare word that will name the subject, e.g. sks")
    _check(bool(class_word), "the class word is empty: say what the subject is, e.g. toy")
    check_token(token, class_word)
    steps = _int(steps, "steps", 1, 100_000)
    lambda_preservation = _float(lambda_preservation, "lambda", 0.0, 1000.0)
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
