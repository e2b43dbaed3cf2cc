"""``--compile`` (torch.compile, opt-in): a clear error where it cannot work; compiled numbers equal eager ones
(the slow tests compile the tiny random model: tens of seconds each)."""

from __future__ import annotations

import pytest
import torch

from mvdream3d import compiling
from mvdream3d.cli import main
from mvdream3d.compiling import CompileUnavailableError, check_compile_support, compile_in_place, is_compiled
from mvdream3d.pipeline import MultiViewPipeline


@pytest.fixture
def no_compiler(monkeypatch):
    monkeypatch.setattr(compiling, "_cpp_compiler", lambda: None)


def test_missing_compiler_is_one_clear_error(no_compiler, tmp_path, capsys):
    with pytest.raises(CompileUnavailableError, match="needs a C\\+\\+ compiler.*apt-get install g\\+\\+"):
        check_compile_support("cpu")
    rc = main(["generate", "a red cube", "--model", "tiny-random", "--steps", "1", "--out", str(tmp_path / "g"),
               "--compile"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: --compile on the CPU needs a C++ compiler") and "Traceback" not in err
    assert not (tmp_path / "g" / "grid.png").exists()
    rc = main(["text-to-3d", "a red cube", "--model", "tiny-random", "--out", str(tmp_path / "t"), "--steps", "1",
               "--no-preview", "--compile"])
    err = capsys.readouterr().err
    assert rc == 2 and "needs a C++ compiler" in err and "run without --compile" in err
    pipe = MultiViewPipeline.from_pretrained("tiny-random")
    with pytest.raises(CompileUnavailableError, match="C\\+\\+ compiler"):
        pipe("a red cube", num_inference_steps=1, compile=True)
    assert not is_compiled(pipe.model.unet)


def test_unsupported_python_is_one_clear_error(monkeypatch):
    import torch._dynamo.eval_frame as eval_frame

    def unsupported() -> None:
        raise RuntimeError("Python 3.99+ is not yet supported for torch.compile")

    monkeypatch.setattr(eval_frame, "check_if_dynamo_supported", unsupported)
    with pytest.raises(CompileUnavailableError, match="3.99.*Run without --compile"):
        check_compile_support("cpu")


def test_missing_triton_on_cuda_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(compiling.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(CompileUnavailableError, match="needs the triton package"):
        check_compile_support("cuda")


@pytest.mark.slow
def test_compiled_unet_and_generate_match_eager():
    check_compile_support("cpu")
    torch.manual_seed(0)
    pipe = MultiViewPipeline.from_pretrained("tiny-random")
    unet = pipe.model.unet
    keys = list(unet.state_dict())
    x, t = torch.randn(8, 4, 8, 8), torch.tensor([10, 10, 500, 500, 900, 900, 999, 999])
    context, camera = torch.randn(8, 77, unet.config.context_dim), torch.randn(8, 16)
    with torch.no_grad():
        eager = unet(x, t, context=context, camera=camera, num_frames=4)
    kw = dict(num_views=4, num_inference_steps=3, seed=0, guidance_scale=5.0)
    eager_latents = pipe("a red cube", **kw).latents
    compile_in_place(unet)
    assert is_compiled(unet) and list(unet.state_dict()) == keys  # in place: same parameters and names
    with torch.no_grad():
        compiled = unet(x, t, context=context, camera=camera, num_frames=4)
    torch.testing.assert_close(compiled, eager, rtol=0, atol=1e-5)
    latents = pipe("a red cube", compile=True, **kw).latents
    torch.testing.assert_close(latents, eager_latents, rtol=0, atol=1e-5 * eager_latents.abs().max().item())


@pytest.mark.slow
def test_compiled_text_to_3d_guidance_matches_eager(tmp_path):
    # what --compile changes in a text-to-3D step: the guidance (UNet forward, VAE encoder forward and backward).
    # Its loss and its gradient w.r.t. the renders against eager mode, then compiled steps run. (The field's
    # gradients are sums over many renders' pixels that largely cancel: rounding differences of 1e-6 in the
    # render gradients become ~1e-3 there, as with any change in the order of the additions.)
    from mvdream3d.threed.config import load_text_to_3d_config
    from mvdream3d.threed.system import TextTo3D

    check_compile_support("cpu")
    cfg = load_text_to_3d_config("builtin", [
        "cameras.resolution_milestones=[[0,16,4]]", "renderer.num_samples_per_ray=12", "material.ambient_only_steps=0",
        "geometry.log2_hashmap_size=10", "geometry.n_levels=4", "geometry.max_resolution=32",
        # no CFG (a scale of 20 multiplies the UNet's rounding differences by 20 before they reach the target)
        "guidance.guidance_scale=1.0", "guidance.recon_std_rescale=0.0"])
    torch.manual_seed(0)
    run = TextTo3D("a red cube", MultiViewPipeline.from_pretrained("tiny-random").model, cfg, tmp_path)
    cams = run.cameras.sample(0, generator=torch.Generator().manual_seed(0))
    # random renders: the random model's GroupNorms on the near-constant maps of a mostly white render divide
    # rounding differences by a near-zero spread
    rgb0 = torch.rand(4, 16, 16, 3, generator=torch.Generator().manual_seed(1))
    rows = []
    for compiled in (False, True):
        if compiled:
            run._compile_model()
            assert is_compiled(run.model.unet) and is_compiled(run.model.vae.vae.encoder)
        rgb = rgb0.clone().requires_grad_(True)
        g = run.guidance(rgb, cams.c2w, run.prompt, 0, generator=torch.Generator().manual_seed(3))
        g["loss"].backward()
        rows.append((g["t"], g["loss"].item(), rgb.grad))
    (t_e, loss_e, grad_e), (t_c, loss_c, grad_c) = rows
    assert t_e == t_c and loss_c == pytest.approx(loss_e, rel=1e-5)
    torch.testing.assert_close(grad_c, grad_e, rtol=0, atol=1e-4 * grad_e.abs().max().item())
    row = run.train_step()
    assert row["step"] == 1 and torch.isfinite(torch.tensor(row["loss"]))
