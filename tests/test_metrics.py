"""Held-out metrics against closed forms and independent computations (docs/reference.md)."""

import math

import pytest
import torch

from vaebench.core.metrics import Encoded, active_units, collapse, encode, evaluate, iw_nll, mutual_information
from vaebench.core.models import build_model
from vaebench.study.config import MetricsConfig, ModelConfig


def linear_vae(n: int, k: int, sigma: float = 1.0):
    return build_model(ModelConfig(kind="linear", latent_dim=k, likelihood="gaussian", sigma=sigma), (n,))


def gaussian_data(n: int, std: list[float], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, len(std), generator=g) * torch.tensor(std)


def test_kl_per_dim_metric_matches_torch_distributions():
    model = linear_vae(3, 2)
    x = gaussian_data(500, [1.0, 2.0, 0.5])
    metrics = evaluate(model, x, MetricsConfig(), torch.Generator().manual_seed(0))
    mu, logvar = model.encode(x)
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu, torch.exp(0.5 * logvar)), torch.distributions.Normal(0.0, 1.0)
    ).mean(0)
    for j in range(2):
        assert metrics[f"kl_dim/{j:02d}"] == pytest.approx(ref[j].item(), rel=1e-5)
    assert metrics["kl"] == pytest.approx(ref.sum().item(), rel=1e-5)
    assert metrics["elbo"] == pytest.approx(-(metrics["recon"] + metrics["kl"]))


def _set_linear(model, V, c, logvar, W, b):
    with torch.no_grad():
        model.encoder.proj.weight.copy_(torch.tensor(V, dtype=torch.float32))
        model.encoder.proj.bias.copy_(torch.tensor(c, dtype=torch.float32))
        model.encoder.logvar.copy_(torch.tensor(logvar, dtype=torch.float32))
        model.decoder.weight.copy_(torch.tensor(W, dtype=torch.float32))
        model.decoder.bias.copy_(torch.tensor(b, dtype=torch.float32))


def test_active_units_encoder_ignoring_inputs():
    # mu_0 = x_0, mu_1 = 0.1 x_1 (Var 0.01*4 = 0.04), mu_2 = const, mu_3 = const: dims 2, 3 ignore x
    model = linear_vae(2, 4)
    _set_linear(model, [[1, 0], [0, 0.1], [0, 0], [0, 0]], [0, 0, 3.0, -1.0], [0] * 4, [[1, 0, 0, 0]] * 2, [0, 0])
    x = gaussian_data(20_000, [1.0, 2.0])
    enc = encode(model, x, 4096)
    var_mu1 = enc.mu[:, 1].var().item()
    assert var_mu1 == pytest.approx(0.04, rel=0.05)
    assert active_units(model, enc, MetricsConfig(), None)["active_units"] == 2
    # threshold behaviour: dim 1 (Var ~0.04) is inactive above its variance, active below
    assert active_units(model, enc, MetricsConfig(active_threshold=0.05), None)["active_units"] == 1
    assert active_units(model, enc, MetricsConfig(active_threshold=0.03), None)["active_units"] == 2
    assert active_units(model, enc, MetricsConfig(active_threshold=2.0), None)["active_units"] == 0


def test_collapse_epsilon_delta():
    n = 1000
    kl = torch.zeros(n, 3)
    kl[:, 0] = 0.001  # always below epsilon: collapsed
    kl[:20, 1] = 1.0  # 2% of examples above epsilon: collapsed only if delta >= 0.02
    kl[:, 2] = 0.5  # never below: not collapsed
    enc = Encoded(torch.zeros(n, 1), torch.zeros(n, 3), torch.zeros(n, 3), kl)
    m = collapse(None, enc, MetricsConfig(), None)
    assert m == {"collapsed_dims": 1.0, "collapsed_fraction": pytest.approx(1 / 3), "posterior_collapse": 0.0}
    m = collapse(None, enc, MetricsConfig(collapse_delta=0.05), None)
    assert m["collapsed_dims"] == 2.0
    kl[:, 2] = 0.0
    assert (
        collapse(None, Encoded(enc.x, enc.mu, enc.logvar, kl), MetricsConfig(collapse_delta=0.05), None)[
            "posterior_collapse"
        ]
        == 1.0
    )


def test_mutual_information_matches_closed_form():
    # x ~ N(0, 1) in 1-D, q(z|x) = N(a x, s^2): I(x; z) = 0.5 log((a^2 + s^2) / s^2)
    a, s2 = 1.0, 0.5
    model = linear_vae(1, 1)
    _set_linear(model, [[a]], [0.0], [math.log(s2)], [[1.0]], [0.0])
    x = gaussian_data(20_000, [1.0])
    enc = encode(model, x, 4096)
    exact = 0.5 * math.log((a * a + s2) / s2)
    # (noise seed differs from the data seed: the same stream would make eps equal x)
    est = mutual_information(model, enc, MetricsConfig(mi_batch_size=2000), torch.Generator().manual_seed(7))["mi"]
    assert est == pytest.approx(exact, abs=0.03)
    # the estimator cannot exceed log B: a near-deterministic encoder saturates at log B
    _set_linear(model, [[1.0]], [0.0], [math.log(1e-4)], [[1.0]], [0.0])
    enc = encode(model, x[:1000], 1000)
    small = mutual_information(model, enc, MetricsConfig(mi_batch_size=16), torch.Generator().manual_seed(0))["mi"]
    assert small <= math.log(16) + 1e-4


def test_iw_nll_k1_equals_minus_elbo_and_tightens():
    # A linear Gaussian model whose posterior is NOT the exact posterior, so the bound has slack.
    model = linear_vae(2, 1, sigma=0.7)
    _set_linear(model, [[0.3, 0.3]], [0.0], [math.log(0.8)], [[1.0], [0.5]], [0.0, 0.0])
    x = gaussian_data(4000, [1.2, 0.8])
    enc = encode(model, x, 4096)
    # Closed-form expected ELBO of a linear Gaussian VAE, q = N(m, s^2), p(x|z) = N(Wz + b, sigma^2 I):
    # E_q log p(x|z) = -d/2 log(2 pi sigma^2) - (||x - W m - b||^2 + sum_j s_j^2 ||W_:j||^2) / (2 sigma^2)
    W, s2, sig2 = model.decoder.weight.detach(), 0.8, 0.49
    m = enc.mu
    exp_ll = -math.log(2 * math.pi * sig2) - ((x - m @ W.T) ** 2).sum(1) / (2 * sig2) - s2 * (W**2).sum() / (2 * sig2)
    exact_elbo = (exp_ll - enc.kl.sum(1)).mean().item()
    # K = 1: the bound's expectation is the ELBO; so is the metric's (analytic KL + sampled recon)
    cfg1 = MetricsConfig(iw_samples=1, iw_examples=None)
    reps = torch.tensor([iw_nll(model, enc, cfg1, torch.Generator().manual_seed(i))["iw_nll"] for i in range(20)])
    se = reps.std().item() / math.sqrt(len(reps))
    assert reps.mean().item() == pytest.approx(-exact_elbo, abs=5 * se)
    elbos = torch.tensor([evaluate(model, x, cfg1, torch.Generator().manual_seed(100 + i))["elbo"] for i in range(20)])
    assert elbos.mean().item() == pytest.approx(exact_elbo, abs=5 * elbos.std().item() / math.sqrt(20))
    # more samples: a tighter (lower) bound, and every bound above the exact NLL of this linear Gaussian model
    W = model.decoder.weight.detach().double()
    C = W @ W.T + 0.49 * torch.eye(2, dtype=torch.float64)
    exact = (
        -torch.distributions.MultivariateNormal(torch.zeros(2, dtype=torch.float64), C)
        .log_prob(x.double())
        .mean()
        .item()
    )
    bounds = [
        iw_nll(model, enc, MetricsConfig(iw_samples=k, iw_examples=None), torch.Generator().manual_seed(1))["iw_nll"]
        for k in (1, 10, 100, 1000)
    ]
    assert all(b1 > b2 for b1, b2 in zip(bounds, bounds[1:])), bounds
    assert bounds[-1] > exact - 0.01
    assert bounds[-1] - exact < 0.1 * (bounds[0] - exact)  # K=1000 closes most of the gap
