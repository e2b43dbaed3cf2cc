"""Text -> cameras -> multi-view UNet -> sampler -> images, in the diffusers style.

    pipe = MultiViewPipeline.from_pretrained("sd-v2.1-base-4view")      # or .from_checkpoint(path)
    out = pipe("a corgi wearing a party hat", num_views=4, seed=0)
    out.images[0].save("view0.png"); out.cameras["c2w"]  # (F, 4, 4), OpenGL world, +y up

Views of one object are consecutive (object-major): ``images[o * num_views + v]``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from . import cameras as cam
from .checkpoints import MODEL_FILES_IN_FOLDER
from .diffusers_layout import is_diffusers_folder
from .diffusion.sampling import SAMPLERS, StepCallback, sample
from .files import atomic_write_text
from .models.loading import load_checkpoint_model, resolve_model
from .models.model import MVDreamModel, build_model

__all__ = ["DTYPES", "MODEL_FILES_IN_FOLDER", "MultiViewOutput", "MultiViewPipeline", "image_grid", "resolve_model",
           "to_pil"]

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
          "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


@dataclass
class MultiViewOutput:
    """``images``: PIL images, object-major (``num_objects * num_views``, per prompt in order);
    ``cameras``: ``c2w`` (F, 4, 4) OpenGL camera-to-world (+y up, camera looks along -z),
    ``model_camera`` (F, 16) what the UNet saw, ``elevation``/``azimuth`` (F,) degrees or None for
    user cameras, ``fov_deg`` the vertical field of view assumed, ``intrinsics`` (3, 3) for the
    output size; ``latents``: final latents (B*F, C, h, w); ``settings``: the prompt as given and the
    sampling settings (``seed``, ``steps``, ``guidance``, ``guidance_rescale``, ``sampler``)."""

    images: list[Image.Image]
    cameras: dict[str, Any]
    latents: torch.Tensor
    prompts: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def grid(self, rows: int | None = None) -> Image.Image:
        """All views in one picture, in ``rows`` rows (default: one per prompt)."""
        return image_grid(self.images, rows or max(1, len(self.prompts)))

    def save(self, out: str | os.PathLike, rows: int | None = None) -> dict[str, Any]:
        """Write what ``mvdream3d generate`` writes into the folder ``out``: ``view_OO_VV.png`` per view (object
        OO, view VV), ``grid.png`` (``rows`` rows, default one per object) and ``cameras.json`` (the
        ``settings``, the image size, the cameras and the view file names). Returns the cameras.json data."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        f = self.cameras["model_camera"].shape[0]
        names = [f"view_{i // f:02d}_{i % f:02d}.png" for i in range(len(self.images))]
        for im, name in zip(self.images, names, strict=True):
            im.save(out / name)
        self.grid(rows=rows or max(1, len(self.images) // f)).save(out / "grid.png")
        cams = {
            **self.settings, "height": self.images[0].height, "width": self.images[0].width,
            "fov_deg": self.cameras["fov_deg"], "convention": self.cameras["convention"],
            "elevation": self.cameras["elevation"], "azimuth": self.cameras["azimuth"],
            "c2w": self.cameras["c2w"].tolist(), "model_camera": self.cameras["model_camera"].tolist(),
            "intrinsics": self.cameras["intrinsics"].tolist(), "views": names,
        }
        atomic_write_text(out / "cameras.json", json.dumps(cams, indent=1))
        return cams


def image_grid(images: Sequence[Image.Image], rows: int) -> Image.Image:
    """Tile ``images`` (all the same size) into ``rows`` rows."""
    if not images:
        raise ValueError("no images to put in a grid")
    cols = -(-len(images) // rows)
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w, rows * h), "white")
    for i, im in enumerate(images):
        grid.paste(im.convert("RGB"), ((i % cols) * w, (i // cols) * h))
    return grid


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(N, 3, H, W) in [-1, 1] -> list of RGB PIL images."""
    arr = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [Image.fromarray(a) for a in arr.permute(0, 2, 3, 1).cpu().numpy()]


class MultiViewPipeline:
    """Multi-view text-to-image generation with an :class:`MVDreamModel`."""

    def __init__(self, model: MVDreamModel) -> None:
        self.model = model
        self._offload_device: torch.device | None = None

    @classmethod
    def from_pretrained(cls, name: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                        dtype: str | torch.dtype = "fp32") -> MultiViewPipeline:
        """A published name ("sd-v2.1-base-4view", downloaded once through huggingface_hub), the
        built-in model (None), "tiny-random", a checkpoint path or a diffusers folder."""
        return cls(resolve_model(name)).to(device, dtype)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, config: str | os.PathLike | Mapping | None = None,
                        device: str | torch.device = "cpu", dtype: str | torch.dtype = "fp32"
                        ) -> MultiViewPipeline:
        """Load a .pt/.safetensors checkpoint, reading it once; ``config`` as in :func:`mvdream3d.load_model`
        (None: a YAML beside it, the config embedded in the file, or the published config it matches)."""
        if is_diffusers_folder(path):
            if config is not None:
                raise ValueError(f"{path} is a diffusers folder, which carries its own config: drop --config")
            return cls.from_pretrained(path, device, dtype)
        return cls(load_checkpoint_model(path, config)).to(device, dtype)

    @classmethod
    def from_config(cls, config: str | os.PathLike | Mapping) -> MultiViewPipeline:
        """Randomly initialised weights (for tests and smoke runs)."""
        return cls(build_model(config))

    def to(self, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None
           ) -> MultiViewPipeline:
        dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
        self.model.to(device=device, dtype=dtype)
        return self

    def enable_cpu_offload(self, device: str | torch.device = "cuda") -> MultiViewPipeline:
        """Keep components on the CPU and move each to ``device`` only while it runs (small GPUs)."""
        self._offload_device = torch.device(device)
        self.model.to("cpu")
        return self

    def _on(self, module: torch.nn.Module | None, device: torch.device) -> None:
        if module is not None and self._offload_device is not None:
            module.to(device)

    def __call__(
        self,
        prompt: str | Sequence[str],
        negative_prompt: str | Sequence[str] = "",
        num_views: int = 4,
        elevation: float = 15,
        azimuth_start: float = 0,
        azimuth_span: float = 360,
        cameras: torch.Tensor | np.ndarray | None = None,
        guidance_scale: float = 7.5,
        num_inference_steps: int = 50,
        sampler: str = "ddim",
        seed: int | None = None,
        num_objects: int = 1,
        height: int | None = None,
        width: int | None = None,
        dtype: str | torch.dtype | None = None,
        device: str | torch.device | None = None,
        prompt_suffix: str | None = None,
        eta: float = 0.0,
        callback: StepCallback | None = None,
        progress: bool = False,
        guidance_rescale: float = 0.0,
        compile: bool = False,
    ) -> MultiViewOutput:
        """Generate ``num_objects`` objects per prompt, ``num_views`` views each.

        ``cameras``: optional (F, 4, 4) OpenGL c2w matrices (+y up, looking at the object) or (F, 16)
        model cameras; overrides num_views/elevation/azimuth. ``height``/``width`` in pixels, divisible
        by the model's total downsampling; None means the model's native size (256 for the published
        models, 32 for the built-in one). ``prompt_suffix`` None means the model's own default (", 3d asset"
        for the published models, as in their sampling script; "" for models trained by this project).
        ``guidance_rescale`` in [0, 1] rescales the guided prediction towards the conditional one's spread
        (0: plain CFG; see :func:`mvdream3d.diffusion.sampling.rescale_guidance`); the model's
        ``sampling_defaults`` say what it was evaluated with. ``compile``: run the UNet under ``torch.compile``
        (compiled in place on first use and kept compiled; the first call pays the compilation, later calls
        with the same shapes reuse it; :class:`~mvdream3d.compiling.CompileUnavailableError` where it cannot
        work, see :mod:`mvdream3d.compiling`). Returns a :class:`MultiViewOutput`.
        """
        m = self.model
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise ValueError("prompt list is empty: give at least one prompt")
        if any(not isinstance(p, str) or not p.strip() for p in prompts):
            raise ValueError("prompts must be non-empty strings")
        negs = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else list(negative_prompt)
        if len(negs) != len(prompts):
            raise ValueError(f"{len(negs)} negative prompts for {len(prompts)} prompts: give one or one each")
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        if not 0.0 <= float(guidance_rescale) <= 1.0:
            raise ValueError(f"guidance_rescale must be in [0, 1], got {guidance_rescale}")
        if num_objects < 1:
            raise ValueError(f"num_objects must be >= 1, got {num_objects}")
        if dtype is not None or device is not None:
            self.to(device, dtype)
        height = m.native_size if height is None else height
        width = m.native_size if width is None else width
        prompt_suffix = m.prompt_suffix if prompt_suffix is None else prompt_suffix
        run_device = self._offload_device or m.device
        model_dtype = m.dtype

        cam_info = self._cameras(cameras, num_views, elevation, azimuth_start, azimuth_span, height, width)
        f = cam_info["model_camera"].shape[0]
        factor = m.downsample_factor * m.unet.downsample_factor
        if height % factor or width % factor or height <= 0 or width <= 0:
            raise ValueError(f"height and width must be positive multiples of {factor} for this model, "
                             f"got {height}x{width}")
        n_obj = len(prompts) * num_objects
        full = [p + prompt_suffix for p in prompts for _ in range(num_objects)]
        neg_full = [n for n in negs for _ in range(num_objects)]

        cond: dict[str, Any] = {"camera": None}
        uncond: dict[str, Any] = {"camera": None}
        if m.text_encoder is not None:
            self._on(m.text_encoder, run_device)
            with torch.no_grad():
                ctx = m.encode_text(full).to(run_device, model_dtype)
                uctx = m.encode_text(neg_full).to(run_device, model_dtype)
            self._on(m.text_encoder, torch.device("cpu"))
            cond["context"] = ctx.repeat_interleave(f, dim=0)
            uncond["context"] = uctx.repeat_interleave(f, dim=0)
        if m.unet.has_camera:
            mc = cam_info["model_camera"].to(run_device, model_dtype).repeat(n_obj, 1)
            cond["camera"] = uncond["camera"] = mc

        gen = torch.Generator("cpu")
        gen.manual_seed(int(seed) if seed is not None else int(torch.seed() % 2**63))
        shape = (n_obj * f, m.latent_channels, height // m.downsample_factor, width // m.downsample_factor)
        x_T = torch.randn(shape, generator=gen).to(run_device, model_dtype)
        self._on(m.unet, run_device)
        if compile:
            from .compiling import check_compile_support, compile_in_place

            check_compile_support(run_device)
            compile_in_place(m.unet)
        latents = sample(m.unet, x_T, cond, uncond, f, num_inference_steps, guidance_scale, eta, sampler,
                         schedule=m.noise_schedule, generator=gen if run_device.type == "cpu" else None,
                         callback=callback, progress=progress, guidance_rescale=float(guidance_rescale))
        self._on(m.unet, torch.device("cpu"))
        self._on(m.vae, run_device)
        with torch.no_grad():
            images = torch.cat([m.decode_latents(z) for z in latents.split(8)])
        self._on(m.vae, torch.device("cpu"))
        settings = {"prompt": prompt, "seed": seed, "steps": num_inference_steps, "guidance": guidance_scale,
                    "guidance_rescale": float(guidance_rescale), "sampler": sampler}
        return MultiViewOutput(to_pil(images), cam_info, latents, prompts, settings)

    @staticmethod
    def _cameras(cameras: Any, num_views: int, elevation: float, azimuth_start: float, azimuth_span: float,
                 height: int, width: int) -> dict[str, Any]:
        fov = cam.DEFAULT_FOVY_DEG
        if cameras is None:
            if not isinstance(num_views, int) or num_views < 1:
                raise ValueError(f"num_views must be an integer >= 1, got {num_views!r}")
            az = np.asarray(cam.orbit_azimuths(num_views, azimuth_start, azimuth_span), dtype=np.float64)
            el = np.full_like(az, float(elevation))
            c2w = cam.orbit_c2w(torch.tensor(el), torch.tensor(az)).float()
            model_camera = cam.get_camera(num_views, elevation, azimuth_start, azimuth_span)
            info = {"elevation": el.tolist(), "azimuth": az.tolist()}
        else:
            c = torch.as_tensor(np.asarray(cameras) if not isinstance(cameras, torch.Tensor) else cameras).float()
            if c.ndim == 3 and c.shape[1:] == (4, 4):
                c2w = c
                model_camera = cam.c2w_to_model_camera(c)
            elif c.ndim == 2 and c.shape[1] == 16:
                model_camera = c
                blender = c.reshape(-1, 4, 4)
                c2w = _blender_to_opengl(blender)
            else:
                raise ValueError(f"cameras must be (F, 4, 4) c2w matrices or (F, 16) model cameras, got "
                                 f"{tuple(c.shape)}")
            if c.shape[0] < 1:
                raise ValueError("cameras is empty: give at least one camera")
            info = {"elevation": None, "azimuth": None}
        info.update({
            "c2w": c2w, "model_camera": model_camera, "fov_deg": fov,
            "intrinsics": cam.intrinsics_from_fov(fov, width, height),
            "convention": "c2w: OpenGL camera axes (x right, y up, looks along -z), world +y up; "
                          "model_camera: c2w in Blender world axes (z up), unit distance, row-major 16",
        })
        return info


def _blender_to_opengl(c2w_blender: torch.Tensor) -> torch.Tensor:
    """Inverse of the published OpenGL->Blender world flip (the flip matrix is orthogonal)."""
    flip = torch.tensor([[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=c2w_blender.dtype)
    return flip.T @ c2w_blender
