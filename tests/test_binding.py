"""Text binding / camera use diagnostics (mvdream3d.evaluation.binding)."""

from __future__ import annotations

import pytest
import torch
from conftest import REQUIRE_GL, skip_unless_required

from mvdream3d.evaluation.binding import binding_cases, feature_binding, format_binding_table


@pytest.fixture(scope="module")
def cases():
    try:
        return binding_cases(2, seed=0, size=16)
    except RuntimeError as err:  # no EGL / Mesa on this machine
        skip_unless_required(REQUIRE_GL, f"no headless OpenGL: {err}")


def test_cases_have_feature_weights_and_opposite_cameras(cases):
    c = cases[0]
    assert c["images"].shape == (4, 3, 16, 16) and c["weights"].shape == (4, 16, 16)
    assert c["images"].min() >= -1 and c["images"].max() <= 1
    assert 0 <= float(c["weights"].min()) and float(c["weights"].max()) <= 1
    assert float(c["weights"][0].sum()) > 0 and float(c["weights"][2].sum()) == 0  # front sees it, back does not
    assert " with " in c["caption"] and c["plain_caption"] == c["caption"].split(" with ")[0]
    cam = c["cameras"].reshape(4, 4, 4)[:, :3, 3]
    torch.testing.assert_close(cam[0, :2], -cam[2, :2], atol=1e-5, rtol=0)  # view k + 2: the opposite azimuth
    torch.testing.assert_close(cam[0, 2], cam[2, 2])  # at the same height


class _Blind(torch.nn.Module):
    """A UNet that ignores text and camera: both scores must be exactly 0."""

    def __init__(self, unet):
        super().__init__()
        self.inner, self.has_camera = unet, True

    def forward(self, x, t, context=None, camera=None, num_frames=1):
        return self.inner(x, t, context=torch.zeros_like(context), camera=torch.zeros_like(camera),
                          num_frames=num_frames)


def test_scores_of_a_model_blind_to_text_and_camera_are_zero(cases):
    from mvdream3d.pipeline import resolve_model

    model = resolve_model("tiny-random")
    model.unet = _Blind(model.unet)
    res = feature_binding(model, cases, timesteps=(300,), noise_draws=1)
    row = res["rows"][0]
    assert res["objects"] == 2 and row["t"] == 300
    assert abs(row["text_binding"]) < 1e-6 and abs(row["camera_use"]) < 1e-6
    assert row["feature_error"]["full"] > 0
    assert "| m | 300 |" in format_binding_table({"m": res})
    with pytest.raises(ValueError, match="no cases"):
        feature_binding(model, [])
