"""The training objective (docs/metrics.md, Objective and Annealing schedules), for M >= 1 members.

    loss = distortion + w_t * regulariser,   w_t = beta * a_t

Steps ``t`` count optimiser steps from 0 and ``T`` is the total number of steps of
the trial. Each function is checked against the formulas in tests/test_objectives.py.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

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


# ------------------------------------------------------------------------ per-member settings


SCHEDULE_CHUNK = 1024  # steps of w_t and C_t tabulated at once (Python calls per member and step)


class MemberSettings:
    """The objective settings of M members (a solo trial: M = 1) as per-member tensors.

    Built from one ``ObjectiveConfig`` per member; the members share ``kind`` and ``tc_estimator``
    (they choose the code path), everything else may differ. ``column(name)`` gives any numeric
    field of the configs as a tensor [M] (objective plugins read their own settings this way);
    ``flag(name)`` the boolean ones; ``weight(t, T)`` and ``capacity(t, T)`` the schedules w_t =
    beta a_t and C_t at step t, from the pure functions above, tabulated a chunk of steps at a time."""

    def __init__(self, configs: list[ObjectiveConfig], device: torch.device | str | None = None):
        if not configs:
            raise ValueError("MemberSettings needs at least one member")
        self.configs = list(configs)
        self.members = len(self.configs)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        shared = {(c.kind, c.tc_estimator) for c in self.configs}
        if len(shared) > 1:
            raise ValueError(f"the members of a pack share objective.kind and tc_estimator, got {sorted(shared)}")
        self.kind, self.tc_estimator = next(iter(shared))
        fb = [c.free_bits for c in self.configs]
        cap = [isinstance(c.anneal, CapacityAnneal) for c in self.configs]
        self.any_capacity = any(cap)
        self.any_free_bits = any(f > 0 for f in fb)
        self.any_total = any(f > 0 and c.free_bits_mode == "total" for f, c in zip(fb, self.configs))
        self.any_plain = any(f == 0 and not k for f, k in zip(fb, cap))
        self._values = {
            "capacity_gamma": [c.anneal.gamma if k else 0.0 for c, k in zip(self.configs, cap)],
            "total": [c.free_bits_mode == "total" for c in self.configs],
            "capacity": cap,
        }
        self._cache: dict[tuple[str, torch.dtype], torch.Tensor] = {}
        self._tables: dict[torch.dtype, tuple[int, torch.Tensor]] = {}

    def keep(self, positions: list[int]) -> MemberSettings:
        """The settings of the members at ``positions`` (in that order)."""
        return MemberSettings([self.configs[i] for i in positions], self.device)

    def column(self, name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """[M]: the field ``name`` of each member's config (or a derived column: capacity_gamma)."""
        key = (name, dtype)
        if key not in self._cache:
            vals = self._values[name] if name in self._values else [getattr(c, name) for c in self.configs]
            # through float64: a Python float becomes the same float32 as when it multiplies a tensor
            self._cache[key] = torch.tensor(vals, dtype=torch.float64, device=self.device).to(dtype)
        return self._cache[key]

    def flag(self, name: str) -> torch.Tensor:
        """[M] bool: ``total`` (free bits mode) or ``capacity`` (the capacity schedule)."""
        key = (name, torch.bool)
        if key not in self._cache:
            self._cache[key] = torch.tensor(self._values[name], dtype=torch.bool, device=self.device)
        return self._cache[key]

    def _row(self, t: int, T: int, dtype: torch.dtype) -> torch.Tensor:
        t0, table = self._tables.get(dtype, (0, None))
        if table is None or not t0 <= t < t0 + table.shape[0]:
            steps = range(t, min(max(T, t + 1), t + SCHEDULE_CHUNK))
            rows = [
                [kl_weight(c, s, T) for c in self.configs]
                + [capacity(c.anneal, s, T) if isinstance(c.anneal, CapacityAnneal) else 0.0 for c in self.configs]
                for s in steps
            ]
            t0, table = t, torch.tensor(rows, dtype=torch.float64, device=self.device).to(dtype)
            self._tables[dtype] = (t0, table)
        return table[t - t0]

    def weight(self, t: int, T: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """[M]: w_t, the regulariser's weight at step t of T (``kl_weight``)."""
        return self._row(t, T, dtype)[: self.members]

    def capacity(self, t: int, T: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """[M]: C_t at step t of T (0 for members without the capacity schedule)."""
        return self._row(t, T, dtype)[self.members :]


def regulariser(kl: torch.Tensor, hp: MemberSettings, t: int, T: int) -> torch.Tensor:
    """Each member's minibatch regulariser from its per-example, per-dim KL ``kl`` [M, B, J] -> [M].

    Free bits (Kingma et al. 2016): sum_j max(lambda, mean_batch KL_j); the mean is taken
    before the max, so a dim whose minibatch-mean KL is below lambda gets no KL gradient.
    "total" mode: max(lambda J, mean_batch KL). Capacity: gamma |mean_batch KL - C_t|.
    Members choose among these with ``torch.where``; a variant no member uses is not computed.
    """
    kl_dims = kl.mean(-2)  # [M, J]
    reg = plain = kl_dims.sum(-1)
    if hp.any_free_bits:
        lam = hp.column("free_bits", kl.dtype)
        per_dim = kl_dims.clamp(min=lam[:, None]).sum(-1)
        if hp.any_total:
            total = plain.clamp(min=hp.column("free_bits", torch.float64).mul(kl.shape[-1]).to(kl.dtype))
            per_dim = torch.where(hp.flag("total"), total, per_dim)
        reg = torch.where(lam > 0, per_dim, plain) if hp.any_plain else per_dim
    if hp.any_capacity:
        capped = hp.column("capacity_gamma", kl.dtype) * (plain - hp.capacity(t, T, kl.dtype)).abs()
        reg = torch.where(hp.flag("capacity"), capped, reg) if hp.members > 1 else capped
    return reg


# ------------------------------------------------------------------------ beta-TCVAE


def pairwise_log_density(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """[..., i, j, d] = log N(z_id; mu_jd, exp(logvar_jd)) for z, mu, logvar [..., B, D]."""
    z, mu, logvar = z.unsqueeze(-2), mu.unsqueeze(-3), logvar.unsqueeze(-3)
    return -0.5 * (LOG_2PI + logvar + (z - mu) ** 2 * torch.exp(-logvar))


def log_importance_weights(m: int, n_data: int, estimator: str, device=None, dtype=None) -> torch.Tensor:
    """[i, j] = log of the weight of q(z_i|x_j) in the estimate of q(z_i) from a minibatch of m out of n_data.

    mws (docs/metrics.md): every weight 1/(N M). The weights sum to 1/N, not 1, so the estimates of log q(z)
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
    one-sample Monte-Carlo estimate of the KL, whichever estimator (the log q terms telescope).
    z, mu, logvar [..., B, D] (leading dims: members) -> each term [...]."""
    per_dim = pairwise_log_density(z, mu, logvar)  # [..., B, B, D]
    w = log_importance_weights(z.shape[-2], n_data, estimator, z.device, z.dtype)
    log_qz_x = per_dim.diagonal(dim1=-3, dim2=-2).sum(-2)  # [..., B]: log q(z_i|x_i)
    log_qz = torch.logsumexp(w + per_dim.sum(-1), dim=-1)
    log_qzd = torch.logsumexp(w[:, :, None] + per_dim, dim=-2).sum(-1)
    log_pz = -0.5 * (LOG_2PI + z**2).sum(-1)
    return {
        "mi": (log_qz_x - log_qz).mean(-1),
        "tc": (log_qz - log_qzd).mean(-1),
        "dwkl": (log_qzd - log_pz).mean(-1),
    }


# ------------------------------------------------------------------------ the objectives


@dataclass(frozen=True)
class ObjectiveBatch:
    """What an objective sees of one training step of M members (a solo trial: M = 1).

    ``x`` [M, B, *event] each member's minibatch; ``mu``, ``logvar`` [M, B, J] its posteriors
    q(z|x) = N(mu, exp(logvar)); ``z`` [M, B, J] one reparameterised sample per example;
    ``log_lik`` [M, B] log p(x|z) of that sample; ``t`` the optimiser step (from 0) of ``T``;
    ``n_data`` the training set's size (beta_tcvae's estimators)."""

    x: torch.Tensor
    mu: torch.Tensor
    logvar: torch.Tensor
    z: torch.Tensor
    log_lik: torch.Tensor
    t: int
    T: int
    n_data: int


Objective = Callable[[ObjectiveBatch, MemberSettings], dict[str, torch.Tensor]]


def beta_vae(batch: ObjectiveBatch, hp: MemberSettings) -> dict[str, torch.Tensor]:
    """loss = recon + beta a_t regulariser (free bits, capacity: ``regulariser``); ``kl`` the
    closed-form KL (the rate, docs/metrics.md). Each term [M], a minibatch mean per member."""
    recon = -batch.log_lik.mean(-1)
    kl = kl_per_dim(batch.mu, batch.logvar)  # [M, B, J]
    reg = regulariser(kl, hp, batch.t, batch.T)
    loss = recon + hp.weight(batch.t, batch.T, recon.dtype) * reg
    return {"loss": loss, "recon": recon, "kl": kl.sum(-1).mean(-1), "regulariser": reg}


def beta_tcvae(batch: ObjectiveBatch, hp: MemberSettings) -> dict[str, torch.Tensor]:
    """loss = recon + a_t (alpha mi + beta tc + gamma dwkl), the terms also returned
    (``tc_decomposition``). With alpha = beta = gamma = 1 its regulariser is the one-sample
    estimate of the KL, whose expectation is the closed-form KL of beta_vae."""
    recon = -batch.log_lik.mean(-1)
    kl = kl_per_dim(batch.mu, batch.logvar)
    parts = tc_decomposition(batch.z, batch.mu, batch.logvar, batch.n_data, hp.tc_estimator)
    dtype = recon.dtype
    reg = (
        hp.column("alpha", dtype) * parts["mi"]
        + hp.column("beta", dtype) * parts["tc"]
        + hp.column("gamma", dtype) * parts["dwkl"]
    )
    loss = recon + hp.weight(batch.t, batch.T, dtype) * reg
    return {"loss": loss, "recon": recon, "kl": kl.sum(-1).mean(-1), "regulariser": reg, **parts}


# objective.kind -> its objective; a plugin adds its own (same signature: terms [M], "loss" first)
OBJECTIVES: dict[str, Objective] = {"beta_vae": beta_vae, "beta_tcvae": beta_tcvae}


def objective(batch: ObjectiveBatch, hp: MemberSettings) -> dict[str, torch.Tensor]:
    """The minibatch objective of every member as named terms, each [M], ``loss`` first: what the
    training loop minimises (the sum over members of ``loss``) and logs as train/NAME. A kind not
    in OBJECTIVES is an objective plugin (vaebench.plugins; ``mmd`` is one), with the same signature."""
    fn = OBJECTIVES.get(hp.kind) or plugin_objective(hp.kind)
    terms = fn(batch, hp)
    if not isinstance(terms, dict) or "loss" not in terms:
        raise TypeError(f"objective {hp.kind} returned {type(terms).__name__}; it must return a dict with 'loss'")
    return {"loss": terms["loss"], **{k: v for k, v in terms.items() if k != "loss"}}


@functools.cache
def plugin_objective(kind: str) -> Objective:
    """The objective plugin ``kind`` names, imported once per process (vaebench.plugins)."""
    from vaebench.plugins import resolve

    return resolve(kind, "vaebench.objectives").obj
