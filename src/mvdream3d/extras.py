"""Optional dependencies (pip extras): a clear error naming the extra when one is missing.

``train``: peft (``dreambooth --train lora``), tensorboard (TensorBoard logs of ``train``);
``ui``: gradio (``serve``); ``dev``: pytest, ruff, selenium, gradio_client (the test suite).
"""

from __future__ import annotations

import importlib.util


class MissingExtraError(ImportError, ValueError):
    """An optional package is not installed; the message names the ``pip install 'mvdream3d[EXTRA]'`` fix.
    A ValueError too, so that the command line reports it as one ``error:`` line."""


def has_module(module: str) -> bool:
    """Whether ``module`` (a top-level package name) can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(module: str, extra: str, purpose: str) -> None:
    """Raise :class:`MissingExtraError` unless ``module`` is installed."""
    if not has_module(module):
        raise MissingExtraError(f"{purpose} needs the package {module!r}, which is not installed: "
                                f"pip install 'mvdream3d[{extra}]'")
