"""What a DreamBooth run leaves besides the model file: grid.png, loss.png and summary.json."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def write_grid(model: Any, prompt: str, path: Path, size: int, steps: int, guidance: float, seed: int,
               on_step: Callable[[int, int], None] | None = None) -> Path:
    """4 views of ``prompt`` at elevation 15, azimuths 0/90/180/270 (the evaluation cameras) in one row;
    ``on_step(done, steps)`` is told each sampling step."""
    from ..pipeline import MultiViewPipeline
    from .dreambooth import GRID_AZIMUTHS, GRID_ELEVATION

    res = MultiViewPipeline(model)(prompt, num_views=len(GRID_AZIMUTHS), elevation=GRID_ELEVATION,
                                   azimuth_start=GRID_AZIMUTHS[0], azimuth_span=360, guidance_scale=guidance,
                                   num_inference_steps=steps, seed=seed, height=size, width=size,
                                   callback=(lambda i, t, x0: on_step(i + 1, steps)) if on_step else None)
    res.grid(rows=1).save(path)
    return path


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if len(values) < window or window < 2:
        return values
    kernel = np.ones(window) / window
    return np.convolve(values, kernel, mode="valid")


def write_loss_plot(history: list[dict[str, float]], lambda_preservation: float, path: Path) -> Path:
    """Diffusion loss (raw and a moving average) and the preservation term ``||theta - theta_0||_1 / N``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.array([h["step"] for h in history], dtype=float)
    diff = np.array([h["diffusion_loss"] for h in history], dtype=float)
    pres = np.array([h["preservation"] for h in history], dtype=float)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    if len(steps):
        ax1.plot(steps, diff, color="tab:blue", alpha=0.3, lw=1, label="per step")
        w = max(2, len(steps) // 20)
        sm = _smooth(diff, w)
        ax1.plot(steps[len(steps) - len(sm):], sm, color="tab:blue", lw=2, label=f"mean of {w}")
        ax2.plot(steps, pres, color="tab:red", lw=2)
    ax1.set(xlabel="step", ylabel="diffusion loss (MSE)", title="diffusion loss")
    ax1.legend(loc="upper right", fontsize=8)
    ax2.set(xlabel="step", ylabel="||theta - theta_0||_1 / N",
            title=f"parameter preservation (x lambda = {lambda_preservation:g} in the loss)")
    ax2.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_outputs(result: Any, summary: dict[str, Any], grid: bool, size: int, cfg: Any,
                  progress: Callable[[str, int, int], None] | None = None) -> None:
    """Write grid.png (only for a finished run), loss.png and summary.json into ``result.out``; fills
    ``result.files``. ``progress(stage, done, total)`` is told "drawing the grid" per sampling step and
    "loss plot" (0 of 1, then 1 of 1)."""
    out = Path(result.out)
    files = {"model": result.model_path.name}
    if grid:
        on_step = (lambda i, n: progress("drawing the grid", i, n)) if progress else None
        if on_step:
            on_step(0, cfg.sample_steps)
        write_grid(result.model, result.prompt, out / "grid.png", size, cfg.sample_steps, cfg.sample_guidance, cfg.seed,
                   on_step)
        files["grid"] = "grid.png"
    if progress:
        progress("loss plot", 0, 1)
    write_loss_plot(result.history, cfg.lambda_preservation, out / "loss.png")
    files["loss_plot"] = "loss.png"
    files["summary"] = "summary.json"
    result.files = files
    last = result.history[-10:]
    doc = {
        "prompt": result.prompt,
        **summary,
        "steps_done": result.steps_done,
        "finished": result.finished,
        "seconds": round(result.seconds, 2),
        "seconds_per_step": round(result.seconds / max(1, len(result.history)), 4),
        "model_file_bytes": os.path.getsize(result.model_path),
        "final": {"diffusion_loss_mean_last_10": float(np.mean([h["diffusion_loss"] for h in last])) if last else None,
                  "preservation": result.history[-1]["preservation"] if result.history else None},
        "warnings": result.warnings,
        "files": files,
        "history": result.history,
    }
    (out / "summary.json").write_text(json.dumps(doc, indent=1, default=str))
    if progress:
        progress("loss plot", 1, 1)
