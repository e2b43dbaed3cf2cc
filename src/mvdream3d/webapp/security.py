"""Checks of what reaches the server from the page: uploaded photos and login settings."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

IMAGE_FORMATS = {"PNG", "JPEG", "WEBP", "BMP"}
MIN_PHOTOS, MAX_PHOTOS = 3, 10
MAX_PHOTO_BYTES = 10 * 1024 * 1024
MAX_PHOTO_PIXELS = 4096 * 4096


def check_photos(paths: Sequence[str | os.PathLike] | None, min_count: int = MIN_PHOTOS,
                 max_count: int = MAX_PHOTOS, max_bytes: int = MAX_PHOTO_BYTES) -> list[Path]:
    """Validate uploaded subject photos: their count, size on disk, format (PNG/JPEG/WebP/BMP, by content,
    not by name) and pixel count. Returns the paths; raises ValueError with a readable reason."""
    from PIL import Image

    files = [Path(p) for p in (paths or [])]
    if not min_count <= len(files) <= max_count:
        raise ValueError(f"upload {min_count}-{max_count} photos of the subject, got {len(files)}")
    for p in files:
        name = p.name
        size = p.stat().st_size
        if size > max_bytes:
            raise ValueError(f"{name} is {size / 2**20:.1f} MB: photos may be at most {max_bytes / 2**20:.0f} MB")
        try:
            with Image.open(p) as im:
                fmt, (w, h) = im.format, im.size
                if fmt not in IMAGE_FORMATS:
                    raise ValueError(f"{name} is a {fmt} file")
                if w * h > MAX_PHOTO_PIXELS:
                    raise ValueError(f"{name} is {w}x{h} pixels: at most {MAX_PHOTO_PIXELS // 10**6} megapixels")
                im.load()
        except (OSError, SyntaxError, Image.DecompressionBombError) as e:
            reason = str(e).replace(str(p), name)  # no server paths on the page
            raise ValueError(f"{name} is not an image (PNG, JPEG, WebP or BMP): {reason}") from e
        except ValueError as e:
            raise ValueError(f"{e}; upload photos (PNG, JPEG, WebP or BMP)") from e
    return files


def copy_photos(files: Sequence[Path], dest: Path) -> Path:
    """Re-encode validated photos as PNG files ``photo_NN.png`` in ``dest`` (drops metadata, keeps alpha)."""
    from PIL import Image

    dest.mkdir(parents=True, exist_ok=True)
    for i, p in enumerate(files):
        with Image.open(p) as im:
            keep = im.mode if im.mode in ("RGB", "RGBA", "L", "LA") else "RGBA"
            im.convert(keep).save(dest / f"photo_{i:02d}.png")
    return dest


def parse_auth(value: str | None) -> list[tuple[str, str]] | None:
    """``user:pass``, or a file with one ``user:pass`` a line (``#`` comments), as gradio's auth list."""
    if not value:
        return None
    lines = Path(value).read_text().splitlines() if os.path.isfile(value) else [value]
    pairs = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, password = line.partition(":")
        if not sep or not user or not password:
            raise ValueError("--auth must be USER:PASSWORD or a file of USER:PASSWORD lines")
        pairs.append((user, password))
    if not pairs:
        raise ValueError(f"--auth file {value} holds no USER:PASSWORD line")
    return pairs
