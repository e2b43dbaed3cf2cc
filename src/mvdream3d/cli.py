"""Command line: ``mvdream3d generate | info | convert | render | synth | train | evaluate | text-to-3d | dreambooth``.

Every user error (bad arguments, missing or mismatched checkpoint, unwritable output folder) ends
with one line ``error: ...`` on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .checkpoints import CheckpointError
from .files import ensure_writable_dir
from .training.config import ConfigError

if TYPE_CHECKING:
    from .pipeline import MultiViewOutput

USER_ERRORS = (ConfigError, ValueError, FileNotFoundError, PermissionError, CheckpointError, NotADirectoryError,
               FloatingPointError)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="built-in model (default), 'tiny-random', a published name "
                        "(sd-v2.1-base-4view, sd-v1.5-4view) or a .pt/.safetensors path")
    p.add_argument("--config", default=None, help="model config (name or YAML) for a checkpoint without one")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])


def _load_pipeline(args: argparse.Namespace):
    from .pipeline import MultiViewPipeline

    if args.config is not None:
        if args.model is None:
            raise ValueError("--config needs --model PATH (the checkpoint to load)")
        return MultiViewPipeline.from_checkpoint(args.model, args.config, args.device, args.dtype)
    return MultiViewPipeline.from_pretrained(args.model, args.device, args.dtype)


def write_generation(res: MultiViewOutput, out: str | Path, *, prompt: str, seed: int | None, steps: int,
                     guidance: float, sampler: str, rows: int = 1) -> dict[str, Any]:
    """Write what ``mvdream3d generate`` writes: ``view_OO_VV.png`` per view, ``grid.png`` (``rows`` rows) and
    ``cameras.json`` (the settings, cameras and view file names) into ``out``; returns the cameras.json data."""
    out = Path(out)
    f = res.cameras["model_camera"].shape[0]
    for i, im in enumerate(res.images):
        im.save(out / f"view_{i // f:02d}_{i % f:02d}.png")
    res.grid(rows=rows).save(out / "grid.png")
    cams = {
        "prompt": prompt, "seed": seed, "steps": steps, "guidance": guidance,
        "sampler": sampler, "height": res.images[0].height, "width": res.images[0].width,
        "fov_deg": res.cameras["fov_deg"], "convention": res.cameras["convention"],
        "elevation": res.cameras["elevation"], "azimuth": res.cameras["azimuth"],
        "c2w": res.cameras["c2w"].tolist(), "model_camera": res.cameras["model_camera"].tolist(),
        "intrinsics": res.cameras["intrinsics"].tolist(),
        "views": [f"view_{i // f:02d}_{i % f:02d}.png" for i in range(len(res.images))],
    }
    (out / "cameras.json").write_text(json.dumps(cams, indent=1))
    return cams


def cmd_generate(args: argparse.Namespace) -> int:
    out = ensure_writable_dir(args.out)
    if args.views < 1:
        raise ValueError(f"--views must be >= 1, got {args.views}")
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    pipe = _load_pipeline(args)
    defaults = pipe.model.sampling_defaults  # the model's evaluated settings fill what is not given
    args.sampler = args.sampler or defaults["sampler"]
    args.steps = args.steps or int(defaults["steps"])
    args.guidance = float(defaults["guidance_scale"]) if args.guidance is None else args.guidance
    if args.cpu_offload:
        pipe.enable_cpu_offload(args.device)
    t0 = time.perf_counter()
    res = pipe(
        args.prompt, negative_prompt=args.negative, num_views=args.views, elevation=args.elevation,
        azimuth_start=args.azimuth_start, azimuth_span=args.azimuth_span, guidance_scale=args.guidance,
        num_inference_steps=args.steps, sampler=args.sampler, seed=args.seed, num_objects=args.num_objects,
        height=args.size, width=args.size, eta=args.eta, prompt_suffix=args.suffix, progress=True,
    )
    seconds = time.perf_counter() - t0
    write_generation(res, out, prompt=args.prompt, seed=args.seed, steps=args.steps, guidance=args.guidance,
                     sampler=args.sampler, rows=args.num_objects)
    print(f"wrote {len(res.images)} views, grid.png and cameras.json to {out} in {seconds:.1f} s")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    import yaml

    from .pipeline import resolve_model

    if args.config is not None:
        from .models.model import load_model

        model = load_model(args.config, args.model_name)
    else:
        model = resolve_model(args.model_name)
    print(yaml.safe_dump(model.config, sort_keys=False).rstrip())
    counts = model.parameter_counts()
    for k, v in counts.items():
        print(f"{k:>14}: {v:>13,d} parameters")
    print(f"{'total':>14}: {sum(counts.values()):>13,d} parameters")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from .checkpoints import write_checkpoint
    from .models.model import load_model
    from .pipeline import _sidecar_config

    ensure_writable_dir(Path(args.output).resolve().parent)
    cfg = args.config if args.config is not None else _sidecar_config(args.input)
    model = load_model(cfg, args.input)  # validates every weight against the config
    state = model.ldm_state_dict()
    if args.dtype != "fp32":  # floating-point weights only; the loader casts back to the model's dtype
        from .pipeline import DTYPES

        state = {k: v.to(DTYPES[args.dtype]) if v.is_floating_point() else v for k, v in state.items()}
    write_checkpoint(args.output, state, model.config)
    print(f"wrote {args.output}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .training.config import load_config
    from .training.trainer import train

    cfg = load_config(args.config_file, args.set)
    if args.out is not None:
        cfg.output.dir = args.out
    if not args.resume and Path(cfg.output.dir).exists():
        ensure_writable_dir(cfg.output.dir)
    train(cfg, resume=args.resume, max_steps_this_run=args.max_steps)
    return 0


def cmd_export_checkpoint(args: argparse.Namespace) -> int:
    from .training.trainer import export_checkpoint

    path = export_checkpoint(args.checkpoint, args.output, use_ema=not args.no_ema)
    print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mvdream3d", description="MVDream multi-view diffusion and 3D")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate consistent views of an object from a prompt")
    g.add_argument("prompt")
    _add_model_args(g)
    g.add_argument("--out", required=True, help="output directory")
    g.add_argument("--views", type=int, default=4)
    g.add_argument("--elevation", type=float, default=15.0)
    g.add_argument("--azimuth-start", type=float, default=0.0)
    g.add_argument("--azimuth-span", type=float, default=360.0)
    g.add_argument("--steps", type=int, default=None,
                   help="sampling steps (default: the model's; 50 for the published models, 20 for the built-in)")
    g.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance scale (default: the model's; 7.5 published, 5 built-in)")
    g.add_argument("--sampler", default=None, choices=["ddim", "dpmpp_2m", "unipc", "euler", "euler_a"],
                   help="default: the model's (ddim)")
    g.add_argument("--eta", type=float, default=0.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--size", type=int, default=None,
                   help="image height and width in pixels (default: the model's native size)")
    g.add_argument("--num-objects", type=int, default=1)
    g.add_argument("--negative", default="", help="negative prompt")
    g.add_argument("--suffix", default=None,
                   help="appended to the prompt (default: the model's; ', 3d asset' for the published models)")
    g.add_argument("--cpu-offload", action="store_true", help="keep idle components on the CPU")
    g.set_defaults(func=cmd_generate)

    i = sub.add_parser("info", help="print a model's config and parameter counts")
    i.add_argument("model_name", nargs="?", default=None, metavar="MODEL")
    i.add_argument("--config", default=None)
    i.set_defaults(func=cmd_info)

    c = sub.add_parser("convert", help="convert a checkpoint (.pt <-> .safetensors), validating it")
    c.add_argument("input")
    c.add_argument("output")
    c.add_argument("--config", default=None, help="model name or YAML (default: embedded or detected)")
    c.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"],
                   help="storage precision of the written weights (fp16 halves the file)")
    c.set_defaults(func=cmd_convert)

    from .data.render import add_render_subparser
    from .data.synth import add_synth_subparser

    add_render_subparser(sub)
    add_synth_subparser(sub)

    from .evaluation.classifier import add_train_classifier_subparser
    from .evaluation.evaluate import add_evaluate_subparser

    add_evaluate_subparser(sub)
    add_train_classifier_subparser(sub)

    from .threed.cli import add_text_to_3d_subparser

    add_text_to_3d_subparser(sub)

    from .webapp.cli import add_serve_subparser

    add_serve_subparser(sub)

    from .training.dreambooth_cli import add_dreambooth_subparser

    add_dreambooth_subparser(sub)

    from .training.autoencoder import add_train_vae_subparser

    add_train_vae_subparser(sub)

    t = sub.add_parser("train", help="joint 2D + multi-view training from a YAML config (accelerate-ready)")
    t.add_argument("config_file", metavar="CONFIG.yaml")
    t.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in output.dir")
    t.add_argument("--out", default=None, help="override output.dir")
    t.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. --set train.steps=100 (repeatable)")
    t.add_argument("--max-steps", type=int, default=None, help="stop (with a checkpoint) after this many steps")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("export-checkpoint", help="write a training checkpoint's (EMA) weights as a model file")
    e.add_argument("checkpoint", metavar="RUN/checkpoints/step_XXXXXXX")
    e.add_argument("output", metavar="OUT.safetensors")
    e.add_argument("--no-ema", action="store_true", help="the raw weights instead of the EMA ones")
    e.set_defaults(func=cmd_export_checkpoint)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
