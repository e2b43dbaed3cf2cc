"""DreamBoothConfig on the config core: typed fields, errors that name the key, ``KEY=VALUE`` overrides (the
``--set`` of ``mvdream3d dreambooth`` and the web app's ``--dreambooth-set``). No model is loaded here."""

import pytest

from mvdream3d.errors import ConfigError
from mvdream3d.training.dreambooth import DreamBoothConfig, dreambooth, dreambooth_overrides


def test_from_dict_gives_the_defaults_and_typed_fields():
    assert DreamBoothConfig.from_dict(None) == DreamBoothConfig() == DreamBoothConfig.from_dict({})
    cfg = DreamBoothConfig.from_dict({"steps": 50, "lambda_preservation": 2, "lora_targets": ["to_q", "to_v"],
                                      "lr": 1e-3, "flip": False})
    assert cfg.steps == 50 and cfg.lambda_preservation == 2.0 and isinstance(cfg.lambda_preservation, float)
    assert cfg.lora_targets == ("to_q", "to_v") and cfg.lr == 1e-3 and cfg.flip is False


@pytest.mark.parametrize("raw, message", [
    ({"stepz": 3}, r"dreambooth: unknown key\(s\) \['stepz'\]; known keys: \[.*'steps'"),
    ({"steps": "many"}, "dreambooth.steps: must be an integer, got 'many'"),
    ({"flip": "no"}, "dreambooth.flip: must be true or false, got 'no'"),
    ({"lambda_preservation": "x"}, "dreambooth.lambda_preservation: must be a number, got 'x'"),
    ({"lr": "fast"}, r"dreambooth.lr: must be a number \(or null: the default\), got 'fast'"),
    ({"image_size": 16.5}, "dreambooth.image_size: must be a whole number of pixels"),
    ({"lora_targets": "to_q"}, "dreambooth.lora_targets: must be a list of module names"),
    ({"train": "everything"}, "dreambooth.train: must be one of full, attention, lora, got 'everything'"),
    ({"steps": 0}, "dreambooth.steps: must be >= 1, got 0"),
    ({"lr": -1.0}, "dreambooth.lr: must be > 0, got -1.0"),
    ({"lambda_preservation": -0.5}, "dreambooth.lambda_preservation: must be >= 0, got -0.5"),
    ({"mixed_precision": "fp8"}, "dreambooth.mixed_precision: must be no, bf16 or fp16, got 'fp8'"),
    ({"image_size": 4}, "dreambooth.image_size: must be >= 8 pixels, got 4"),
])
def test_bad_settings_are_config_errors_naming_the_key(raw, message):
    with pytest.raises(ConfigError, match=message):
        DreamBoothConfig.from_dict(raw)


def test_overrides_go_through_the_config_core():
    settings = dreambooth_overrides(["steps=50", "dreambooth.lora_targets=[to_q, to_v]", "flip=false",
                                     " train = lora"])
    assert settings == {"steps": 50, "lora_targets": ["to_q", "to_v"], "flip": False, "train": "lora"}
    cfg = DreamBoothConfig().merged(settings)
    assert (cfg.steps, cfg.lora_targets, cfg.flip, cfg.train) == (50, ("to_q", "to_v"), False, "lora")
    assert dreambooth_overrides([]) == {}
    for bad in ("steps", "train.steps=5", "=3"):
        with pytest.raises(ConfigError, match="must look like KEY=VALUE"):
            dreambooth_overrides([bad])
    with pytest.raises(ConfigError, match="stepz"):
        dreambooth_overrides(["stepz=5"])
    with pytest.raises(ConfigError, match="dreambooth.batch_size: must be >= 1"):
        dreambooth_overrides(["batch_size=0"])


def test_dreambooth_rejects_an_unknown_setting_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="stepz"):
        dreambooth(tmp_path / "no-photos", "sks", "toy", out=tmp_path / "out", stepz=3)
    assert not (tmp_path / "out").exists()


def test_cli_set_reaches_the_config_and_a_bad_one_is_a_user_error(tmp_path, monkeypatch, capsys):
    import mvdream3d.training.dreambooth as db
    from mvdream3d.cli import main

    seen = {}

    def fake(images, token, class_word, *, cfg, **kw):
        seen["cfg"] = cfg
        raise ValueError("stop here")

    monkeypatch.setattr(db, "dreambooth", fake)
    argv = ["dreambooth", "--images", str(tmp_path), "--class-word", "toy", "--out", str(tmp_path / "o"),
            "--steps", "7", "--no-flip"]
    assert main([*argv, "--set", "grad_clip=0.5", "--set", "lora_targets=[to_k]", "--set", "steps=9"]) == 2
    cfg = seen["cfg"]
    assert (cfg.grad_clip, cfg.lora_targets, cfg.steps, cfg.flip) == (0.5, ("to_k",), 9, False)  # --set last
    capsys.readouterr()
    assert main([*argv, "--set", "stepz=1"]) == 2
    assert "stepz" in capsys.readouterr().err


def test_web_app_dreambooth_set_names_the_option_and_the_key():
    from mvdream3d.webapp.cli import parse_dreambooth_settings

    assert parse_dreambooth_settings(["sample_steps=2", "train=lora"]) == {"sample_steps": 2, "train": "lora"}
    with pytest.raises(ConfigError, match=r"--dreambooth-set: dreambooth: unknown key\(s\) \['stepz'\]"):
        parse_dreambooth_settings(["stepz=2"])
    with pytest.raises(ConfigError, match="--dreambooth-set: dreambooth.sample_steps: must be an integer"):
        parse_dreambooth_settings(["sample_steps=two"])


def test_exponent_form_numbers_are_numbers_in_every_config():
    """YAML 1.1 reads ``1e-4`` as a string; the config core reads it as the float it spells."""
    from mvdream3d.config_core import as_number
    from mvdream3d.threed.config import load_text_to_3d_config
    from mvdream3d.training.dreambooth import DreamBoothConfig, dreambooth_overrides

    assert as_number("1e-4") == 1e-4 and as_number("-2.5E+3") == -2500.0
    assert as_number("sks") == "sks" and as_number("1e") == "1e" and as_number(3) == 3
    assert DreamBoothConfig().merged(dreambooth_overrides(["lr=2e-5"])).lr == 2e-5
    assert load_text_to_3d_config("builtin", ["optim.lr_mlp=1e-3"]).optim.lr_mlp == 1e-3
