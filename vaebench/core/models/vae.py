"""The VAE: an encoder giving q(z|x) = N(mu, diag(exp(logvar))), a decoder, a likelihood.

One flat class composed of parts, no inheritance tree: ``build_model`` picks the
encoder/decoder family (mlp, conv, linear) from ``ModelConfig``. The parts are built from
member-aware layers (``vaebench.core.models.layers``): the same model runs one trial with the
plain ``torch.nn`` ops, or M trials stacked (``stack_members``) with x [M, B, *event] and z
[M, B, J]. It meets the model contract of ``vaebench.core.protocol``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vaebench.core.models.layers import Conv2d, ConvTranspose2d, Flatten, Linear, MemberAware, members_first
from vaebench.core.models.likelihoods import Likelihood
from vaebench.study.config import LOGVAR_MAX, LOGVAR_MIN, ModelConfig


class VAE(nn.Module):
    def __init__(self, encoder: nn.Module, decoder: nn.Module, likelihood: Likelihood, latent_dim: int):
        super().__init__()
        self.encoder, self.decoder, self.likelihood = encoder, decoder, likelihood
        self.latent_dim = latent_dim

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, *event] -> (mu, logvar), each [B, J]; logvar clamped to a safe range."""
        mu, logvar = self.encoder(x)
        return mu, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z [..., B, J] -> decoder output [..., B, *out_event] (logits or Gaussian parameters)."""
        return self.decoder(z)

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x|z) per example, [..., B], in nats: x [B, *event], z [..., B, J] decoded here."""
        return self.likelihood.log_prob(x, self.decode(z))

    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        """E[x|z], [..., B, *event]: reconstructions and sample grids."""
        return self.likelihood.mean(self.decode(z))


def reparameterise(
    mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None, n: int | None = None
) -> torch.Tensor:
    """z = mu + sigma * eps; with ``n``, draws [n, B, J] samples."""
    shape = mu.shape if n is None else (n, *mu.shape)
    eps = torch.randn(shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return mu + torch.exp(0.5 * logvar) * eps


# ----------------------------------------------------------------------- encoders


class GaussianHead(nn.Module):
    """Body features -> (mu, logvar) through one linear layer."""

    def __init__(self, body: nn.Module, features: int, latent_dim: int):
        super().__init__()
        self.body, self.head = body, Linear(features, 2 * latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.body(x)).chunk(2, dim=-1)


def _mlp(widths: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers)


class MLPDecoder(nn.Module):
    def __init__(self, latent_dim: int, hidden: list[int], out_shape: tuple[int, ...]):
        super().__init__()
        self.out_shape = out_shape
        self.body = _mlp([latent_dim, *reversed(hidden)])
        self.out = Linear(hidden[0] if hidden else latent_dim, math.prod(out_shape))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(z)).unflatten(-1, self.out_shape)


class ConvDecoder(nn.Module):
    """Mirror of the conv encoder; output_size makes any input size (28, 64, ...) come back exactly."""

    def __init__(self, latent_dim: int, channels: list[int], sizes: list[int], out_channels: int):
        super().__init__()
        self.sizes, self.c0 = sizes, channels[-1]
        self.fc = Linear(latent_dim, channels[-1] * sizes[-1] ** 2)
        chans = [*reversed(channels), out_channels]
        self.ups = nn.ModuleList(ConvTranspose2d(a, b, 4, stride=2, padding=1) for a, b in zip(chans[:-1], chans[1:]))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z [..., B, J] -> [..., B, C, H, W]; stacked, z [M, B, J] -> [M, B, C, H, W]."""
        m = 0 if self.fc.members is None else 1  # the member dim stays in front
        lead, s = z.shape[m:-1], self.sizes[-1]
        h = torch.relu(self.fc(z.flatten(m, -2))).unflatten(-1, (self.c0, s, s))  # [(M,) N, C, s, s]
        targets = list(reversed(self.sizes[:-1]))
        for i, up in enumerate(self.ups):
            h = up(h, output_size=(targets[i], targets[i]))
            if i < len(self.ups) - 1:
                h = torch.relu(h)
        return members_first(h, self.ups[-1]).unflatten(m, lead)


class LinearEncoder(MemberAware, nn.Module):
    """mu = V x + c with a learned log-variance that does not depend on x (docs/metrics.md, linear VAE)."""

    def __init__(self, n: int, latent_dim: int):
        super().__init__()
        self.proj = Linear(n, latent_dim)
        self.logvar = nn.Parameter(torch.zeros(latent_dim))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu = self.proj(x)
        logvar = self.logvar if self.members is None else self.logvar[:, None, :]
        return mu, logvar.expand_as(mu)


# ----------------------------------------------------------------------- builders
#
# The built-in families, each a factory ``f(event_shape, latent_dim, **args)`` registered as an
# entry point of group vaebench.models (vaebench.plugins): the same mechanism a plugin uses.


def linear_vae(
    event_shape: tuple[int, ...], latent_dim: int, likelihood: str = "gaussian", sigma: float = 1.0, **_: object
) -> VAE:
    """Linear encoder and decoder (the pPCA reproduction): vector data, a Gaussian likelihood."""
    lik = Likelihood(likelihood, event_shape, sigma)
    if len(event_shape) != 1:
        raise ValueError(f"model.kind 'linear' takes vector data, got examples of shape {event_shape}")
    d = math.prod(event_shape)
    return VAE(LinearEncoder(d, latent_dim), Linear(latent_dim, event_shape[0] * lik.n_out), lik, latent_dim)


def mlp_vae(
    event_shape: tuple[int, ...],
    latent_dim: int,
    hidden: list[int] = (256,),  # type: ignore[assignment]
    likelihood: str = "bernoulli",
    sigma: float = 1.0,
    **_: object,
) -> VAE:
    """MLP encoder and decoder with ``hidden`` widths (the decoder mirrors them)."""
    lik = Likelihood(likelihood, event_shape, sigma)
    out_shape = (event_shape[0] * lik.n_out, *event_shape[1:])
    J, d, hidden = latent_dim, math.prod(event_shape), list(hidden)
    body = nn.Sequential(Flatten(), _mlp([d, *hidden]))
    return VAE(GaussianHead(body, hidden[-1] if hidden else d, J), MLPDecoder(J, hidden, out_shape), lik, J)


def conv_vae(
    event_shape: tuple[int, ...],
    latent_dim: int,
    channels: list[int] = (32, 32, 64, 64),  # type: ignore[assignment]
    likelihood: str = "bernoulli",
    sigma: float = 1.0,
    **_: object,
) -> VAE:
    """Stride-2 4x4 convolutions halving the image per layer, and their mirror."""
    lik = Likelihood(likelihood, event_shape, sigma)
    out_shape = (event_shape[0] * lik.n_out, *event_shape[1:])
    J, channels = latent_dim, list(channels)
    if len(event_shape) != 3:
        raise ValueError(f"model.kind 'conv' takes images [C, H, W], got examples of shape {event_shape}")
    sizes, s = [event_shape[1]], event_shape[1]
    for _ in channels:
        s = (s + 2 - 4) // 2 + 1
        if s < 1:
            raise ValueError(
                f"model.channels: {len(channels)} stride-2 layers are too many for "
                f"{event_shape[1]}x{event_shape[2]} images; use fewer"
            )
        sizes.append(s)
    convs: list[nn.Module] = []
    for a, b in zip([event_shape[0], *channels[:-1]], channels):
        convs += [Conv2d(a, b, 4, stride=2, padding=1), nn.ReLU()]
    body = nn.Sequential(*convs, Flatten())
    enc = GaussianHead(body, channels[-1] * s * s, J)
    return VAE(enc, ConvDecoder(J, channels, sizes, out_shape[0]), lik, J)


def builtin_args(cfg: ModelConfig) -> dict[str, object]:
    """The keyword arguments of a built-in family: its fields of ModelConfig."""
    return {
        "hidden": list(cfg.hidden),
        "channels": list(cfg.channels),
        "likelihood": cfg.likelihood,
        "sigma": cfg.sigma,
    }


def build_model(cfg: ModelConfig, event_shape: tuple[int, ...], vocab_size: int | None = None) -> nn.Module:
    """The model of ``cfg`` for examples of ``event_shape`` ((n,) vectors, (C, H, W) images or (T,)
    token sequences of a ``vocab_size`` vocabulary): a factorised built-in family's factory found
    through the registry (vaebench.plugins) like any plugin's, or a protocol model, built-in
    (pixelcnn, seq_vae) or a plugin's (vaebench.core.models.plugin)."""
    from vaebench.plugins import resolve
    from vaebench.study.config import BUILTIN_MODELS

    if cfg.kind not in BUILTIN_MODELS:
        from vaebench.core.models.plugin import build

        return build(cfg, event_shape, vocab_size)
    factory = resolve(cfg.kind, "vaebench.models").obj
    return factory(tuple(event_shape), cfg.latent_dim, **builtin_args(cfg))
