"""Observation models p(x|z): per-example log-likelihoods, summed over every dimension.

docs/metrics.md (Objective): Bernoulli on logits is a sum of BCE over pixels (never a
mean), and the Gaussian terms include their normalising constant, so that ELBO and
iw_nll are in nats per example and comparable with closed forms. A mean-reduced MSE
is not a likelihood and would silently rescale beta, so it is not offered.

Every function takes ``x`` of shape [B, *event] and decoder parameters of shape
[..., B, *event] (leading sample dims allowed, for the importance-weighted bound) and
returns [..., B].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from vaebench.study.config import LOGVAR_MAX, LOGVAR_MIN

LOG_2PI = math.log(2 * math.pi)


def _sum_event(t: torch.Tensor, event_dims: int) -> torch.Tensor:
    return t.flatten(start_dim=t.dim() - event_dims).sum(-1)


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor | float) -> torch.Tensor:
    """Elementwise log N(x; mean, exp(logvar)) = -0.5*(log 2pi + logvar + (x-mean)^2/var)."""
    logvar = torch.as_tensor(logvar, dtype=mean.dtype, device=mean.device).expand_as(mean)
    return -0.5 * (LOG_2PI + logvar + (x.expand_as(mean) - mean) ** 2 * torch.exp(-logvar))


class Likelihood(torch.nn.Module):
    """Maps decoder output to log p(x|z) per example; owns any learned noise parameters."""

    def __init__(self, kind: str, event_shape: tuple[int, ...], sigma: float = 1.0):
        super().__init__()
        self.kind = kind
        self.event_shape = tuple(event_shape)
        self.n_out = 2 if kind == "gaussian_learned" else 1  # decoder channels per input channel
        self.fixed_logvar = 2 * math.log(sigma)

    def log_prob(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """x [B, *event], out: decoder output [..., B, n_out * event] split as needed -> [..., B]."""
        ev = len(self.event_shape)
        if self.kind == "bernoulli":
            x = x.expand_as(out)
            bce = F.binary_cross_entropy_with_logits(out, x, reduction="none")
            return -_sum_event(bce, ev)
        if self.kind == "gaussian":
            return _sum_event(gaussian_log_prob(x, out, self.fixed_logvar), ev)
        mean, logvar = self.split(out)
        return _sum_event(gaussian_log_prob(x, mean, logvar), ev)

    def split(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """gaussian_learned: the decoder emits mean and per-dimension log-variance side by side."""
        ev = len(self.event_shape)
        mean, logvar = out.chunk(2, dim=out.dim() - ev)
        return mean, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        """E[x|z], for reconstructions and sample grids."""
        if self.kind == "bernoulli":
            return torch.sigmoid(out)
        if self.kind == "gaussian":
            return out
        return self.split(out)[0]
