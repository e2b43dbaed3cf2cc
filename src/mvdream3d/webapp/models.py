"""The model picker's entries and the cache of loaded models shared by the web app's tabs.

A picker value is a short string that names no server path: a model name (``mvdream3d-tiny``,
``tiny-random``, a published name), ``file:<name>`` for a checkpoint given at start (``--model PATH``) or
found in ``--models-dir``, or ``dreambooth:<run>`` for a DreamBooth result of this server. The
registry maps values to the references :func:`mvdream3d.models.loading.resolve_model` takes and keeps the most
recently used models loaded (one load per reference, shared by every tab).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

import torch

from ..models.loading import resolve_model
from ..models.model import MVDreamModel
from .runs import list_runs

MODEL_SUFFIXES = (".safetensors", ".pt", ".ckpt")
TINY_RANDOM = "tiny-random"


class ModelRegistry:
    """Picker entries (built-ins, files, DreamBooth results) and an LRU cache of loaded models."""

    def __init__(self, out_dir: str | os.PathLike, models: list[str] | tuple[str, ...] = (),
                 models_dir: str | os.PathLike | None = None, device: str = "auto", max_loaded: int = 2) -> None:
        from ..builtin import DEFAULT_MODEL, builtin_weights_path

        self.out_dir = Path(out_dir)
        self.models_dir = Path(models_dir) if models_dir else None
        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                                   ("cpu" if device == "auto" else device))
        self.max_loaded = max(1, max_loaded)
        self._given: dict[str, str] = {}  # picker value -> reference, in order
        for ref in models:
            if os.path.isfile(ref) or os.path.isdir(ref):
                self._given[f"file:{Path(ref).name}"] = os.path.abspath(ref)
            else:
                self._given[str(ref)] = str(ref)
        if builtin_weights_path(DEFAULT_MODEL) is not None:
            self._given.setdefault(DEFAULT_MODEL, DEFAULT_MODEL)
        self._given.setdefault(TINY_RANDOM, TINY_RANDOM)
        self._loaded: OrderedDict[str, MVDreamModel] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def default(self) -> str:
        """The first model given at start (else the built-in one, else tiny-random)."""
        return next(iter(self._given))

    def _entries(self) -> dict[str, tuple[str, str]]:
        """value -> (label, reference) of every model the picker offers now."""
        entries = {v: (v[5:] if v.startswith("file:") else v, ref) for v, ref in self._given.items()}
        if TINY_RANDOM in entries:
            entries[TINY_RANDOM] = ("tiny-random (random weights, for tests)", TINY_RANDOM)
        if self.models_dir is not None and self.models_dir.is_dir():
            for p in sorted(self.models_dir.iterdir()):
                if p.is_file() and p.suffix in MODEL_SUFFIXES:
                    entries.setdefault(f"file:{p.name}", (p.name, str(p.resolve())))
        for run in list_runs(self.out_dir, kinds=("dreambooth",)):
            if run.info.get("status") == "done" and run.info.get("model_file"):
                name = run.id.split("/", 1)[1]
                entries[f"dreambooth:{name}"] = (f"DreamBooth: {run.info.get('prompt', name)} ({name[:15]})",
                                                 str(run.dir.resolve()))
        return entries

    def choices(self) -> list[tuple[str, str]]:
        """(label, value) pairs for a gr.Dropdown."""
        return [(label, value) for value, (label, _) in self._entries().items()]

    def reference(self, value: str | None) -> str:
        """The resolve_model reference of a picker value; ValueError for a value the picker does not offer."""
        value = value or self.default
        entries = self._entries()
        if value not in entries:
            raise ValueError(f"unknown model {value!r}: pick one from the list (a model file must be given when "
                             f"the server starts, with --model PATH or --models-dir DIR)")
        return entries[value][1]

    def get(self, value: str | None) -> MVDreamModel:
        """The loaded model of a picker value (loaded once, then shared)."""
        ref = self.reference(value)
        with self._lock:
            if ref in self._loaded:
                self._loaded.move_to_end(ref)
                return self._loaded[ref]
        model = resolve_model(ref).to(self.device).eval()
        self.put(ref, model)
        return model

    def put(self, ref: str, model: MVDreamModel) -> None:
        """Keep ``model`` as the loaded model of reference ``ref`` (e.g. one DreamBooth just trained)."""
        with self._lock:
            self._loaded[ref] = model
            self._loaded.move_to_end(ref)
            while len(self._loaded) > self.max_loaded:
                self._loaded.popitem(last=False)

    def loaded(self) -> list[str]:
        """References of the models in memory, least recently used first."""
        with self._lock:
            return list(self._loaded)
