"""Evaluation prompts: a parser from captions back to attributes, prompt files, the default prompt set.

The grammar is the one :func:`mvdream3d.data.synth.caption_of` writes (case and extra spaces do not
matter)::

    prompt  := object [" and " object] [", " ("front" | "side" | "back") " view"] [", 3d asset"]
    object  := [article] [size] colour shape [" with " [article] [colour] feature]
    article := "a" | "an" | "the" | "one"
    size    := "small" | "large"          colour := a key of synth.COLORS
    shape   := an entry of synth.SHAPES   feature := "nose" | "horn"

Attributes that the prompt leaves open are None (a missing size, a feature without a colour); ground
truth renders draw them at random. ``parse_prompt(caption_of(a)) == a`` for every asset the
generator makes.

A prompt file has one prompt per line; empty lines and lines starting with ``#`` are skipped.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from ..data import synth

__all__ = ["Prompt", "default_prompts_path", "load_prompts", "parse_prompt", "prompt_from_text"]

_ARTICLES = {"a", "an", "the", "one"}
_VIEWS = ("front", "side", "back")


def _object(words: list[str], text: str) -> dict:
    """Attributes of one object phrase (a list of words)."""

    def fail(msg: str) -> ValueError:
        return ValueError(
            f"cannot parse prompt {text!r}: {msg}. Expected e.g. 'a small red cube with a yellow nose' "
            f"(colours: {', '.join(synth.COLORS)}; shapes: {', '.join(synth.SHAPES)}; sizes: "
            f"{', '.join(synth.SIZES)}; features: {', '.join(synth.FEATURES)})"
        )

    if "with" in words:
        k = words.index("with")
        body, tail = words[:k], words[k + 1:]
    else:
        body, tail = words, None
    size, color, shape = _object_body(body, fail)
    a = {"shape": shape, "color": color, "size": size, "feature": None, "feature_color": None}
    if tail is not None:
        feature, fcolor = _object_feature(tail, shape, color, fail)
        a.update(feature=feature, feature_color=fcolor)
    return a


def _object_body(body: list[str], fail: Callable[[str], ValueError]) -> tuple[str | None, str, str]:
    """(size or None, colour, shape) of the words before "with": [article] [size] colour shape."""
    if body and body[0] in _ARTICLES:
        body = body[1:]
    size = None
    if body and body[0] in synth.SIZES:
        size, body = body[0], body[1:]
    if len(body) != 2:
        unknown = [w for w in body if w not in synth.COLORS and w not in synth.SHAPES]
        if unknown:
            raise fail(f"unknown word {unknown[0]!r}")
        raise fail("an object needs one colour followed by one shape")
    color, shape = body
    if color not in synth.COLORS:
        raise fail(f"unknown colour {color!r}" if color not in synth.SHAPES else "the colour comes before the shape")
    if shape not in synth.SHAPES:
        raise fail(f"unknown shape {shape!r}")
    return size, color, shape


def _object_feature(tail: list[str], shape: str, color: str, fail: Callable[[str], ValueError]
                    ) -> tuple[str, str | None]:
    """(feature, its colour or None) of the words after "with": [article] [colour] feature."""
    if tail and tail[0] in _ARTICLES:
        tail = tail[1:]
    fcolor = None
    if len(tail) == 2:
        fcolor, tail = tail[0], tail[1:]
        if fcolor not in synth.COLORS:
            raise fail(f"unknown colour {fcolor!r}")
    if len(tail) != 1 or tail[0] not in synth.FEATURES:
        raise fail(f"unknown feature {' '.join(tail)!r}" if tail else "'with' needs a feature")
    if shape in synth.SHAPES_WITHOUT_FEATURE:
        raise fail(f"a {shape} has no front feature in this world")
    if fcolor is not None and fcolor == color:
        raise fail("the feature's colour must differ from the object's")
    return tail[0], fcolor


def parse_prompt(text: str) -> dict:
    """Attributes (keys ``synth.ATTRIBUTE_KEYS``, plus ``view`` when the prompt names one) of a caption.

    Raises:
        ValueError: the text does not follow the grammar of the module docstring.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError("empty prompt")
    t = text.strip().lower().rstrip(".")
    t = re.sub(r",\s*3d asset$", "", t)
    view = None
    m = re.search(r",\s*(front|side|back) view$", t)
    if m:
        view, t = m.group(1), t[: m.start()]
    words = re.sub(r"[,;]", " ", t).split()
    if not words:
        raise ValueError(f"cannot parse prompt {text!r}: no words")
    a = dict.fromkeys(synth.ATTRIBUTE_KEYS)
    if "and" in words:
        k = words.index("and")
        first, second = _object(words[:k], text), _object(words[k + 1:], text)
        for o in (first, second):
            if o["size"] is not None or o["feature"] is not None:
                raise ValueError(f"cannot parse prompt {text!r}: objects of a pair have no size or feature")
        a.update(shape=first["shape"], color=first["color"], second_shape=second["shape"],
                 second_color=second["color"])
    else:
        a.update(_object(words, text))
    if view is not None:
        a["view"] = view
    return a


@dataclass
class Prompt:
    """One evaluation prompt: its text, attributes and groups."""

    text: str
    attributes: dict
    held_out: bool = False  # uses a 2D-only concept (not in the 3D training set)
    held_out_concepts: list[str] = field(default_factory=list)

    @property
    def has_feature(self) -> bool:
        return self.attributes.get("feature") is not None

    @property
    def groups(self) -> list[str]:
        return ["held_out" if self.held_out else "seen", "with_feature" if self.has_feature else "without_feature"]


def prompt_from_text(
    text: str,
    held_out_colors: Sequence[str] = synth.DEFAULT_HELD_OUT_COLORS,
    held_out_shapes: Sequence[str] = synth.DEFAULT_HELD_OUT_SHAPES,
    where: str = "",
) -> Prompt:
    """Parse one evaluation prompt (a single object: the classifier reads one object per view)."""
    try:
        a = parse_prompt(text)
    except ValueError as e:
        raise ValueError(f"{where}{e}") from None
    if a.get("second_shape"):
        raise ValueError(f"{where}prompt {text!r} describes two objects; the evaluation classifier reads one "
                         "object per view: use single-object prompts")
    concepts = [a["color"], a["shape"]] + ([a["feature_color"]] if a.get("feature_color") else [])
    held = [c for c in concepts if c in held_out_colors or c in held_out_shapes]
    return Prompt(text.strip(), a, bool(held), sorted(set(held)))


def default_prompts_path() -> Path:
    return Path(str(resources.files("mvdream3d").joinpath("evaluation", "prompts.txt")))


def load_prompts(
    source: str | os.PathLike | Sequence[str] | None = None,
    held_out_colors: Sequence[str] = synth.DEFAULT_HELD_OUT_COLORS,
    held_out_shapes: Sequence[str] = synth.DEFAULT_HELD_OUT_SHAPES,
) -> list[Prompt]:
    """Prompts from a file (one per line, ``#`` comments), a list of strings, or the default set (None).

    Raises:
        FileNotFoundError: no such file.
        ValueError: an empty file, an unreadable file, or a line that does not parse.
    """
    if source is None or isinstance(source, str | os.PathLike):
        path = default_prompts_path() if source is None else Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"prompt file not found: {path}" + (" (a directory)" if path.is_dir() else ""))
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"cannot read prompt file {path}: {e}") from e
        lines = [(f"{path}:{i + 1}: ", ln.strip()) for i, ln in enumerate(text.splitlines())]
        lines = [(w, ln) for w, ln in lines if ln and not ln.startswith("#")]
        if not lines:
            raise ValueError(f"prompt file {path} has no prompts (one prompt per line; '#' starts a comment)")
    else:
        lines = [(f"prompt {i + 1}: ", str(p).strip()) for i, p in enumerate(source)]
        if not lines:
            raise ValueError("no prompts given")
    prompts = [prompt_from_text(ln, held_out_colors, held_out_shapes, where) for where, ln in lines]
    seen: set[str] = set()
    dup = [p.text for p in prompts if p.text.lower() in seen or seen.add(p.text.lower())]
    if dup:
        raise ValueError(f"duplicate prompt {dup[0]!r}")
    return prompts
