"""What the user sees when something goes wrong, shared by the command line, the web app and the library.

A *user error* is one the user can fix (a bad argument or config value, a missing or mismatched checkpoint,
an unwritable output folder, a missing optional package): the command line prints it as one ``error: ...``
line and exits with status 2, the web app shows its message on the page; anything else is a bug and keeps
its traceback. Each message names the problem and the fix. Warnings of a long command are shown as one
``warning: ...`` line each (:func:`print_warnings_plainly`).

Nothing here imports more than the standard library: ``mvdream3d --help`` imports this module.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Iterator

__all__ = ["USER_ERRORS", "CheckpointError", "ConfigError", "MissingExtraError", "OutputDirError",
           "is_user_error", "print_warnings_plainly"]


class ConfigError(ValueError):
    """A config key (training, text-to-3D, DreamBooth) is unknown or has a bad value."""


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or does not fit the model config."""


class OutputDirError(PermissionError, ValueError):
    """An output folder cannot be created or written (a user error: choose another --out)."""


class MissingExtraError(ImportError, ValueError):
    """An optional package is not installed; the message names the ``pip install 'mvdream3d[EXTRA]'`` fix.
    A ValueError too, so that the command line reports it as one ``error:`` line."""


#: The exceptions reported as a message (``error: ...`` on the command line, a page message in the web app).
USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError, ValueError, FileNotFoundError, PermissionError, CheckpointError, NotADirectoryError,
    FloatingPointError,
)


def is_user_error(e: BaseException) -> bool:
    """Whether ``e`` is reported as a message rather than as an internal error with a traceback."""
    return isinstance(e, USER_ERRORS)


@contextlib.contextmanager
def print_warnings_plainly(*always: type[Warning]) -> Iterator[None]:
    """Show warnings as one ``warning: ...`` line on stderr (through tqdm, so progress bars stay whole) while
    the block runs; the categories in ``always`` are shown every time, not once per place."""
    from tqdm.auto import tqdm

    with warnings.catch_warnings():
        for category in always:
            warnings.simplefilter("always", category)
        warnings.showwarning = lambda message, *a, **k: tqdm.write(f"warning: {message}", file=sys.stderr)
        yield
