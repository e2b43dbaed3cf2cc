"""Image decoding for the training data: load_image (crop, premultiplied resize, background), the
background colour spec, and :class:`DataWarning` for recoverable data problems."""

from __future__ import annotations

import io
import os
import struct
import tarfile
import warnings
import zlib
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageOps

__all__ = ["IMAGE_EXTENSIONS", "Background", "DataWarning", "load_image"]

IMAGE_EXTENSIONS: tuple[str, ...] = ("png", "jpg", "jpeg", "webp")

# Everything image decoding / metadata parsing can raise on bad files (PIL raises a zoo of these).
_LOAD_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ValueError,
    KeyError,
    IndexError,
    TypeError,
    SyntaxError,
    EOFError,
    struct.error,
    zlib.error,
    tarfile.TarError,
    Image.DecompressionBombError,
)


class DataWarning(UserWarning):
    """Skipped assets / corrupt items and other recoverable data problems."""


def _warn(message: str) -> None:
    warnings.warn(message, DataWarning, stacklevel=3)


Background = str | Sequence[float]
_NAMED_BACKGROUNDS = {"white": 1.0, "black": 0.0, "gray": 0.5, "grey": 0.5}


def _parse_background(background: Background) -> np.ndarray | str:
    """``"random"`` or a (3,) float32 colour in [0, 1]."""
    if isinstance(background, str):
        name = background.lower()
        if name == "random":
            return "random"
        if name in _NAMED_BACKGROUNDS:
            return np.full(3, _NAMED_BACKGROUNDS[name], dtype=np.float32)
        raise ValueError(
            f"background must be 'white', 'black', 'gray', 'random' or 3 floats in [0, 1], got {background!r}"
        )
    try:
        colour = np.asarray(background, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"background must be a name or 3 floats in [0, 1], got {background!r}") from None
    if colour.shape != (3,) or not np.all(np.isfinite(colour)) or colour.min() < 0 or colour.max() > 1:
        raise ValueError(f"background colour must be 3 floats in [0, 1] (r, g, b), got {background!r}")
    return colour.astype(np.float32)


def _background_colour(spec: np.ndarray | str, rng: np.random.Generator) -> np.ndarray:
    if isinstance(spec, str):  # "random"
        return rng.random(3).astype(np.float32)
    return spec


def _check_size(image_size: int) -> int:
    size = int(image_size)
    if size < 1 or size != image_size:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
    return size


def load_image(
    source: str | os.PathLike | bytes,
    size: int,
    background: Sequence[float] | np.ndarray = (1.0, 1.0, 1.0),
    exif_transpose: bool = False,
) -> np.ndarray:
    """Decode an image, composite it on ``background`` and resize it to a ``size`` x ``size`` square.

    Non-square images are centre-cropped to a square first. Resizing is antialiased (PIL bicubic, whose
    kernel is widened by the downscale factor). Images with alpha (RGBA, LA, palette or RGB with a
    transparent colour) are resized premultiplied and then composited ``rgb + background * (1 - alpha)``
    in float, so a fully transparent pixel becomes exactly the background colour and transparent
    pixels never bleed their (arbitrary) colour into the object's edges.

    Args:
        source: a path or the encoded bytes.
        size: output side in pixels.
        background: (r, g, b) in [0, 1].
        exif_transpose: apply the EXIF orientation (photos); renders do not need it.

    Returns:
        (3, size, size) float32 array in [-1, 1].

    Raises:
        whatever PIL raises for unreadable data (``OSError`` / ``PIL.UnidentifiedImageError`` mostly).
    """
    bg = np.asarray(background, dtype=np.float32).reshape(3)
    fp = io.BytesIO(source) if isinstance(source, bytes | bytearray | memoryview) else source
    with Image.open(fp) as img:
        if img.format == "JPEG":
            img.draft("RGB", (2 * size, 2 * size))  # DCT-domain downscale, still >= 2x the target
        img.load()
        im = ImageOps.exif_transpose(img) if exif_transpose else img
        w, h = im.size
        if w != h:
            s = min(w, h)
            left, top = (w - s) // 2, (h - s) // 2
            im = im.crop((left, top, left + s, top + s))
        bands = im.getbands()
        has_alpha = "A" in bands or "a" in bands or "transparency" in im.info
        if has_alpha:
            if im.mode != "RGBa":
                im = (im if im.mode == "RGBA" else im.convert("RGBA")).convert("RGBa")
        elif im.mode != "RGB":
            im = im.convert("RGB")
        if im.size != (size, size):
            im = im.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)
        arr = np.asarray(im, dtype=np.float32) * (1.0 / 255.0)
    if has_alpha:  # premultiplied colour + background * (1 - alpha)
        out = arr[..., :3] + bg * (1.0 - arr[..., 3:4])
    else:
        out = arr
    out = np.clip(out * 2.0 - 1.0, -1.0, 1.0)
    return np.ascontiguousarray(out.transpose(2, 0, 1))
