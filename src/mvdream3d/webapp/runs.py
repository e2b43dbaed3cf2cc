"""The web app's output folder: one sub-folder per run, described by its ``run.json``.

Layout: ``OUT/<kind>/<YYYYmmdd-HHMMSS>-<id>-<prompt slug>/`` with ``kind`` one of :data:`KINDS`; ``run.json``
holds the kind, prompt, settings, creation time and status (``running``, ``done``, ``stopped``, ``failed``).
Run ids (``kind/name``) come from the page, so :func:`find_run` accepts only ids of existing runs inside
the output folder.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..files import atomic_write_text

KINDS = ("generate", "text-to-3d", "dreambooth")
RUN_FILE = "run.json"
_NAME = re.compile(r"^[0-9]{8}-[0-9]{6}-[0-9a-f]{6}(-[a-z0-9-]{1,40})?$")
# the picture shown for a run in the gallery, best first
THUMBNAILS = ("grid.png", "views.png", "progress.png", "preview.png")


@dataclass
class Run:
    """A finished or running job of the web app: ``id`` is ``kind/name``; ``info`` the content of run.json."""

    id: str
    dir: Path
    info: dict[str, Any]

    @property
    def kind(self) -> str:
        return self.id.split("/", 1)[0]

    @property
    def thumbnail(self) -> Path | None:
        for name in THUMBNAILS:
            if (self.dir / name).is_file():
                return self.dir / name
        return None

    @property
    def label(self) -> str:
        status = self.info.get("status", "?")
        return f"{self.kind}: {self.info.get('prompt', '')} ({self.info.get('created', '')}, {status})"


def slug(text: str, length: int = 40) -> str:
    """A file-name-safe short form of ``text`` (lowercase letters, digits and dashes)."""
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return s[:length].strip("-") or "run"


def new_run(out_dir: str | os.PathLike, kind: str, prompt: str, settings: dict[str, Any]) -> Run:
    """Create the folder of a new run and its run.json (status ``running``)."""
    if kind not in KINDS:
        raise ValueError(f"unknown run kind {kind!r}")
    name = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}-{slug(prompt)}"
    folder = Path(out_dir) / kind / name
    folder.mkdir(parents=True)
    info = {"kind": kind, "prompt": prompt, "settings": settings, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
            "status": "running", "started_at": time.time()}
    run = Run(f"{kind}/{name}", folder, info)
    _write(run)
    return run


def update_run(run: Run, **fields: Any) -> Run:
    """Merge ``fields`` (status, files, message, ...) into the run's run.json; a final status (not
    ``running``) also records ``finished_at``."""
    run.info.update(fields)
    if fields.get("status", "running") != "running":
        run.info["finished_at"] = time.time()
    _write(run)
    return run


def _write(run: Run) -> None:
    atomic_write_text(run.dir / RUN_FILE, json.dumps(run.info, indent=1, default=str))


def _read(folder: Path, kind: str) -> Run | None:
    try:
        info = json.loads((folder / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None
    return Run(f"{kind}/{folder.name}", folder, info) if isinstance(info, dict) else None


def list_runs(out_dir: str | os.PathLike, kinds: tuple[str, ...] = KINDS, limit: int = 200) -> list[Run]:
    """The runs under ``out_dir``, newest first (the folder names start with their creation time)."""
    found = []
    for kind in kinds:
        base = Path(out_dir) / kind
        if base.is_dir():
            found += [(p.name, kind, p) for p in base.iterdir() if p.is_dir() and _NAME.match(p.name)]
    runs = [r for r in (_read(p, kind) for _, kind, p in sorted(found, reverse=True)[:limit]) if r is not None]
    # names order by the second; runs started within the same second order by their start time
    return sorted(runs, key=lambda r: (r.dir.name[:15], float(r.info.get("started_at") or 0.0)), reverse=True)


def find_run(out_dir: str | os.PathLike, run_id: str) -> Run:
    """The run with id ``kind/name``; ValueError for anything that is not such an id under ``out_dir``."""
    kind, _, name = str(run_id).partition("/")
    if kind not in KINDS or not _NAME.match(name):
        raise ValueError(f"no run {run_id!r}: pick one from the gallery")
    run = _read(Path(out_dir) / kind / name, kind)
    if run is None:
        raise ValueError(f"no run {run_id!r} in this server's output folder")
    return run
