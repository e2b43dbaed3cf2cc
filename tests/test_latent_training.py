"""The built-in latent model's pieces: the autoencoder trainer, the latent cache, training from the cache."""

import json

import pytest
import torch
from safetensors.torch import load_file
from test_training import TINY_PIXEL_MODEL, make_image_text_folder, make_multiview_folder

from mvdream3d.training.config import config_from_dict

TINY_VAE_ARGS = ["--steps", "4", "--batch-size", "4", "--image-size", "16", "--ch", "32", "--ch-mult", "1", "2",
                 "--z-channels", "4"]


@pytest.fixture
def world(tmp_path):
    """A folder shaped like a `mvdream3d synth` world (multiview/ and image_text/)."""
    root = tmp_path / "world"
    make_multiview_folder(root / "multiview", n_assets=4)
    make_image_text_folder(root / "image_text")
    for i, p in enumerate(sorted((root / "image_text").glob("*.png"))):  # the world's file names
        p.rename(root / "image_text" / f"img_{i:05d}.png")
        (root / "image_text" / f"img{i}.txt").rename(root / "image_text" / f"img_{i:05d}.txt")
    return root


def test_train_vae_writes_a_loadable_autoencoder_and_resumes_exactly(tmp_path, world):
    from mvdream3d.cli import main
    from mvdream3d.models.vae import load_vae
    from mvdream3d.training.autoencoder import read_autoencoder

    assert main(["train-vae", "--data", str(world), "--out", str(tmp_path / "a"), *TINY_VAE_ARGS]) == 0
    config, state = read_autoencoder(tmp_path / "a" / "vae.safetensors")
    assert config["scale_factor"] > 0 and config["metrics"]["holdout_psnr_db"] > 0
    vae = load_vae(config["first_stage_config"]["params"], state)
    z = vae.encode(torch.zeros(1, 3, 16, 16)).mean
    assert z.shape == (1, 4, 8, 8)
    # interrupted after 2 steps, resumed: the same weights as the uninterrupted run
    assert main(["train-vae", "--data", str(world), "--out", str(tmp_path / "b"), *TINY_VAE_ARGS,
                 "--max-steps", "2"]) == 0
    assert not (tmp_path / "b" / "vae.safetensors").exists()
    assert main(["train-vae", "--data", str(world), "--out", str(tmp_path / "b"), *TINY_VAE_ARGS, "--resume"]) == 0
    a, b = load_file(tmp_path / "a" / "vae.safetensors"), load_file(tmp_path / "b" / "vae.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)
    # a second run into a folder with checkpoints needs --resume
    assert main(["train-vae", "--data", str(world), "--out", str(tmp_path / "a"), *TINY_VAE_ARGS]) == 2
    assert main(["train-vae", "--data", str(tmp_path), "--out", str(tmp_path / "c"), *TINY_VAE_ARGS]) == 2


def _cached_config(tmp_path, world, out, **train):
    return {
        "model": {"config": TINY_PIXEL_MODEL},
        "data": {"multiview": str(world / "multiview"), "image_text": str(world / "image_text"), "num_views": 4,
                 "image_size": 16, "p_2d": 0.5, "batch_size": 2, "cache_latents": True},
        "train": {"steps": 4, "lr": 1e-3, "seed": 0, **train},
        "output": {"dir": str(tmp_path / out), "checkpoint_every": 2, "log_every": 1, "sample_every": 0},
    }


def test_cached_training_matches_batches_resumes_exactly_and_logs_cpu_time(tmp_path, world):
    from mvdream3d.training.latent_cache import CACHE_FILE, LatentCache
    from mvdream3d.training.trainer import step_generator, train

    train(config_from_dict(_cached_config(tmp_path, world, "a")))
    from mvdream3d.checkpoints import read_checkpoint

    made = read_checkpoint(tmp_path / "a" / "model.safetensors")[1]["training"]  # the file says how it was made
    assert made["step"] == 4 and made["ema"] and made["recipe"]["data"]["cache_latents"] is True
    cache = LatentCache.load(tmp_path / "a" / CACHE_FILE)
    assert cache.mv_latents.shape == (4, 8, 3, 16, 16) and cache.im_latents.shape == (6, 3, 16, 16)
    # a cached multi-view batch is what MultiViewDataset gives for the same assets and start views
    from mvdream3d.data.datasets import MultiViewDataset

    b = cache.multiview_batch(step_generator(0, 0, 0), 2, 4)
    assert b["latents"].shape == (8, 3, 16, 16) and b["cameras"].shape == (8, 16) and b["num_frames"] == 4
    g = step_generator(0, 0, 0)
    assets, starts = torch.randint(0, 4, (2,), generator=g).tolist(), torch.randint(0, 8, (2,), generator=g).tolist()
    ds = MultiViewDataset(world / "multiview", num_views=4, image_size=16)
    for k, (a, s0) in enumerate(zip(assets, starts, strict=True)):
        item = ds.get(a, start=s0)
        torch.testing.assert_close(b["latents"][4 * k:4 * k + 4], item["images"])
        torch.testing.assert_close(b["cameras"][4 * k:4 * k + 4], item["cameras"])
        assert b["captions"][k] == item["caption"]
    assert cache.image_batch(step_generator(0, 0, 0), 3)["latents"].shape == (3, 3, 16, 16)
    log = [json.loads(x) for x in (tmp_path / "a" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4] and all(r["cpu_s"] > 0 for r in log)
    assert [r["cpu_s"] for r in log] == sorted(r["cpu_s"] for r in log)
    # stopped after 2 steps and resumed: the cache is reused and the weights equal the uninterrupted run's
    train(config_from_dict(_cached_config(tmp_path, world, "b")), max_steps_this_run=2)
    mtime = (tmp_path / "b" / CACHE_FILE).stat().st_mtime_ns
    train(config_from_dict(_cached_config(tmp_path, world, "b")), resume=True)
    assert (tmp_path / "b" / CACHE_FILE).stat().st_mtime_ns == mtime
    a = load_file(tmp_path / "a" / "checkpoints" / "step_0000004" / "unet.safetensors")
    b2 = load_file(tmp_path / "b" / "checkpoints" / "step_0000004" / "unet.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b2[k], atol=1e-6, rtol=1e-5)


def test_cached_text_encoder_equals_the_encoder():
    from mvdream3d.models.model import build_model
    from mvdream3d.training.latent_cache import CachedTextEncoder

    model = build_model(TINY_PIXEL_MODEL)
    cached = CachedTextEncoder(model)
    caps = ["a red cube", "", "a red cube", "a blue sphere"]
    torch.testing.assert_close(cached.encode_text(caps), model.encode_text(caps), atol=1e-5, rtol=1e-5)
    assert set(cached.table) == {"a red cube", "", "a blue sphere"}


def test_feature_loss_steps_window(tmp_path):
    from mvdream3d.training.config import ConfigError
    from mvdream3d.training.trainer import feature_weight_at

    raw = {"model": {"config": TINY_PIXEL_MODEL}, "data": {"multiview": str(tmp_path)},
           "train": {"steps": 10, "feature_loss_weight": 5.0, "feature_loss_steps": [3, 6]}}
    t = config_from_dict(raw).train
    assert [feature_weight_at(t, s) for s in range(8)] == [0, 0, 0, 5, 5, 5, 0, 0]
    raw["train"]["feature_loss_steps"] = None  # all steps
    assert feature_weight_at(config_from_dict(raw).train, 9) == 5.0
    for bad in ([6, 3], [1], "3-6"):
        raw["train"]["feature_loss_steps"] = bad
        with pytest.raises(ConfigError, match="feature_loss_steps"):
            config_from_dict(raw)
