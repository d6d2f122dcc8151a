"""The training objective as pure functions (REFERENCE.md, Objective and Annealing schedules).

    loss = distortion + w_t * regulariser,   w_t = beta * a_t

Steps ``t`` count optimiser steps from 0 and ``T`` is the total number of steps of
the trial. Each function is checked against the formulas in tests/test_objectives.py.
"""

from __future__ import annotations

import functools
import math

import torch

from vaebench.study.config import (
    AnnealConfig,
    CapacityAnneal,
    CyclicalAnneal,
    LinearAnneal,
    NoAnneal,
    ObjectiveConfig,
    SigmoidAnneal,
)

LOG_2PI = math.log(2 * math.pi)


def kl_per_dim(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) per example and dim: 0.5 (mu^2 + sigma^2 - log sigma^2 - 1)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1)


def anneal_factor(cfg: AnnealConfig, t: int, T: int) -> float:
    """a_t of the schedule at step t of T.

    linear (Bowman et al. 2016; He et al. 2019 code): min(1, start + t (1 - start) / warmup),
    warmup defaulting to 30% of T. sigmoid (Bowman et al. 2016): 1 / (1 + exp(-k (t - t0))),
    k defaulting to 10/T and t0 to T/2. cyclical (Fu et al. 2019): period = T / M,
    tau = (t mod ceil(period)) / period, a = tau / R if tau <= R else 1. none and capacity: 1
    (capacity acts through the regulariser instead).
    """
    if isinstance(cfg, (NoAnneal, CapacityAnneal)):
        return 1.0
    if isinstance(cfg, LinearAnneal):
        warmup = cfg.warmup_steps or max(1, math.ceil(0.3 * T))
        return min(1.0, cfg.start + t * (1.0 - cfg.start) / warmup)
    if isinstance(cfg, SigmoidAnneal):
        k = cfg.k if cfg.k is not None else 10.0 / max(T, 1)
        t0 = cfg.t0 if cfg.t0 is not None else T / 2
        return 1.0 / (1.0 + math.exp(-k * (t - t0)))
    if isinstance(cfg, CyclicalAnneal):
        period = T / cfg.cycles
        tau = (t % math.ceil(period)) / period
        return tau / cfg.ratio if tau <= cfg.ratio else 1.0
    raise TypeError(f"unknown annealing schedule {cfg!r}")


def kl_weight(cfg: ObjectiveConfig, t: int, T: int) -> float:
    """w_t, the weight of the regulariser: beta * a_t; for beta_tcvae a_t (its beta weights the TC
    inside the regulariser)."""
    a = anneal_factor(cfg.anneal, t, T)
    return a if cfg.kind == "beta_tcvae" else cfg.beta * a


def capacity(cfg: CapacityAnneal, t: int, T: int) -> float:
    """C_t rising linearly from 0 to c_max over ``steps`` (default T) steps (Burgess et al. 2018)."""
    steps = cfg.steps or max(T, 1)
    return cfg.c_max * min(1.0, t / steps)


def regulariser(kl: torch.Tensor, cfg: ObjectiveConfig, t: int, T: int) -> torch.Tensor:
    """The minibatch regulariser from per-example, per-dim KL [B, J].

    Free bits (Kingma et al. 2016): sum_j max(lambda, mean_batch KL_j); the mean is taken
    before the max, so a dim whose minibatch-mean KL is below lambda gets no KL gradient.
    "total" mode: max(lambda J, mean_batch KL). Capacity: gamma |mean_batch KL - C_t|.
    """
    kl_dims = kl.mean(0)
    if isinstance(cfg.anneal, CapacityAnneal):
        return cfg.anneal.gamma * (kl_dims.sum() - capacity(cfg.anneal, t, T)).abs()
    if cfg.free_bits == 0:
        return kl_dims.sum()
    if cfg.free_bits_mode == "per_dim":
        return kl_dims.clamp(min=cfg.free_bits).sum()
    return kl_dims.sum().clamp(min=cfg.free_bits * kl.shape[-1])


# ------------------------------------------------------------------------ beta-TCVAE


def pairwise_log_density(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """[i, j, d] = log N(z_id; mu_jd, exp(logvar_jd)) for z, mu, logvar [M, D]."""
    z, mu, logvar = z[:, None, :], mu[None, :, :], logvar[None, :, :]
    return -0.5 * (LOG_2PI + logvar + (z - mu) ** 2 * torch.exp(-logvar))


def log_importance_weights(m: int, n_data: int, estimator: str, device=None, dtype=None) -> torch.Tensor:
    """[i, j] = log of the weight of q(z_i|x_j) in the estimate of q(z_i) from a minibatch of m out of n_data.

    mws (REFERENCE.md): every weight 1/(N M). The weights sum to 1/N, not 1, so the estimates of log q(z)
    and of each log q(z_d) sit log N below the minibatch-mixture value, a constant that cancels in
    MI + TC + DWKL but leaves TC offset by (D - 1) log N (tests/test_objectives.py).
    mss (stratified): z_i was drawn from x_i, so q(z_i|x_i) gets weight 1/N and each of the M - 1 others
    (N - 1)/(N (M - 1)): the weights sum to 1 and the estimate is consistent as M grows."""
    if estimator == "mws":
        return torch.full((m, m), -math.log(n_data * m), device=device, dtype=dtype)
    if m == 1:
        return torch.zeros((1, 1), device=device, dtype=dtype)
    w = torch.full((m, m), (n_data - 1) / (n_data * (m - 1)), device=device, dtype=dtype)
    w.fill_diagonal_(1.0 / n_data)
    return w.log()


def tc_decomposition(
    z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, n_data: int, estimator: str = "mws"
) -> dict[str, torch.Tensor]:
    """Chen et al. 2018: the minibatch's KL term split as index-code MI, total correlation and
    dimension-wise KL, each a minibatch mean with one sample z_i ~ q(z|x_i):

        mi   = mean_i [log q(z_i|x_i) - log q(z_i)]
        tc   = mean_i [log q(z_i) - sum_d log q(z_id)]
        dwkl = mean_i [sum_d log q(z_id) - log p(z_i)]

    with log q(z_i) ~ logsumexp_j (w_ij + log q(z_i|x_j)) and log q(z_id) likewise per dim
    (``log_importance_weights``). The three sum exactly to mean_i [log q(z_i|x_i) - log p(z_i)], the
    one-sample Monte-Carlo estimate of the KL, whichever estimator (the log q terms telescope)."""
    per_dim = pairwise_log_density(z, mu, logvar)  # [M, M, D]
    w = log_importance_weights(z.shape[0], n_data, estimator, z.device, z.dtype)
    log_qz_x = per_dim.diagonal(dim1=0, dim2=1).sum(0)  # [M]: log q(z_i|x_i)
    log_qz = torch.logsumexp(w + per_dim.sum(2), dim=1)
    log_qzd = torch.logsumexp(w[:, :, None] + per_dim, dim=1).sum(1)
    log_pz = -0.5 * (LOG_2PI + z**2).sum(1)
    return {"mi": (log_qz_x - log_qz).mean(), "tc": (log_qz - log_qzd).mean(), "dwkl": (log_qzd - log_pz).mean()}


def objective(
    log_lik: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    z: torch.Tensor,
    cfg: ObjectiveConfig,
    t: int,
    T: int,
    n_data: int,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """The minibatch objective as named terms (minibatch means), ``loss`` first; what the training loop
    minimises and logs as train/NAME.

    ``log_lik`` [B] is log p(x|z) of one reparameterised sample ``z`` [B, D] per example, from q(z|x) =
    N(mu, exp(logvar)); ``n_data`` is the training set's size (beta_tcvae's estimators).

    - beta_vae: loss = recon + beta a_t regulariser (free bits, capacity: ``regulariser``).
    - beta_tcvae: loss = recon + a_t (alpha mi + beta tc + gamma dwkl), with the terms also returned.
      With alpha = beta = gamma = 1 its regulariser is the one-sample estimate of the KL, whose
      expectation is the closed-form KL of beta_vae.

    ``kl`` is the closed-form KL in both (the rate, REFERENCE.md). Any other kind is an objective
    plugin (vaebench.plugins; ``mmd`` is one): ``plugin_objective``."""
    if cfg.kind not in ("beta_vae", "beta_tcvae"):
        return plugin_objective(log_lik, mu, logvar, z, cfg, t, T, n_data, generator)
    recon = -log_lik.mean()
    kl = kl_per_dim(mu, logvar)
    terms = {"recon": recon, "kl": kl.sum(1).mean()}
    if cfg.kind == "beta_tcvae":
        parts = tc_decomposition(z, mu, logvar, n_data, cfg.tc_estimator)
        terms["regulariser"] = cfg.alpha * parts["mi"] + cfg.beta * parts["tc"] + cfg.gamma * parts["dwkl"]
        terms.update(parts)
    else:
        terms["regulariser"] = regulariser(kl, cfg, t, T)
    return {"loss": recon + kl_weight(cfg, t, T) * terms["regulariser"], **terms}


@functools.cache
def _resolved(kind: str):  # one import per process (a file plugin is imported once anyway)
    from vaebench.plugins import resolve

    return resolve(kind, "vaebench.objectives").obj


def plugin_objective(
    log_lik: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    z: torch.Tensor,
    cfg: ObjectiveConfig,
    t: int,
    T: int,
    n_data: int,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """An objective plugin ``fn(log_lik, mu, logvar, z, *, step, total_steps, n_data, config, generator,
    **args)`` returns its named terms (minibatch means, logged as train/NAME) with ``loss``; ``loss`` is
    put first. The contract is docs/plugins.md's."""
    fn = _resolved(cfg.kind)
    terms = fn(
        log_lik, mu, logvar, z, step=t, total_steps=T, n_data=n_data, config=cfg, generator=generator, **cfg.args
    )
    if not isinstance(terms, dict) or "loss" not in terms:
        raise TypeError(f"objective {cfg.kind} returned {type(terms).__name__}; it must return a dict with 'loss'")
    return {"loss": terms["loss"], **{k: v for k, v in terms.items() if k != "loss"}}
