"""The training objective as pure functions (REFERENCE.md, Objective and Annealing schedules).

    loss = distortion + w_t * regulariser,   w_t = beta * a_t

Steps ``t`` count optimiser steps from 0 and ``T`` is the total number of steps of
the trial. Each function is checked against the formulas in tests/test_objectives.py.
"""

from __future__ import annotations

import math

import torch

from vaebench.config import (
    AnnealConfig,
    CapacityAnneal,
    CyclicalAnneal,
    LinearAnneal,
    NoAnneal,
    ObjectiveConfig,
    SigmoidAnneal,
)


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
    """w_t = beta * a_t."""
    return cfg.beta * anneal_factor(cfg.anneal, t, T)


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
