"""UNet speed and memory: the published MVDream code as shipped, the same with SDPA patched in, and mvdream3d.

Three implementations of the same multi-view UNet, with the same random weights and inputs:

- ``published``: ``MultiViewUNetModel`` of the published code (github bytedance/MVDream), imported from a
  checkout given by ``--published PATH`` or ``$MVDREAM_PUBLISHED``, as shipped without xformers: its
  ``CrossAttention`` computes ``softmax(q k^T) v`` with the full score matrix (einsum).
- ``published_sdpa``: the same model with ``CrossAttention.forward`` replaced, in the benchmark process only,
  by :func:`sdpa_cross_attention_forward` below (``scaled_dot_product_attention``; output unchanged up to
  float rounding). This is the fair baseline: the published model with the one obvious fix.
- ``ours``: :class:`mvdream3d.MultiViewUNet` (``ours_compile``: the same under ``torch.compile``, with
  ``--compile``).

Configs (random weights; the layers both models zero-initialise get PyTorch's default init so that the output
depends on every layer):

- ``tiny``: model_channels 32, channel_mult [1, 2, 2], attention at every level, 4 heads, context_dim 64;
  4 objects x 4 views = 16 rows at 32x32.
- ``full``: the published sd-v2.1-base-4view UNet (867.6M parameters) at 32x32 latents: one object x 4 views
  x (uncond, cond) = 8 rows, context (8, 77, 1024): one classifier-free-guidance step of the 4-view sampler.

Every (config, implementation) pair runs in fresh processes of its own (its own allocator state, RSS and
weights), and the pairs are interleaved: round 1 runs every pair once, round 2 again, so that load on a
shared machine hits all of them alike. Per pair and round, one process times it: one warm-up forward (its
output feeds the cross-check), then ``--repeats`` timed forwards (median wall time and CPU time reported);
a second process meters its memory: one warm-up forward, then 2 forwards under :class:`CpuPeakMeter` (the
kernel's RSS high-water mark, reset right before the forward; the larger reading is reported). Ratios are
taken per round; the verdict uses the worse round.

End to end (``--e2e``, with the built-in model or ``--model``): seconds per sampling step of
``MultiViewPipeline`` (``generate``: 4 views, the model's default sampler and CFG) and per text-to-3D
optimisation step (``TextTo3D.train_step``, config ``--t3d-config``), plus the peak memory of a text-to-3D
step, for

- ``ours``: this checkout;
- ``published_sdpa``: the same pipeline with the model's UNet swapped for the published one (SDPA patched
  in) carrying the same weights;
- ``baseline``: another checkout of mvdream3d (``--baseline-src PATH/src``, e.g. the revision before a
  change: ``git worktree add /tmp/mvdream3d-base <commit>``), for before/after numbers.

Where the published code is absent the benchmark says so and measures ours alone.

Usage::

    python benchmarks/unet_speed.py [--published PATH] [--config tiny|full|both] [--rounds 2] [--repeats N]
        [--compile] [--e2e] [--model NAME] [--baseline-src PATH] [--json OUT]
    python benchmarks/unet_speed.py --config none --e2e --baseline-src /tmp/mvdream3d-base/src
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import importlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import types
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import nn

MiB = 1024**2
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
UNET_MODES = ("published", "published_sdpa", "ours")
E2E_MODES = ("baseline", "published_sdpa", "ours")
PUBLISHED_UNET = "mvdream.ldm.modules.diffusionmodules.openaimodel"

# Targets of the speed work (issue 22), checked on the worse of the interleaved rounds.
TARGETS = {
    "tiny_speedup": 1.3,  # published_sdpa time / ours time, tiny config
    "full_speedup": 1.2,  # the same, sd-v2.1-base-4view width at 32x32 latents
    "memory_ratio": 0.8,  # ours forward peak / published_sdpa forward peak (each config)
    "t3d_step_saving": 0.30,  # 1 - ours / baseline seconds per text-to-3D step, built-in model
}

TINY_PARAMS: dict[str, Any] = {
    "image_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 32,
    "attention_resolutions": [4, 2, 1],
    "num_res_blocks": 1,
    "channel_mult": [1, 2, 2],
    "num_heads": 4,
    "use_spatial_transformer": True,
    "transformer_depth": 1,
    "context_dim": 64,
    "use_checkpoint": False,
    "legacy": False,
    "camera_dim": 16,
}


def full_params() -> dict[str, Any]:
    """``unet_config.params`` of the packaged sd-v2.1-base-4view YAML."""
    name = "sd-v2.1-base-4view.yaml"
    try:
        text = resources.files("mvdream3d").joinpath("configs", name).read_text()
    except (FileNotFoundError, ModuleNotFoundError):
        text = (Path(__file__).resolve().parents[1] / "src" / "mvdream3d" / "configs" / name).read_text()
    return dict(yaml.safe_load(text)["model"]["params"]["unet_config"]["params"])


# name -> (UNet params, rows, num_frames, latent size, context length, default repeats)
CONFIGS: dict[str, tuple[Any, int, int, int, int, int]] = {
    "tiny": (lambda: dict(TINY_PARAMS), 16, 4, 32, 77, 5),
    "full": (full_params, 8, 4, 32, 77, 3),
}


# --------------------------------------------------------------------------------------------- memory

class _Libc:
    """glibc's ``mallopt`` / ``malloc_trim`` through ctypes; no-ops where unavailable (musl, macOS)."""

    M_TRIM_THRESHOLD = -1
    M_MMAP_THRESHOLD = -3

    def __init__(self) -> None:
        self.lib = None
        try:
            lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            lib.mallopt, lib.malloc_trim  # noqa: B018 - both must exist (glibc)
            self.lib = lib
        except (OSError, AttributeError):
            pass

    def mallopt(self, param: int, value: int) -> bool:
        return bool(self.lib is not None and self.lib.mallopt(param, value))

    def trim(self) -> None:
        if self.lib is not None:
            self.lib.malloc_trim(0)


LIBC = _Libc()


def _proc_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class CpuPeakMeter:
    """Peak RSS increase of the process during a block of code, in bytes.

    Why this way: the peak is taken by the kernel itself, not by sampling. Writing "5" to
    ``/proc/self/clear_refs`` (Linux >= 4.0) resets the process's RSS high-water mark ``VmHWM`` to the
    current RSS; after the block, ``VmHWM`` is the exact peak, however short-lived the largest tensor was.
    Where ``clear_refs`` cannot be written, a thread samples ``/proc/self/statm`` every millisecond instead
    (it can miss peaks shorter than ~1 ms and so may under-read slightly).

    RSS only mirrors tensor memory if freed tensors go back to the kernel. glibc keeps freed chunks below
    its mmap threshold on its heap and raises that threshold dynamically up to 32 MiB, so after a warm-up a
    forward would reuse cached pages and its RSS increase would under-read the memory it needs.
    :func:`configure_allocator` therefore fixes the threshold at 64 KiB: every tensor larger than that is
    its own mmap and leaves RSS when freed, and ``malloc_trim`` before each measurement returns what is
    left. Every implementation is measured under the same settings; timed forwards run before the setting
    is made (it costs extra page faults).
    """

    def __init__(self) -> None:
        self.use_hwm = self._reset_hwm()
        self.page = os.sysconf("SC_PAGE_SIZE")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._peak = 0

    @property
    def method(self) -> str:
        return "VmHWM reset via /proc/self/clear_refs" if self.use_hwm else "statm sampling every 1 ms"

    @staticmethod
    def _reset_hwm() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return _proc_status_kib("VmHWM") is not None
        except OSError:
            return False

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, self._rss())
            time.sleep(0.001)

    def __enter__(self) -> CpuPeakMeter:
        gc.collect()
        LIBC.trim()
        self.base = self._rss()
        self._file0 = _proc_status_kib("RssFile") or 0
        if self.use_hwm:
            self._reset_hwm()
        else:
            self._peak = self.base
            self._stop.clear()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.use_hwm:
            self.peak = (_proc_status_kib("VmHWM") or 0) * 1024
        else:
            self._stop.set()
            assert self._thread is not None
            self._thread.join()
            self.peak = max(self._peak, self._rss())
        # Pages of shared libraries (libtorch's code) first touched during the block count in RSS but are
        # not memory the block allocates: left out.
        self.file_pages = max(0, (_proc_status_kib("RssFile") or 0) - self._file0) * 1024
        self.increase = self.peak - self.base - self.file_pages


class CudaPeakMeter:
    """``torch.cuda.max_memory_allocated`` over a block, and its increase over what was allocated before."""

    method = "torch.cuda.max_memory_allocated"

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __enter__(self) -> CudaPeakMeter:
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self.base = torch.cuda.memory_allocated(self.device)
        return self

    def __exit__(self, *exc: object) -> None:
        torch.cuda.synchronize(self.device)
        self.peak = torch.cuda.max_memory_allocated(self.device)
        self.increase = self.peak - self.base


def configure_allocator() -> bool:
    """Make freed CPU tensors leave RSS (see :class:`CpuPeakMeter`). Returns whether glibc took it."""
    ok = LIBC.mallopt(LIBC.M_MMAP_THRESHOLD, 64 * 1024)
    LIBC.mallopt(LIBC.M_TRIM_THRESHOLD, 128 * 1024)
    return ok


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)  # all threads of this process
    return r.ru_utime + r.ru_stime


# ------------------------------------------------------------------------------------ published code

def find_published(arg: str | None) -> Path | None:
    """The published checkout (the folder holding ``mvdream/``) from ``--published`` or $MVDREAM_PUBLISHED."""
    raw = arg or os.environ.get("MVDREAM_PUBLISHED")
    if not raw:
        return None
    root = Path(raw).expanduser().resolve()
    if not (root / "mvdream" / "ldm" / "modules" / "diffusionmodules" / "openaimodel.py").is_file():
        raise SystemExit(f"--published {root}: no mvdream/ldm/modules/diffusionmodules/openaimodel.py there; pass the "
                         "folder of a checkout of github.com/bytedance/MVDream")
    return root


def import_published(root: Path) -> tuple[types.ModuleType, types.ModuleType]:
    """(openaimodel, attention) modules of the published code at ``root``, imported without running
    ``mvdream/__init__.py`` (it pulls in the model zoo: omegaconf, huggingface_hub) and with xformers
    blocked, so that the attention is the published code's own. Needs ``einops``."""
    try:
        import einops  # noqa: F401
    except ImportError as e:
        raise SystemExit("the published code needs einops: pip install einops (or: pip install -e '.[bench]')") from e
    sys.modules["xformers"] = None  # type: ignore[assignment]  # "import xformers" now fails: plain attention
    for name in ("mvdream", "mvdream.ldm", "mvdream.ldm.modules", "mvdream.ldm.modules.diffusionmodules"):
        if name not in sys.modules:
            pkg = types.ModuleType(name)
            pkg.__path__ = [str(root.joinpath(*name.split(".")))]
            sys.modules[name] = pkg
    try:
        import omegaconf.listconfig  # noqa: F401
    except ImportError:
        # MultiViewUNetModel.__init__ only checks ``type(context_dim) == ListConfig``: an empty stand-in class
        # answers that for plain ints without omegaconf installed.
        om, lc = types.ModuleType("omegaconf"), types.ModuleType("omegaconf.listconfig")
        lc.ListConfig = type("ListConfig", (list,), {})  # type: ignore[attr-defined]
        om.listconfig = lc  # type: ignore[attr-defined]
        sys.modules.setdefault("omegaconf", om)
        sys.modules.setdefault("omegaconf.listconfig", lc)
    return importlib.import_module(PUBLISHED_UNET), importlib.import_module("mvdream.ldm.modules.attention")


def sdpa_cross_attention_forward(self: nn.Module, x: torch.Tensor, context: torch.Tensor | None = None,
                                 mask: torch.Tensor | None = None) -> torch.Tensor:
    """Drop-in ``forward`` for the published ``CrossAttention`` through ``scaled_dot_product_attention``
    (the published one computes the same softmax attention with einsum and the full score matrix)."""
    if mask is not None:
        raise NotImplementedError("masked attention is not used by the UNet")
    context = x if context is None else context
    q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
    n, h = x.shape[0], self.heads
    q, k, v = (t.view(n, -1, h, t.shape[-1] // h).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v)
    return self.to_out(out.transpose(1, 2).reshape(n, -1, out.shape[1] * out.shape[3]))


def build_published(root: Path, params: dict[str, Any], sdpa: bool) -> nn.Module:
    """The published ``MultiViewUNetModel`` for ``params``, on the meta device (weights assigned later)."""
    openaimodel, attention = import_published(root)
    if sdpa:
        attention.CrossAttention.forward = sdpa_cross_attention_forward
    with torch.device("meta"):
        return openaimodel.MultiViewUNetModel(**params)


class PublishedUNet(nn.Module):
    """The published UNet behind the interface the mvdream3d pipeline and guidance use (``has_camera``,
    ``downsample_factor``, ``config``, ``forward(x, timesteps, context, camera, num_frames)``)."""

    def __init__(self, inner: nn.Module, ours: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.config = ours.config
        self.downsample_factor = ours.downsample_factor
        self.has_camera = ours.has_camera

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor | float, context: torch.Tensor | None = None,
                camera: torch.Tensor | None = None, num_frames: int = 1) -> torch.Tensor:
        n = x.shape[0]
        t = torch.as_tensor(timesteps, device=x.device)
        t = t.expand(n) if t.ndim == 0 else (t.repeat_interleave(num_frames) if t.shape[0] != n else t)
        if context is not None and context.shape[0] != n:
            context = context.repeat_interleave(n // context.shape[0], dim=0)
        if camera is not None:
            camera = camera.reshape(n, -1)
        return self.inner(x, timesteps=t, context=context, camera=camera, num_frames=num_frames)


# -------------------------------------------------------------------------------------- UNet worker

def randomize_zero_layers(model: nn.Module) -> nn.Module:
    """Give the zero-initialised layers (ResBlocks' last conv, ``proj_out``, the output conv) PyTorch's
    default init, so that the output depends on every layer."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and not m.weight.any():
            m.reset_parameters()
    return model


def build_ours(params: dict[str, Any], seed: int = 0) -> nn.Module:
    from mvdream3d import MultiViewUNet

    torch.manual_seed(seed)
    return randomize_zero_layers(MultiViewUNet.from_config(params)).eval().requires_grad_(False)


def make_inputs(params: dict[str, Any], rows: int, num_frames: int, size: int, ctx_len: int,
                seed: int = 1) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    n_obj = rows // num_frames
    return {
        "x": torch.randn(rows, params["in_channels"], size, size, generator=g),
        # one timestep per object, shared by its views
        "timesteps": torch.randint(0, 1000, (n_obj,), generator=g).repeat_interleave(num_frames),
        "context": torch.randn(rows, ctx_len, params["context_dim"], generator=g),
        "camera": torch.randn(rows, params["camera_dim"], generator=g),
        "num_frames": num_frames,
    }


def unet_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Build one implementation of one config and time it (``spec['measure'] == 'time'``) or meter its
    memory (``'memory'``). Meant for a fresh process.

    Memory has a process of its own because the meter needs glibc's mmap threshold fixed before the first
    forward (:func:`configure_allocator`): set after forwards have run, the heap they left behind makes the
    reading depend on what ran before (the same forward read 31 MiB fixed first and 60-65 MiB fixed after three
    forwards). Timing runs with the allocator as every user has it.
    """
    make_params, rows, num_frames, size, ctx_len, default_repeats = CONFIGS[spec["config"]]
    params = make_params()
    repeats = spec.get("repeats") or default_repeats
    mode, memory = spec["mode"], spec["measure"] == "memory"
    device, dtype = torch.device(spec.get("device", "cpu")), DTYPES[spec.get("dtype", "fp32")]
    cuda = device.type == "cuda"
    if cuda:  # full fp32 matmuls, so that fp32 means fp32 for every implementation
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    if memory and not cuda:
        configure_allocator()
    t0 = time.perf_counter()
    ours = build_ours(params).to(device, dtype)
    if mode.startswith("published"):
        model = build_published(Path(spec["published"]), params, sdpa=mode == "published_sdpa")
        model.load_state_dict(ours.state_dict(), strict=True, assign=True)  # shares the tensors: no copy
        model.eval().requires_grad_(False)
        del ours
    else:
        model = ours
    gc.collect()
    LIBC.trim()
    build_s = time.perf_counter() - t0
    inputs = {k: (v.to(device, dtype if v.is_floating_point() else None) if isinstance(v, torch.Tensor) else v)
              for k, v in make_inputs(params, rows, num_frames, size, ctx_len).items()}

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    out: dict[str, Any] = {"config": spec["config"], "mode": mode, "rows": rows, "num_frames": num_frames,
                           "latent_size": size, "build_s": build_s, "threads": torch.get_num_threads(),
                           "device": str(device), "dtype": spec.get("dtype", "fp32"),
                           "params": sum(p.numel() for p in model.parameters())}
    with torch.no_grad():
        if mode == "ours_compile":
            model = torch.compile(model)
        t0, c0 = time.perf_counter(), _cpu_seconds()
        ref = model(**inputs)  # warm-up (and, compiled, the compilation)
        sync()
        out["warmup_s"], out["warmup_cpu_s"] = time.perf_counter() - t0, _cpu_seconds() - c0
        if memory:
            del ref
            peaks, totals = [], []
            for _ in range(2):
                with (CudaPeakMeter(device) if cuda else CpuPeakMeter()) as meter:
                    y = model(**inputs)
                    sync()
                    del y
                peaks.append(meter.increase)
                totals.append(meter.peak)
            out.update(peak_increase_bytes=max(peaks), peak_bytes=max(totals))
            return out
        torch.save(ref.float().cpu().contiguous(), spec["output_file"])
        del ref
        times, cpu = [], []
        for _ in range(repeats):
            gc.collect()
            t0, c0 = time.perf_counter(), _cpu_seconds()
            y = model(**inputs)
            sync()
            times.append(time.perf_counter() - t0)
            cpu.append(_cpu_seconds() - c0)
            del y
    out.update(repeats=repeats, times_s=times, cpu_s=cpu, time_median_s=statistics.median(times),
               cpu_median_s=statistics.median(cpu))
    return out


# --------------------------------------------------------------------------------------- e2e worker

def e2e_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Seconds per generate (sampling) step and per text-to-3D step (``spec['measure'] == 'time'``), or the peak
    memory of a text-to-3D step (``'memory'``, allocator fixed first as for the UNet), with ``spec['model']``
    through the mvdream3d importable in this process (this checkout, or the baseline's ``src`` on PYTHONPATH),
    optionally with the published UNet swapped in."""
    memory = spec["measure"] == "memory"
    if memory:
        configure_allocator()
    import mvdream3d
    from mvdream3d import MultiViewPipeline
    from mvdream3d.pipeline import resolve_model
    from mvdream3d.threed.config import load_text_to_3d_config
    from mvdream3d.threed.system import TextTo3D

    model = resolve_model(spec["model"]).eval().requires_grad_(False)
    if spec["mode"] == "published_sdpa":
        params = dict(model.unet.config.to_dict())
        inner = build_published(Path(spec["published"]), _published_params(params), sdpa=True)
        inner.load_state_dict(model.unet.state_dict(), strict=True, assign=True)
        model.unet = PublishedUNet(inner.eval().requires_grad_(False), model.unet)
    out: dict[str, Any] = {"mode": spec["mode"], "model": spec["model"] or "built-in",
                           "mvdream3d": str(Path(mvdream3d.__file__).parent), "threads": torch.get_num_threads(),
                           "t3d_config": spec["t3d_config"]}
    prompt = "a red cube with a yellow nose"
    cfg = load_text_to_3d_config(spec["t3d_config"], ["material.ambient_only_steps=0"])

    if memory:  # text-to-3D steps after a warm-up, under the meter
        with tempfile.TemporaryDirectory() as tmp:
            run = TextTo3D(prompt, model, cfg, Path(tmp))
            for _ in range(2):
                run.train_step()
            peaks = []
            for _ in range(2):
                with CpuPeakMeter() as meter:
                    run.train_step()
                peaks.append(meter.increase)
        out["t3d_peak_increase_bytes"] = max(peaks)
        return out

    # generate: 4 views, the model's default sampler, steps and CFG; per-step times from the step callback
    pipe = MultiViewPipeline(model)
    d = getattr(model, "sampling_defaults", None) or {"sampler": "ddim", "steps": 20, "guidance_scale": 7.5}
    kw = dict(num_views=4, sampler=d["sampler"], num_inference_steps=int(d["steps"]),
              guidance_scale=float(d["guidance_scale"]))
    pipe(prompt, seed=0, **kw)  # warm-up
    step_times, step_cpu, stamps = [], [], []

    def stamp(i: int, t: int, x0: torch.Tensor) -> None:
        stamps.append((time.perf_counter(), _cpu_seconds()))

    for r in range(spec["generate_runs"]):
        stamps.clear()
        pipe(prompt, seed=r, callback=stamp, **kw)
        # intervals between step callbacks: the sampler steps after the first (which also has the text encoding)
        step_times += [b[0] - a[0] for a, b in zip(stamps[:-1], stamps[1:], strict=True)]
        step_cpu += [b[1] - a[1] for a, b in zip(stamps[:-1], stamps[1:], strict=True)]
    out.update(generate_settings=kw, generate_step_s=statistics.median(step_times),
               generate_step_cpu_s=statistics.median(step_cpu))

    # text-to-3D: train steps after a warm-up
    with tempfile.TemporaryDirectory() as tmp:
        run = TextTo3D(prompt, model, cfg, Path(tmp))
        for _ in range(2):
            run.train_step()
        times, cpu, guidance = [], [], []
        for _ in range(spec["t3d_steps"]):
            t0, c0 = time.perf_counter(), _cpu_seconds()
            row = run.train_step()
            times.append(time.perf_counter() - t0)
            cpu.append(_cpu_seconds() - c0)
            guidance.append(row["time_guidance"])
    out.update(t3d_step_s=statistics.median(times), t3d_step_cpu_s=statistics.median(cpu),
               t3d_guidance_s=statistics.median(guidance))
    return out


def _published_params(params: dict[str, Any]) -> dict[str, Any]:
    """Our UNetConfig dict -> keyword arguments of the published MultiViewUNetModel."""
    keep = ("in_channels", "out_channels", "model_channels", "attention_resolutions", "num_res_blocks",
            "channel_mult", "num_heads", "num_head_channels", "transformer_depth", "context_dim",
            "use_linear_in_transformer", "camera_dim", "dropout", "conv_resample", "use_scale_shift_norm",
            "resblock_updown", "use_checkpoint", "num_attention_blocks", "disable_middle_self_attn")
    p = {k: params[k] for k in keep if k in params}
    p.update(image_size=32, use_spatial_transformer=True, legacy=False)
    return p


# ---------------------------------------------------------------------------------- orchestration

def run_worker(kind: str, spec: dict[str, Any], pythonpath: str | None = None) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter; ``pythonpath`` puts another mvdream3d first."""
    with tempfile.TemporaryDirectory() as tmp:
        spec = dict(spec, output_file=str(Path(tmp) / "out.pt"))
        res_file = Path(tmp) / "result.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--worker-spec", json.dumps(spec),
               "--worker-out", str(res_file)]
        env = dict(os.environ)
        if pythonpath is not None:
            env["PYTHONPATH"] = pythonpath + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        proc = subprocess.run(cmd, check=False, env=env)
        if proc.returncode != 0 or not res_file.exists():
            raise RuntimeError(f"benchmark worker {kind} {spec.get('config', '')}/{spec['mode']} failed "
                               f"(exit {proc.returncode})")
        res = json.loads(res_file.read_text())
        if kind == "unet" and spec["measure"] == "time":
            res["output"] = torch.load(spec["output_file"], weights_only=True)
        return res


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _fmt_list(values: list[float], fmt: str = "{:.3f}") -> str:
    return " / ".join(fmt.format(v) for v in values)


def report_unet(results: dict[str, dict[str, list[dict[str, Any]]]], rounds: int) -> dict[str, Any]:
    """Print the UNet table (one line per config and implementation, one value per round) and the ratios."""
    summary: dict[str, Any] = {}
    print()
    head = (f"{'config':<9} {'implementation':<15} {'median s (per round)':>22} {'CPU s':>15} "
            f"{'forward peak +MiB':>18} {'process peak MiB':>17} {'max|out - ours|':>16}")
    print(head)
    print("-" * len(head))
    for config, by_mode in results.items():
        ours_out = by_mode["ours"][0]["output"]
        for mode, runs in by_mode.items():
            diff = (runs[0]["output"] - ours_out).abs().max().item() if mode != "ours" else 0.0
            print(f"{config:<9} {mode:<15} {_fmt_list([r['time_median_s'] for r in runs]):>22} "
                  f"{_fmt_list([r['cpu_median_s'] for r in runs], '{:.2f}'):>15} "
                  f"{_fmt_list([r['peak_increase_bytes'] / MiB for r in runs], '{:.0f}'):>18} "
                  f"{_fmt_list([r['peak_bytes'] / MiB for r in runs], '{:.0f}'):>17} "
                  f"{f'{diff:.2e}' if mode != 'ours' else 'reference':>16}")
        s: dict[str, Any] = {"max_abs_output": ours_out.abs().max().item()}
        for base in ("published_sdpa", "published", "ours_compile"):
            if base not in by_mode:
                continue
            per_round = [b["time_median_s"] / o["time_median_s"] for b, o in zip(by_mode[base], by_mode["ours"],
                                                                                   strict=True)]
            cpu_round = [b["cpu_median_s"] / o["cpu_median_s"] for b, o in zip(by_mode[base], by_mode["ours"],
                                                                                strict=True)]
            mem = max(o["peak_increase_bytes"] for o in by_mode["ours"]) / max(
                min(b["peak_increase_bytes"] for b in by_mode[base]), 1)
            s[base] = {"time_ratio_per_round": per_round, "cpu_ratio_per_round": cpu_round,
                       "time_ratio_worse": min(per_round), "cpu_ratio_worse": min(cpu_round), "memory_ratio": mem,
                       "max_abs_diff": (by_mode[base][0]["output"] - ours_out).abs().max().item()}
            label = {"published_sdpa": "published + SDPA", "published": "published as shipped",
                     "ours_compile": "ours, eager"}[base]
            what = "ours" if base != "ours_compile" else "compiled"
            if base == "ours_compile":  # time ratio the other way round: eager / compiled
                per_round = [1 / r for r in per_round]
                cpu_round = [1 / r for r in cpu_round]
                s[base].update(time_ratio_per_round=per_round, time_ratio_worse=min(per_round),
                               cpu_ratio_per_round=cpu_round, cpu_ratio_worse=min(cpu_round))
                s[base]["compile_s"] = by_mode[base][0]["warmup_s"]
            print(f"{config}: {what} vs {label}: time x{_fmt_list(per_round, '{:.2f}')} faster (per round; CPU "
                  f"time x{_fmt_list(cpu_round, '{:.2f}')}), forward peak memory x{mem:.2f} of it")
        summary[config] = s
    print()
    print("median s: wall time of one forward (median of the repeats), one value per interleaved round; CPU s: CPU "
          "seconds of\nthe process per forward (all threads); forward peak +MiB: RSS high-water mark of a forward "
          "above what was in\nuse before it (weights, inputs); process peak MiB: the same, absolute, incl. the "
          "weights and torch itself;\nmax|out - ours|: largest difference from our output on the same weights "
          "and inputs.")
    return summary


def report_e2e(results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    print()
    head = (f"{'implementation':<15} {'generate s/step':>16} {'CPU s':>12} {'text-to-3D s/step':>18} {'CPU s':>12} "
            f"{'text-to-3D step peak +MiB':>26}")
    print(head)
    print("-" * len(head))
    for mode, runs in results.items():
        print(f"{mode:<15} {_fmt_list([r['generate_step_s'] for r in runs]):>16} "
              f"{_fmt_list([r['generate_step_cpu_s'] for r in runs], '{:.2f}'):>12} "
              f"{_fmt_list([r['t3d_step_s'] for r in runs]):>18} "
              f"{_fmt_list([r['t3d_step_cpu_s'] for r in runs], '{:.2f}'):>12} "
              f"{_fmt_list([r['t3d_peak_increase_bytes'] / MiB for r in runs], '{:.0f}'):>26}")
    summary: dict[str, Any] = {}
    ours = results["ours"]
    for base in ("baseline", "published_sdpa"):
        if base not in results:
            continue
        rb = results[base]
        summary[base] = {
            key: [1 - o[key] / b[key] for b, o in zip(rb, ours, strict=True)]
            for key in ("generate_step_s", "generate_step_cpu_s", "t3d_step_s", "t3d_step_cpu_s")
        }
        summary[base]["t3d_memory_ratio"] = max(o["t3d_peak_increase_bytes"] for o in ours) / max(
            min(b["t3d_peak_increase_bytes"] for b in rb), 1)
        sb = summary[base]
        print(f"ours vs {base}: generate step {_fmt_list([-v * 100 for v in sb['generate_step_s']], '{:+.0f}%')} "
              f"(CPU {_fmt_list([-v * 100 for v in sb['generate_step_cpu_s']], '{:+.0f}%')}), text-to-3D step "
              f"{_fmt_list([-v * 100 for v in sb['t3d_step_s']], '{:+.0f}%')} (CPU "
              f"{_fmt_list([-v * 100 for v in sb['t3d_step_cpu_s']], '{:+.0f}%')}), text-to-3D step peak memory "
              f"x{sb['t3d_memory_ratio']:.2f}")
    r0 = ours[0]
    print(f"model {r0['model']}; generate: {r0['generate_settings']}; text-to-3D config {r0['t3d_config']}")
    return summary


def verdict(unet: dict[str, Any], e2e: dict[str, Any], by_cpu: bool = False) -> dict[str, Any]:
    """Check the targets on the worse round: wall-time ratios, or with ``by_cpu`` (a machine loaded by other
    processes, where wall time measures the competition) the processes' CPU-time ratios."""
    checks: dict[str, Any] = {}
    ratio, saving = ("cpu_ratio_worse", "t3d_step_cpu_s") if by_cpu else ("time_ratio_worse", "t3d_step_s")
    for config, key in (("tiny", "tiny_speedup"), ("full", "full_speedup")):
        s = unet.get(config, {}).get("published_sdpa")
        if s:
            checks[key] = {"value": s[ratio], "target": TARGETS[key], "met": s[ratio] >= TARGETS[key],
                           "measure": "CPU time" if by_cpu else "wall time"}
            checks[f"{config}_memory_ratio"] = {"value": s["memory_ratio"], "target": TARGETS["memory_ratio"],
                                                "met": s["memory_ratio"] <= TARGETS["memory_ratio"]}
    if "published_sdpa" in e2e:
        v = e2e["published_sdpa"]["t3d_memory_ratio"]
        checks["t3d_memory_ratio"] = {"value": v, "target": TARGETS["memory_ratio"],
                                      "met": v <= TARGETS["memory_ratio"]}
    if "baseline" in e2e:
        v = min(e2e["baseline"][saving])
        checks["t3d_step_saving"] = {"value": v, "target": TARGETS["t3d_step_saving"],
                                     "met": v >= TARGETS["t3d_step_saving"],
                                     "measure": "CPU time" if by_cpu else "wall time"}
    print()
    names = {"tiny_speedup": "tiny forward, ours vs published + SDPA (x, worse round)",
             "full_speedup": "sd21-width forward, ours vs published + SDPA (x, worse round)",
             "tiny_memory_ratio": "tiny forward peak memory, ours / published + SDPA",
             "full_memory_ratio": "sd21-width forward peak memory, ours / published + SDPA",
             "t3d_memory_ratio": "text-to-3D step peak memory, ours / published + SDPA",
             "t3d_step_saving": "text-to-3D step time saved vs baseline (worse round)"}
    for key, c in checks.items():
        cmp = ">=" if key.endswith(("speedup", "saving")) else "<="
        how = f", {c['measure']}" if "measure" in c else ""
        print(f"TARGET {names[key]}: {c['value']:.2f} (target {cmp} {c['target']}{how}): "
              f"{'MET' if c['met'] else 'NOT MET'}")
    if not checks:
        print("no targets checked (the published code is needed for the ratios; --e2e --baseline-src for the step)")
    return checks


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--published", default=None,
                   help="checkout of github.com/bytedance/MVDream (default: $MVDREAM_PUBLISHED; without it, "
                   "ours alone)")
    p.add_argument("--config", choices=("tiny", "full", "both", "none"), default="both")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default 2)")
    p.add_argument("--repeats", type=int, default=None, help="timed forwards per process (default 5 tiny, 3 full)")
    p.add_argument("--modes", default=None,
                   help=f"comma-separated subset of {','.join(UNET_MODES)} (default: all that are available)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="UNet forwards on this device")
    p.add_argument("--dtypes", default="fp32",
                   help="comma-separated subset of fp32,bf16,fp16 for the UNet forwards (bf16/fp16 need --device cuda)")
    p.add_argument("--compile", action="store_true", help="also time ours under torch.compile (tiny config only)")
    p.add_argument("--e2e", action="store_true", help="also time generate and text-to-3D steps")
    p.add_argument("--model", default=None, help="model for --e2e (default: the built-in model)")
    p.add_argument("--t3d-config", default="builtin", help="text-to-3D config for --e2e (default: builtin)")
    p.add_argument("--t3d-steps", type=int, default=6, help="timed text-to-3D steps per process (default 6)")
    p.add_argument("--generate-runs", type=int, default=2, help="generate calls per process (default 2)")
    p.add_argument("--baseline-src", default=None,
                   help="the src/ folder of another mvdream3d checkout, for before/after --e2e numbers")
    p.add_argument("--json", type=Path, default=None, help="also write all measurements to this JSON file")
    p.add_argument("--worker", choices=("unet", "e2e"), default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker-spec", default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rounds < 1 or (args.repeats is not None and args.repeats < 1):
        p.error("--rounds and --repeats must be >= 1")
    args.dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    bad = sorted(set(args.dtypes) - set(DTYPES))
    if bad:
        p.error(f"unknown dtypes {bad}; choose from {sorted(DTYPES)}")
    if args.device == "cpu" and args.dtypes != ["fp32"]:
        p.error("bf16/fp16 need --device cuda (this project runs in fp32 on CPU: no bf16 units on most CPUs)")
    if args.baseline_src and not (Path(args.baseline_src) / "mvdream3d" / "__init__.py").is_file():
        p.error(f"--baseline-src {args.baseline_src}: no mvdream3d package there (pass the checkout's src/ folder)")
    return args


def _unet_modes(args: argparse.Namespace, published: Path | None) -> list[str]:
    """The UNet modes to time: all of UNET_MODES (ours alone without the published code), cut to --modes."""
    modes = list(UNET_MODES)
    if published is None:
        print("published MVDream code not found (pass --published PATH or set MVDREAM_PUBLISHED to a checkout of "
              "github.com/bytedance/MVDream): measuring ours alone, no ratios")
        modes = ["ours"]
    if args.modes:
        asked = [m.strip() for m in args.modes.split(",") if m.strip()]
        bad = sorted(set(asked) - set(UNET_MODES))
        if bad:
            raise SystemExit(f"unknown --modes {bad}; choose from {UNET_MODES}")
        modes = [m for m in modes if m in asked]
        if "ours" not in modes:
            modes.append("ours")
    return modes


def _unet_round(r: int, args: argparse.Namespace, configs: list[str], modes: list[str], published: Path | None,
                results: dict[str, dict[str, list[dict[str, Any]]]]) -> None:
    """One round of UNet forwards: every config x dtype x mode, each timing and memory in a fresh process."""
    for config, dtype in ((c, d) for c in configs for d in args.dtypes):
        key = config if dtype == "fp32" else f"{config}/{dtype}"
        cmodes = modes + (["ours_compile"] if args.compile and config == "tiny" else [])
        for mode in cmodes:
            t0 = time.perf_counter()
            spec = {"config": config, "mode": mode, "repeats": args.repeats, "device": args.device,
                    "dtype": dtype, "published": str(published) if published else None}
            res = run_worker("unet", dict(spec, measure="time"))
            mem = run_worker("unet", dict(spec, measure="memory"))
            res.update(peak_increase_bytes=mem["peak_increase_bytes"], peak_bytes=mem["peak_bytes"])
            results.setdefault(key, {}).setdefault(mode, []).append(res)
            print(f"[round {r + 1}] {key}/{mode}: {res['time_median_s']:.3f} s per forward (CPU "
                  f"{res['cpu_median_s']:.2f} s), forward peak +{res['peak_increase_bytes'] / MiB:.0f} MiB "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)


def _e2e_round(r: int, args: argparse.Namespace, e2e_modes: list[str], published: Path | None,
               results: dict[str, list[dict[str, Any]]]) -> None:
    """One round of the end-to-end figures (generate and text-to-3D steps) per mode, in fresh processes."""
    for mode in e2e_modes:
        t0 = time.perf_counter()
        spec = {"mode": mode, "model": args.model, "t3d_config": args.t3d_config,
                "t3d_steps": args.t3d_steps, "generate_runs": args.generate_runs,
                "published": str(published) if published else None}
        path = args.baseline_src if mode == "baseline" else None
        res = run_worker("e2e", dict(spec, measure="time"), pythonpath=path)
        mem = run_worker("e2e", dict(spec, measure="memory"), pythonpath=path)
        res["t3d_peak_increase_bytes"] = mem["t3d_peak_increase_bytes"]
        results.setdefault(mode, []).append(res)
        print(f"[round {r + 1}] e2e/{mode} ({res['mvdream3d']}): generate {res['generate_step_s']:.3f} "
              f"s/step, text-to-3D {res['t3d_step_s']:.3f} s/step ({time.perf_counter() - t0:.0f} s)",
              flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        spec = json.loads(args.worker_spec)
        res = unet_worker(spec) if args.worker == "unet" else e2e_worker(spec)
        args.worker_out.write_text(json.dumps(res))
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: CUDA is not available in this torch build / machine", file=sys.stderr)
        return 2
    published = find_published(args.published)
    modes = _unet_modes(args, published)
    env = {"torch": torch.__version__, "python": platform.python_version(), "cpu": cpu_name(), "device": args.device,
           "device_name": torch.cuda.get_device_name(0) if args.device == "cuda" else cpu_name(),
           "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(), "memory_method": CpuPeakMeter().method,
           "loadavg_before": os.getloadavg(), "published": str(published) if published else None}
    print(f"torch {env['torch']}, {env['device_name']}, {env['threads']} threads, load average "
          f"{env['loadavg_before'][0]:.2f}; peak memory: {env['memory_method']}; one fresh process per "
          f"measurement, {args.rounds} interleaved rounds", flush=True)
    if LIBC.lib is None:
        print("warning: no glibc mallopt here; peak-memory figures may under-read")
    loads: list[float] = []
    done = threading.Event()

    def watch_load() -> None:
        while not done.wait(5.0):
            loads.append(os.getloadavg()[0])

    watcher = threading.Thread(target=watch_load, daemon=True)
    watcher.start()
    configs = {"both": ["tiny", "full"], "none": []}.get(args.config, [args.config])
    unet_results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    e2e_results: dict[str, list[dict[str, Any]]] = {}
    e2e_modes = ["ours"]
    if published is not None:
        e2e_modes.insert(0, "published_sdpa")
    if args.baseline_src:
        e2e_modes.insert(0, "baseline")
    try:
        for r in range(args.rounds):
            _unet_round(r, args, configs, modes, published, unet_results)
            if args.e2e:
                _e2e_round(r, args, e2e_modes, published, e2e_results)
    finally:
        done.set()
        watcher.join()
    env["loadavg_during_median"] = statistics.median(loads) if loads else os.getloadavg()[0]
    unet_summary = report_unet(unet_results, args.rounds) if unet_results else {}
    e2e_summary = report_e2e(e2e_results) if e2e_results else {}
    load = env["loadavg_during_median"]
    print(f"\nload average during the run (median of 1-minute values): {load:.2f} on {env['cpu_count']} cores; "
          f"this benchmark accounts for about {env['threads']}.")
    env["contended"] = load > env["threads"] + 0.5
    if env["contended"]:
        print(f"WARNING: load average {load:.1f}: other processes competed for the CPU, so wall times are "
              "inflated and scattered (the CPU-time columns and ratios suffer less; memory does not depend on load).")
        print("The targets below are judged on CPU time (each process's own CPU seconds), not wall time.")
    checks = verdict(unet_summary, e2e_summary, by_cpu=env["contended"])
    if args.json is not None:
        _write_json(args.json, {"env": env, "unet": unet_results, "unet_summary": unet_summary,
                                "e2e": e2e_results, "e2e_summary": e2e_summary, "targets": checks})
    return 0


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """The raw numbers (without the outputs kept for the parity check), written atomically."""
    from mvdream3d.files import atomic_write_text

    for by_mode in data["unet"].values():
        for runs in by_mode.values():
            for run in runs:
                run.pop("output", None)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=2, default=float))
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
