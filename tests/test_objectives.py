"""Annealing schedules, free bits and capacity against REFERENCE.md's formulas."""

import math

import pytest
import torch

from vaebench.core.objectives import MemberSettings, anneal_factor, capacity, kl_per_dim, kl_weight, regulariser
from vaebench.study.config import CapacityAnneal, CyclicalAnneal, LinearAnneal, NoAnneal, ObjectiveConfig, SigmoidAnneal


@pytest.mark.parametrize("t,expected", [(0, 0.0), (6, 0.48), (12, 0.96), (13, 1.0), (25, 0.0), (30, 0.4), (99, 1.0)])
def test_cyclical_worked_example(t, expected):
    # REFERENCE.md: T=100, M=4, R=0.5 gives a_0=0, a_6=0.48, a_12=0.96, a_13=1, a_25=0
    assert anneal_factor(CyclicalAnneal(cycles=4, ratio=0.5), t, 100) == pytest.approx(expected)


def solo_regulariser(kl: torch.Tensor, obj: ObjectiveConfig, t: int, T: int) -> torch.Tensor:
    """The regulariser of one trial (a pack of one member) from its per-example KL [B, J]."""
    return regulariser(kl[None], MemberSettings([obj]), t, T)[0]


def test_cyclical_non_integer_period():
    # T=10, M=3: period 10/3, tau = (t mod 4) / (10/3)
    cfg = CyclicalAnneal(cycles=3, ratio=0.5)
    for t in range(10):
        tau = (t % 4) / (10 / 3)
        assert anneal_factor(cfg, t, 10) == pytest.approx(tau / 0.5 if tau <= 0.5 else 1.0)


@pytest.mark.parametrize("t,expected", [(0, 0.2), (5, 0.6), (10, 1.0), (50, 1.0)])
def test_linear(t, expected):
    assert anneal_factor(LinearAnneal(start=0.2, warmup_steps=10), t, 100) == pytest.approx(expected)


def test_linear_default_warmup_is_30_percent():
    cfg = LinearAnneal()
    assert anneal_factor(cfg, 15, 100) == pytest.approx(0.5)
    assert anneal_factor(cfg, 30, 100) == 1.0


def test_sigmoid():
    cfg = SigmoidAnneal(k=0.5, t0=10)
    assert anneal_factor(cfg, 10, 100) == pytest.approx(0.5)
    assert anneal_factor(cfg, 12, 100) == pytest.approx(1 / (1 + math.exp(-1)))
    assert anneal_factor(SigmoidAnneal(), 50, 100) == pytest.approx(0.5)  # defaults: t0 = T/2


def test_none_and_weight():
    assert anneal_factor(NoAnneal(), 7, 100) == 1.0
    cfg = ObjectiveConfig(beta=4.0, anneal={"kind": "cyclical", "cycles": 4, "ratio": 0.5})
    assert kl_weight(cfg, 6, 100) == pytest.approx(4.0 * 0.48)


def test_capacity():
    cfg = CapacityAnneal(c_max=10.0, gamma=2.0, steps=50)
    assert capacity(cfg, 0, 100) == 0.0
    assert capacity(cfg, 25, 100) == pytest.approx(5.0)
    assert capacity(cfg, 80, 100) == pytest.approx(10.0)
    kl = torch.full((4, 2), 1.0)  # total KL per example 2
    obj = ObjectiveConfig(anneal=cfg)
    assert solo_regulariser(kl, obj, 25, 100).item() == pytest.approx(2.0 * abs(2.0 - 5.0))


def test_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(64, 7, generator=g), torch.randn(64, 7, generator=g)
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu, torch.exp(0.5 * logvar)), torch.distributions.Normal(0.0, 1.0)
    )
    torch.testing.assert_close(kl_per_dim(mu, logvar), ref)


def _kl_grad(obj: ObjectiveConfig, mu: torch.Tensor) -> torch.Tensor:
    mu = mu.clone().requires_grad_(True)
    reg = solo_regulariser(kl_per_dim(mu, torch.zeros_like(mu)), obj, 0, 1)
    reg.backward()
    return mu.grad


def test_free_bits_per_dim_gradient():
    # dim 0: mean KL = 0.5*mean(mu^2) = 0.5*0.04 = 0.02 < lambda; dim 1: 0.5*4 = 2 > lambda
    mu = torch.tensor([[0.2, 2.0], [-0.2, -2.0]])
    g = _kl_grad(ObjectiveConfig(free_bits=0.1), mu)
    assert torch.all(g[:, 0] == 0)
    assert torch.all(g[:, 1] != 0)
    # the regulariser's value: max(lambda, mean KL_j) summed
    reg = solo_regulariser(kl_per_dim(mu, torch.zeros_like(mu)), ObjectiveConfig(free_bits=0.1), 0, 1)
    assert reg.item() == pytest.approx(0.1 + 2.0)


def test_free_bits_mean_before_max():
    # one example far above lambda, one at 0: the minibatch mean (not each example) is compared
    mu = torch.tensor([[1.0], [0.0]])  # KL = 0.5, 0 -> mean 0.25 > lambda 0.2
    g = _kl_grad(ObjectiveConfig(free_bits=0.2), mu)
    assert g[0, 0] != 0
    mu = torch.tensor([[0.5], [0.0]])  # KL = 0.125, 0 -> mean 0.0625 < 0.2: no gradient, even for example 0
    assert torch.all(_kl_grad(ObjectiveConfig(free_bits=0.2), mu) == 0)


def test_free_bits_total():
    mu = torch.tensor([[0.2, 0.3]])  # total KL 0.065 < lambda*J = 0.2
    assert torch.all(_kl_grad(ObjectiveConfig(free_bits=0.1, free_bits_mode="total"), mu) == 0)
    mu = torch.tensor([[0.2, 1.0]])  # total 0.52 > 0.2
    assert torch.all(_kl_grad(ObjectiveConfig(free_bits=0.1, free_bits_mode="total"), mu) != 0)
