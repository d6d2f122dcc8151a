"""A one-file custom VAE for vaebench (docs/plugins.md): a study beside this file names it as
``model.kind: "./my_vae.py:TinyVAE"`` and passes ``model.args``.

The contract (vaebench.core.protocol): built as ``TinyVAE(event_shape=..., latent_dim=..., **args)``;
``encode(x)`` -> (mu, logvar), each [B, latent_dim]; ``log_likelihood(x, z)`` -> [B], log p(x|z) in
nats summed over the pixels; ``decode_mean(z)`` (optional) draws the reconstruction grid.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class TinyVAE(nn.Module):
    """One hidden layer each way, a Bernoulli decoder, a learned input dropout rate for the encoder."""

    def __init__(self, event_shape: tuple[int, ...], latent_dim: int, width: int = 64, dropout: float = 0.0):
        super().__init__()
        self.event_shape, self.latent_dim = tuple(event_shape), latent_dim
        d = math.prod(event_shape)
        self.encoder = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(d, width), nn.Tanh(), nn.Linear(width, 2 * latent_dim)
        )
        self.decoder = nn.Sequential(nn.Linear(latent_dim, width), nn.Tanh(), nn.Linear(width, d))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        return mu, logvar

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z).view(-1, *self.event_shape)

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        nll = F.binary_cross_entropy_with_logits(self.logits(z), x, reduction="none")
        return -nll.flatten(1).sum(1)

    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(z))
