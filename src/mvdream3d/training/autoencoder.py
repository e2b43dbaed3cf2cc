"""Train the small KL autoencoder of a latent built-in model on a synthetic world's renders.

MVDream is a latent diffusion model: the UNet denoises VAE latents and sampling ends with the VAE
decoder. The published models use SD's VAE (8x downsampling); the built-in CPU model trains its own,
much smaller one on its world (64 x 64 RGB -> 4 x 16 x 16), built from diffusers' ``AutoencoderKL``
through :class:`mvdream3d.models.vae.AutoencoderKLWrapper`, so its weights carry the published LDM names
(``first_stage_model.encoder.down.0.block.0...``) and every loader of this project reads it.

Data: every multi-view render (composited on white) and every 2D image of the world, held in memory as
uint8. The last ``holdout_fraction`` of the assets (by id) are held out: reconstruction PSNR is
measured on them (``metrics.json``). Each step takes random ``crop_size`` crops (the networks are
convolutional; a 32 px crop costs a quarter of a 64 px image on a CPU), then ``full_steps`` steps on
whole images with a second cosine schedule from ``full_lr`` (the mid-block attention and the image
borders must see whole frames: a decoder trained on crops alone tints whole backgrounds grey).
Loss: L1 + MSE between the image and the decoding of the posterior *mean* (what the latent cache and
``encode_images`` use; decoding a sample makes a briefly trained decoder average over the posterior
noise and shift colours) + ``kl_weight`` * KL, which keeps the latents small; the latent scale is fixed afterwards by
``scale_factor`` = 1 / std of the posterior means (SD's 0.18215 was chosen the same way).

Resumable like UNet training: atomic checkpoints under ``OUT/checkpoints`` and all randomness of a step
keyed by (seed, step), so ``--resume`` takes the same steps an uninterrupted run would.

Output: ``OUT/vae.safetensors``: the VAE weights (``first_stage_model.*``) with an embedded config
``{"first_stage_config": ..., "scale_factor": ..., "metrics": ...}``; ``init_model`` reads it through
the UNet training config's ``model.vae``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

VAE_FILE = "vae.safetensors"


@dataclass
class AutoencoderRecipe:
    """Everything that decides the trained autoencoder (recorded in its file)."""

    data: list[str] = field(default_factory=lambda: ["data/builtin-world"])
    image_size: int = 64
    ch: int = 32
    ch_mult: list[int] = field(default_factory=lambda: [1, 2, 2])
    z_channels: int = 4
    num_res_blocks: int = 1
    steps: int = 2500
    batch_size: int = 16
    crop_size: int = 32  # train on random crops: 4x cheaper per image than 64 px, same local statistics
    lr: float = 2e-3
    # then whole images: the mid-block attention and the borders must see 64 px frames (a decoder trained on
    # crops alone tints the background of whole images grey)
    full_steps: int = 400
    full_lr: float = 5e-4
    warmup_steps: int = 100
    kl_weight: float = 1e-6
    holdout_fraction: float = 0.05
    seed: int = 0

    def first_stage_config(self) -> dict[str, Any]:
        """The ``first_stage_config`` block of a model config (published YAML layout)."""
        return {
            "target": "mvdream.ldm.models.autoencoder.AutoencoderKL",
            "params": {
                "embed_dim": self.z_channels,
                "ddconfig": {
                    "double_z": True, "z_channels": self.z_channels, "resolution": self.image_size,
                    "in_channels": 3, "out_ch": 3, "ch": self.ch, "ch_mult": list(self.ch_mult),
                    "num_res_blocks": self.num_res_blocks, "attn_resolutions": [], "dropout": 0.0,
                },
            },
        }


def world_image_files(world: str | Path, holdout_fraction: float) -> tuple[list[Path], list[Path]]:
    """(training files, held-out files) of a ``mvdream3d synth`` world: multi-view RGBA renders of the
    assets (the last ``holdout_fraction`` of asset folders by name are held out) and the 2D images."""
    root = Path(world)
    mv, im = root / "multiview", root / "image_text"
    if not mv.is_dir() and not im.is_dir():
        raise FileNotFoundError(f"{root} is not a world written by `mvdream3d synth` (no multiview/ or "
                                f"image_text/ folder); make one with `mvdream3d synth --out {root}`")
    assets = sorted(p for p in mv.iterdir() if p.is_dir()) if mv.is_dir() else []
    n_hold = int(round(len(assets) * holdout_fraction))
    train_assets, held_assets = assets[: len(assets) - n_hold], assets[len(assets) - n_hold:]
    def views(folders: Sequence[Path]) -> list[Path]:
        return [f for a in folders for f in sorted(a.glob("rgba_*.png"))]
    images = sorted(im.glob("img_*.png")) if im.is_dir() else []
    return views(train_assets) + images, views(held_assets)


def load_uint8(files: Sequence[Path], size: int, progress: bool = True) -> torch.Tensor:
    """(N, 3, size, size) uint8 images composited on white (the training background)."""
    from tqdm.auto import tqdm

    from ..data.datasets import load_image

    out = torch.empty((len(files), 3, size, size), dtype=torch.uint8)
    for i, f in enumerate(tqdm(files, desc="load images", unit="img", disable=not progress)):
        x = load_image(f, size)  # float32 [-1, 1]
        out[i] = torch.from_numpy(np.round((x + 1.0) * 127.5).clip(0, 255).astype(np.uint8))
    return out


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float32 in [-1, 1]."""
    return x.float() / 127.5 - 1.0


def _lr_factor(recipe: AutoencoderRecipe, step: int) -> float:
    """Warm-up then cosine to 0 over the crop phase; a second cosine from ``full_lr`` over the whole-image phase."""
    if step < recipe.steps:
        warm = min(1.0, (step + 1) / max(1, recipe.warmup_steps))
        return warm * 0.5 * (1 + math.cos(math.pi * step / max(1, recipe.steps)))
    s = (step - recipe.steps) / max(1, recipe.full_steps)
    return recipe.full_lr / recipe.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, s)))


def _random_crops(x: torch.Tensor, size: int, g: torch.Generator) -> torch.Tensor:
    """One random ``size`` x ``size`` crop of each image of (N, C, H, W) (the whole image if ``size >= H``)."""
    n, _, h, w = x.shape
    if size >= h and size >= w:
        return x
    top = torch.randint(0, h - size + 1, (n,), generator=g).tolist()
    left = torch.randint(0, w - size + 1, (n,), generator=g).tolist()
    return torch.stack([x[i, :, t:t + size, s:s + size] for i, (t, s) in enumerate(zip(top, left, strict=True))])


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) of images in [-1, 1] (peak-to-peak 2)."""
    mse = (a.float() - b.float()).square().flatten(1).mean(1).clamp_min(1e-10)
    return 10 * torch.log10(4.0 / mse)


@torch.no_grad()
def reconstruct(vae: Any, images: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> reconstructions in [-1, 1] through the posterior mean."""
    outs = []
    for i in range(0, len(images), batch):
        z = vae.encode(to_unit(images[i:i + batch])).mean
        outs.append(vae.decode(z).clamp(-1, 1))
    return torch.cat(outs)


@torch.no_grad()
def latent_scale(vae: Any, images: torch.Tensor, batch: int = 64) -> float:
    """``scale_factor`` = 1 / std of the posterior means (SD's 0.18215 was chosen the same way)."""
    zs = [vae.encode(to_unit(images[i:i + batch])).mean for i in range(0, len(images), batch)]
    return float(1.0 / torch.cat(zs).std())


def train_autoencoder(recipe: AutoencoderRecipe, out: str | Path, resume: bool = False,
                      max_steps_this_run: int | None = None, progress: bool = True) -> Path:
    """Train (or resume) the autoencoder; returns ``OUT/vae.safetensors`` once all steps are done."""
    from tqdm.auto import tqdm

    from ..checkpoints import VAE_PREFIX, write_checkpoint
    from ..files import ensure_writable_dir
    from ..models.vae import load_vae
    from ..signals import StopOnSignal
    from .trainer import Checkpointer, step_generator

    out = ensure_writable_dir(out)
    ckpt = Checkpointer(out, keep=2)
    latest = ckpt.latest() if resume else None
    if not resume and ckpt.latest() is not None:
        raise ValueError(f"{out} already holds checkpoints: pass --resume to continue, or choose another --out")

    train_files, held_files = [], []
    for world in recipe.data:
        t, h = world_image_files(world, recipe.holdout_fraction)
        train_files += t
        held_files += h
    if not train_files:
        raise ValueError(f"no images found in {recipe.data}")
    images = load_uint8(train_files, recipe.image_size, progress)
    held = load_uint8(held_files[:512], recipe.image_size, progress) if held_files else images[:256]

    torch.manual_seed(recipe.seed)
    fsc = recipe.first_stage_config()
    vae = load_vae(fsc["params"], None, freeze=False).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=recipe.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(recipe, s))
    total = recipe.steps + recipe.full_steps
    step = 0
    if latest is not None:
        weights, opt_state, state = Checkpointer.load(latest)
        vae.load_state_dict(weights)
        opt.load_state_dict(opt_state["optimizer"])
        sched.load_state_dict(opt_state["scheduler"])
        step = int(state["step"])
        print(f"resumed from {latest} at step {step}")

    end = total if max_steps_this_run is None else min(total, step + max_steps_this_run)
    log = out / "train_log.jsonl"
    bar = tqdm(total=total, initial=step, desc="train autoencoder", unit="step", disable=not progress)
    t0 = time.perf_counter()
    with StopOnSignal() as stop:
        while step < end:
            g = step_generator(recipe.seed, step, 0)
            idx = torch.randint(0, len(images), (recipe.batch_size,), generator=g)
            crop = recipe.crop_size if step < recipe.steps else recipe.image_size
            x = _random_crops(to_unit(images[idx]), crop, g)
            post = vae.encode(x)
            rec = vae.decode(post.mean)
            l1, l2 = (rec - x).abs().mean(), (rec - x).square().mean()
            kl = post.kl().mean() / x[0].numel()
            loss = l1 + l2 + recipe.kl_weight * kl
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
            opt.step()
            sched.step()
            step += 1
            bar.update(1)
            bar.set_postfix(l1=f"{l1.item():.4f}", psnr=f"{10 * math.log10(4 / max(l2.item(), 1e-10)):.1f}")
            if step % 50 == 0 or step == end:
                with log.open("a") as f:
                    f.write(json.dumps({"step": step, "l1": l1.item(), "mse": l2.item(), "kl": kl.item(),
                                        "lr": sched.get_last_lr()[0],
                                        "elapsed_s": round(time.perf_counter() - t0, 1)}) + "\n")
            if step % 500 == 0 or step == end or stop.requested:
                ckpt.save(step, vae, None, opt, sched, {"step": step, "recipe": asdict(recipe), "time": time.time()})
            if stop.requested:
                print(f"stopped by signal at step {step}; checkpoint saved. Continue with --resume")
                break
    bar.close()
    if step < total:
        return out
    vae.eval()
    rec = reconstruct(vae, held)
    metrics = {
        "holdout_images": len(held),
        "holdout_psnr_db": round(float(psnr(rec, to_unit(held)).mean()), 3),
        "train_psnr_db": round(float(psnr(reconstruct(vae, images[:512]), to_unit(images[:512])).mean()), 3),
    }
    scale = latent_scale(vae, images[:: max(1, len(images) // 2048)])
    config = {"first_stage_config": fsc, "scale_factor": scale, "metrics": metrics, "recipe": asdict(recipe)}
    state = {VAE_PREFIX + k: v for k, v in vae.ldm_state_dict().items()}
    path = write_checkpoint(out / VAE_FILE, state, config)
    (out / "metrics.json").write_text(json.dumps(dict(metrics, scale_factor=scale), indent=1))
    print(f"wrote {path}: held-out PSNR {metrics['holdout_psnr_db']:.2f} dB, scale_factor {scale:.4f}")
    return path


def read_autoencoder(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(embedded config, VAE state dict with published names and no prefix) of a ``vae.safetensors``."""
    from ..checkpoints import VAE_PREFIX, read_checkpoint

    state, config = read_checkpoint(path)
    if not config or "first_stage_config" not in config:
        raise ValueError(f"{path} is not an autoencoder written by `mvdream3d train-vae` (no first_stage_config "
                         "in its metadata)")
    return config, {k[len(VAE_PREFIX):]: v for k, v in state.items() if k.startswith(VAE_PREFIX)}


def add_train_vae_subparser(subparsers: Any) -> None:
    """``mvdream3d train-vae``: the built-in model's autoencoder."""
    d = AutoencoderRecipe()
    p = subparsers.add_parser(
        "train-vae", help="train a small KL autoencoder (64 px -> 4x16x16) on a synthetic world",
        description="Train the latent autoencoder of a built-in-style model on `mvdream3d synth` worlds. "
        "Ctrl-C saves a checkpoint; --resume continues. Writes OUT/vae.safetensors and OUT/metrics.json.")
    p.add_argument("--data", nargs="+", default=d.data, metavar="WORLD", help="world folder(s)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--crop-size", type=int, default=d.crop_size, help="random crop side in pixels (default 32)")
    p.add_argument("--full-steps", type=int, default=d.full_steps,
                   help="steps on whole images after the crop steps (default 400)")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--image-size", type=int, default=d.image_size)
    p.add_argument("--ch", type=int, default=d.ch, help="base channels (a multiple of 32)")
    p.add_argument("--ch-mult", type=int, nargs="+", default=d.ch_mult,
                   help="channel multipliers; len-1 downsamplings of 2x (default 1 2 2: 64 px -> 16 x 16)")
    p.add_argument("--z-channels", type=int, default=d.z_channels)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--max-steps", type=int, default=None, help="stop (with a checkpoint) after this many steps")
    p.set_defaults(func=cmd_train_vae)


def cmd_train_vae(args: Any) -> int:
    if args.ch % 32:
        raise ValueError(f"--ch must be a multiple of 32 (GroupNorm of 32 groups), got {args.ch}")
    if args.steps < 1 or args.batch_size < 1:
        raise ValueError("--steps and --batch-size must be >= 1")
    recipe = AutoencoderRecipe(data=list(args.data), image_size=args.image_size, ch=args.ch,
                               ch_mult=list(args.ch_mult), z_channels=args.z_channels, steps=args.steps,
                               batch_size=args.batch_size, crop_size=args.crop_size, full_steps=args.full_steps,
                               lr=args.lr, seed=args.seed)
    train_autoencoder(recipe, args.out, resume=args.resume, max_steps_this_run=args.max_steps)
    return 0
