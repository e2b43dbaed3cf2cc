"""A local build cache of TorchScript traces of frozen library networks, so that later runs skip the library.

The built-in model runs two frozen networks that come from Hugging Face libraries: the VAE decoder
(diffusers' ``AutoencoderKL``) and the MiniLM sentence encoder (transformers' ``BertModel``). Importing those
libraries takes several seconds, far more than running the networks. So the first run that decodes (or
encodes text) with a given set of weights builds the library module as usual, traces it with
``torch.jit.trace``, checks the trace against the module on the run's inputs and on inputs of another batch size
(largest absolute difference within a few units of the dtype's precision, 0 in practice), and writes it here;
later runs load the trace with ``torch.jit.load`` (no diffusers, no transformers, no ``torch._dynamo``) and
build the library module only if something needs it (encoding, training, state dicts, conversion, ...).

What the cache is, and is not:

- a *local build cache*: it only holds files this module wrote itself, traced from the user's own local weights.
  It is never a download or exchange format, and no TorchScript file given by a user is ever loaded: a file is
  only read from the path its key names inside the cache folder.
- Folder: ``$MVDREAM3D_CACHE_DIR``, else ``$XDG_CACHE_HOME/mvdream3d/traced``, else ``~/.cache/mvdream3d/traced``.
  Deleting it is always safe (the next run rebuilds what it needs).
- Key: sha256 over the network's weights (names, shapes, dtypes, bytes, in name order), its config, the torch
  version, the library's version and :data:`FORMAT_VERSION`, so other weights, another dtype or other versions
  never reuse a trace.
- Writes are atomic (:func:`mvdream3d.files.atomic_write`); an unreadable or corrupt file is ignored with a
  warning (:class:`TraceCacheWarning`) and rebuilt.
- ``MVDREAM3D_TRACE_CACHE=0`` turns it off: every network is then the library's module, exactly as without the
  cache. It is off on Python 3.14+, where ``torch.jit.trace`` is unsupported.
- CPU only: a network on another device runs the library module as before.

TorchScript is deprecated in torch (kept for inference); should it stop working, every trace or load failure
falls back to the library module with a warning, so results never depend on it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

#: Bumped whenever what is traced or how it is keyed changes: old files are then simply not found again.
FORMAT_VERSION = 1
ENABLE_ENV = "MVDREAM3D_TRACE_CACHE"
DIR_ENV = "MVDREAM3D_CACHE_DIR"

__all__ = ["DIR_ENV", "ENABLE_ENV", "FORMAT_VERSION", "DeferredLibraryModule", "TraceCacheWarning", "cache_dir",
           "cache_enabled", "cache_key", "load_trace", "run_trace", "trace_checked", "trace_path", "weights_digest"]


class TraceCacheWarning(UserWarning):
    """A cached trace could not be read, built or checked: the library module is used (and the file rebuilt)."""


def cache_enabled() -> bool:
    """Whether traces are used and written: not with ``MVDREAM3D_TRACE_CACHE=0`` nor on Python 3.14+."""
    return os.environ.get(ENABLE_ENV, "1").strip() != "0" and sys.version_info < (3, 14)


def cache_dir() -> Path:
    """``$MVDREAM3D_CACHE_DIR``, else ``$XDG_CACHE_HOME/mvdream3d/traced``, else ``~/.cache/mvdream3d/traced``."""
    if os.environ.get(DIR_ENV):
        return Path(os.environ[DIR_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mvdream3d" / "traced"


def weights_digest(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 (hex) over ``state``'s names, shapes, dtypes and bytes, in name order. Tensors must be on the CPU."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        flat = t.contiguous().reshape(-1)
        if flat.numel():
            h.update(memoryview(flat.view(torch.uint8).numpy()))
    return h.hexdigest()


def _library_version(library: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(library)
    except PackageNotFoundError:
        return "none"


def cache_key(kind: str, weights: Mapping[str, torch.Tensor] | str, library: str, config: Any) -> str:
    """The cache key (64 hex digits) of the network ``kind`` ("vae-decoder", "minilm", ...) with these
    ``weights`` (a state dict, or its :func:`weights_digest`) and this ``config`` (JSON-serialisable), built
    with the installed ``library`` (a distribution name, e.g. "diffusers") and torch."""
    digest = weights if isinstance(weights, str) else weights_digest(weights)
    meta = {"format": FORMAT_VERSION, "kind": kind, "torch": torch.__version__, "library": library,
            "library_version": _library_version(library), "config": config, "weights": digest}
    return hashlib.sha256(json.dumps(meta, sort_keys=True, default=str).encode()).hexdigest()


def trace_path(kind: str, key: str) -> Path:
    """Where the trace of ``kind`` with ``key`` lives (it may not exist)."""
    return cache_dir() / f"{kind}-{key}.pt"


def load_trace(path: Path, map_location: str | torch.device = "cpu") -> torch.jit.ScriptModule | None:
    """The trace at ``path`` (a path :func:`trace_path` made), or None when there is none; an unreadable file
    gives a :class:`TraceCacheWarning` and None (the caller then rebuilds it)."""
    if not path.is_file():
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript's; see the module docstring
            return torch.jit.load(str(path), map_location=map_location).eval()
    except Exception as e:  # noqa: BLE001 - any failure means: rebuild it
        warnings.warn(f"ignoring the unreadable trace cache file {path} ({type(e).__name__}: "
                      f"{str(e).splitlines()[0] if str(e) else 'no details'}); it is rebuilt", TraceCacheWarning,
                      stacklevel=2)
        return None


def run_trace(trace: torch.jit.ScriptModule, *inputs: torch.Tensor) -> torch.Tensor:
    """``trace(*inputs)`` without gradients and without TorchScript's graph optimisations (profiling, fusion),
    so it runs the very operations that were traced and checked."""
    with torch.no_grad(), torch.jit.optimized_execution(False):
        return trace(*inputs)


def _max_error(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape or a.dtype != b.dtype:
        return float("inf")
    return float((a.float() - b.float()).abs().max()) if a.numel() else 0.0


def trace_checked(module: nn.Module, example: Sequence[torch.Tensor], checks: Sequence[Sequence[torch.Tensor]],
                  path: Path, what: str, eager_outputs: Sequence[torch.Tensor | None] | None = None) -> bool:
    """Trace ``module`` (called with positional tensors, returning one tensor; ``what`` names it in warnings) on
    ``example``, compare the trace with ``module`` on every input tuple of ``checks`` (``eager_outputs[i]``:
    ``module``'s output for ``checks[i]`` when the caller has it already), and write it to ``path`` atomically
    only if each largest absolute difference is within 4 units of the output dtype's precision (times the
    output's largest magnitude, at least 1). Returns whether it was written; a failure gives a
    :class:`TraceCacheWarning`."""
    from ..files import atomic_write

    try:
        with torch.no_grad(), warnings.catch_warnings():
            for category in (torch.jit.TracerWarning, DeprecationWarning, FutureWarning):  # the library's, not ours
                warnings.simplefilter("ignore", category)
            trace = torch.jit.trace(module, tuple(example), check_trace=False)
            for i, inputs in enumerate(checks):
                want = eager_outputs[i] if eager_outputs is not None and eager_outputs[i] is not None \
                    else module(*inputs)
                got = run_trace(trace, *inputs)
                scale = max(1.0, float(want.float().abs().max())) if want.numel() else 1.0
                tol = 4 * torch.finfo(want.dtype).eps * scale if want.is_floating_point() else 0.0
                err = _max_error(got, want)
                if not err <= tol:
                    warnings.warn(f"not caching the trace of {what}: it differs from the module by "
                                  f"{err:.3g} (> {tol:.3g}) on inputs {[tuple(t.shape) for t in inputs]}",
                                  TraceCacheWarning, stacklevel=2)
                    return False
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(path, suffix=".pt") as tmp:
                torch.jit.save(trace, str(tmp))
        return True
    except Exception as e:  # noqa: BLE001 - the cache is an optimisation: never let it break a run
        warnings.warn(f"could not cache the trace of {what} in {path} ({type(e).__name__}: {e}); the library module "
                      f"is used", TraceCacheWarning, stacklevel=2)
        return False


class DeferredLibraryModule(nn.Module):
    """An ``nn.Module`` whose library submodule (the attribute named by ``_lazy_child``) is built on first use.

    Until then the module is *deferred*: it keeps what building needs (subclasses hold it) and can run from a
    cached trace. Anything that needs the real submodule builds it, transparently: reading the attribute,
    ``parameters()`` / ``buffers()`` / ``modules()`` / ``children()`` and their ``named_`` forms (so
    ``requires_grad_``, ``apply``, ``zero_grad``, optimisers), ``state_dict()``, ``load_state_dict()``.
    Device and dtype moves (``to``, ``half``, ``cuda``, ...) and ``train``/``eval`` do not build it: subclasses
    record them (:meth:`_convert_deferred`) and the built submodule gets them. Subclasses implement
    :meth:`_build_child` (returns the submodule with the recorded device/dtype) and
    :meth:`_convert_deferred`; ``freeze()``-like methods set ``_deferred_frozen``.
    """

    _lazy_child: str = ""

    def __init__(self) -> None:
        super().__init__()
        self._deferred_frozen = False

    @property
    def is_deferred(self) -> bool:
        """True while the library submodule has not been built."""
        return self._lazy_child not in self._modules

    def _build_child(self) -> nn.Module:
        raise NotImplementedError(f"{type(self).__name__} must implement _build_child")

    def _convert_deferred(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement _convert_deferred")

    def _after_build(self) -> None:
        """Called once the submodule is built (subclasses drop what only the deferred state needed)."""

    def materialize(self) -> nn.Module:
        """Build the library submodule now (if not built yet) and return it."""
        name = self._lazy_child
        if name not in self._modules:
            child = self._build_child()
            child.train(self.training)
            if self._deferred_frozen:
                child.requires_grad_(False)
            self.__dict__["_deferred_ready"] = False  # add_module's hasattr must not build it again
            try:
                self.add_module(name, child)
            finally:
                self.__dict__["_deferred_ready"] = True
            self._after_build()
        return self._modules[name]

    def __getattr__(self, name: str) -> Any:
        if name == type(self)._lazy_child and self.__dict__.get("_deferred_ready", False) \
                and name not in self.__dict__["_modules"]:
            return self.materialize()
        return super().__getattr__(name)

    def named_modules(self, memo: set | None = None, prefix: str = "", remove_duplicate: bool = True):
        self.materialize()
        return super().named_modules(memo, prefix, remove_duplicate)

    def named_children(self):
        self.materialize()
        return super().named_children()

    def state_dict(self, *args: Any, **kwargs: Any):
        self.materialize()
        return super().state_dict(*args, **kwargs)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self.materialize()
        super()._load_from_state_dict(*args, **kwargs)

    def train(self, mode: bool = True):
        if self.is_deferred:
            self.training = bool(mode)
            return self
        return super().train(mode)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True):
        if self.is_deferred:
            self._convert_deferred(fn)
            return super()._apply(fn, recurse=False)
        return super()._apply(fn, recurse)
