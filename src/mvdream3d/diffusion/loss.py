"""The diffusion training loss, shared by training (``training/trainer.py``) and DreamBooth
(``training/dreambooth.py``).

The model sees ``x_t = q_sample(x0, t, noise)`` and learns to predict ``schedule.training_target(x0, t, noise)``:
the noise (eps models) or the velocity (v models). The loss is the mean squared error to that target in
float32, optionally weighted per pixel (feature masks: the joint-training curriculum's weight on the parts
that tell an object's sides apart) and per sample (min-SNR-gamma).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .schedule import NoiseSchedule

__all__ = ["diffusion_loss", "min_snr_weights"]


def min_snr_weights(schedule: NoiseSchedule, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma weights per sample: min(SNR, gamma) / SNR for eps targets and
    min(SNR, gamma) / (SNR + 1) for v targets, SNR = a_t / (1 - a_t). Down-weights the easy low-noise
    steps, which speeds up convergence (Hang et al., "Efficient Diffusion Training via Min-SNR Weighting")."""
    a = schedule.alphas_cumprod.to(t.device)[t.long()].double()
    snr = a / (1 - a)
    clipped = torch.clamp(snr, max=gamma)
    w = clipped / (snr + 1) if schedule.prediction_type == "v" else clipped / snr
    return w.float()


def diffusion_loss(pred: torch.Tensor, schedule: NoiseSchedule, x0: torch.Tensor, t: torch.Tensor,
                   noise: torch.Tensor, *, masks: torch.Tensor | None = None, mask_weight: float = 0.0,
                   normalize_mask: bool = False, min_snr_gamma: float = 0.0) -> torch.Tensor:
    """The scalar diffusion loss of the model output ``pred`` (N, C, h, w) for clean ``x0``, timesteps ``t``
    (N,) and ``noise`` (both like ``pred``): the mean of ``(pred - target)^2`` in float32 with ``target`` =
    ``schedule.training_target(x0, t, noise)`` (eps or v, by the schedule's prediction type).

    ``masks`` (N, H, W) in [0, 1] weigh each pixel by ``1 + mask_weight * m``; masks at image resolution for
    a latent model are averaged over each latent pixel (area resize to h x w). ``normalize_mask``: each
    image's weights are divided by their mean (the weighting then moves the loss onto the masked pixels
    without scaling it up). ``min_snr_gamma`` > 0 weighs
    each sample's mean by :func:`min_snr_weights`. Without either it is ``F.mse_loss`` of the two.
    """
    target = schedule.training_target(x0, t, noise)
    if min_snr_gamma <= 0 and masks is None:
        return F.mse_loss(pred.float(), target.float())
    sq = (pred.float() - target.float()).square()
    if masks is not None:
        m = masks.to(sq.device, torch.float32)[:, None]
        if m.shape[-2:] != sq.shape[-2:]:  # latent models: the mask's coverage of each latent pixel
            m = F.interpolate(m, size=sq.shape[-2:], mode="area")
        w = 1.0 + mask_weight * m
        if normalize_mask:
            w = w / w.mean(dim=(-2, -1), keepdim=True)
        sq = sq * w
    per_sample = sq.flatten(1).mean(1)
    if min_snr_gamma <= 0:
        return per_sample.mean()
    weights = min_snr_weights(schedule, t, min_snr_gamma).to(per_sample.device)
    return (weights * per_sample).mean()
