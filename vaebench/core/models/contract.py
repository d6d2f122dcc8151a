"""Models that meet the contract of ``vaebench.core.protocol`` in today's training loop and metrics.

The loop and the metrics call ``model.log_likelihood(x, model.decode(z))`` and draw images with
``model.likelihood.mean(model.decode(z))``; a contract model's ``log_likelihood(x, z)`` takes z
itself (an autoregressive decoder needs x and z together, so there is no decoder output to pass
around). ``ContractAdapter`` bridges the two: ``decode`` is the identity on z, ``log_likelihood``
forwards, and ``likelihood.mean`` draws the model's image hook (``decode_mean``, else an ancestral
``sample`` with a fixed generator, so a traversal's rows differ only through z).
"""

from __future__ import annotations

import torch
from torch import nn


class _ImageHook:
    """``likelihood.mean(z)`` for a contract model (not a Module: the model is registered once)."""

    def __init__(self, model: nn.Module):
        self._model = model

    @torch.no_grad()
    def mean(self, z: torch.Tensor) -> torch.Tensor:
        m = self._model
        if hasattr(m, "decode_mean"):
            return m.decode_mean(z)
        return m.sample(z, torch.Generator(z.device).manual_seed(0)).float()


class ContractAdapter(nn.Module):
    """Wraps a contract model; ``model`` holds it (its parameters are under ``model.`` in a checkpoint)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.latent_dim = model.latent_dim
        self.likelihood = _ImageHook(model)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.encode(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The identity: the 'decoder output' of a contract model is z (see the module docstring)."""
        return z

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.model.log_likelihood(x, z)
