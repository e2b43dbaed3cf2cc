"""``mvdream3d text-to-3d PROMPT --out DIR``: the command-line face of :func:`mvdream3d.threed.text_to_3d`."""

from __future__ import annotations

import argparse
import json


def cmd_text_to_3d(args: argparse.Namespace) -> int:
    from .system import text_to_3d

    overrides = list(args.set)
    if args.guidance is not None:
        overrides.append(f"guidance.guidance_scale={args.guidance}")
    if args.device is not None:
        overrides.append(f"output.device={args.device}")
    if args.low_memory:
        overrides += ["output.low_memory=true", "output.dtype=fp16"]
    if args.no_preview:
        overrides.append("output.preview=false")
    if args.baseline_2d:
        overrides.append("guidance.name=2d")
    res = text_to_3d(args.prompt, model=args.model, config=args.config, out=args.out, steps=args.steps,
                     seed=args.seed, resume=args.resume, overrides=overrides, compile=args.compile)
    print(json.dumps({"out": str(res.out), "steps_done": res.steps_done, "finished": res.finished,
                      "timings_s": {k: round(v, 2) for k, v in res.timings.items()}, "files": res.files}, indent=1))
    return 0 if res.finished else 130


def add_text_to_3d_subparser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("text-to-3d", help="optimise a 3D object for a prompt by multi-view score distillation",
                       description="Writes preview.png (the model's 4 views first), progress.png, views.png, "
                                   "mesh.glb/.obj, turntable.mp4/.gif, curves.png and a resumable checkpoint.")
    p.add_argument("prompt")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--model", default=None, help="model name or checkpoint (default: the config's, else built-in)")
    p.add_argument("--config", default=None,
                   help="builtin | mvdream-sd21 | mvdream-sd21-lowmem | a YAML path "
                        "(default: builtin for the built-in and other models of at most 64 px, "
                        "mvdream-sd21 for the published ones)")
    p.add_argument("--steps", type=int, default=None, help="optimisation steps (overrides optim.steps)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale")
    p.add_argument("--device", default=None, help="auto | cpu | cuda")
    p.add_argument("--low-memory", action="store_true", help="fp16 model, text encoder on the CPU (8 GB GPUs)")
    p.add_argument("--baseline-2d", action="store_true",
                   help="DreamFusion-style baseline: single-view 2D guidance with view-dependent prompts")
    p.add_argument("--no-preview", action="store_true", help="skip the multi-view preview before optimising")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--compile", action="store_true",
                   help="run the UNet and VAE encoder under torch.compile (the first step compiles, later steps "
                        "reuse it; needs a C++ compiler on the CPU)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. --set optim.lr_encoding=0.02 (repeatable)")
    p.set_defaults(func=cmd_text_to_3d)
