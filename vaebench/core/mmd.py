"""The MMD (InfoVAE) objective, shipped as an objective plugin (``objective.kind: mmd``).

Zhao et al. 2019 (InfoVAE) and Tolstikhin et al. 2018 (WAE-MMD) add to the ELBO a maximum mean
discrepancy between the aggregate posterior q(z) (the batch's samples z) and the prior p(z) =
N(0, I): unlike the per-example KL it does not push each q(z|x) onto the prior, so the latent
code keeps information about x, a known remedy for posterior collapse.

    loss = recon + beta a_t regulariser + weight * MMD^2(q(z), p(z))

``regulariser`` is beta_vae's (the KL with free bits or capacity); ``beta: 0`` gives the pure
MMD-VAE. MMD^2 is the unbiased U-statistic over B posterior samples and B prior draws with a
kernel of scale C = 2 J scale^2 (the choice of the WAE paper for a standard normal prior):
``imq`` k(a, b) = C / (C + |a - b|^2), ``rbf`` k(a, b) = exp(-|a - b|^2 / C).
"""

from __future__ import annotations

from typing import Literal

import torch

from vaebench.core.objectives import kl_per_dim, kl_weight, regulariser


def kernel(a: torch.Tensor, b: torch.Tensor, kind: str, c: float) -> torch.Tensor:
    """k(a_i, b_j) for a [..., N, J], b [..., M, J] -> [..., N, M]."""
    d2 = (a.unsqueeze(-2) - b.unsqueeze(-3)).pow(2).sum(-1)
    if kind == "imq":
        return c / (c + d2)
    if kind == "rbf":
        return torch.exp(-d2 / c)
    raise ValueError(f"objective.args.kernel: got {kind!r}; allowed: imq, rbf")


def mmd2(zq: torch.Tensor, zp: torch.Tensor, kind: str = "imq", scale: float = 1.0) -> torch.Tensor:
    """Unbiased MMD^2 between samples zq [..., N, J] and zp [..., M, J] (N, M >= 2)."""
    n, m, J = zq.shape[-2], zp.shape[-2], zq.shape[-1]
    c = 2.0 * J * scale**2
    kqq, kpp, kqp = kernel(zq, zq, kind, c), kernel(zp, zp, kind, c), kernel(zq, zp, kind, c)
    off_q = (kqq.sum((-1, -2)) - kqq.diagonal(dim1=-2, dim2=-1).sum(-1)) / (n * (n - 1))
    off_p = (kpp.sum((-1, -2)) - kpp.diagonal(dim1=-2, dim2=-1).sum(-1)) / (m * (m - 1))
    return off_q + off_p - 2.0 * kqp.mean((-1, -2))


def mmd_objective(
    log_lik: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    z: torch.Tensor,
    *,
    step: int,
    total_steps: int,
    config,
    generator: torch.Generator | None = None,
    weight: float = 100.0,
    kernel: Literal["imq", "rbf"] = "imq",
    scale: float = 1.0,
    **_: object,
) -> dict[str, torch.Tensor]:
    """The terms of the module docstring's loss (minibatch means): loss, recon, kl, regulariser, mmd."""
    if kernel not in ("imq", "rbf"):
        raise ValueError(f"objective.args.kernel: got {kernel!r}; allowed: imq, rbf")
    recon = -log_lik.mean()
    kl = kl_per_dim(mu, logvar)
    reg = regulariser(kl, config, step, total_steps)
    prior = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
    mmd = mmd2(z, prior, kernel, scale)
    loss = recon + kl_weight(config, step, total_steps) * reg + weight * mmd
    return {"loss": loss, "recon": recon, "kl": kl.sum(-1).mean(), "regulariser": reg, "mmd": mmd}
