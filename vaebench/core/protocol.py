"""What the training core asks of a model, an objective and a dataset (docs/design.md).

The built-in families and a user's plugins meet the same contracts, so every trial, solo or
packed, built-in or not, runs through one loop and one set of metrics.

A model is an ``nn.Module`` built as ``Model(event_shape=..., latent_dim=..., **model.args)``:

- ``encode(x)``: x [B, *event] -> (mu, logvar), each [B, J]: the Gaussian posterior
  q(z|x) = N(mu, diag(exp(logvar)));
- ``log_likelihood(x, z)``: x [B, *event], z [B, J] -> [B], log p(x|z) per example in nats
  (summed over the event, never a mean). It sees x, so a decoder that conditions on x
  (autoregressive, teacher-forced) fits the same contract as a factorised one;
- optional image hooks, used for the reconstruction grid and the traversals when the data are
  images: ``decode_mean(z)`` -> [B, *event], the decoder's mean (a factorised decoder), or
  ``sample(z, generator)`` -> [B, *event], an ancestral sample (an autoregressive one).

The core adds the member axis (a pack of M trials) and sample axes (the importance-weighted
bound) itself: through fused layers for the built-in families, through ``torch.func`` for any
other module, and by folding sample axes into the batch when a model cannot broadcast.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

REQUIRED_METHODS = ("encode", "log_likelihood")
IMAGE_HOOKS = ("decode_mean", "sample")


@runtime_checkable
class VAEModel(Protocol):
    """The model contract (see the module docstring for shapes)."""

    latent_dim: int

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor: ...
