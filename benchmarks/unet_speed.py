"""Forward speed and peak memory of the multi-view UNet, "sdpa" attention versus the "naive" baseline.

The "naive" backend writes ``softmax(q k^T / sqrt(d)) v`` out with the full score matrix, as the
published MVDream code does without xformers; "sdpa" calls
``torch.nn.functional.scaled_dot_product_attention``. One command measures both backends on two
configs (random weights, eval mode, ``torch.no_grad``), each config built once, in a fresh process
of its own, so that one config's 3.5 GB of weights or allocator state cannot colour the other's
figures:

- ``full``: the published sd-v2.1-base-4view UNet (867M parameters), one object x 4 views x (uncond,
  cond) = 8 rows of 4x32x32 latents, ``num_frames=4``, context (8, 77, 1024), camera (8, 16): one
  classifier-free-guidance step of the 4-view sampler.
- ``tiny``: model_channels 32, channel_mult [1, 2, 2], attention at every level, 4 heads,
  context_dim 64: 4 objects x 4 views = 16 rows at 32x32.

Per backend: one warm-up forward (not timed; its output feeds the sdpa-vs-naive numerical check),
``--repeats`` timed forwards with the backends interleaved so that drift and other load hit both
alike (the median is reported), then two forwards under the peak-memory meter (the larger peak is
reported): on CUDA ``torch.cuda.max_memory_allocated``, on CPU the kernel's RSS high-water mark (see
:class:`CpuPeakMeter` for how and why). Ratios naive/sdpa and a verdict against the targets
(full-size 4-view forward >= 1.5x faster and >= 30% less peak memory than naive) close the report.
bf16/fp16 run only with ``--device cuda``.

Usage::

    python benchmarks/unet_speed.py [--config full|tiny|both] [--repeats N] [--device cpu|cuda]
                                    [--dtypes fp32,bf16,fp16] [--json OUT]
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import ctypes.util
import gc
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
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from mvdream3d import MultiViewUNet
from mvdream3d.models.attention import set_attention_backend

BACKENDS = ("sdpa", "naive")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TARGET_SPEEDUP = 1.5  # naive time / sdpa time, full config
TARGET_MEM_SAVING = 0.30  # 1 - sdpa peak / naive peak, full config
MiB = 1024**2

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


# name -> (UNet params, rows, num_frames, latent size, default repeats)
CONFIGS: dict[str, tuple[Any, int, int, int, int]] = {
    "full": (full_params, 8, 4, 32, 3),
    "tiny": (lambda: dict(TINY_PARAMS), 16, 4, 32, 10),
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
    current RSS; after the forward, ``VmHWM`` is the exact peak, however short-lived the largest
    tensor was. ``ru_maxrss`` is the same counter but can never be reset, so it would need a fresh
    subprocess (and a fresh 3.5 GB model build) per measured forward; resetting ``VmHWM`` gives the
    same exactness for every forward of one process. Where ``clear_refs`` cannot be written, a thread
    samples ``/proc/self/statm`` every millisecond instead (torch kernels release the GIL, so it keeps
    up; it can miss peaks shorter than ~1 ms and so may under-read slightly).

    RSS only mirrors tensor memory if freed tensors go back to the kernel. glibc keeps freed chunks
    below its mmap threshold on its heap and raises that threshold dynamically up to 32 MiB, so after
    the warm-up a forward would reuse cached pages and its RSS increase would under-read the memory
    it needs. :func:`configure_allocator` therefore fixes the threshold at 64 KiB (which also turns
    the dynamic adjustment off): every tensor larger than that is its own mmap and leaves RSS when
    freed, and ``malloc_trim`` before each measurement returns what is left. Both backends are
    measured under the same settings. The setting costs extra page faults, so the timed forwards run
    before it is made (see :func:`bench_model`).
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
            self.peak = _proc_status_kib("VmHWM") * 1024
        else:
            self._stop.set()
            assert self._thread is not None
            self._thread.join()
            self.peak = max(self._peak, self._rss())
        # Pages of shared libraries (libtorch's code) first touched, or re-read after the kernel evicted
        # them, during the forward count in RSS but are not memory the forward allocates: left out.
        self.file_pages = max(0, (_proc_status_kib("RssFile") or 0) - self._file0) * 1024
        self.increase = self.peak - self.base - self.file_pages


class CudaPeakMeter:
    """``torch.cuda.max_memory_allocated`` over a block, and its increase over what was allocated."""

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
        self.file_pages = 0


def configure_allocator() -> bool:
    """Make freed CPU tensors leave RSS (see :class:`CpuPeakMeter`). Returns whether glibc took it."""
    ok = LIBC.mallopt(LIBC.M_MMAP_THRESHOLD, 64 * 1024)
    LIBC.mallopt(LIBC.M_TRIM_THRESHOLD, 128 * 1024)
    return ok


# -------------------------------------------------------------------------------------------- model

def build_model(params: dict[str, Any], device: torch.device, seed: int = 0) -> MultiViewUNet:
    """Random-weight UNet in eval mode. The layers the UNet zero-initialises (the ResBlocks' last conv,
    the transformers' ``proj_out``, the output conv) get PyTorch's default init instead, so the
    output depends on every layer and the sdpa/naive comparison is not trivially 0 == 0."""
    torch.manual_seed(seed)
    with torch.device(device):
        model = MultiViewUNet.from_config(params)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and not m.weight.any():
            m.reset_parameters()
    return model.eval().requires_grad_(False)


def make_inputs(model: MultiViewUNet, rows: int, num_frames: int, size: int, device: torch.device,
                dtype: torch.dtype, seed: int = 1) -> dict[str, Any]:
    c = model.config
    g = torch.Generator().manual_seed(seed)
    n_obj = rows // num_frames
    inputs: dict[str, Any] = {
        "x": torch.randn(rows, c.in_channels, size, size, generator=g),
        # one timestep per object, shared by its views
        "timesteps": torch.randint(0, 1000, (n_obj,), generator=g).repeat_interleave(num_frames),
        "context": torch.randn(rows, 77, c.context_dim, generator=g),
        "camera": torch.randn(rows, c.camera_dim, generator=g) if c.camera_dim else None,
    }
    out = {k: (v.to(device, dtype if v.is_floating_point() else None) if v is not None else None)
           for k, v in inputs.items()}
    out["num_frames"] = num_frames
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cpu_usage() -> tuple[float, float, int]:
    r = resource.getrusage(resource.RUSAGE_SELF)  # all threads of this process
    return r.ru_utime, r.ru_stime, r.ru_minflt


def bench_model(model: MultiViewUNet, inputs: dict[str, Any], repeats: int, mem_repeats: int,
                device: torch.device) -> dict[str, dict[str, Any]]:
    """Per backend: a warm-up forward, ``repeats`` timed forwards (backends interleaved), then
    ``mem_repeats`` forwards under the peak-memory meter. Returns per-backend stats + the check.

    Timing and memory are separate passes because the CPU meter needs glibc's mmap threshold fixed
    (:func:`configure_allocator`), which changes how often the forward page-faults fresh memory:
    timings are taken with the allocator as every user has it, memory afterwards.
    """
    stats: dict[str, dict[str, Any]] = {
        b: {"times_s": [], "user_s": [], "sys_s": [], "minor_faults": [],
            "peak_increase_bytes": [], "peak_bytes": [], "file_pages_bytes": []} for b in BACKENDS
    }
    outputs: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for backend in BACKENDS:  # warm-up; its outputs serve the numerical check
            set_attention_backend(model, backend)
            outputs[backend] = model(**inputs).float().cpu()
            _sync(device)
        for _ in range(repeats):
            for backend in BACKENDS:
                set_attention_backend(model, backend)
                gc.collect()
                u0, s0, f0 = _cpu_usage()
                t0 = time.perf_counter()
                out = model(**inputs)
                _sync(device)
                dt = time.perf_counter() - t0
                u1, s1, f1 = _cpu_usage()
                del out
                st = stats[backend]
                st["times_s"].append(dt)
                st["user_s"].append(u1 - u0)
                st["sys_s"].append(s1 - s0)
                st["minor_faults"].append(f1 - f0)
        if device.type == "cpu":
            configure_allocator()
            meter_cls: Any = CpuPeakMeter
        else:
            meter_cls = lambda: CudaPeakMeter(device)
        for _ in range(mem_repeats):
            for backend in BACKENDS:
                set_attention_backend(model, backend)
                with meter_cls() as meter:
                    out = model(**inputs)
                    _sync(device)
                    del out
                stats[backend]["peak_increase_bytes"].append(meter.increase)
                stats[backend]["peak_bytes"].append(meter.peak)
                stats[backend]["file_pages_bytes"].append(meter.file_pages)
    set_attention_backend(model, "sdpa")
    for st in stats.values():
        st["time_median_s"] = statistics.median(st["times_s"])
        st["user_median_s"] = statistics.median(st["user_s"])
        st["sys_median_s"] = statistics.median(st["sys_s"])
        st["time_min_s"] = min(st["times_s"])
        st["peak_increase_max_bytes"] = max(st["peak_increase_bytes"])
        st["peak_max_bytes"] = max(st["peak_bytes"])
    ref, other = outputs["sdpa"], outputs["naive"]
    diff = (ref - other).abs().max().item()
    scale = ref.abs().max().item()
    stats["check"] = {"max_abs_diff": diff, "max_abs_output": scale,
                      "rel_diff": diff / scale if scale else float("nan"),
                      "finite": bool(torch.isfinite(ref).all() and torch.isfinite(other).all())}
    return stats


def run_config(name: str, repeats: int | None, device: torch.device, dtypes: list[str]
               ) -> list[dict[str, Any]]:
    """Build config ``name`` once and measure it in every dtype. Meant for a fresh process."""
    make_params, rows, num_frames, size, default_repeats = CONFIGS[name]
    repeats = repeats or default_repeats
    # the full sdpa forward's peak RSS varied between runs (386-503 MiB seen): report the larger of 2
    mem_repeats = 2
    params = make_params()
    t0 = time.perf_counter()
    base_model = build_model(params, device)
    n_params = sum(p.numel() for p in base_model.parameters())
    print(f"[{name}] built {n_params / 1e6:.1f}M-parameter UNet in {time.perf_counter() - t0:.1f} s; "
          f"{rows} rows = {rows // num_frames} objects x {num_frames} views at {size}x{size}; per backend "
          f"1 warm-up + {repeats} timed + {mem_repeats} memory forwards", flush=True)
    results = []
    for dt_name in dtypes:
        dtype = DTYPES[dt_name]
        # fp32 runs on the model as built; lower precisions on a converted copy, dropped afterwards
        model = base_model if dtype == torch.float32 else copy.deepcopy(base_model).to(dtype)
        inputs = make_inputs(model, rows, num_frames, size, device, dtype)
        t0 = time.perf_counter()
        stats = bench_model(model, inputs, repeats, mem_repeats, device)
        sd, nv, chk = stats["sdpa"], stats["naive"], stats["check"]
        rec = {
            "config": name, "dtype": dt_name, "device": str(device), "params": n_params,
            "rows": rows, "num_frames": num_frames, "latent_size": size, "repeats": repeats,
            "mem_repeats": mem_repeats, "unet_params": params,
            "sdpa": sd, "naive": nv, "check": chk,
            "time_ratio": nv["time_median_s"] / sd["time_median_s"],
            "time_ratio_min": nv["time_min_s"] / sd["time_min_s"],
            "cpu_time_ratio": (nv["user_median_s"] + nv["sys_median_s"])
            / max(sd["user_median_s"] + sd["sys_median_s"], 1e-9),
            "mem_ratio": nv["peak_increase_max_bytes"] / max(sd["peak_increase_max_bytes"], 1),
            "mem_saving": 1 - sd["peak_increase_max_bytes"] / max(nv["peak_increase_max_bytes"], 1),
            "mem_saving_total": 1 - sd["peak_max_bytes"] / max(nv["peak_max_bytes"], 1),
        }
        print(f"[{name}/{dt_name}] sdpa {sd['time_median_s']:.3f} s, naive {nv['time_median_s']:.3f} s "
              f"(x{rec['time_ratio']:.2f}); peak +{sd['peak_increase_max_bytes'] / MiB:.0f} MiB vs "
              f"+{nv['peak_increase_max_bytes'] / MiB:.0f} MiB; max|sdpa-naive| {chk['max_abs_diff']:.2e}"
              f" ({time.perf_counter() - t0:.0f} s)", flush=True)
        results.append(rec)
        del model, inputs
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return results


def run_in_subprocess(name: str, args: argparse.Namespace, dtypes: list[str]) -> list[dict[str, Any]]:
    """Measure one config in a fresh interpreter: its allocator settings, RSS and (for ``full``) the
    3.5 GB of weights start and end with it, so configs cannot disturb each other's figures."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / f"{name}.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--worker-out", str(out),
               "--device", args.device, "--dtypes", ",".join(dtypes)]
        if args.repeats is not None:
            cmd += ["--repeats", str(args.repeats)]
        proc = subprocess.run(cmd, check=False)
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"benchmark worker for config {name!r} failed (exit {proc.returncode})")
        return json.loads(out.read_text())


# ------------------------------------------------------------------------------------------- report

def cpu_bf16_note() -> str:
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    found = sorted(flags & {"avx512_bf16", "amx_bf16", "avx512_fp16", "amx_fp16"})
    if found:
        units = f"this CPU reports {', '.join(found)}"
    else:
        units = "this CPU has no bf16 units (no avx512_bf16 / amx_bf16 in /proc/cpuinfo)"
    return (f"bf16/fp16 are measured only with --device cuda; skipped on CPU ({units}). "
            "The project runs in fp32 on CPU.")


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def print_table(results: list[dict[str, Any]]) -> None:
    head = (f"{'config':<6} {'dtype':<5} {'backend':<7} {'median s':>9} {'min s':>8} {'user s':>7} "
            f"{'sys s':>6} {'peak +MiB':>10} {'peak MiB':>9} {'max|diff|':>10}")
    print()
    print(head)
    print("-" * len(head))
    for r in results:
        for b in BACKENDS:
            s = r[b]
            diff = f"{r['check']['max_abs_diff']:.2e}" if b == "naive" else ""
            tag = f"{r['config']:<6} {r['dtype']:<5} {b:<7}"
            inc, tot = s["peak_increase_max_bytes"] / MiB, s["peak_max_bytes"] / MiB
            print(f"{tag} {s['time_median_s']:>9.3f} {s['time_min_s']:>8.3f} {s['user_median_s']:>7.2f} "
                  f"{s['sys_median_s']:>6.2f} {inc:>10.1f} {tot:>9.1f} {diff:>10}")
        tag = f"{r['config']:<6} {r['dtype']:<5} {'naive/sdpa':<10}"
        print(f"{tag} time x{r['time_ratio']:.2f} (min x{r['time_ratio_min']:.2f}, CPU time "
              f"x{r['cpu_time_ratio']:.2f}), forward peak x{r['mem_ratio']:.2f}: sdpa saves "
              f"{r['mem_saving']:.1%} of the forward's peak memory ({r['mem_saving_total']:.1%} of the "
              "process peak)")
    print()
    print("median/min s: wall time of one forward; user/sys s: CPU seconds of the process per forward "
          "(median, all\nthreads; sys is mostly page faults on fresh tensor memory); peak +MiB: peak "
          "memory of the forward above\nwhat was in use before it (weights, inputs); peak MiB: the "
          "absolute peak, weights included (CPU: RSS of\nthe whole process); max|diff|: "
          "max|out_sdpa - out_naive|, relative to max|out|: "
          + ", ".join(f"{r['config']}/{r['dtype']} {r['check']['rel_diff']:.1e}" for r in results) + ".")


def verdict(results: list[dict[str, Any]]) -> dict[str, Any]:
    full = [r for r in results if r["config"] == "full"]
    if not full:
        print("VERDICT: no full-size run (--config full|both needed to check the targets)")
        return {"checked": False}
    checks = []
    for r in full:
        fast = r["time_ratio"] >= TARGET_SPEEDUP
        lean = r["mem_saving"] >= TARGET_MEM_SAVING
        # fp32 must agree to float rounding; in bf16/fp16 the two backends round differently (naive
        # keeps scores in fp32), so there the difference is reported and only has to be finite
        agree = r["check"]["finite"] and (r["dtype"] != "fp32" or r["check"]["rel_diff"] < 1e-4)
        checks.append({"dtype": r["dtype"], "speedup": r["time_ratio"], "speedup_met": fast,
                       "mem_saving": r["mem_saving"], "mem_met": lean, "outputs_agree": agree})
        print(f"VERDICT full/{r['dtype']}: sdpa {r['time_ratio']:.2f}x faster than naive "
              f"(target >= {TARGET_SPEEDUP}x: {'MET' if fast else 'NOT MET'}), {r['mem_saving']:.1%} less "
              f"peak forward memory (target >= {TARGET_MEM_SAVING:.0%}: {'MET' if lean else 'NOT MET'}), "
              f"outputs {'agree' if agree else 'DISAGREE'} (rel. max diff {r['check']['rel_diff']:.1e})")
    ok = all(c["speedup_met"] and c["mem_met"] and c["outputs_agree"] for c in checks)
    print(f"VERDICT: targets {'MET' if ok else 'NOT MET'} for the full-size 4-view forward")
    return {"checked": True, "met": ok, "per_dtype": checks}


# --------------------------------------------------------------------------------------------- main

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=("full", "tiny", "both"), default="both")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed forwards per backend (default 3 for full, 10 for tiny)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--dtypes", default="fp32",
                   help="comma-separated subset of fp32,bf16,fp16 (fp32 always runs; others need cuda)")
    p.add_argument("--json", type=Path, default=None, help="also write all measurements to this JSON file")
    # internal: run one config in this process and write its results (see run_in_subprocess)
    p.add_argument("--worker", choices=tuple(CONFIGS), default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        p.error("--repeats must be >= 1")
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    bad = sorted(set(dtypes) - set(DTYPES))
    if bad:
        p.error(f"unknown dtypes {bad}; choose from {sorted(DTYPES)}")
    args.dtypes = ["fp32"] + [d for d in dict.fromkeys(dtypes) if d != "fp32"]
    if args.worker is not None and args.worker_out is None:
        p.error("--worker needs --worker-out")
    return args


def worker(args: argparse.Namespace) -> int:
    device = torch.device(args.device)
    if device.type == "cuda":
        # full fp32 matmuls, so that the fp32 sdpa/naive comparison means what it says
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    results = run_config(args.worker, args.repeats, device, args.dtypes)
    args.worker_out.write_text(json.dumps(results))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        return worker(args)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: CUDA is not available in this torch build / machine", file=sys.stderr)
        return 2
    dtypes = args.dtypes
    if args.device == "cpu":
        if len(dtypes) > 1:
            print(cpu_bf16_note())
        dtypes = ["fp32"]
        meter_method = CpuPeakMeter().method
        if LIBC.lib is None:
            print("warning: no glibc mallopt here; CPU peak-memory figures may under-read")
    else:
        meter_method = CudaPeakMeter.method
    env = {
        "torch": torch.__version__, "python": platform.python_version(), "device": args.device,
        "device_name": torch.cuda.get_device_name(0) if args.device == "cuda" else cpu_name(),
        "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(), "memory_method": meter_method,
        "loadavg_before": os.getloadavg(),
    }
    print(f"torch {env['torch']} on {env['device']} ({env['device_name']}), {env['threads']} threads, "
          f"load average {env['loadavg_before'][0]:.2f}; peak memory: {meter_method}; "
          "one fresh process per config", flush=True)
    names = ["full", "tiny"] if args.config == "both" else [args.config]
    results: list[dict[str, Any]] = []
    loads: list[float] = []  # 1-minute load average every 5 s while the workers run
    done = threading.Event()

    def watch_load() -> None:
        while not done.wait(5.0):
            loads.append(os.getloadavg()[0])

    watcher = threading.Thread(target=watch_load, daemon=True)
    watcher.start()
    try:
        for name in names:
            results.extend(run_in_subprocess(name, args, dtypes))
    finally:
        done.set()
        watcher.join()
    env["loadavg_after"] = os.getloadavg()
    env["loadavg_during_median"] = statistics.median(loads) if loads else env["loadavg_after"][0]
    print_table(results)
    load = env["loadavg_during_median"]
    print(f"load average during the run (median of 1-minute values): {load:.2f} on {env['cpu_count']} "
          f"cores, of which this benchmark accounts for about {env['threads']}; other load inflates and "
          "scatters the times.")
    env["contended"] = load > env["threads"] + 0.5
    if env["contended"]:
        print(f"WARNING: load average {load:.1f} with {env['threads']} threads of ours: other processes "
              "competed for the CPU, so the times and the speed verdict below are unreliable; rerun on an "
              "idle machine. The memory figures do not depend on load.")
    v = verdict(results)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"env": env, "results": results, "verdict": v}, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
