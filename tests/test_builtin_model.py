"""The shipped built-in model: small files, provenance in the metadata, the package config, a real generation."""

import json
import struct

import numpy as np
import pytest
import yaml

from mvdream3d.builtin import DEFAULT_MODEL, builtin_weights_path


def _header(path) -> dict:
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n))


@pytest.fixture(scope="module")
def shipped():
    path = builtin_weights_path(DEFAULT_MODEL)
    assert path is not None, "the package ships no built-in weights"
    header = _header(path)
    return path, header, json.loads(header["__metadata__"]["mvdream3d_config"])


def test_files_are_small_fp16_and_hold_unet_and_autoencoder(shipped):
    path, header, _ = shipped
    assert path.stat().st_size < 20 * 2**20  # UNet + autoencoder, the budget
    dtypes = {v["dtype"] for k, v in header.items() if k != "__metadata__"}
    assert dtypes <= {"F16", "I64"}, dtypes
    keys = [k for k in header if k != "__metadata__"]
    assert any(k.startswith("model.diffusion_model.") for k in keys)
    assert any(k.startswith("first_stage_model.decoder.") for k in keys)


def test_metadata_records_recipe_steps_and_commit(shipped):
    _, _, config = shipped
    training = config["training"]
    assert training["recipe"]["model"]["init"] == "scratch"  # one recipe from scratch, no chain of stages
    assert training["recipe"]["model"]["config"] == "configs/train/builtin.model.yaml"
    assert training["step"] == training["recipe"]["train"]["steps"]
    assert len(training["commit"]) == 40
    assert training["vae"]["metrics"]["holdout_psnr_db"] > 30


def test_package_config_is_the_shipped_one(shipped):
    from importlib import resources

    _, _, config = shipped
    package = yaml.safe_load(resources.files("mvdream3d").joinpath("configs", f"{DEFAULT_MODEL}.yaml").read_text())
    assert package["model"] == config["model"]
    sampling = config["model"]["params"]["sampling"]
    assert set(sampling) == {"sampler", "steps", "guidance_scale", "guidance_rescale"}


def test_generate_with_the_shipped_model(tmp_path):
    from mvdream3d.cli import main

    assert main(["generate", "a red cube with a yellow nose", "--out", str(tmp_path), "--steps", "4"]) == 0
    cams = json.loads((tmp_path / "cameras.json").read_text())
    assert (cams["height"], cams["width"]) == (64, 64) and len(cams["views"]) == 4
    from PIL import Image

    view = np.asarray(Image.open(tmp_path / cams["views"][0]).convert("RGB")).astype(int)
    assert view.std() > 5  # an image, not a flat colour
