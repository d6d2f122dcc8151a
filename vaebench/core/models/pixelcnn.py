"""An autoregressive image decoder: a small gated PixelCNN conditioned on z (van den Oord et al. 2016).

The decoder models binarised images pixel by pixel in raster order,

    log p(x|z) = sum_i log Bernoulli(x_i; sigmoid(f_i(x_<i, z))),

so it can explain much of x without z: the setting where posterior collapse appears at beta 1
(Chen et al. 2017, Variational Lossy Autoencoder). Its strength is set by ``layers``, ``channels``
and ``kernel`` (the receptive field grows by kernel // 2 rows per layer), so it can be a sweep
factor. z enters every gated layer as a per-channel bias of both the filter and the gate
(conditional PixelCNN: tanh(W_f * x + V_f z) * sigmoid(W_g * x + V_g z)).

Causality comes from masked convolutions: the first layer (mask type A) sees only pixels strictly
before the current one, the later layers (type B) also the current position of their input, which
already holds only information from strictly earlier pixels. One input channel, so no masks between
colour channels are needed.

The class meets the model contract of ``vaebench.core.protocol``: ``PixelCNNVAE(event_shape=(1, H, W),
latent_dim=J, **args)``, ``encode(x)``, ``log_likelihood(x, z)`` (z may carry leading sample dims:
they are folded into the batch) and ``sample(z, generator)`` (ancestral sampling, H*W decoder passes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vaebench.study.config import LOGVAR_MAX, LOGVAR_MIN


def causal_mask(kernel: int, mask_type: str) -> torch.Tensor:
    """[k, k] mask of a raster-order masked convolution: 1 on rows above the centre and on the
    centre row left of the centre; type B also keeps the centre."""
    m = torch.zeros(kernel, kernel)
    c = kernel // 2
    m[:c, :] = 1
    m[c, :c] = 1
    if mask_type == "B":
        m[c, c] = 1
    return m


class MaskedConv2d(nn.Conv2d):
    """A same-padded convolution whose weights are multiplied by a causal mask at every call
    (the mask is applied in forward, so the optimiser never moves a masked weight into use)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, mask_type: str):
        if kernel % 2 == 0 or mask_type not in ("A", "B"):
            raise ValueError(f"masked convolution: odd kernel and type A or B, got {kernel}, {mask_type!r}")
        super().__init__(in_channels, out_channels, kernel, padding=kernel // 2)
        self.register_buffer("mask", causal_mask(kernel, mask_type)[None, None], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


class GatedLayer(nn.Module):
    """tanh(W_f * h + V_f z) * sigmoid(W_g * h + V_g z), plus a residual 1x1 projection (type B layers)."""

    def __init__(self, in_channels: int, channels: int, kernel: int, mask_type: str, latent_dim: int):
        super().__init__()
        self.conv = MaskedConv2d(in_channels, 2 * channels, kernel, mask_type)
        self.cond = nn.Linear(latent_dim, 2 * channels)
        self.out = nn.Conv2d(channels, channels, 1)
        self.residual = mask_type == "B" and in_channels == channels

    def forward(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        f, g = (self.conv(h) + self.cond(z)[:, :, None, None]).chunk(2, dim=1)
        y = self.out(torch.tanh(f) * torch.sigmoid(g))
        return h + y if self.residual else y


class PixelCNNVAE(nn.Module):
    """An MLP encoder q(z|x) and a gated PixelCNN decoder p(x|z), Bernoulli per pixel.

    Settings (``model.args``): ``layers`` gated layers (the first of mask type A with a
    ``first_kernel`` kernel, the rest type B with ``kernel``), ``channels`` feature maps per layer,
    ``encoder_hidden`` widths of the encoder's hidden layers."""

    def __init__(
        self,
        event_shape: tuple[int, ...],
        latent_dim: int,
        layers: int = 3,
        channels: int = 32,
        kernel: int = 3,
        first_kernel: int = 5,
        encoder_hidden: tuple[int, ...] | list[int] = (256,),
    ):
        super().__init__()
        event_shape = tuple(event_shape)
        if len(event_shape) != 3 or event_shape[0] != 1:
            raise ValueError(
                f"model 'pixelcnn' takes one-channel images [1, H, W], got examples of shape {event_shape}"
            )
        if layers < 1 or channels < 1:
            raise ValueError(f"model 'pixelcnn': layers and channels must be >= 1, got {layers}, {channels}")
        self.event_shape, self.latent_dim = event_shape, latent_dim
        d = event_shape[1] * event_shape[2]
        widths = [d, *encoder_hidden]
        enc: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(widths[:-1], widths[1:]):
            enc += [nn.Linear(a, b), nn.ReLU()]
        enc.append(nn.Linear(widths[-1], 2 * latent_dim))
        self.encoder = nn.Sequential(*enc)
        self.layers = nn.ModuleList(
            [GatedLayer(1, channels, first_kernel, "A", latent_dim)]
            + [GatedLayer(channels, channels, kernel, "B", latent_dim) for _ in range(layers - 1)]
        )
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels, 1), nn.ReLU(), nn.Conv2d(channels, 1, 1))

    def _dtype(self) -> torch.dtype:
        return self.head[-1].weight.dtype  # images arrive as float32 (or bytes): compute in the model's dtype

    # ----------------------------------------------------------------- the contract

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, 1, H, W] -> (mu, logvar) [B, J], logvar clamped as every built-in encoder's."""
        mu, logvar = self.encoder(x.to(self._dtype())).chunk(2, dim=-1)
        return mu, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)

    def logits(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits [B, 1, H, W]: logit i depends on x_<i (raster order) and z only."""
        h = x.to(self._dtype())
        for layer in self.layers:
            h = layer(h, z)
        return self.head(h)

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x|z) [..., B] in nats for x [B, 1, H, W] and z [..., B, J]: leading sample dims of z
        are folded into the batch (x repeated), so the importance-weighted bound works unchanged."""
        lead = z.shape[:-2]
        B = x.shape[0]
        xs = x.expand(*lead, *x.shape).reshape(-1, *x.shape[1:]) if lead else x
        logits = self.logits(xs, z.reshape(-1, z.shape[-1]))
        ll = -F.binary_cross_entropy_with_logits(logits, xs.to(logits.dtype), reduction="none").flatten(1).sum(-1)
        return ll.view(*lead, B)

    @torch.no_grad()
    def sample(self, z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Ancestral sample x ~ p(x|z) [B, 1, H, W] for z [B, J], one pixel at a time in raster order."""
        _, H, W = self.event_shape
        x = torch.zeros(z.shape[0], 1, H, W, device=z.device, dtype=z.dtype)
        for i in range(H):
            for j in range(W):
                p = torch.sigmoid(self.logits(x, z)[:, 0, i, j])
                u = torch.rand(p.shape, generator=generator, device=z.device)
                x[:, 0, i, j] = (u < p).to(x.dtype)
        return x
