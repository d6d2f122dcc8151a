"""The reference: the plainest PyTorch VAE loop, nothing but encode, reparameterise,
decode, loss and step. vaebench's trial is measured against this.

Same model as vaebench's ``model: {kind: mlp, hidden: [400], latent_dim: 20,
likelihood: bernoulli}`` (784-400-2x20 encoder, 20-400-784 decoder, ReLU), same loss
(summed Bernoulli NLL + closed-form KL, mean over the batch), Adam lr 1e-3, batch 128,
a fresh random permutation every epoch. No metrics, no logging, no sync per step.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn


class BareVAE(nn.Module):
    def __init__(self, d: int = 784, hidden: int = 400, latent: int = 20):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, 2 * latent))
        self.dec = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, d))


def bare_epochs(
    x: torch.Tensor,
    epochs: int,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    fused: bool = False,
    max_steps: int | None = None,
) -> Iterator[tuple[int, float]]:
    """Train on ``x`` [N, 784] (0/1 floats); yield (optimiser steps, seconds) after each epoch,
    model and optimiser creation counted in the first. ``fused``: Adam's fused kernel instead of
    PyTorch's default (a second reference, not the plainest loop)."""
    started = time.perf_counter()
    torch.manual_seed(seed)
    model = BareVAE(x.shape[1])
    opt = torch.optim.Adam(model.parameters(), lr=lr, **({"fused": True} if fused else {}))
    for _ in range(epochs):
        steps = 0
        for idx in torch.randperm(x.shape[0]).split(batch_size):
            xb = x[idx]
            mu, logvar = model.enc(xb).chunk(2, dim=-1)
            z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
            logits = model.dec(z)
            nll = F.binary_cross_entropy_with_logits(logits, xb, reduction="sum")
            kl = 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1).sum()
            loss = (nll + kl) / xb.shape[0]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
            if max_steps is not None and steps >= max_steps:
                break
        yield steps, time.perf_counter() - started
        started = time.perf_counter()  # the caller's time between epochs is not ours
