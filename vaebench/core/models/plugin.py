"""Models from plugins (vaebench.plugins) in the training loop.

A plugin model meets the contract of ``vaebench.core.protocol``: ``encode(x)`` and
``log_likelihood(x, z)`` on one batch of examples, no member or sample axes. The loop and the
metrics call a built-in VAE as ``log_likelihood(x, decode(z))`` with z possibly carrying leading
sample axes; ``ProtocolModel`` gives a plugin model that face: ``decode`` is the identity (the
"decoder output" is z itself) and ``log_likelihood`` folds leading sample axes into the batch,
since a plugin need not broadcast.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from vaebench.study.config import LOGVAR_MAX, LOGVAR_MIN, ModelConfig


class _ImageHooks:
    """``likelihood.mean(out)`` for the reconstruction grid and traversals: the plugin's
    ``decode_mean(z)``, else one ancestral ``sample(z, generator)`` (seeded: the same picture on a
    rerun), else None (the caller draws no images)."""

    def __init__(self, model: nn.Module):
        self._model = model

    def mean(self, z: torch.Tensor) -> torch.Tensor:
        if hasattr(self._model, "decode_mean"):
            return self._model.decode_mean(z)
        g = torch.Generator(z.device).manual_seed(0)
        return self._model.sample(z, g)


class ProtocolModel(nn.Module):
    """A protocol model with the face the loop and the metrics call (see the module docstring)."""

    def __init__(self, inner: nn.Module, latent_dim: int):
        super().__init__()
        self.inner = inner
        self.latent_dim = int(getattr(inner, "latent_dim", latent_dim))
        self.likelihood = _ImageHooks(inner)

    @property
    def has_images(self) -> bool:
        return hasattr(self.inner, "decode_mean") or hasattr(self.inner, "sample")

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.inner.encode(x)
        return mu, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)  # as the built-ins: exp() must not overflow

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """x [B, *event], z [..., B, J] -> [..., B]: leading sample axes folded into the batch."""
        lead, B = z.shape[:-2], z.shape[-2]
        if not lead:
            return self.inner.log_likelihood(x, z)
        xs = x.expand(*lead, *x.shape).reshape(-1, *x.shape[1:])
        return self.inner.log_likelihood(xs, z.reshape(-1, z.shape[-1])).view(*lead, B)


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


def build(cfg: ModelConfig, event_shape: tuple[int, ...], vocab_size: int | None = None) -> nn.Module:
    """The model of ``cfg``: a factorised built-in VAE (mlp, conv, linear), or a protocol model (the
    built-in pixelcnn and seq_vae, or a plugin) wrapped in ProtocolModel. ``vocab_size``: token data's."""
    from vaebench.core.models.vae import build_model
    from vaebench.plugins import resolve
    from vaebench.study.config import BUILTIN_MODELS

    if cfg.kind in BUILTIN_MODELS:
        return build_model(cfg, event_shape)
    obj = resolve(cfg.kind, "vaebench.models").obj
    return ProtocolModel(construct(obj, event_shape, cfg.latent_dim, dict(cfg.args), vocab_size), cfg.latent_dim)
