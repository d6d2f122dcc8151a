"""The MMD (InfoVAE) objective, shipped as an objective plugin (``objective.kind: mmd``).

Zhao et al. 2019 (InfoVAE) and Tolstikhin et al. 2018 (WAE-MMD) add to the ELBO a maximum mean
discrepancy between the aggregate posterior q(z) (the batch's samples z) and the prior p(z) =
N(0, I): unlike the per-example KL it does not push each q(z|x) onto the prior, so the latent
code keeps information about x, a known remedy for posterior collapse.

    loss = recon + beta a_t regulariser + weight * MMD^2(q(z), p(z))     (per member)

``regulariser`` is beta_vae's (the KL with free bits or capacity); ``beta: 0`` gives the pure
MMD-VAE. MMD^2 is the unbiased U-statistic over B posterior samples and B prior draws with a
kernel of scale C = 2 J scale^2 (the choice of the WAE paper for a standard normal prior):
``imq`` k(a, b) = C / (C + |a - b|^2), ``rbf`` k(a, b) = exp(-|a - b|^2 / C).
"""

from __future__ import annotations

import torch

from vaebench.core.objectives import MemberSettings, ObjectiveBatch, kl_per_dim, regulariser

DEFAULTS = {"weight": 100.0, "kernel": "imq", "scale": 1.0}
MMD_SEED = 7_000_003  # the prior draws' own stream (apart from the model's, the batches' and the noise's)


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


def prior_draws(z: torch.Tensor, t: int) -> torch.Tensor:
    """The prior samples of step ``t``, shaped like one member's z [B, J] and shared by the members:
    drawn from their own generator (seeded by the step), so a member packed equals its solo trial
    and the reparameterisation noise is the same with or without MMD."""
    g = torch.Generator(z.device).manual_seed(MMD_SEED + t)
    return torch.randn(z.shape[-2:], generator=g, device=z.device, dtype=z.dtype)


def mmd_objective(batch: ObjectiveBatch, hp: MemberSettings) -> dict[str, torch.Tensor]:
    """The terms of the module docstring's loss, each [M] (minibatch means): loss, recon, kl,
    regulariser, mmd. ``objective.args``: weight (default 100), kernel (imq | rbf, shared by a
    pack's members), scale (default 1)."""
    args = [{**DEFAULTS, **c.args} for c in hp.configs]
    unknown = sorted({k for a in args for k in a} - set(DEFAULTS))
    if unknown:
        raise ValueError(f"objective.args: unknown {', '.join(unknown)}; mmd takes {', '.join(DEFAULTS)}")
    kinds = {a["kernel"] for a in args}
    if len(kinds) > 1 or not kinds <= {"imq", "rbf"}:
        raise ValueError(f"objective.args.kernel: got {sorted(kinds)}; allowed: imq or rbf, one per pack")
    dtype = batch.log_lik.dtype
    recon = -batch.log_lik.mean(-1)
    kl = kl_per_dim(batch.mu, batch.logvar)  # [M, B, J]
    reg = regulariser(kl, hp, batch.t, batch.T)
    prior = prior_draws(batch.z, batch.t)
    scales = [float(a["scale"]) for a in args]
    if len(set(scales)) == 1:
        mmd = mmd2(batch.z, prior.expand_as(batch.z), kinds.pop(), scales[0])
    else:
        kind = kinds.pop()
        mmd = torch.stack([mmd2(batch.z[i], prior, kind, s) for i, s in enumerate(scales)])
    weight = torch.tensor([float(a["weight"]) for a in args], dtype=torch.float64, device=mmd.device).to(dtype)
    loss = recon + hp.weight(batch.t, batch.T, dtype) * reg + weight * mmd
    return {"loss": loss, "recon": recon, "kl": kl.sum(-1).mean(-1), "regulariser": reg, "mmd": mmd}
