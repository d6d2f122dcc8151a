"""Models from plugins (vaebench.plugins) in the training core.

A plugin model meets the contract of ``vaebench.core.protocol``: ``encode(x)`` and
``log_likelihood(x, z)`` on one batch of examples, no member or sample axes. ``ProtocolModel``
adds what the core asks beyond that: ``log_likelihood`` folds leading sample axes of z (the
importance-weighted bound's) into the batch, since a plugin need not broadcast; ``encode`` clamps
the log-variance as the built-ins do; ``decode_mean`` is the plugin's, else one seeded ancestral
``sample(z, generator)``, for the image artifacts (``has_images`` False when it has neither). Under
``torch.func`` (a pack, vaebench.core.members.Vmapped) it is the module that is vmapped. A model
whose layers are all member-aware (the built-in ``seq_vae``) is stacked instead (Fused); once
stacked (its ``members`` set) its methods take x [M, B, ...] and z [M, B, J] as they are.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from vaebench.study.config import LOGVAR_MAX, LOGVAR_MIN, ModelConfig


class ProtocolModel(nn.Module):
    """A protocol model with the face the loop and the metrics call (see the module docstring)."""

    def __init__(self, inner: nn.Module, latent_dim: int):
        super().__init__()
        self.inner = inner
        self.latent_dim = int(getattr(inner, "latent_dim", latent_dim))

    @property
    def has_images(self) -> bool:
        return hasattr(self.inner, "decode_mean") or hasattr(self.inner, "sample")

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.inner.encode(x)
        return mu, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)  # as the built-ins: exp() must not overflow

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """x [B, *event], z [..., B, J] -> [..., B]: leading sample axes folded into the batch."""
        lead, B = z.shape[:-2], z.shape[-2]
        if not lead or getattr(self.inner, "members", None) is not None:  # stacked: x [M, B, ...], z [M, B, J]
            return self.inner.log_likelihood(x, z)
        xs = x.expand(*lead, *x.shape).reshape(-1, *x.shape[1:])
        return self.inner.log_likelihood(xs, z.reshape(-1, z.shape[-1])).view(*lead, B)

    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        if hasattr(self.inner, "decode_mean"):
            return self.inner.decode_mean(z)
        return self.inner.sample(z, torch.Generator(z.device).manual_seed(0))


def construct(
    obj: Any, event_shape: tuple[int, ...], latent_dim: int, args: dict[str, Any], vocab_size: int | None = None
) -> nn.Module:
    """``obj(event_shape=..., latent_dim=..., **args)``: a class or a factory function. One that takes
    ``vocab_size`` (a token model) gets the data's vocabulary size too."""
    kwargs = dict(args)
    try:
        takes_vocab = "vocab_size" in inspect.signature(obj).parameters
    except (TypeError, ValueError):  # a builtin without a signature
        takes_vocab = False
    if takes_vocab:
        if not vocab_size:
            raise ValueError(f"{getattr(obj, '__name__', obj)} takes token data (a vocabulary); this data has none")
        kwargs["vocab_size"] = vocab_size
    return obj(event_shape=tuple(event_shape), latent_dim=latent_dim, **kwargs)


def build(cfg: ModelConfig, event_shape: tuple[int, ...], vocab_size: int | None = None) -> ProtocolModel:
    """The protocol model of ``cfg`` (the built-in pixelcnn and seq_vae, or a plugin), wrapped in
    ProtocolModel; ``vocab_size``: token data's, for a model that takes one."""
    from vaebench.plugins import resolve

    obj = resolve(cfg.kind, "vaebench.models").obj
    return ProtocolModel(construct(obj, event_shape, cfg.latent_dim, dict(cfg.args), vocab_size), cfg.latent_dim)
