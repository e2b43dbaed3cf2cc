"""What the web app's long jobs show while they run: named stages, units done, and estimates from the rate
measured so far. UI-free (no gradio): the handlers put :meth:`JobProgress.text` into a status line.

A job runs through stages (the text-to-3D preview, the optimisation, the export's stages, ...); each stage
counts its units (sampling steps, optimisation steps, frames). The time left in a stage is estimated from
the stage's own units: the first unit is not counted (it carries one-off work: caches, allocation), so an
estimate appears from the second unit on and uses the mean time of the last :data:`RATE_WINDOW` units.
A stage of one piece of work (marching cubes) shows how long it has been running.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field

RATE_WINDOW = 20  # units whose mean time gives the rate (the rate of a run changes with its resolution)
BAR_WIDTH = 24


def duration(seconds: float) -> str:
    """``seconds`` as people say it: "8 s", "2 min 05 s", "1 h 04 min"."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def bar(fraction: float, width: int = BAR_WIDTH) -> str:
    """A text progress bar, e.g. ``▰▰▰▰▱▱▱▱``, ``fraction`` in [0, 1]."""
    filled = int(math.floor(min(1.0, max(0.0, fraction)) * width + 1e-9))
    return "▰" * filled + "▱" * (width - filled)


@dataclass
class Stage:
    """One stage of a job: ``done`` of ``total`` units (``unit``: "steps", "frames"; "" for one piece of work)."""

    name: str
    total: int = 1
    unit: str = "steps"
    done: int = 0
    started: float = field(default_factory=lambda: time.monotonic())
    times: deque = field(default_factory=lambda: deque(maxlen=RATE_WINDOW + 1))  # when units finished

    @property
    def seconds_per_unit(self) -> float | None:
        """Mean time of the last units (not the stage's first); None before two units are done."""
        if len(self.times) < 2:
            return None
        return (self.times[-1] - self.times[0]) / (len(self.times) - 1)

    @property
    def seconds_left(self) -> float | None:
        rate = self.seconds_per_unit
        return None if rate is None else rate * max(0, self.total - self.done)


class JobProgress:
    """Thread-safe progress of one job: a title, the current stage, what comes next.

    ``plan`` names the stages the job goes through, in order, so the text can say "stage 2 of 4" and what
    follows. :meth:`stage` enters a stage (also one not in the plan: it is shown without a number),
    :meth:`update` reports units done in it.
    """

    def __init__(self, title: str, plan: list[str] | tuple[str, ...] = ()) -> None:
        self.title = title
        self.plan = list(plan)
        self.started = time.monotonic()
        self.current: Stage | None = None
        self.note = ""  # a line under the bar (loss, the run waited for, ...)
        self.history: list[tuple[str, float]] = []  # (stage, seconds) of the stages done
        self._lock = threading.Lock()

    def stage(self, name: str, total: int = 1, unit: str = "steps", done: int = 0) -> None:
        """Enter stage ``name`` of ``total`` units, ``done`` of them already (a resumed run)."""
        with self._lock:
            self._close_stage()
            self.current = Stage(name, max(1, int(total)), unit, int(done))
            self.note = ""

    def finish(self) -> None:
        """The job has ended: the current stage goes into :attr:`history`."""
        with self._lock:
            self._close_stage()
            self.current = None

    def _close_stage(self) -> None:
        if self.current is not None:
            self.history.append((self.current.name, time.monotonic() - self.current.started))

    def summary(self, skip: tuple[str, ...] = ("starting", "waiting")) -> str:
        """Where the time went: "multi-view preview 2 s, optimisation 1 min 05 s, ..." (stages done, in order)."""
        with self._lock:
            done = [(n, t) for n, t in self.history if n not in skip]
        return ", ".join(f"{n} {duration(t) if t >= 1 else f'{t:.1f} s'}" for n, t in done)

    def update(self, done: int, total: int | None = None, note: str | None = None) -> None:
        """``done`` units of the current stage are finished (``total`` may change, e.g. a longer run)."""
        now = time.monotonic()
        with self._lock:
            st = self.current
            if st is None:
                return
            if total is not None:
                st.total = max(1, int(total))
            if done > st.done:
                st.times.append(now)
            st.done = int(done)
            if note is not None:
                self.note = note

    def set_note(self, note: str) -> None:
        with self._lock:
            self.note = note

    def snapshot(self) -> dict:
        """The current state as plain values: stage, done, total, unit, seconds per unit and left, elapsed."""
        with self._lock:
            st = self.current
            now = time.monotonic()
            if st is None:
                return {"title": self.title, "stage": None, "elapsed": now - self.started}
            return {"title": self.title, "stage": st.name, "done": st.done, "total": st.total, "unit": st.unit,
                    "seconds_per_unit": st.seconds_per_unit, "seconds_left": st.seconds_left,
                    "stage_elapsed": now - st.started, "elapsed": now - self.started, "note": self.note,
                    "index": self.plan.index(st.name) + 1 if st.name in self.plan else None,
                    "next": self._next(st.name)}

    def _next(self, name: str) -> str | None:
        if name not in self.plan:
            return None
        i = self.plan.index(name)
        return self.plan[i + 1] if i + 1 < len(self.plan) else None

    def text(self) -> str:
        """Markdown for a status line: title, stage k of n, bar, units, rate, time left, elapsed, note, next."""
        s = self.snapshot()
        if s["stage"] is None:
            return f"**{s['title']}**: starting ... ({duration(s['elapsed'])})"
        where = f" (stage {s['index']} of {len(self.plan)})" if s["index"] else ""
        lines = [f"**{s['title']}**: {s['stage']}{where}"]
        if s["unit"]:
            rate, left, one = s["seconds_per_unit"], s["seconds_left"], s["unit"].rstrip("s")
            pace = (f"{rate:.2f} s/{one}, about {duration(left)} left in this stage"
                    if rate is not None and left is not None else "measuring the speed ...")
            lines.append(f"`{bar(s['done'] / s['total'])}` {one} {s['done']}/{s['total']}: {pace}")
        else:
            lines.append(f"running for {duration(s['stage_elapsed'])}")
        tail = f"elapsed {duration(s['elapsed'])}"
        if s["next"]:
            tail += f"; next: {s['next']}"
        lines.append(tail)
        if s["note"]:
            lines.append(s["note"])
        return "\n\n".join(lines)
