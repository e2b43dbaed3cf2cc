"""``mvdream3d serve``: a gradio web app for multi-view generation, text-to-3D and DreamBooth.

Needs the optional extra (``pip install "mvdream3d[ui]"``). ``build_app`` returns the page as a
``gr.Blocks``; ``launch_app`` serves it. The UI-free parts (:mod:`.jobs`, :mod:`.models`, :mod:`.runs`,
:mod:`.security`) import without gradio.
"""

from typing import Any

__all__ = ["build_app", "launch_app"]


def __getattr__(name: str) -> Any:
    if name in __all__:  # gradio is imported only when the app is asked for
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
