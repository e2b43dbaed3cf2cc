"""CLIP's byte-level BPE tokenizer, built offline from the bundled merge list.

The merge list ``assets/bpe_simple_vocab_16e6.txt.gz`` (OpenAI CLIP, MIT, see
``assets/NOTICE-clip-bpe.txt``) is turned into an in-memory ``tokenizers.Tokenizer``; the BPE itself
runs in the HF ``tokenizers`` library. Two flavours reproduce the two published text encoders:

- ``"open_clip"`` (SD 2.1, ``open_clip.tokenize``): ftfy + double ``html.unescape`` + whitespace
  collapse + lowercase; special tokens ``<start_of_text>`` / ``<end_of_text>``; pads with 0.
- ``"hf"`` (SD 1.5, transformers' ``CLIPTokenizer`` as used by the published code, which cleans with
  ftfy when it is installed): ftfy + whitespace collapse + lowercase, no HTML unescaping; special
  tokens ``<|startoftext|>`` / ``<|endoftext|>``; pads with 49407 (``<|endoftext|>``).

Both give ids 49406 (start) and 49407 (end); a prompt longer than the context keeps its first
``context_length - 2`` BPE tokens and ends with the end token, as both references do.
"""

from __future__ import annotations

import gzip
import html
import warnings
from collections.abc import Sequence
from functools import lru_cache
from importlib import resources
from typing import Literal

import regex
import torch
from tokenizers import AddedToken, Regex, Tokenizer, pre_tokenizers
from tokenizers.models import BPE

Flavor = Literal["open_clip", "hf"]

BPE_ASSET = "bpe_simple_vocab_16e6.txt.gz"
VOCAB_SIZE = 49408
SOT_TOKEN_ID = 49406
EOT_TOKEN_ID = 49407
OPEN_CLIP_PAD_ID = 0
HF_CLIP_PAD_ID = EOT_TOKEN_ID
_NUM_MERGES = 49152 - 256 - 2  # the merges CLIP uses: the file's first line is a header
_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
_SPECIALS: dict[str, tuple[str, str]] = {
    "open_clip": ("<start_of_text>", "<end_of_text>"),
    "hf": ("<|startoftext|>", "<|endoftext|>"),
}
_WHITESPACE = regex.compile(r"\s+")


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's byte -> printable character table, in vocab order (ids 0..255 follow it)."""
    order = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = [chr(b) for b in order]
    remapped = 0
    for b in range(256):
        if b not in order:
            order.append(b)
            chars.append(chr(256 + remapped))
            remapped += 1
    return dict(zip(order, chars, strict=True))


def load_bpe_merges() -> list[tuple[str, str]]:
    """The 48894 merges of the bundled CLIP BPE file, in rank order."""
    data = resources.files("mvdream3d").joinpath("assets", BPE_ASSET).read_bytes()
    lines = gzip.decompress(data).decode("utf-8").split("\n")[1 : _NUM_MERGES + 1]
    return [tuple(line.split()) for line in lines]  # type: ignore[misc]


def clip_vocab(flavor: Flavor = "open_clip") -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's vocabulary (token -> id, 49408 entries) and merge list, as CLIP builds them."""
    merges = load_bpe_merges()
    chars = list(_byte_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + list(_SPECIALS[flavor])
    return {t: i for i, t in enumerate(tokens)}, merges


@lru_cache(maxsize=2)
def build_bpe_tokenizer(flavor: Flavor = "open_clip") -> Tokenizer:
    """A ``tokenizers.Tokenizer`` doing CLIP's split + byte-level BPE (no cleaning, no special ids added)."""
    vocab, merges = clip_vocab(flavor)
    tok = Tokenizer(
        BPE(
            vocab=vocab,
            merges=merges,
            continuing_subword_prefix="",
            end_of_word_suffix="</w>",
            fuse_unk=False,
        )
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_SPLIT_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in _SPECIALS[flavor]])
    return tok


def clean_text(text: str, flavor: Flavor = "open_clip") -> str:
    """CLIP's text cleaning: ftfy, (open_clip only) HTML unescaping, whitespace collapse, lowercase."""
    import ftfy  # 0.2 s to import: only CLIP tokenizers clean with it, not the built-in model's MiniLM path

    text = ftfy.fix_text(text)
    if flavor == "open_clip":
        return " ".join(html.unescape(html.unescape(text)).strip().split()).lower()
    return _WHITESPACE.sub(" ", text).strip().lower()


class ClipTokenizer:
    """Prompts -> CLIP token ids ``(N, context_length)`` int64: start, BPE ids, end, then padding.

    ``pad_token_id`` is 0 for OpenCLIP / SD 2.1 and 49407 for HF CLIP / SD 1.5. ``flavor`` picks the
    text cleaning and special-token spelling (see the module docstring); by default ``"open_clip"``
    when ``pad_token_id == 0`` and ``"hf"`` otherwise.
    """

    def __init__(self, pad_token_id: int, context_length: int = 77, flavor: Flavor | None = None) -> None:
        if context_length < 2:
            raise ValueError(f"context_length must be >= 2 (start + end token), got {context_length}")
        if not 0 <= pad_token_id < VOCAB_SIZE:
            raise ValueError(f"pad_token_id must be in [0, {VOCAB_SIZE}), got {pad_token_id}")
        flavor = flavor or ("open_clip" if pad_token_id == OPEN_CLIP_PAD_ID else "hf")
        if flavor not in _SPECIALS:
            raise ValueError(f"flavor must be one of {sorted(_SPECIALS)}, got {flavor!r}")
        self.pad_token_id = pad_token_id
        self.context_length = context_length
        self.flavor: Flavor = flavor
        self.sot_token_id = SOT_TOKEN_ID
        self.eot_token_id = EOT_TOKEN_ID
        self.vocab_size = VOCAB_SIZE

    def encode(self, text: str) -> list[int]:
        """BPE ids of one prompt after cleaning, without start/end tokens and without truncation."""
        return build_bpe_tokenizer(self.flavor).encode(clean_text(text, self.flavor), add_special_tokens=False).ids

    def __call__(self, prompts: Sequence[str] | str) -> torch.LongTensor:
        """Tokenize ``prompts`` (a list of N strings; a single string counts as N=1) -> (N, context_length).

        Prompts that do not fit are truncated (with a warning naming them) so that the last position
        still holds the end token.
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        if len(prompts) == 0:
            raise ValueError("ClipTokenizer needs at least one prompt, got an empty list")
        out = torch.full((len(prompts), self.context_length), self.pad_token_id, dtype=torch.long)
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise TypeError(f"prompts must be strings, got {type(prompt).__name__} at index {i}")
            ids = [self.sot_token_id, *self.encode(prompt), self.eot_token_id]
            if len(ids) > self.context_length:
                warnings.warn(
                    f"prompt has {len(ids)} tokens with start/end, more than the context length "
                    f"{self.context_length}; truncated: {prompt!r}",
                    stacklevel=2,
                )
                ids = ids[: self.context_length - 1] + [self.eot_token_id]
            out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out  # type: ignore[return-value]
