"""The diffusers folder layout: written by `convert --format diffusers`, read wherever a model is taken."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from mvdream3d.cli import main
from mvdream3d.diffusers_layout import is_diffusers_folder, load_diffusers
from mvdream3d.pipeline import MultiViewPipeline, resolve_model

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "mvdream3d" / "configs"
MINILM = {"target": "mvdream3d.MiniLMEmbedder", "params": {"max_length": 16}}
TINY_CLIP = {"target": "mvdream.ldm.modules.encoders.modules.FrozenCLIPEmbedder",
             "params": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                        "projection_dim": 32}}


def _tiny_config(kind: str) -> dict:
    """tiny-random's config, varied: latent + OpenCLIP (as is), pixel space + MiniLM (the built-in model's
    shape), latent + MiniLM (the built-in model with a VAE), SD-1.5 style (conv projections, head count,
    transformers CLIP padding with <|endoftext|>)."""
    cfg = yaml.safe_load((CONFIGS / "tiny-random.yaml").read_text())
    p = cfg["model"]["params"]
    if kind == "pixel-minilm":
        p["first_stage_config"] = {"target": "torch.nn.Identity"}
        p.pop("scale_factor")
        p["unet_config"]["params"].update(in_channels=3, out_channels=3, context_dim=384)
        p["cond_stage_config"] = copy.deepcopy(MINILM)
        p.update(parameterization="v", prompt_suffix="", sampling={"sampler": "ddim", "steps": 7,
                                                                   "guidance_scale": 3.0})
    elif kind == "latent-minilm":
        p["unet_config"]["params"]["context_dim"] = 384
        p["cond_stage_config"] = copy.deepcopy(MINILM)
        p["scale_factor"] = 0.5
    elif kind == "sd15-like":
        u = p["unet_config"]["params"]
        u.pop("num_head_channels")
        u.update(num_heads=2, use_linear_in_transformer=False, context_dim=32)
        p["cond_stage_config"] = copy.deepcopy(TINY_CLIP)
    return cfg


def _random_model(kind: str):
    from mvdream3d.models.model import build_model

    torch.manual_seed(0)
    model = build_model(_tiny_config(kind))
    with torch.no_grad():  # no zero layer: outputs must depend on every weight
        for name, prm in model.named_parameters():
            if not name.startswith("text_encoder.transformer.") or not kind.endswith("minilm"):
                prm.add_(torch.randn_like(prm) * 0.02)
    return model.eval()


def _sample(model, size: int) -> torch.Tensor:
    out = MultiViewPipeline(model)("a red cube with a horn", num_inference_steps=3, seed=3, height=size,
                                   width=size, guidance_scale=4.0)
    return out.latents


@pytest.mark.parametrize("kind", ["latent-openclip", "pixel-minilm", "latent-minilm", "sd15-like"])
def test_round_trip_keeps_outputs(tmp_path, kind):
    model = _random_model(kind)
    src = model.save(tmp_path / "model.safetensors")
    out = tmp_path / "diffusers"
    assert main(["convert", str(src), str(out), "--format", "diffusers"]) == 0
    assert is_diffusers_folder(out)
    loaded = resolve_model(str(out))
    size = 32 if model.vae is not None else 16
    ref = _sample(model, size)
    torch.testing.assert_close(_sample(loaded, size), ref, atol=1e-5, rtol=1e-5)
    assert loaded.prompt_suffix == model.prompt_suffix and loaded.sampling_defaults == model.sampling_defaults
    assert loaded.noise_schedule.prediction_type == model.noise_schedule.prediction_type
    assert (loaded.vae is None) == (model.vae is None) and (out / "vae").exists() == (model.vae is not None)
    # and back to one file: same outputs again
    back = tmp_path / "back.safetensors"
    assert main(["convert", str(out), str(back)]) == 0
    torch.testing.assert_close(_sample(resolve_model(str(back)), size), ref, atol=1e-5, rtol=1e-5)
    # the config survives the trip; a CLIP text encoder's comes back in transformers CLIP terms
    back_cfg = resolve_model(str(back)).config
    if kind.endswith("minilm"):
        assert back_cfg == model.config
    no_text = lambda c: {**c["model"]["params"], "cond_stage_config": None}
    assert no_text(back_cfg) == no_text(model.config)


def test_folder_loads_with_plain_diffusers_and_transformers_classes(tmp_path):
    from diffusers import AutoencoderKL, DDIMScheduler
    from safetensors.torch import load_file
    from transformers import CLIPTextModel, CLIPTokenizer

    from mvdream3d import MultiViewUNet

    model = _random_model("latent-openclip")
    out = tmp_path / "d"
    assert main(["convert", str(model.save(tmp_path / "m.safetensors")), str(out), "--format", "diffusers"]) == 0
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "MVDreamPipeline" and index["unet"] == ["mv_unet", "MultiViewUNetModel"]
    assert index["vae"] == ["diffusers", "AutoencoderKL"] and index["scheduler"] == ["diffusers", "DDIMScheduler"]

    vae = AutoencoderKL.from_pretrained(out / "vae").eval()
    z = torch.randn(2, 4, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(vae.decode(z / vae.config.scaling_factor).sample.clamp(-1, 1),
                                   model.decode_latents(z), atol=1e-5, rtol=1e-5)
    assert vae.config.scaling_factor == pytest.approx(model.scale_factor)

    tok = CLIPTokenizer.from_pretrained(out / "tokenizer")
    text = CLIPTextModel.from_pretrained(out / "text_encoder").eval()
    prompts = ["a red cube with a horn, 3d asset", "an astronaut riding a horse"]
    ids = tok(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    assert torch.equal(ids, model.text_encoder.tokenizer(prompts))  # SD 2.x's tokenizer pads with "!" (id 0)
    with torch.no_grad():  # the penultimate OpenCLIP output is the last hidden state of one layer fewer
        torch.testing.assert_close(text(ids).last_hidden_state, model.encode_text(prompts), atol=1e-5, rtol=1e-5)

    sched = DDIMScheduler.from_pretrained(out / "scheduler")
    torch.testing.assert_close(sched.alphas_cumprod, model.noise_schedule.alphas_cumprod, atol=1e-6, rtol=1e-5)
    assert sched.config.prediction_type == "epsilon" and sched.config.steps_offset == 1

    cfg = {k: v for k, v in json.loads((out / "unet" / "config.json").read_text()).items() if not k.startswith("_")}
    unet = MultiViewUNet.from_config(cfg)  # the UNet through the project's class, weights under their own names
    unet.load_state_dict(load_file(out / "unet" / "diffusion_pytorch_model.safetensors"), strict=True)
    for k, v in model.unet.state_dict().items():
        assert torch.equal(unet.state_dict()[k], v), k


def test_minilm_folder_loads_with_transformers_alone(tmp_path):
    from transformers import AutoModel, AutoTokenizer

    model = _random_model("pixel-minilm")
    out = tmp_path / "d"
    assert main(["convert", str(model.save(tmp_path / "m.safetensors")), str(out), "--format", "diffusers",
                 "--dtype", "fp16"]) == 0
    index = json.loads((out / "model_index.json").read_text())
    assert index["vae"] == [None, None] and index["text_encoder"] == ["transformers", "BertModel"]
    bert = AutoModel.from_pretrained(out / "text_encoder").float().eval()
    tok = AutoTokenizer.from_pretrained(out / "tokenizer")
    batch = tok(["a red cube"], padding="max_length", max_length=16, return_tensors="pt")
    with torch.no_grad():
        ref = model.encode_text(["a red cube"])
        torch.testing.assert_close(bert(**batch).last_hidden_state * batch["attention_mask"][..., None], ref,
                                   atol=2e-2, rtol=0)  # fp16 storage
    loaded = load_diffusers(out)
    assert loaded.unet.time_embed[0].weight.dtype == torch.float32  # fp16 files load as fp32
    torch.testing.assert_close(loaded.unet.time_embed[0].weight, model.unet.time_embed[0].weight.half().float())


def _community_folder(root: Path, model) -> Path:
    """A tiny folder laid out like the community conversion (ashawkey/mvdream_diffusers,
    convert_mvdream_to_diffusers.py), written with the plain library classes: UNet config without
    `use_linear_in_transformer`/`legacy`, fp16 weights (--half), SD 2.1's text encoder and tokenizer layout."""
    from diffusers import AutoencoderKL, DDIMScheduler
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from mvdream3d.diffusers_layout import _clip_tokenizer_files, openclip_to_hf
    from mvdream3d.models.vae import diffusers_vae_config

    out = root / "community"
    p = model.params
    unet_cfg = {k: v for k, v in p["unet_config"]["params"].items()
                if k not in ("legacy", "use_linear_in_transformer", "use_spatial_transformer")}
    (out / "unet").mkdir(parents=True)
    (out / "unet" / "config.json").write_text(json.dumps({"_class_name": "MultiViewUNetModel",
                                                          "_diffusers_version": "0.25.0", **unet_cfg}))
    save_file({k: v.half().contiguous() for k, v in model.unet.state_dict().items()},
              str(out / "unet" / "diffusion_pytorch_model.safetensors"))
    vae = AutoencoderKL(**diffusers_vae_config(p["first_stage_config"]["params"]), scaling_factor=0.18215)
    vae.load_state_dict(model.vae.vae.state_dict())
    vae.half().save_pretrained(out / "vae")
    enc = model.text_encoder.model
    width, layers = enc.positional_embedding.shape[1], len(enc.transformer.resblocks) - 1
    text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=width, intermediate_size=4 * width,
                                        num_hidden_layers=layers, num_attention_heads=2, hidden_act="gelu",
                                        projection_dim=width))
    state = {k[len("text_model."):]: v for k, v in openclip_to_hf(model.text_encoder.state_dict(), layers).items()}
    missing = text.load_state_dict(state, strict=False).missing_keys
    assert not [k for k in missing if "position_ids" not in k]
    text.save_pretrained(out / "text_encoder")
    _clip_tokenizer_files(root / "tok", "!")
    CLIPTokenizer.from_pretrained(root / "tok").save_pretrained(out / "tokenizer")
    DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                  clip_sample=False, set_alpha_to_one=False).save_pretrained(out / "scheduler")
    (out / "model_index.json").write_text(json.dumps({
        "_class_name": "MVDreamPipeline", "_diffusers_version": "0.25.0", "feature_extractor": [None, None],
        "image_encoder": [None, None], "requires_safety_checker": False,
        "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["mv_unet", "MultiViewUNetModel"],
        "vae": ["diffusers", "AutoencoderKL"]}))
    return out


def test_reads_the_community_conversion_layout(tmp_path, capsys):
    model = _random_model("latent-openclip")
    folder = _community_folder(tmp_path, model)
    loaded = resolve_model(str(folder))
    assert loaded.unet.config.use_linear_in_transformer  # inferred: the config does not say it
    assert loaded.prompt_suffix == ", 3d asset"  # a published-style model
    # fp16 storage: compare with the fp16-rounded source model
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for m in (ref.unet, ref.vae):
            for prm in m.parameters():
                prm.copy_(prm.half().float())
    torch.testing.assert_close(_sample(loaded, 32), _sample(ref, 32), atol=1e-4, rtol=1e-4)
    assert main(["info", str(folder)]) == 0
    assert "total" in capsys.readouterr().out


def test_info_reads_headers_only_and_matches_the_built_model(tmp_path, capsys):
    from mvdream3d.modelinfo import summarize

    for kind in ("latent-openclip", "pixel-minilm"):
        model = _random_model(kind)
        f = model.save(tmp_path / f"{kind}.safetensors")
        out = tmp_path / kind
        assert main(["convert", str(f), str(out), "--format", "diffusers"]) == 0
        for ref in (f, out):
            config, counts = summarize(str(ref))
            assert counts == resolve_model(str(ref)).parameter_counts(), (kind, ref)
        assert summarize(str(f))[0] == model.config
    assert summarize("tiny-random") is None  # no file to read: the caller builds it


def test_convert_errors_are_one_line(tmp_path, capsys):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    assert main(["convert", "tiny-random", str(busy), "--format", "diffusers"]) == 2
    err = capsys.readouterr().err
    assert "not a diffusers folder" in err and (busy / "notes.txt").exists()
    out = tmp_path / "d"
    assert main(["convert", "tiny-random", str(out), "--format", "diffusers"]) == 0
    assert main(["convert", "tiny-random", str(out), "--format", "diffusers"]) == 0  # replaces its own kind
    capsys.readouterr()
    assert main(["generate", "x", "--model", str(out), "--config", "tiny-random", "--out", str(tmp_path / "g")]) == 2
    assert "carries its own config" in capsys.readouterr().err
    cfg = json.loads((out / "unet" / "config.json").read_text())
    (out / "unet" / "config.json").write_text(json.dumps({**cfg, "ip_dim": 16}))
    assert main(["info", str(out)]) == 2
    assert "ImageDream" in capsys.readouterr().err


def test_single_file_from_a_minilm_folder_drops_the_folder_reference(tmp_path):
    model = _random_model("pixel-minilm")
    out = tmp_path / "d"
    assert main(["convert", str(model.save(tmp_path / "m.safetensors")), str(out), "--format", "diffusers"]) == 0
    back = tmp_path / "back.safetensors"
    assert main(["convert", str(out), str(back)]) == 0
    from mvdream3d.checkpoints import read_checkpoint

    cond = read_checkpoint(back)[1]["model"]["params"]["cond_stage_config"]
    assert cond == MINILM  # the package's copy has the same weights: no reference to the folder


def test_help_imports_no_torch():
    code = ("import sys\nfrom mvdream3d.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'numpy', 'transformers', 'diffusers', 'gradio') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "HEAVY []" in res.stdout, res.stdout + res.stderr
    assert "convert" in res.stdout and "dreambooth" in res.stdout


def test_lazy_help_strings_match_the_registered_ones():
    from mvdream3d.cli import build_parser

    def helps(parser):
        action = next(a for a in parser._actions if a.dest == "command")
        return {c.dest: c.help for c in action._choices_actions}

    full = helps(build_parser())
    assert full == helps(build_parser(lazy=True)) and list(full) == list(helps(build_parser("info", lazy=True)))
