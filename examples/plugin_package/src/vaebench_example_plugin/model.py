"""An MLP VAE with a Gaussian decoder whose per-pixel log-variance is learned."""

from __future__ import annotations

import math

import torch
from torch import nn

LOG_2PI = math.log(2 * math.pi)


class GaussianMLPVAE(nn.Module):
    def __init__(self, event_shape: tuple[int, ...], latent_dim: int, hidden: int = 64):
        super().__init__()
        self.event_shape, self.latent_dim = tuple(event_shape), latent_dim
        d = math.prod(event_shape)
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, 2 * latent_dim))
        self.decoder = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, d))
        self.log_sigma2 = nn.Parameter(torch.zeros(d))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return tuple(self.encoder(x).chunk(2, dim=-1))

    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z).view(-1, *self.event_shape)

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        mean, lv = self.decoder(z), self.log_sigma2
        per = -0.5 * (LOG_2PI + lv + (x.flatten(1) - mean) ** 2 / lv.exp())
        return per.sum(1)
