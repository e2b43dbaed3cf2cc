"""``mvdream3d dreambooth --images DIR --token sks --class-word toy --out DIR``: the command-line face of
:func:`mvdream3d.training.dreambooth.dreambooth`."""

from __future__ import annotations

import argparse
import json
import sys
import warnings


def cmd_dreambooth(args: argparse.Namespace) -> int:
    from .dreambooth import DreamBoothConfig, DreamBoothWarning, dreambooth, dreambooth_overrides

    overrides = {k: v for k, v in {
        "steps": args.steps, "lr": args.lr, "batch_size": args.batch_size, "lambda_preservation": args.lambda_,
        "train": args.train, "lora_rank": args.lora_rank, "lora_alpha": args.lora_alpha, "image_size": args.size,
        "seed": args.seed, "mixed_precision": args.mixed_precision, "device": args.device,
        "sample_steps": args.sample_steps, "sample_guidance": args.guidance, "checkpoint_every": args.checkpoint_every,
    }.items() if v is not None}
    cfg = DreamBoothConfig.from_dict({"flip": not args.no_flip, "gradient_checkpointing": args.gradient_checkpointing,
                                      "memory_check": not args.no_memory_check, **overrides,
                                      **dreambooth_overrides(args.set)})
    with warnings.catch_warnings():
        warnings.simplefilter("always", DreamBoothWarning)
        warnings.showwarning = lambda message, *a, **k: print(f"warning: {message}", file=sys.stderr)
        res = dreambooth(args.images, args.token, args.class_word, model=args.model, out=args.out, cfg=cfg,
                         resume=args.resume, progress=not args.no_progress)
    print(json.dumps({"out": str(res.out), "model": str(res.model_path), "prompt": res.prompt,
                      "steps_done": res.steps_done, "finished": res.finished, "seconds": round(res.seconds, 1),
                      "files": res.files, "warnings": res.warnings}, indent=1))
    if res.finished:
        print(f'next: mvdream3d text-to-3d "{res.prompt}" --model {res.out} --out {res.out}/3d', file=sys.stderr)
    return 0 if res.finished else 130


def add_dreambooth_subparser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "dreambooth", help="teach a multi-view model one subject from 3-10 photos (multi-view DreamBooth)",
        description="Fine-tunes on single photos (2D batches) with the prompt 'a TOKEN CLASS' and MVDream's "
                    "parameter-preservation loss. Writes model.safetensors (or lora.safetensors), grid.png (4 views), "
                    "loss.png and summary.json; then: mvdream3d text-to-3d \"a TOKEN CLASS\" --model OUT.")
    p.add_argument("--images", required=True,
                   help="3-10 photos of the subject (.png .jpg .jpeg .webp .bmp): a folder of them, a folder whose "
                        "subfolders hold them (as `mvdream3d render` writes), or a text file listing one path a line")
    p.add_argument("--token", default="sks", help="rare identifier word for the subject (default: sks)")
    p.add_argument("--class-word", required=True, help="what the subject is, e.g. toy, dog, cube")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--model", default=None, help="base model: built-in (default), a name or a checkpoint path")
    p.add_argument("--train", default=None, choices=["full", "attention", "lora"],
                   help="what trains: the whole UNet (default), its attention layers, or LoRA adapters (small file)")
    p.add_argument("--steps", type=int, default=None, help="optimisation steps (default 200)")
    p.add_argument("--lr", type=float, default=None,
                   help="learning rate (default: 5e-5 full, 1e-4 attention, 1e-3 lora)")
    p.add_argument("--batch-size", type=int, default=None, help="images per step (default 4)")
    p.add_argument("--lambda", dest="lambda_", metavar="LAMBDA", type=float, default=None,
                   help="weight of the preservation loss ||theta - theta_0||_1 / N (default 1, as in the paper)")
    p.add_argument("--lora-rank", type=int, default=None, help="LoRA rank (default 4)")
    p.add_argument("--lora-alpha", type=float, default=None, help="LoRA alpha (default: the rank)")
    p.add_argument("--size", type=int, default=None, help="training and grid image size (default: the model's)")
    p.add_argument("--no-flip", action="store_true", help="no random horizontal flips (subjects with writing)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--mixed-precision", default=None, choices=["no", "bf16", "fp16"])
    p.add_argument("--device", default=None, help="auto (default) | cpu | cuda")
    p.add_argument("--gradient-checkpointing", action="store_true", help="less memory, slower steps")
    p.add_argument("--sample-steps", type=int, default=None, help="sampling steps of grid.png (default 30)")
    p.add_argument("--guidance", type=float, default=None, help="guidance scale of grid.png (default 5)")
    p.add_argument("--checkpoint-every", type=int, default=None, help="resumable checkpoint every N steps")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="set any DreamBoothConfig field, e.g. --set lora_targets=[to_q,to_v] --set grad_clip=0.5 "
                        "(repeatable; values read as YAML; applied after the options above)")
    p.add_argument("--resume", action="store_true", help="continue the stopped run in --out")
    p.add_argument("--no-memory-check", action="store_true", help="start even if the memory estimate is too high")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_dreambooth)
