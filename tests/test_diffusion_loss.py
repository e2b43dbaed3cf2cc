"""The one diffusion loss (mvdream3d.diffusion.loss) that training and DreamBooth share: the eps / v target,
per-pixel mask weights and min-SNR weights, checked against the formulas written out here."""

import pytest
import torch
import torch.nn.functional as F

from mvdream3d import NoiseSchedule
from mvdream3d.diffusion.loss import diffusion_loss, min_snr_weights


def _batch(seed=0, n=4, c=3, h=8, w=8):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, c, h, w, generator=g), torch.randn(n, c, h, w, generator=g),
            torch.randn(n, c, h, w, generator=g), torch.tensor([10, 300, 600, 999]))


@pytest.mark.parametrize("pred_type", ["eps", "v"])
def test_plain_loss_is_the_mse_to_the_schedules_target(pred_type):
    s = NoiseSchedule(prediction_type=pred_type)
    pred, x0, noise, t = _batch()
    target = noise if pred_type == "eps" else s.velocity(x0, t, noise)
    loss = diffusion_loss(pred, s, x0, t, noise)
    assert torch.equal(loss, F.mse_loss(pred, target))
    other = diffusion_loss(pred, NoiseSchedule(prediction_type="v" if pred_type == "eps" else "eps"), x0, t, noise)
    assert not torch.allclose(loss, other)  # the target follows the schedule's prediction type


def test_mask_weights_at_image_resolution_are_averaged_over_each_latent_pixel():
    s = NoiseSchedule()
    pred, x0, noise, t = _batch()
    masks = torch.zeros(4, 16, 16)
    masks[:, :8, :8] = 1.0  # the top-left quarter at 2x the latent size: latent pixels [0:4, 0:4]
    masks[:, 8, 8] = 1.0  # a quarter of latent pixel (4, 4)
    loss = diffusion_loss(pred, s, x0, t, noise, masks=masks, mask_weight=3.0)
    w = torch.ones(4, 1, 8, 8)
    w[:, :, :4, :4] = 4.0
    w[:, :, 4, 4] = 1.75
    torch.testing.assert_close(loss, (w * (pred - noise).square()).mean())
    assert torch.equal(diffusion_loss(pred, s, x0, t, noise, masks=masks, mask_weight=0.0),
                       (pred - noise).square().flatten(1).mean(1).mean())


def test_normalized_mask_weights_keep_each_images_mean_weight_at_one():
    s = NoiseSchedule()
    pred, x0, noise, t = _batch()
    masks = torch.zeros(4, 8, 8)
    masks[:2, :2, :4] = 1.0  # images 0-1: 8 of 64 pixels; images 2-3: no feature
    loss = diffusion_loss(pred, s, x0, t, noise, masks=masks, mask_weight=20.0, normalize_mask=True)
    w = torch.ones(4, 1, 8, 8)
    w[:2, :, :2, :4] = 21.0
    w = w / w.mean(dim=(-2, -1), keepdim=True)  # images 0-1: 64 / (56 + 8 * 21) = 0.286 off, 6.0 on
    torch.testing.assert_close(w[0, 0, 0, 0], torch.tensor(21.0 * 64 / 224))
    torch.testing.assert_close(loss, (w * (pred - noise).square()).mean())
    sq = (pred - noise).square()
    plain = diffusion_loss(pred, s, x0, t, noise, masks=masks, mask_weight=20.0)
    # an image without a feature keeps its plain loss; one with it moves weight onto the feature
    assert torch.allclose(sq[2:].mean(), (w[2:] * sq[2:]).mean())
    assert loss < plain


def test_min_snr_weights_each_samples_mean():
    s = NoiseSchedule(prediction_type="v")
    pred, x0, noise, t = _batch()
    a = s.alphas_cumprod[t].double()
    snr = a / (1 - a)
    expected_w = (snr.clamp(max=5.0) / (snr + 1)).float()
    torch.testing.assert_close(min_snr_weights(s, t, 5.0), expected_w)
    per_sample = (pred - s.velocity(x0, t, noise)).square().flatten(1).mean(1)
    torch.testing.assert_close(diffusion_loss(pred, s, x0, t, noise, min_snr_gamma=5.0),
                               (expected_w * per_sample).mean())
