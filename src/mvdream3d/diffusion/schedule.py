"""Noise schedule and the conversions between x0, eps, v and x_t.

Stable Diffusion's "scaled linear" schedule: ``betas = linspace(sqrt(b0), sqrt(b1), T) ** 2``
computed in float64 and stored in float32, exactly as the LDM code registers its buffers.
``alphas_cumprod[t]`` is the signal fraction at integer step ``t`` in [0, T).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch

PredictionType = Literal["eps", "v"]


class NoiseSchedule:
    """A discrete DDPM schedule with ``num_timesteps`` steps.

    ``q_sample`` and the conversions take ``t`` as an integer tensor of shape (N,) (one step per row
    of the batch) and broadcast the coefficients over the other dimensions.
    """

    def __init__(self, linear_start: float = 0.00085, linear_end: float = 0.012, num_timesteps: int = 1000,
                 prediction_type: PredictionType = "eps") -> None:
        if prediction_type not in ("eps", "v"):
            raise ValueError(f"prediction_type must be 'eps' or 'v', got {prediction_type!r}")
        if num_timesteps < 2:
            raise ValueError(f"num_timesteps must be >= 2, got {num_timesteps}")
        self.linear_start = linear_start
        self.linear_end = linear_end
        self.num_timesteps = num_timesteps
        self.prediction_type = prediction_type
        betas = torch.linspace(linear_start**0.5, linear_end**0.5, num_timesteps, dtype=torch.float64) ** 2
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        self.betas = betas.float()
        self.alphas_cumprod = alphas_cumprod.float()
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]]).float()
        self.sqrt_alphas_cumprod = alphas_cumprod.sqrt().float()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - alphas_cumprod).sqrt().float()

    @classmethod
    def from_config(cls, params: Mapping[str, Any]) -> NoiseSchedule:
        """From the published YAML ``model.params`` (linear_start, linear_end, timesteps, parameterization)."""
        return cls(
            float(params.get("linear_start", 0.00085)),
            float(params.get("linear_end", 0.012)),
            int(params.get("timesteps", 1000)),
            params.get("parameterization", "eps"),
        )

    def to_config(self) -> dict[str, Any]:
        return {"linear_start": self.linear_start, "linear_end": self.linear_end,
                "timesteps": self.num_timesteps, "parameterization": self.prediction_type}

    def _coef(self, table: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, device=table.device).long().reshape(-1)
        return table[t].to(like.device, like.dtype).reshape(-1, *([1] * (like.ndim - 1)))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Diffuse clean ``x0`` to step ``t``: ``sqrt(a_t) x0 + sqrt(1 - a_t) noise``."""
        return (self._coef(self.sqrt_alphas_cumprod, t, x0) * x0
                + self._coef(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise)

    def x0_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        a = self._coef(self.alphas_cumprod, t, x_t)
        return (x_t - (1 - a).sqrt() * eps) / a.sqrt()

    def eps_from_x0(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        a = self._coef(self.alphas_cumprod, t, x_t)
        return (x_t - a.sqrt() * x0) / (1 - a).sqrt()

    def velocity(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The v-prediction target ``sqrt(a_t) eps - sqrt(1 - a_t) x0``."""
        return (self._coef(self.sqrt_alphas_cumprod, t, x0) * noise
                - self._coef(self.sqrt_one_minus_alphas_cumprod, t, x0) * x0)

    def x0_from_v(self, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return (self._coef(self.sqrt_alphas_cumprod, t, x_t) * x_t
                - self._coef(self.sqrt_one_minus_alphas_cumprod, t, x_t) * v)

    def eps_from_v(self, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return (self._coef(self.sqrt_one_minus_alphas_cumprod, t, x_t) * x_t
                + self._coef(self.sqrt_alphas_cumprod, t, x_t) * v)

    def to_eps(self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The model's output as eps, whatever it predicts."""
        if self.prediction_type == "v":
            return self.eps_from_v(x_t, t, model_output)
        return model_output

    def to_x0(self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The model's output as the clean-sample estimate x0."""
        if self.prediction_type == "v":
            return self.x0_from_v(x_t, t, model_output)
        return self.x0_from_eps(x_t, t, model_output)

    def training_target(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """What the model learns to predict: ``noise`` (eps) or the velocity (v)."""
        return self.velocity(x0, t, noise) if self.prediction_type == "v" else noise

    def ldm_buffers(self) -> dict[str, torch.Tensor]:
        """The schedule buffers a published-format checkpoint carries (for saving in that format)."""
        a = self.alphas_cumprod.double()
        a_prev = self.alphas_cumprod_prev.double()
        betas = self.betas.double()
        post_var = betas * (1 - a_prev) / (1 - a)
        return {
            "betas": self.betas, "alphas_cumprod": self.alphas_cumprod,
            "alphas_cumprod_prev": self.alphas_cumprod_prev,
            "sqrt_alphas_cumprod": self.sqrt_alphas_cumprod,
            "sqrt_one_minus_alphas_cumprod": self.sqrt_one_minus_alphas_cumprod,
            "log_one_minus_alphas_cumprod": torch.log(1 - a).float(),
            "sqrt_recip_alphas_cumprod": torch.sqrt(1 / a).float(),
            "sqrt_recipm1_alphas_cumprod": torch.sqrt(1 / a - 1).float(),
            "posterior_variance": post_var.float(),
            "posterior_log_variance_clipped": torch.log(torch.clamp(post_var, min=1e-20)).float(),
            "posterior_mean_coef1": (betas * a_prev.sqrt() / (1 - a)).float(),
            "posterior_mean_coef2": ((1 - a_prev) * (1 - betas).sqrt() / (1 - a)).float(),
        }


SCHEDULE_BUFFER_NAMES = tuple(NoiseSchedule().ldm_buffers())
