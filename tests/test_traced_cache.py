"""The trace cache of frozen library networks (mvdream3d.models.traced_cache): the VAE decoder and the MiniLM
encoder run from checked TorchScript traces, give the library modules' numbers, and keep diffusers and
transformers out of a cached run."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from mvdream3d.models import traced_cache
from mvdream3d.models.vae import AutoencoderKLWrapper, _decoder_key, load_vae

ROOT = Path(__file__).resolve().parents[1]
VAE = {"embed_dim": 4, "ddconfig": {"double_z": True, "z_channels": 4, "resolution": 32, "in_channels": 3,
                                    "out_ch": 3, "ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1,
                                    "attn_resolutions": [], "dropout": 0.0}}


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty trace cache of this test alone, switched on."""
    folder = tmp_path / "traced"
    monkeypatch.setenv(traced_cache.DIR_ENV, str(folder))
    monkeypatch.delenv(traced_cache.ENABLE_ENV, raising=False)
    return folder


@pytest.fixture(scope="module")
def vae_weights() -> dict[str, torch.Tensor]:
    """Published-name weights of a small VAE, random everywhere (biases and norms too)."""
    torch.manual_seed(0)
    vae = load_vae(VAE, None)
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return {k: v.clone() for k, v in vae.ldm_state_dict().items()}


def _eager(state: dict[str, torch.Tensor]) -> AutoencoderKLWrapper:
    vae = AutoencoderKLWrapper(VAE)
    vae.load_state_dict(state, strict=True)
    return vae.freeze()


def _latents(n: int, side: int = 8, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 4, side, side, generator=torch.Generator().manual_seed(seed))


def test_decoder_trace_is_written_once_then_decodes_as_diffusers(cache, vae_weights):
    first = load_vae(VAE, vae_weights)
    assert not first.is_deferred  # nothing cached yet: diffusers' network, as before
    with torch.no_grad():
        first.decode(_latents(4))
    files = list(cache.glob("vae-decoder-*.pt"))
    assert len(files) == 1

    vae = load_vae(VAE, vae_weights)
    assert vae.is_deferred and vae.decoder_trace_path() == files[0]
    eager = _eager(vae_weights)
    with torch.no_grad():
        for n, side in ((1, 8), (3, 8), (8, 8), (2, 5)):  # batch sizes and a size the trace never saw
            z = _latents(n, side, seed=n)
            got = vae.decode(z)
            assert torch.equal(got, eager.decode(z)), (n, side)
    assert vae.is_deferred  # decoding did not build the diffusers network
    assert vae.dtype == torch.float32 and vae.device.type == "cpu"


def test_deferred_vae_builds_diffusers_on_demand(cache, vae_weights):
    load_vae(VAE, vae_weights).decode(_latents(2))
    vae = load_vae(VAE, vae_weights)
    assert vae.is_deferred and not vae.training
    vae.to("cpu")  # device moves and eval() do not build it
    vae.eval()
    assert vae.is_deferred
    state = vae.state_dict()  # published names, as the loaded weights
    assert not vae.is_deferred and state.keys() == vae_weights.keys()
    assert all(torch.equal(state[k], v) for k, v in vae_weights.items())
    assert all(not p.requires_grad for p in vae.parameters()) and not vae.vae.training

    x = torch.rand(1, 3, 16, 16) * 2 - 1
    for access in (lambda v: v.vae, lambda v: list(v.parameters()), lambda v: v.encode(x).mean,
                   lambda v: v.ldm_state_dict()):
        fresh = load_vae(VAE, vae_weights)
        assert fresh.is_deferred
        access(fresh)
        assert not fresh.is_deferred
    with torch.no_grad():
        assert torch.equal(fresh.encode(x).mean, _eager(vae_weights).encode(x).mean)

    wide = load_vae(VAE, vae_weights).to(torch.float64)  # recorded while deferred, applied when built
    assert wide.is_deferred and wide.dtype == torch.float64
    assert wide.vae.decoder.conv_in.weight.dtype == torch.float64


def test_cache_key_follows_weights_config_and_dtype(vae_weights):
    config = AutoencoderKLWrapper.deferred(VAE, vae_weights).config
    key = _decoder_key(vae_weights, config)
    assert _decoder_key(dict(reversed(vae_weights.items())), config) == key  # order does not matter
    changed = dict(vae_weights)
    name = "decoder.conv_out.bias"
    changed[name] = changed[name].clone()
    changed[name][0] += 1e-6
    assert _decoder_key(changed, config) != key
    assert _decoder_key({k: v.double() for k, v in vae_weights.items()}, config) != key
    assert _decoder_key(vae_weights, {**config, "norm_num_groups": 16}) != key
    # the key the loader looks up is the key the first decode writes (the built network's own weights)
    built = _eager(vae_weights)
    assert _decoder_key(built.ldm_state_dict(), built.config) == key


def test_corrupt_cache_file_is_ignored_and_rebuilt(cache, vae_weights):
    load_vae(VAE, vae_weights).decode(_latents(2))
    (path,) = cache.glob("vae-decoder-*.pt")
    path.write_bytes(b"not a TorchScript archive")
    vae = load_vae(VAE, vae_weights)
    z = _latents(3)
    with pytest.warns(traced_cache.TraceCacheWarning, match="unreadable trace cache file"):
        with torch.no_grad():
            out = vae.decode(z)
    assert torch.equal(out, _eager(vae_weights).decode(z))
    assert not vae.is_deferred  # it fell back to diffusers' network and traced it again
    assert traced_cache.load_trace(path) is not None
    with warnings.catch_warnings():
        warnings.simplefilter("error", traced_cache.TraceCacheWarning)
        again = load_vae(VAE, vae_weights)
        assert again.is_deferred and torch.equal(again.decode(z), out)


def test_disabled_cache_is_todays_behaviour(cache, vae_weights, monkeypatch):
    monkeypatch.setenv(traced_cache.ENABLE_ENV, "0")
    for _ in range(2):
        vae = load_vae(VAE, vae_weights)
        assert not vae.is_deferred
        vae.decode(_latents(2))
    assert not cache.exists() or not any(cache.iterdir())
    # a trace written earlier is not used either
    monkeypatch.delenv(traced_cache.ENABLE_ENV)
    load_vae(VAE, vae_weights).decode(_latents(2))
    monkeypatch.setenv(traced_cache.ENABLE_ENV, "0")
    assert not load_vae(VAE, vae_weights).is_deferred


def test_nothing_is_traced_for_trainable_or_random_vaes(cache, vae_weights):
    load_vae(VAE, vae_weights, freeze=False).decode(_latents(2))
    load_vae(VAE, None).decode(_latents(2))
    assert not cache.exists() or not any(cache.iterdir())


def test_a_trace_that_differs_is_not_written(tmp_path):
    class Branchy(torch.nn.Module):
        def forward(self, x):
            return x * 2 if bool(x.sum() > 0) else x - 1  # data-dependent: the trace keeps one branch

    path = tmp_path / "branchy.pt"
    pos, neg = torch.ones(2, 3), -2 * torch.ones(2, 3)  # traced: x * 2 = -4; the module: x - 1 = -3
    with pytest.warns(traced_cache.TraceCacheWarning, match="differs from the module"):
        assert not traced_cache.trace_checked(Branchy(), (pos,), [(pos,), (neg,)], path, "branchy")
    assert not path.exists()
    assert traced_cache.trace_checked(Branchy(), (pos,), [(pos,), (pos * 3,)], path, "branchy")
    assert torch.equal(traced_cache.run_trace(traced_cache.load_trace(path), pos), pos * 2)


def test_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(traced_cache.DIR_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert traced_cache.cache_dir() == tmp_path / "xdg" / "mvdream3d" / "traced"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert traced_cache.cache_dir() == tmp_path / "home" / ".cache" / "mvdream3d" / "traced"
    monkeypatch.setenv(traced_cache.DIR_ENV, str(tmp_path / "mine"))
    assert traced_cache.cache_dir() == tmp_path / "mine"


# -- MiniLM --------------------------------------------------------------------------------------------------

PROMPTS = ["cube", "a red cube with a yellow nose", "", "A RED Cube, with a Yellow NOSE!!", "naïve café déjà-vu",
           "東京 タワー 3d", "emoji 🚀 rocket", "tabs\tand\nnewlines   and  spaces", "don't [PAD] [SEP] [unused1]",
           "x" * 300, "word " * 40, "hyphen-ated, punctu.ation; (brackets) {and} 1234567 numbers 3.14",
           "ǅemal ÀÉÎÕÜ ß ﬁ ½", "\u200bzero\u200bwidth"]


def _hf_batch(folder: str, prompts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    out = tok(prompts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
    return {k: out[k] for k in ("input_ids", "token_type_ids", "attention_mask")}


@pytest.mark.parametrize("max_length", [24, 8])
def test_tokenizer_matches_transformers(max_length, tmp_path):
    from mvdream3d.models.text_encoders import bert_tokenizer, minilm_package_folder

    folder = minilm_package_folder()
    tok = bert_tokenizer(folder, max_length)
    assert tok is not None  # the package's folder is the plain BERT case
    want = _hf_batch(folder, PROMPTS, max_length)
    enc = tok.encode_batch(PROMPTS)
    for key, attr in (("input_ids", "ids"), ("token_type_ids", "type_ids"), ("attention_mask", "attention_mask")):
        got = torch.tensor([getattr(e, attr) for e in enc])
        assert torch.equal(got, want[key]), (key, [p for p, a, b in zip(PROMPTS, got, want[key], strict=True)
                                                    if not torch.equal(a, b)])
    # a folder transformers wrote (a diffusers folder's tokenizer/) is read the same way
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(folder).save_pretrained(str(tmp_path / "tokenizer"))
    saved = bert_tokenizer(str(tmp_path / "tokenizer"), max_length)
    assert saved is not None
    assert [e.ids for e in saved.encode_batch(PROMPTS)] == want["input_ids"].tolist()


def test_tokenizer_falls_back_to_transformers_when_not_plain_bert(tmp_path):
    from mvdream3d.models.text_encoders import bert_tokenizer, minilm_package_folder

    folder = Path(minilm_package_folder())
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**config, "do_lower_case": False}))
    assert bert_tokenizer(str(tmp_path), 16) is None  # tokenizer.json lowercases, the config says not to
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": "XLMRobertaTokenizer"}))
    assert bert_tokenizer(str(tmp_path), 16) is None


@pytest.fixture(scope="module")
def minilm_cache(tmp_path_factory):
    """A trace cache holding the MiniLM trace (max_length 16), written by a first encode."""
    from mvdream3d.models.text_encoders import MiniLMTextEncoder

    folder = tmp_path_factory.mktemp("minilm-traced")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(traced_cache.DIR_ENV, str(folder))
        mp.delenv(traced_cache.ENABLE_ENV, raising=False)
        enc = MiniLMTextEncoder(max_length=16).freeze()
        assert enc.is_deferred
        with torch.no_grad():
            enc.encode(["a red cube"])
        assert not enc.is_deferred  # a cache miss: transformers' model ran, and was traced
    assert len(list(folder.glob("minilm-*.pt"))) == 1
    return folder


def test_traced_minilm_equals_transformers(minilm_cache, monkeypatch):
    from mvdream3d.models.text_encoders import MiniLMTextEncoder

    monkeypatch.setenv(traced_cache.DIR_ENV, str(minilm_cache))
    traced = MiniLMTextEncoder(max_length=16).freeze()
    monkeypatch.setenv(traced_cache.ENABLE_ENV, "0")
    eager = MiniLMTextEncoder(max_length=16).freeze()
    assert not eager.is_deferred  # the cache off: transformers' model, built at once as before
    monkeypatch.delenv(traced_cache.ENABLE_ENV)
    full = "a red cube with a yellow nose and a blue torus on a green sphere"  # more than 16 tokens: no padding
    batches = [["cube"], [full], ["", "cube", full], PROMPTS]
    with torch.no_grad():
        for prompts in batches:
            got = traced.encode(prompts)
            assert traced.is_deferred
            want = eager(_hf_batch(eager.source, prompts, 16))  # transformers' tokenizer and model
            assert got.shape == (len(prompts), 16, 384)
            torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    assert traced.tokenizer([full])["attention_mask"].all()
    # the public surface is there without building the model, and builds it when asked
    assert traced.context_dim == 384 and traced.weights_external and traced.source == eager.source
    assert traced.is_deferred
    assert type(traced.transformer).__name__ == "BertModel" and not traced.is_deferred
    assert all(not p.requires_grad for p in traced.parameters())
    assert traced.transformer.config.hidden_size == 384


def test_minilm_follows_dtype_moves(minilm_cache, monkeypatch):
    from mvdream3d.models.text_encoders import MiniLMTextEncoder

    monkeypatch.setenv(traced_cache.DIR_ENV, str(minilm_cache))
    enc = MiniLMTextEncoder(max_length=16).freeze().to(torch.float64)
    assert enc.is_deferred
    with torch.no_grad():
        out = enc.encode(["cube"])  # a float64 key: no trace yet, so the model is built in float64 (and traced)
    assert out.dtype == torch.float64 and next(enc.parameters()).dtype == torch.float64


def _tiny_minilm_config() -> dict:
    cfg = yaml.safe_load((ROOT / "src" / "mvdream3d" / "configs" / "tiny-random.yaml").read_text())
    p = cfg["model"]["params"]
    p["unet_config"]["params"]["context_dim"] = 384
    p["cond_stage_config"] = {"target": "mvdream3d.MiniLMEmbedder", "params": {"max_length": 16}}
    return cfg


def test_cached_generate_imports_neither_diffusers_nor_transformers(tmp_path, minilm_cache, monkeypatch):
    from mvdream3d.cli import main
    from mvdream3d.models.model import build_model

    cache = tmp_path / "cache"
    cache.mkdir()
    for f in minilm_cache.glob("minilm-*.pt"):  # the MiniLM trace is already made (module fixture)
        (cache / f.name).symlink_to(f)
    monkeypatch.setenv(traced_cache.DIR_ENV, str(cache))
    torch.manual_seed(0)
    model = build_model(copy.deepcopy(_tiny_minilm_config()))
    with torch.no_grad():
        for p in model.unet.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    ckpt = model.save(tmp_path / "tiny.safetensors")
    argv = ["generate", "a red cube", "--model", str(ckpt), "--steps", "2", "--views", "2", "--size", "64",
            "--seed", "0"]
    assert main([*argv, "--out", str(tmp_path / "first")]) == 0  # writes the decoder's trace
    assert len(list(cache.glob("vae-decoder-*.pt"))) == 1
    code = ("import sys\nfrom mvdream3d.cli import main\n"
            f"assert main({[*argv, '--out', str(tmp_path / 'second')]!r}) == 0\n"
            "print('LOADED', sorted(m for m in ('diffusers', 'transformers', 'torch._dynamo') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert "LOADED []" in res.stdout, res.stdout + res.stderr[-3000:]
    import numpy as np
    from PIL import Image

    for name in ("view_00_00.png", "view_00_01.png"):
        a = np.asarray(Image.open(tmp_path / "first" / name))
        b = np.asarray(Image.open(tmp_path / "second" / name))
        assert np.array_equal(a, b), name
