"""One-GPU device check: published-size sampling and text-to-3D speed and memory, in one table.

Rows (GPU, the default):

1. mvdream3d's UNet of ``sd-v2.1-base-4view`` (random weights unless ``--model`` gives real ones): 1 object x
   4 views at 256 px (4x32x32 latents), DDIM 50 steps, classifier-free guidance 7.5 (8 UNet rows a step), fp16
   weights: seconds and peak GPU memory of the sampling loop.
2. The official UNet (``MultiViewUNetModel`` of github bytedance/MVDream, imported from the checkout given by
   ``--official PATH``; the machine needs ``einops``) with the same weights, the same sampler loop and inputs, run
   as its ``scripts/t2i.py --fp16`` does (fp32 weights under ``torch.autocast`` fp16). Also the largest
   difference of one fp32 forward of the two models on the same input. Without a checkout: "official: not
   available".
3. Text-to-3D with that model (``mvdream-sd21`` config, the published recipe; the whole model with random
   weights: UNet, VAE, OpenCLIP text tower): seconds per step over 100 steps (after 2 warm-up steps), peak memory.
4. The low-memory mode (``mvdream-sd21-lowmem``: fp16 diffusion model, text encoder on the CPU, no VAE
   decoder): peak GPU memory over 10 steps.

``--small`` runs every row on the CPU at a reduced size (tiny-random's shapes, 32 px, a few steps, fp32, small
hash grid) in seconds: the test suite runs it, so the script is known to work before a GPU is lent. Peak memory
is GPU memory (``torch.cuda.max_memory_allocated``) and "-" on the CPU.

    python benchmarks/device_check.py [--official /path/to/MVDream] [--model PATH] [--json OUT.json]
    python benchmarks/device_check.py --small
    bash benchmarks/device_check.sh        # the same, with a time limit and the output kept in a log
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import os
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import torch

PUBLISHED = "sd-v2.1-base-4view"
OFFICIAL_MODULE = "mvdream.ldm.modules.diffusionmodules.openaimodel"
# text-to-3D overrides of --small: a small hash grid, few samples, 32 px renders of one 4-view group
SMALL_T3D = ["geometry.n_levels=4", "geometry.log2_hashmap_size=12", "geometry.max_resolution=64",
             "geometry.mlp_hidden=16", "geometry.normal_type=finite_difference", "renderer.num_samples_per_ray=16",
             "cameras.resolution_milestones=[[0, 32, 4]]", "guidance.render_size=32", "output.preview=false"]


class Meter:
    """Wall seconds (CUDA-synchronised) and peak GPU memory (MiB, None on the CPU) of a block."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds = 0.0
        self.peak_mib: float | None = None

    def __enter__(self) -> Meter:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mib = torch.cuda.max_memory_allocated(self.device) / 2**20
        self.seconds = time.perf_counter() - self.t0


def _unet_params(small: bool) -> dict[str, Any]:
    from mvdream3d.models.model import resolve_config

    cfg = resolve_config("tiny-random" if small else PUBLISHED)
    return dict(cfg["model"]["params"]["unet_config"]["params"])


def _no_zero_layers(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights for the layers a fresh UNet zero-initialises, so outputs depend on every layer."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.ndim > 1 and not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return module


def _inputs(params: dict[str, Any], size: int, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    from mvdream3d.cameras import get_camera

    g = torch.Generator().manual_seed(seed)
    latent = size // 8
    return {"x_T": torch.randn(4, params["in_channels"], latent, latent, generator=g).to(device),
            "context": torch.randn(4, 77, params["context_dim"], generator=g).to(device),
            "uncontext": torch.randn(4, 77, params["context_dim"], generator=g).to(device),
            "camera": get_camera(4, 15.0, 0.0).float().to(device)}


def _sample(unet: torch.nn.Module, inp: dict[str, torch.Tensor], steps: int, dtype: torch.dtype,
            autocast: torch.dtype | None) -> torch.Tensor:
    from mvdream3d.diffusion.sampling import sample
    from mvdream3d.diffusion.schedule import NoiseSchedule

    cast = lambda t: t.to(dtype)
    cond = {"context": cast(inp["context"]), "camera": cast(inp["camera"])}
    uncond = {"context": cast(inp["uncontext"]), "camera": cast(inp["camera"])}
    device = inp["x_T"].device
    ctx = torch.autocast(device.type, dtype=autocast) if autocast is not None else torch.autocast(device.type,
                                                                                                  enabled=False)
    with torch.no_grad(), ctx:
        return sample(unet, cast(inp["x_T"]), cond, uncond, 4, steps, 7.5, schedule=NoiseSchedule())


def load_official_unet_class(path: str | os.PathLike) -> type:
    """``MultiViewUNetModel`` from a checkout of github bytedance/MVDream, imported without its package
    ``__init__`` (which pulls in the whole model zoo: omegaconf, the text encoders, downloads). It needs
    ``einops``; ``omegaconf``, which the constructor imports only for a type test, is stubbed when absent."""
    root = Path(path).expanduser().resolve()
    if not (root / "mvdream" / "ldm" / "modules" / "diffusionmodules" / "openaimodel.py").is_file():
        raise FileNotFoundError(f"{root} is not a checkout of github bytedance/MVDream "
                                f"(no mvdream/ldm/modules/diffusionmodules/openaimodel.py)")
    from mvdream3d.extras import has_module

    if not has_module("omegaconf"):  # the constructor imports it only to test isinstance(context_dim, ListConfig)
        listconfig = types.ModuleType("omegaconf.listconfig")
        listconfig.ListConfig = type("ListConfig", (), {})
        sys.modules.setdefault("omegaconf", types.ModuleType("omegaconf"))
        sys.modules["omegaconf.listconfig"] = listconfig
    for name in ("mvdream", "mvdream.ldm", "mvdream.ldm.modules", "mvdream.ldm.modules.diffusionmodules"):
        if name not in sys.modules:
            pkg = types.ModuleType(name)
            pkg.__path__ = [str(root.joinpath(*name.split(".")))]
            sys.modules[name] = pkg
    return importlib.import_module(OFFICIAL_MODULE).MultiViewUNetModel


def check_unets(args: argparse.Namespace, device: torch.device, rows: list[dict[str, Any]]) -> None:
    from mvdream3d import MultiViewUNet

    params = _unet_params(args.small)
    torch.manual_seed(0)
    ours = _no_zero_layers(MultiViewUNet.from_config(params)).eval()
    source = "random weights"
    if args.model:
        from mvdream3d.pipeline import resolve_model

        ours.load_state_dict(resolve_model(args.model).unet.state_dict())
        source = f"weights of {args.model}"
    state = {k: v.clone() for k, v in ours.state_dict().items()}
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    inp = _inputs(params, args.size, device)
    ours.to(device, dtype)
    _sample(ours, inp, 1, dtype, None)  # warm-up (kernels, allocator)
    with Meter(device) as m:
        _sample(ours, inp, args.steps, dtype, None)
    what = f"{'tiny-random' if args.small else PUBLISHED} UNet ({source}), 4 views {args.size} px, " \
           f"DDIM {args.steps}, CFG 7.5"
    rows.append({"check": "UNet sampling, mvdream3d", "settings": f"{what}, {str(dtype)[6:]} weights",
                 "seconds": m.seconds, "per_step": m.seconds / args.steps, "peak_mib": m.peak_mib})
    ours.to("cpu", torch.float32)
    if args.official is None:
        rows.append({"check": "UNet sampling, official", "settings": "official: not available (no --official PATH)"})
        return
    try:
        cls = load_official_unet_class(args.official)
        official = cls(**params).eval()
        official.load_state_dict(state, strict=True)
    except Exception as e:  # noqa: BLE001 - any failure to import or build the official code is reported, not fatal
        rows.append({"check": "UNet sampling, official",
                     "settings": f"official: not available ({type(e).__name__}: {str(e)[:120]})"})
        return
    # one fp32 forward of both on the same input: the weights and names are the same
    ours.to(device)
    official.to(device)
    x = inp["x_T"].repeat(2, 1, 1, 1)
    t = torch.tensor([500] * 8, device=device)
    ctx = torch.cat([inp["uncontext"], inp["context"]])
    cam = inp["camera"].repeat(2, 1)
    with torch.no_grad():
        diff = (ours(x, t, context=ctx, camera=cam, num_frames=4)
                - official(x, t, context=ctx, camera=cam, num_frames=4)).abs().max().item()
    ours.to("cpu")
    autocast = torch.float16 if device.type == "cuda" else None
    _sample(official, inp, 1, torch.float32, autocast)
    with Meter(device) as m:
        _sample(official, inp, args.steps, torch.float32, autocast)
    rows.append({"check": "UNet sampling, official", "settings": f"{what}, fp32 weights"
                 f"{' under autocast fp16 (as scripts/t2i.py --fp16)' if autocast else ''}; "
                 f"largest eps difference to mvdream3d, one fp32 forward: {diff:.1e}",
                 "seconds": m.seconds, "per_step": m.seconds / args.steps, "peak_mib": m.peak_mib, "max_diff": diff})
    official.to("cpu")


def _text_to_3d_model(args: argparse.Namespace):
    from mvdream3d.builtin import builtin_model

    if args.small:
        return builtin_model("tiny-random")
    if args.model:
        from mvdream3d.pipeline import resolve_model

        return resolve_model(args.model)
    from mvdream3d.models.model import build_model

    torch.manual_seed(0)
    model = build_model(PUBLISHED)
    _no_zero_layers(model.unet)
    return model.eval()


def _run_text_to_3d(model: Any, config: str, steps: int, warmup: int, small: bool, device: torch.device
                    ) -> Meter:
    from mvdream3d.threed.config import load_text_to_3d_config
    from mvdream3d.threed.system import TextTo3D

    overrides = [f"output.device={device}"] + (SMALL_T3D if small else [])
    cfg = load_text_to_3d_config(config, overrides)
    with tempfile.TemporaryDirectory() as tmp:
        run = TextTo3D("an astronaut riding a horse", model, cfg, Path(tmp))
        for _ in range(warmup):
            run.train_step()
        with Meter(device) as m:
            for _ in range(steps):
                run.train_step()
        del run
    return m


def check_text_to_3d(args: argparse.Namespace, device: torch.device, rows: list[dict[str, Any]]) -> None:
    model = _text_to_3d_model(args)
    name = "tiny-random" if args.small else (args.model or f"{PUBLISHED} (random weights)")
    warmup = 0 if args.small else 1
    low = _run_text_to_3d(copy.deepcopy(model), "mvdream-sd21-lowmem", args.lowmem_steps, warmup, args.small, device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    m = _run_text_to_3d(model, "mvdream-sd21", args.t3d_steps, 1 if args.small else 2, args.small, device)
    rows.append({"check": "text-to-3D", "settings": f"{name}, config mvdream-sd21, {args.t3d_steps} steps",
                 "seconds": m.seconds, "per_step": m.seconds / args.t3d_steps, "peak_mib": m.peak_mib})
    rows.append({"check": "text-to-3D, low-memory mode",
                 "settings": f"{name}, config mvdream-sd21-lowmem (fp16, text encoder on CPU, no VAE decoder), "
                             f"{args.lowmem_steps} steps",
                 "seconds": low.seconds, "per_step": low.seconds / args.lowmem_steps, "peak_mib": low.peak_mib})


def format_table(rows: list[dict[str, Any]]) -> str:
    num = lambda v, f: "-" if v is None else format(v, f)
    lines = ["| check | settings | seconds | s/step | peak GPU MiB |", "|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['check']} | {r['settings']} | {num(r.get('seconds'), '.2f')} | "
                     f"{num(r.get('per_step'), '.4f')} | {num(r.get('peak_mib'), '.0f')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="CPU, reduced size: a smoke run in seconds")
    ap.add_argument("--device", default=None, help="default: cuda (cpu with --small)")
    ap.add_argument("--official", default=None, metavar="PATH", help="checkout of github bytedance/MVDream")
    ap.add_argument("--model", default=None, help="real weights (anything --model takes) instead of random ones")
    ap.add_argument("--steps", type=int, default=None, help="DDIM steps (50; 2 with --small)")
    ap.add_argument("--t3d-steps", type=int, default=None, help="text-to-3D steps timed (100; 2 with --small)")
    ap.add_argument("--lowmem-steps", type=int, default=None, help="low-memory steps (10; 1 with --small)")
    ap.add_argument("--size", type=int, default=None, help="image size in pixels (256; 32 with --small)")
    ap.add_argument("--skip-text-to-3d", action="store_true")
    ap.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    small = args.small
    args.steps = args.steps or (2 if small else 50)
    args.t3d_steps = args.t3d_steps or (2 if small else 100)
    args.lowmem_steps = args.lowmem_steps or (1 if small else 10)
    args.size = args.size or (32 if small else 256)
    device = torch.device(args.device or ("cpu" if small else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device: run on a GPU machine, or pass --small for the CPU smoke run", file=sys.stderr)
        return 2
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {gpu}; torch {torch.__version__}; {'reduced size (--small)' if small else 'full size'}",
          flush=True)
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    check_unets(args, device, rows)
    print(format_table(rows), flush=True)
    if not args.skip_text_to_3d:
        check_text_to_3d(args, device, rows)
    print()
    print(format_table(rows))
    print(f"total {time.perf_counter() - t0:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": gpu, "small": small, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
