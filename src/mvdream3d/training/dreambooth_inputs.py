"""Input checks of multi-view DreamBooth: subject photos, the identifier token, the memory a run needs."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
RECOMMENDED_IMAGES = (3, 10)

# Words the model surely has a meaning for: an identifier token should be none of them. A pragmatic list
# (frequent English nouns, adjectives and function words) plus the procedural world's concept names.
COMMON_WORDS = frozenset("""
a an the and or of in on at to for with from by as is are was be it this that these those my your his her its
our their one two three big small large little old new good red green blue yellow orange purple white black
pink cyan brown grey gray gold silver dark light bright cube sphere cylinder cone torus pyramid nose horn
toy dog cat bird fish horse cow car bus truck bike boat plane train house home tree flower plant chair table
bed lamp cup mug bottle box bag shoe hat shirt book pen phone computer ball doll bear robot man woman boy girl
baby person people child face head eye hand foot body water fire sun moon star sky rock stone wood metal glass
paper food apple cake bread egg cheese time day night year way thing world life city room door window wall
road street car game music art photo picture image model object shape color colour side front back top bottom
left right up down yes no not all some any many much more most very too also only just so than then there here
""".split())
WORLD_WORDS = frozenset({"small", "large", "nose", "horn", "cube", "sphere", "cylinder", "cone", "torus", "pyramid"})


def _on_white(image: Any) -> Any:
    """A PIL image as RGB, transparent parts composited on white (the built-in model's background)."""
    from PIL import Image

    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _centre_square(image: Any) -> Any:
    w, h = image.size
    s = min(w, h)
    return image.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))


def find_subject_images(source: str | os.PathLike) -> tuple[list[Path], list[str]]:
    """The photo files ``--images`` names -> (files, warnings).

    ``source`` is a folder of images; or a folder whose subfolders hold them, one level down, as
    ``mvdream3d render`` writes them (``OUT/<asset>/rgba_XXX.png``), used when the folder itself holds none;
    or a list file: one image path per line (relative paths from the list file's folder; blank lines and
    ``#`` comments skipped). Image files are those with ``IMAGE_EXTENSIONS``, hidden files skipped, in name
    order. FileNotFoundError for a missing source or listed file; ValueError when nothing usable is found,
    naming what was looked for.
    """
    source = Path(source)
    exts = " ".join(IMAGE_EXTENSIONS)
    is_image = lambda p: p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    if not source.exists():
        raise FileNotFoundError(f"image folder not found: {source}")
    if source.is_file():
        if source.suffix.lower() in IMAGE_EXTENSIONS:
            raise ValueError(f"--images got the image {source}: give the folder holding the photos, or a list "
                             f"file with one image path per line")
        files = []
        try:
            lines = source.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"cannot read the image list {source}: {e}") from e
        for n, line in enumerate(lines, 1):
            entry = line.strip()
            if not entry or entry.startswith("#"):
                continue
            p = Path(entry).expanduser()
            p = p if p.is_absolute() else source.parent / p
            if not p.is_file():
                raise FileNotFoundError(f"{source}, line {n}: no such image file: {p}")
            if p.suffix.lower() not in IMAGE_EXTENSIONS:
                raise ValueError(f"{source}, line {n}: {p.name} is not an image ({exts})")
            files.append(p)
        if not files:
            raise ValueError(f"no images in the list file {source}: write one image path per line ({exts})")
        return files, []
    files = sorted(p for p in source.iterdir() if is_image(p))
    if files:
        return files, []
    subdirs = sorted(d for d in source.iterdir() if d.is_dir() and not d.name.startswith("."))
    holding = [(d, sorted(p for p in d.iterdir() if is_image(p))) for d in subdirs]
    holding = [(d, f) for d, f in holding if f]
    if not holding:
        others = sorted(p.name for p in source.iterdir() if p.is_file() and not p.name.startswith("."))
        seen = f"; it holds {len(others)} other files (e.g. {', '.join(others[:3])})" if others else ""
        raise ValueError(f"no images in {source}: looked for {exts} files in it and in its subfolders (one level "
                         f"down, as `mvdream3d render` writes them){seen}. Put {RECOMMENDED_IMAGES[0]}-"
                         f"{RECOMMENDED_IMAGES[1]} photos of the subject there, or pass a list file with one image "
                         f"path per line")
    warns = []
    if len(holding) > 1:
        warns.append(f"images from {len(holding)} subfolders of {source} ({', '.join(d.name for d, _ in holding[:4])}"
                     f"{', ...' if len(holding) > 4 else ''}) are taken as one subject")
    return [p for _, f in holding for p in f], warns


def load_subject_images(folder: str | os.PathLike, size: int | None = None) -> tuple[torch.Tensor, list[str]]:
    """Read the subject photos that ``folder`` names (a folder, a folder of subfolders or a list file: see
    :func:`find_subject_images`) -> (images (N, 3, S, S) float32 in [-1, 1], warnings).

    Transparency is composited on white; non-square images are centre-cropped and everything is resized
    (bicubic) to ``size`` (default: the smallest image side), each with a warning. Raises FileNotFoundError
    for a missing folder or listed file and ValueError when there is no image or one is unreadable (naming
    the file).
    """
    from PIL import Image

    files, found_warns = find_subject_images(folder)
    images = []
    for p in files:
        try:
            with Image.open(p) as im:
                im.load()
                images.append(_on_white(im))
        except (OSError, SyntaxError, ValueError) as e:  # PIL's UnidentifiedImageError is an OSError
            raise ValueError(f"cannot read image {p}: {e}") from e
    warns = list(found_warns)
    sizes = sorted({im.size for im in images})
    if len(sizes) > 1:
        warns.append(f"the images have different sizes ({', '.join(f'{w}x{h}' for w, h in sizes)}); "
                     f"all are resized to one size")
    non_square = [p.name for p, im in zip(files, images, strict=True) if im.size[0] != im.size[1]]
    if non_square:
        warns.append(f"{len(non_square)} images are not square (e.g. {non_square[0]}): their centre square is used")
    side = int(size) if size is not None else min(min(im.size) for im in images)
    if side < 8:
        raise ValueError(f"image size must be >= 8 pixels, got {side}")
    arrays = []
    for im in images:
        sq = _centre_square(im)
        if sq.size != (side, side):
            sq = sq.resize((side, side), Image.Resampling.BICUBIC)
        arrays.append(np.asarray(sq, dtype=np.float32))
    lo, hi = RECOMMENDED_IMAGES
    if not lo <= len(files) <= hi:
        warns.append(f"{len(files)} images found; the method is meant for {lo}-{hi} photos of one subject")
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5 - 1.0
    return batch.contiguous(), warns


def check_token(token: str, class_word: str | None = None, text_encoder: Any = None) -> list[str]:
    """Warnings about an identifier token that the model may already understand.

    The token must be one word of letters and digits (else ValueError). Warns when it is a common English
    word or a concept name of the procedural world, equals the class word, or (for WordPiece tokenizers,
    whose vocabulary is made of real words) is a whole word of the text encoder's vocabulary. For CLIP's
    byte-pair vocabulary a single token is no sign of meaning (DreamBooth's "sks" is one), so only the
    word list is used.
    """
    if not isinstance(token, str) or not re.fullmatch(r"[A-Za-z0-9]+", token):
        raise ValueError(f"the token must be one word of letters and digits, e.g. 'sks'; got {token!r}")
    if class_word is not None and not str(class_word).strip():
        raise ValueError("the class word is empty: name what the subject is, e.g. --class-word toy")
    word = token.lower()
    hint = "choose a rare word, e.g. 'sks' or 'zxq'"
    if class_word is not None and word == str(class_word).strip().lower():
        return [f"the token {token!r} is the class word itself: {hint}"]
    if word in COMMON_WORDS or word in WORLD_WORDS:
        return [f"the token {token!r} is a common word the model already has a meaning for; "
                f"fine-tuning will overwrite it: {hint}"]
    tokenizer = getattr(text_encoder, "hf_tokenizer", None)
    if tokenizer is not None and hasattr(tokenizer, "tokenize"):
        pieces = tokenizer.tokenize(word)
        if len(pieces) == 1 and not pieces[0].startswith("##") and pieces[0] not in tokenizer.all_special_tokens:
            return [f"the text encoder knows {token!r} as a whole word, so the model may already have a meaning "
                    f"for it: {hint}"]
    return []


# -- memory -----------------------------------------------------------------------------------------


def _activation_floats_per_sample(unet: Any, latent_side: int) -> float:
    """Rough count of the activations one training sample keeps for the backward pass."""
    c = unet.config
    levels = len(c.channel_mult)
    nrb = [c.num_res_blocks] * levels if isinstance(c.num_res_blocks, int) else list(c.num_res_blocks)
    ctx_len = 77
    total = 0.0
    for level, mult in enumerate(c.channel_mult):
        ds = 2 ** level
        ch, hw = c.model_channels * mult, (latent_side / ds) ** 2
        blocks = 2 * nrb[level] + 1 + (3 if level == levels - 1 else 0)  # down + up (+ the middle block)
        total += blocks * 10 * ch * hw  # res block: norms, activations, convolutions
        if ds in c.attention_resolutions or level == levels - 1:
            heads, _ = c.heads_for(ch)
            n_attn = (nrb[level] * 2 + 1 + (1 if level == levels - 1 else 0)) * c.transformer_depth
            # projections, feed-forward and the two attention maps (self: hw x hw, cross: hw x context)
            total += n_attn * (24 * ch * hw + 2 * heads * hw * (hw + ctx_len))
    return total


def memory_breakdown(model: Any, cfg: Any, batch_size: int | None = None) -> dict[str, int]:
    """Estimated bytes of a DreamBooth run: ``weights`` (all parts), ``training`` (gradients, AdamW moments
    and the theta_0 copy of the trained parameters) and ``activations``. An order-of-magnitude estimate
    (within about 2x), meant to stop runs that cannot fit before they start."""
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    unet = model.unet
    n_unet = sum(p.numel() for p in unet.parameters())
    if cfg.train == "full":
        n_train = n_unet
    elif cfg.train == "attention":
        from ..models.attention import CrossAttention

        n_train = sum(p.numel() for m in unet.modules() if isinstance(m, CrossAttention) for p in m.parameters())
    else:
        n_train = int(0.02 * n_unet)  # adapters of rank 4-16: about 1-2 % of the UNet
    theta0 = n_train if cfg.train != "lora" else 0
    training = 4 * (3 * n_train + theta0)  # grad + 2 AdamW moments (+ theta_0), float32
    size = cfg.image_size or model.native_size
    latent_side = size // model.downsample_factor
    per_sample = 4 * _activation_floats_per_sample(unet, latent_side)
    if cfg.mixed_precision in ("bf16", "fp16"):
        per_sample /= 2
    if cfg.gradient_checkpointing:
        per_sample /= 3
    b = batch_size or cfg.batch_size
    return {"weights": int(weight_bytes), "training": int(training), "activations": int(b * per_sample * 1.2)}


def estimate_memory(model: Any, cfg: Any) -> int:
    """Estimated peak bytes of a DreamBooth run of ``model`` with ``cfg`` (see :func:`memory_breakdown`)."""
    return sum(memory_breakdown(model, cfg).values())


def available_memory(device: torch.device) -> int | None:
    """Free bytes on ``device``: GPU memory for CUDA, else RAM (psutil, or /proc/meminfo); None if unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class MemoryEstimateError(ValueError):
    """The estimated memory of a run exceeds what the device has free."""


def check_memory(model: Any, cfg: Any, device: torch.device, weights_resident: bool = True) -> tuple[int, list[str]]:
    """(estimated bytes, warnings); raises :class:`MemoryEstimateError` when the run cannot fit.

    ``weights_resident``: the model's weights already sit in the memory measured (a CPU run), so they
    are not counted again.
    """
    parts = memory_breakdown(model, cfg)
    total = sum(parts.values())
    need = total - (parts["weights"] if weights_resident else 0)
    free = available_memory(device)
    if free is None:
        return total, []
    gib = 2 ** 30
    advice = ("try --train lora or --train attention, a smaller --batch-size, --mixed-precision bf16 or "
              "--gradient-checkpointing; --no-memory-check starts anyway")
    detail = ", ".join(f"{k} {v / gib:.2f}" for k, v in parts.items())
    if need > free:
        raise MemoryEstimateError(f"this run needs about {need / gib:.1f} GiB more memory ({detail} GiB) but only "
                                  f"{free / gib:.1f} GiB are free on {device}: {advice}")
    if need > 0.8 * free:
        return total, [f"this run needs about {need / gib:.1f} GiB of the {free / gib:.1f} GiB free on {device}; "
                       f"it may run out of memory"]
    return total, []

