"""The diffusers folder layout of a multi-view model, written and read (``convert IN OUT --format diffusers``).

The layout is the one of the community conversion ``mvdream-sd2.1-diffusers`` (used by LGM and the diffusers
community pipelines; mapping in docs/diffusers_layout.md)::

    model_index.json                       components: class names ("MVDreamPipeline", unet ["mv_unet",
                                           "MultiViewUNetModel"], vae ["diffusers", "AutoencoderKL"], ...)
    unet/config.json                       the published YAML's unet_config.params (+ _class_name)
    unet/diffusion_pytorch_model.safetensors   the UNet under the published names (no prefix)
    vae/config.json, vae/diffusion_pytorch_model.safetensors      diffusers AutoencoderKL (absent: pixel space)
    text_encoder/config.json, text_encoder/model.safetensors      transformers CLIPTextModel (or BertModel)
    tokenizer/...                                                 transformers CLIPTokenizer (or BERT's)
    scheduler/scheduler_config.json                               diffusers DDIMScheduler
    mvdream3d.json                         (written by this project only) the source config, for the fields no
                                           diffusers component holds: prompt suffix, sampling defaults, ...

Writing: the UNet keeps its names (the community class uses the published module tree); the VAE goes to
diffusers names; an OpenCLIP text tower (SD 2.x, ``layer: penultimate``) becomes a ``CLIPTextModel`` with one
layer fewer whose ``last_hidden_state`` is the penultimate output (as in SD 2.x diffusers folders);
the schedule becomes ``scaled_linear`` betas with ``steps_offset`` 1. Reading accepts this project's folders
and the community's (fp16 or fp32, .safetensors or .bin): the config is rebuilt from the component files,
so a CLIP text encoder comes back as a transformers CLIP model (``FrozenCLIPEmbedder``) whatever it was.

Nothing here imports torch at module level: :func:`diffusers_config` reads only JSON and file headers.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .checkpoints import CheckpointError, read_safetensors_header
from .files import OutputDirError, replace_dir

if TYPE_CHECKING:
    import torch

    from .models.model import MVDreamModel

MODEL_INDEX = "model_index.json"
EXTRA_FILE = "mvdream3d.json"
EXTRA_FORMAT = "mvdream3d-diffusers-1"
PIPELINE_CLASS = "MVDreamPipeline"
UNET_CLASS = "MultiViewUNetModel"
UNET_LIBRARY = "mv_unet"  # the community pipeline's module holding MultiViewUNetModel
UNET_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
                "diffusion_pytorch_model.bin", "diffusion_pytorch_model.fp16.bin")
HF_WEIGHTS = ("model.safetensors", "model.fp16.safetensors", "pytorch_model.bin", "pytorch_model.fp16.bin")

MODEL_TARGET = "mvdream.ldm.interface.LatentDiffusionInterface"
UNET_TARGET = "mvdream.ldm.modules.diffusionmodules.openaimodel.MultiViewUNetModel"
VAE_TARGET = "mvdream.ldm.models.autoencoder.AutoencoderKL"
CLIP_TARGET = "mvdream.ldm.modules.encoders.modules.FrozenCLIPEmbedder"
MINILM_TARGET = "mvdream3d.MiniLMEmbedder"
IDENTITY = {"target": "torch.nn.Identity"}

#: unet_config.params keys the community conversion removes (its class has no such switch)
UNET_DROPPED = ("legacy", "use_spatial_transformer")
#: CLIPTextConfig fields that define the text model (the rest of a config.json is bookkeeping)
CLIP_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "projection_dim", "num_hidden_layers",
               "num_attention_heads", "max_position_embeddings", "hidden_act", "layer_norm_eps")
PREDICTION = {"epsilon": "eps", "v_prediction": "v"}


def is_diffusers_folder(path: str | os.PathLike) -> bool:
    """True for a folder holding ``model_index.json`` (a diffusers pipeline folder)."""
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, MODEL_INDEX))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise CheckpointError(f"diffusers folder {path.parent.parent}: {path.parent.name}/{path.name} "
                              f"is missing") from e
    except (OSError, ValueError) as e:
        raise CheckpointError(f"could not read {path}: {e}") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} does not hold a JSON object")
    return data


def weights_file(component: Path, names: Sequence[str] = UNET_WEIGHTS) -> Path:
    """The weights file of a component folder: the first of ``names`` present."""
    for n in names:
        if (component / n).is_file():
            return component / n
    raise CheckpointError(f"{component} holds no weights: looked for {', '.join(names)}")


def _component(folder: Path, index: Mapping[str, Any], name: str) -> Path | None:
    """The component's subfolder, or None when model_index.json lists it as absent ([null, null])."""
    entry = index.get(name)
    present = isinstance(entry, list | tuple) and len(entry) == 2 and entry[0] is not None
    if not present:
        return None
    if not (folder / name).is_dir():
        raise CheckpointError(f"model_index.json of {folder} lists {name} but there is no {name}/ folder")
    return folder / name


def _header(path: Path) -> dict[str, tuple[str, list[int]]]:
    """Names and shapes of a weights file (safetensors header; .bin files are read with torch)."""
    if path.suffix == ".safetensors":
        return read_safetensors_header(path)[0]
    state = _load_weights(path)
    return {k: (str(v.dtype), list(v.shape)) for k, v in state.items()}


def _unet_params(unet_dir: Path) -> dict[str, Any]:
    raw = _read_json(unet_dir / "config.json")
    cls = raw.get("_class_name", UNET_CLASS)
    if cls != UNET_CLASS:
        raise CheckpointError(f"{unet_dir}/config.json is a {cls}, not a multi-view UNet ({UNET_CLASS}): "
                              f"only MVDream-style diffusers folders can be read")
    params = {k: v for k, v in raw.items() if not k.startswith("_")}
    if params.pop("ip_dim", 0):
        raise CheckpointError(f"{unet_dir} is an ImageDream UNet (ip_dim > 0): image-prompt models are not supported")
    params.pop("ip_weight", None)
    for key in ("adm_in_channels", "n_embed"):
        if params.get(key) is None:
            params.pop(key, None)
    if "use_linear_in_transformer" not in params:
        # the community class always projects with nn.Linear; decide from the weights to be safe
        shapes = _header(weights_file(unet_dir))
        proj = [s for k, (_, s) in shapes.items() if k.endswith("proj_in.weight")]
        params["use_linear_in_transformer"] = bool(proj) and len(proj[0]) == 2
    return params


def _vae_section(vae_dir: Path) -> tuple[dict[str, Any], float]:
    """(first_stage_config, scale_factor) of a diffusers AutoencoderKL folder."""
    c = _read_json(vae_dir / "config.json")
    cls = c.get("_class_name", "AutoencoderKL")
    boc = list(c.get("block_out_channels", [64]))
    n = len(boc)
    problems = []
    if cls != "AutoencoderKL":
        problems.append(f"class {cls} (only AutoencoderKL)")
    if any(b % boc[0] for b in boc):
        problems.append(f"block_out_channels {boc} are not multiples of the first")
    if list(c.get("down_block_types", ["DownEncoderBlock2D"] * n)) != ["DownEncoderBlock2D"] * n or \
            list(c.get("up_block_types", ["UpDecoderBlock2D"] * n)) != ["UpDecoderBlock2D"] * n:
        problems.append("block types other than DownEncoderBlock2D / UpDecoderBlock2D")
    for key, want in (("norm_num_groups", 32), ("act_fn", "silu"), ("use_quant_conv", True),
                      ("use_post_quant_conv", True), ("mid_block_add_attention", True), ("shift_factor", None),
                      ("latents_mean", None), ("latents_std", None)):
        if c.get(key, want) != want:
            problems.append(f"{key}={c[key]!r} (the published KL autoencoder has {want!r})")
    if problems:
        raise CheckpointError(f"{vae_dir}/config.json does not describe the published KL autoencoder: "
                              + "; ".join(problems))
    z = int(c.get("latent_channels", 4))
    params = {"embed_dim": z, "ddconfig": {
        "double_z": True, "z_channels": z, "resolution": int(c.get("sample_size", 256)),
        "in_channels": int(c.get("in_channels", 3)), "out_ch": int(c.get("out_channels", 3)), "ch": boc[0],
        "ch_mult": [b // boc[0] for b in boc], "num_res_blocks": int(c.get("layers_per_block", 2)),
        "attn_resolutions": [], "dropout": 0.0}}
    return {"target": VAE_TARGET, "params": params}, float(c.get("scaling_factor", 0.18215))


def _schedule(scheduler_dir: Path | None) -> dict[str, Any]:
    if scheduler_dir is None:
        raise CheckpointError("the diffusers folder has no scheduler: its noise schedule is unknown")
    name = "scheduler_config.json" if (scheduler_dir / "scheduler_config.json").is_file() else "config.json"
    c = _read_json(scheduler_dir / name)
    if c.get("beta_schedule", "linear") != "scaled_linear" or c.get("trained_betas") is not None:
        raise CheckpointError(f"{scheduler_dir}/{name}: beta_schedule {c.get('beta_schedule')!r}; only "
                              f"'scaled_linear' (Stable Diffusion's, as in LDM) is supported")
    pred = c.get("prediction_type", "epsilon")
    if pred not in PREDICTION:
        raise CheckpointError(f"{scheduler_dir}/{name}: prediction_type {pred!r}; supported: {', '.join(PREDICTION)}")
    return {"linear_start": float(c.get("beta_start", 0.0001)), "linear_end": float(c.get("beta_end", 0.02)),
            "timesteps": int(c.get("num_train_timesteps", 1000)), "parameterization": PREDICTION[pred]}


def _clip_pad_id(tokenizer_dir: Path | None) -> int:
    """The padding id of a CLIP tokenizer folder: 0 for SD 2.x's "!", 49407 for <|endoftext|> (the default)."""
    from .models.tokenizer import HF_CLIP_PAD_ID, VOCAB_SIZE

    if tokenizer_dir is None:
        return HF_CLIP_PAD_ID
    pad = None
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        if (tokenizer_dir / name).is_file():
            pad = _read_json(tokenizer_dir / name).get("pad_token")
            pad = pad.get("content") if isinstance(pad, dict) else pad
            if pad:
                break
    if not pad:
        return HF_CLIP_PAD_ID
    if (tokenizer_dir / "vocab.json").is_file():
        vocab = _read_json(tokenizer_dir / "vocab.json")
    elif (tokenizer_dir / "tokenizer.json").is_file():
        vocab = _read_json(tokenizer_dir / "tokenizer.json").get("model", {}).get("vocab", {})
    else:
        raise CheckpointError(f"{tokenizer_dir} has no vocab.json nor tokenizer.json")
    if len(vocab) != VOCAB_SIZE:
        raise CheckpointError(f"{tokenizer_dir}: a vocabulary of {len(vocab)} tokens; only CLIP's own "
                              f"({VOCAB_SIZE}) is supported")
    if pad not in vocab:
        raise CheckpointError(f"{tokenizer_dir}: the pad token {pad!r} is not in the vocabulary")
    return int(vocab[pad])


def _text_section(te_dir: Path | None, tok_dir: Path | None, source: Mapping[str, Any] | None) -> dict[str, Any]:
    """cond_stage_config of the folder's text encoder; ``source`` is the source config's (this project's folders)."""
    if te_dir is None:
        return dict(IDENTITY)
    c = _read_json(te_dir / "config.json")
    kind = c.get("model_type", "")
    if kind == "clip_text_model" or "CLIPTextModel" in (c.get("architectures") or []):
        params: dict[str, Any] = {k: c[k] for k in CLIP_FIELDS if k in c}
        params.update(freeze=True, max_length=int(c.get("max_position_embeddings", 77)),
                      tokenizer_pad_id=_clip_pad_id(tok_dir))
        return {"target": CLIP_TARGET, "params": params}
    if kind == "bert":
        params = {}
        if source is not None and str(source.get("target", "")).endswith("MiniLMEmbedder"):
            params.update({k: v for k, v in (source.get("params") or {}).items() if k == "max_length"})
        params.update(path=str(te_dir.resolve()), tokenizer_path=str((tok_dir or te_dir).resolve()))
        return {"target": MINILM_TARGET, "params": params}
    raise CheckpointError(f"{te_dir}/config.json: text encoder type {kind!r} is not supported "
                          f"(CLIPTextModel or a BERT model such as MiniLM)")


def diffusers_config(folder: str | os.PathLike) -> dict[str, Any]:
    """The published-layout config (``{"model": {"params": ...}}``) of a diffusers folder, from its JSON files
    and weight headers only. Fields no component holds (prompt suffix, sampling defaults) come from
    ``mvdream3d.json`` when this project wrote the folder."""
    folder = Path(folder)
    index = _read_json(folder / MODEL_INDEX)
    unet_dir = _component(folder, index, "unet")
    if unet_dir is None:
        raise CheckpointError(f"model_index.json of {folder} lists no unet")
    extra = _read_json(folder / EXTRA_FILE) if (folder / EXTRA_FILE).is_file() else {}
    source = extra.get("config") if isinstance(extra.get("config"), dict) else None
    cfg = copy.deepcopy(source) if source is not None else {"model": {"target": MODEL_TARGET, "params": {}}}
    params = cfg.setdefault("model", {}).setdefault("params", {})
    source_cond = (source or {}).get("model", {}).get("params", {}).get("cond_stage_config")
    unet_params = _unet_params(unet_dir)
    source_unet = ((source or {}).get("model", {}).get("params", {}).get("unet_config") or {}).get("params") or {}
    unet_params.update({k: source_unet[k] for k in UNET_DROPPED if k in source_unet})  # no-op switches, kept
    params["unet_config"] = {"target": UNET_TARGET, "params": unet_params}
    vae_dir = _component(folder, index, "vae")
    if vae_dir is None:
        params["first_stage_config"] = dict(IDENTITY)
        params.pop("scale_factor", None)
    else:
        params["first_stage_config"], params["scale_factor"] = _vae_section(vae_dir)
    params["cond_stage_config"] = _text_section(_component(folder, index, "text_encoder"),
                                                _component(folder, index, "tokenizer"), source_cond)
    params.update(_schedule(_component(folder, index, "scheduler")))
    return cfg


# ------------------------------------------------------------------------------------------------ reading


def _load_weights(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    import torch

    obj = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def clip_keys_from_hf(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A transformers CLIPTextModel state dict (``text_model.*``, or unprefixed as transformers 5 saves it) ->
    this project's ``transformer.text_model.*`` names."""
    out = {}
    for k, v in state.items():
        k = k[len("text_model."):] if k.startswith("text_model.") else k
        out["transformer.text_model." + k] = v
    return out


def load_diffusers(folder: str | os.PathLike) -> MVDreamModel:
    """The model of a diffusers folder (this project's or the community conversion's), in float32."""
    from .models.model import build_model, load_part
    from .models.text_encoders import CLIPTextEncoder
    from .models.vae import diffusers_to_ldm, load_vae

    folder = Path(folder)
    cfg = diffusers_config(folder)
    model = build_model(cfg)
    name = str(folder)
    load_part(model.unet, _load_weights(weights_file(folder / "unet")), "UNet", name, None)
    if model.vae is not None:
        state = _load_weights(weights_file(folder / "vae"))
        vae_params = model.params["first_stage_config"]["params"]
        try:
            model.vae = load_vae(vae_params, diffusers_to_ldm(state, len(vae_params["ddconfig"]["ch_mult"])))
        except (KeyError, RuntimeError, ValueError) as e:
            raise CheckpointError(f"the VAE weights of {folder}/vae do not fit its config.json: {e}") from e
    if isinstance(model.text_encoder, CLIPTextEncoder):
        state = clip_keys_from_hf(_load_weights(weights_file(folder / "text_encoder", HF_WEIGHTS)))
        load_part(model.text_encoder, state, "text encoder", name, None)
    return model.eval()


# ------------------------------------------------------------------------------------------------ writing


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def _save_tensors(path: Path, state: Mapping[str, torch.Tensor], dtype: torch.dtype | None) -> None:
    from safetensors.torch import save_file

    from .checkpoints import _unshare

    path.parent.mkdir(parents=True, exist_ok=True)
    out = {}
    for k, v in state.items():
        v = v.detach().cpu()
        out[k] = (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
    save_file(_unshare(out), str(path), metadata={"format": "pt"})


def openclip_to_hf(state: Mapping[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """This project's OpenCLIP text tower (``model.*`` names) -> transformers CLIPTextModel names
    (``text_model.*``), keeping the first ``layers`` blocks (``layers`` = all but the last for
    ``layer: penultimate``). The fused ``in_proj`` attention weights are split into q, k, v."""
    out = {"text_model.embeddings.token_embedding.weight": state["model.token_embedding.weight"],
           "text_model.embeddings.position_embedding.weight": state["model.positional_embedding"],
           "text_model.final_layer_norm.weight": state["model.ln_final.weight"],
           "text_model.final_layer_norm.bias": state["model.ln_final.bias"]}
    for i in range(layers):
        src, dst = f"model.transformer.resblocks.{i}.", f"text_model.encoder.layers.{i}."
        for part in ("weight", "bias"):
            q, k, v = state[src + f"attn.in_proj_{part}"].chunk(3, dim=0)
            out.update({dst + f"self_attn.q_proj.{part}": q, dst + f"self_attn.k_proj.{part}": k,
                        dst + f"self_attn.v_proj.{part}": v,
                        dst + f"self_attn.out_proj.{part}": state[src + f"attn.out_proj.{part}"],
                        dst + f"layer_norm1.{part}": state[src + f"ln_1.{part}"],
                        dst + f"layer_norm2.{part}": state[src + f"ln_2.{part}"],
                        dst + f"mlp.fc1.{part}": state[src + f"mlp.c_fc.{part}"],
                        dst + f"mlp.fc2.{part}": state[src + f"mlp.c_proj.{part}"]})
    return {k: v.contiguous() for k, v in out.items()}


def _clip_tokenizer_files(out: Path, pad_token: str) -> None:
    """transformers CLIPTokenizer files (vocab.json, merges.txt) built from the bundled CLIP BPE merges."""
    from .models.tokenizer import clip_vocab

    vocab, merges = clip_vocab("hf")
    _write_json(out / "vocab.json", vocab)
    (out / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
               "pad_token": pad_token}
    _write_json(out / "special_tokens_map.json", special)
    _write_json(out / "tokenizer_config.json", {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77,
                                                "do_lower_case": True, "errors": "replace",
                                                "add_prefix_space": False, **special})


def _hf_text_config(cfg: Mapping[str, Any], architecture: str, model_type: str) -> dict[str, Any]:
    out = {"architectures": [architecture], "model_type": model_type}
    out.update({k: v for k, v in cfg.items() if k not in ("architectures", "model_type", "_name_or_path",
                                                          "torch_dtype", "dtype", "transformers_version")})
    return out


def _write_text_encoder(model: MVDreamModel, tmp: Path, dtype: torch.dtype | None) -> tuple[list, list]:
    """text_encoder/ and tokenizer/; returns their model_index.json entries."""
    from .models.text_encoders import CLIPTextEncoder, MiniLMTextEncoder, OpenCLIPTextEncoder
    from .models.tokenizer import OPEN_CLIP_PAD_ID

    enc = model.text_encoder
    if enc is None:
        return [None, None], [None, None]
    if isinstance(enc, OpenCLIPTextEncoder):
        m = enc.model
        width, n = m.positional_embedding.shape[1], len(m.transformer.resblocks)
        layers = n - 1 if enc.layer == "penultimate" else n
        block = m.transformer.resblocks[0]
        config = {"vocab_size": m.token_embedding.weight.shape[0], "hidden_size": width,
                  "intermediate_size": block.mlp.c_fc.weight.shape[0], "projection_dim": m.text_projection.shape[1],
                  "num_hidden_layers": layers, "num_attention_heads": block.attn.num_heads,
                  "max_position_embeddings": m.positional_embedding.shape[0], "hidden_act": "gelu",
                  "layer_norm_eps": 1e-5, "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 1}
        _write_json(tmp / "text_encoder" / "config.json", _hf_text_config(config, "CLIPTextModel", "clip_text_model"))
        _save_tensors(tmp / "text_encoder" / "model.safetensors", openclip_to_hf(enc.state_dict(), layers), dtype)
        _clip_tokenizer_files(tmp / "tokenizer", "!")
        return ["transformers", "CLIPTextModel"], ["transformers", "CLIPTokenizer"]
    if isinstance(enc, CLIPTextEncoder):
        hf = enc.transformer.text_model.config.to_dict()
        _write_json(tmp / "text_encoder" / "config.json", _hf_text_config(hf, "CLIPTextModel", "clip_text_model"))
        prefix = "transformer.text_model."
        state = {"text_model." + k[len(prefix):]: v for k, v in enc.state_dict().items()
                 if k.startswith(prefix) and not k.endswith("position_ids")}
        _save_tensors(tmp / "text_encoder" / "model.safetensors", state, dtype)
        pad = "!" if enc.tokenizer.pad_token_id == OPEN_CLIP_PAD_ID else "<|endoftext|>"
        _clip_tokenizer_files(tmp / "tokenizer", pad)
        return ["transformers", "CLIPTextModel"], ["transformers", "CLIPTokenizer"]
    if isinstance(enc, MiniLMTextEncoder):
        arch = type(enc.transformer).__name__
        cfg = enc.transformer.config.to_dict()
        _write_json(tmp / "text_encoder" / "config.json", _hf_text_config(cfg, arch, cfg.get("model_type", "bert")))
        _save_tensors(tmp / "text_encoder" / "model.safetensors", enc.transformer.state_dict(), dtype)
        enc.hf_tokenizer.save_pretrained(str(tmp / "tokenizer"))
        return ["transformers", arch], ["transformers", type(enc.hf_tokenizer).__name__]
    raise ValueError(f"the text encoder {type(enc).__name__} has no diffusers layout")


def save_diffusers(model: MVDreamModel, out: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
    """Write ``model`` as a diffusers folder at ``out`` (see the module docstring); floating-point weights in
    ``dtype`` (None: as they are). The folder is built beside ``out`` and moved into place when complete;
    ``out`` must not exist, be empty, or be a diffusers folder (which is replaced)."""
    import diffusers

    from .models.vae import diffusers_vae_config

    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not is_diffusers_folder(out))):
        raise OutputDirError(f"{out} exists and is not a diffusers folder: choose a new (or empty) folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    version = diffusers.__version__
    params = model.params
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        unet_params = {k: v for k, v in (params["unet_config"].get("params") or {}).items() if k not in UNET_DROPPED}
        unet_params["use_linear_in_transformer"] = bool(model.unet.config.use_linear_in_transformer)
        _write_json(tmp / "unet" / "config.json", {"_class_name": UNET_CLASS, "_diffusers_version": version,
                                                   **unet_params})
        _save_tensors(tmp / "unet" / UNET_WEIGHTS[0], model.unet.state_dict(), dtype)
        vae_entry: list = [None, None]
        if model.vae is not None:
            vae_cfg = {k: list(v) if isinstance(v, tuple) else v
                       for k, v in diffusers_vae_config(params["first_stage_config"]["params"]).items()}
            _write_json(tmp / "vae" / "config.json", {"_class_name": "AutoencoderKL", "_diffusers_version": version,
                                                      "act_fn": "silu", **vae_cfg,
                                                      "scaling_factor": float(model.scale_factor)})
            _save_tensors(tmp / "vae" / UNET_WEIGHTS[0], model.vae.vae.state_dict(), dtype)
            vae_entry = ["diffusers", "AutoencoderKL"]
        te_entry, tok_entry = _write_text_encoder(model, tmp, dtype)
        s = model.noise_schedule
        _write_json(tmp / "scheduler" / "scheduler_config.json", {
            "_class_name": "DDIMScheduler", "_diffusers_version": version,
            "num_train_timesteps": s.num_timesteps, "beta_start": s.linear_start, "beta_end": s.linear_end,
            "beta_schedule": "scaled_linear", "trained_betas": None, "clip_sample": False,
            "set_alpha_to_one": False, "steps_offset": 1, "timestep_spacing": "leading",
            "prediction_type": {v: k for k, v in PREDICTION.items()}[s.prediction_type]})
        _write_json(tmp / MODEL_INDEX, {
            "_class_name": PIPELINE_CLASS, "_diffusers_version": version,
            "feature_extractor": [None, None], "image_encoder": [None, None], "requires_safety_checker": False,
            "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": te_entry, "tokenizer": tok_entry,
            "unet": [UNET_LIBRARY, UNET_CLASS], "vae": vae_entry})
        _write_json(tmp / EXTRA_FILE, {"format": EXTRA_FORMAT, "config": model.config})
        replace_dir(tmp, out)  # an earlier diffusers folder there stays until the new one is in place
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out
