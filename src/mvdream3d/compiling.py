"""Opt-in ``torch.compile`` (``--compile``): the check that it can run here, and in-place compilation of modules.

``torch.compile`` (TorchInductor) turns a module's forward into generated kernels: C++ on the CPU (it needs a
C++ compiler: ``g++`` or ``clang++``, or the one named by ``$CXX``), Triton on CUDA GPUs (the ``triton``
package). The first call of each input shape compiles (tens of seconds to minutes); later calls with the same
shapes reuse the compiled code, so the warm-up is paid once per run: once for ``generate``'s sampling loop
(every step has the same shapes), once (per batch shape) for a text-to-3D run's thousands of guidance steps.

Modules are compiled in place (``nn.Module.compile``): their parameters, ``state_dict`` and attributes stay
as they are, and compiling twice is a no-op. The numbers are those of eager mode up to the order of floating
point operations (within 1e-5 on the tiny random model; ``tests/test_compiling.py``).
"""

from __future__ import annotations

import importlib.util

import torch
from torch import nn

__all__ = ["CompileUnavailableError", "check_compile_support", "compile_in_place", "is_compiled"]


class CompileUnavailableError(ValueError):
    """``torch.compile`` cannot run on this machine; the message says why and what to install
    (a ValueError, so that the command line reports it as one ``error:`` line)."""


def _cpp_compiler() -> str | None:
    """The C++ compiler TorchInductor would use on the CPU, or None when it finds none."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        return get_cpp_compiler()
    except Exception:  # InvalidCxxCompiler, or an import error of a build without inductor
        return None


def check_compile_support(device: str | torch.device = "cpu") -> None:
    """Raise :class:`CompileUnavailableError` naming the cause and the fix when ``torch.compile`` cannot run
    for ``device`` here: a Python version TorchDynamo does not support, no C++ compiler (CPU) or no Triton
    (CUDA). Returns None when it can."""
    device = torch.device(device)
    if not hasattr(torch, "compile"):
        raise CompileUnavailableError(f"--compile needs torch.compile (PyTorch >= 2.0); this is torch "
                                      f"{torch.__version__}. Upgrade PyTorch or run without --compile")
    try:
        from torch._dynamo.eval_frame import check_if_dynamo_supported

        check_if_dynamo_supported()
    except Exception as e:  # RuntimeError naming the unsupported Python version, or a missing module
        raise CompileUnavailableError(f"--compile: torch.compile does not work with this Python / PyTorch ({e}). "
                                      "Run without --compile, or use a Python version this PyTorch supports "
                                      "for torch.compile") from e
    if device.type == "cpu" and _cpp_compiler() is None:
        raise CompileUnavailableError(
            "--compile on the CPU needs a C++ compiler for TorchInductor's generated kernels, and none was found "
            "(tried $CXX and g++). Install one (Debian/Ubuntu: apt-get install g++; conda: conda install gxx) "
            "or set CXX to its path, or run without --compile")
    if device.type == "cuda" and importlib.util.find_spec("triton") is None:
        raise CompileUnavailableError("--compile on a CUDA GPU needs the triton package (pip install triton, the "
                                      "version that matches your PyTorch), or run without --compile")


def is_compiled(module: nn.Module) -> bool:
    """Whether ``module`` was compiled in place (``nn.Module.compile``)."""
    return getattr(module, "_compiled_call_impl", None) is not None


def compile_in_place(module: nn.Module) -> nn.Module:
    """Compile ``module``'s forward in place (``nn.Module.compile``, static shapes: each new input shape compiles
    once, then runs compiled) unless it already is; returns ``module``. Call :func:`check_compile_support`
    first for a clear error where compiling cannot work."""
    if not is_compiled(module):
        module.compile(dynamic=False)
    return module
