"""beta-TCVAE (Chen et al. 2018; docs/reference.md): the decomposition of the KL term, its total-correlation
estimators against the Gaussian closed form, and the objective in the training loop."""

from __future__ import annotations

import math

import pytest
import torch

from vaebench.core.objectives import (
    MemberSettings,
    ObjectiveBatch,
    kl_per_dim,
    log_importance_weights,
    objective,
    tc_decomposition,
)
from vaebench.core.train import train
from vaebench.study.config import ObjectiveConfig, TrialConfig


def solo_objective(log_lik, mu, logvar, z, cfg: ObjectiveConfig, t: int, T: int, n_data: int) -> dict:
    """The objective's terms for one trial (a pack of one member): log_lik [B], mu, logvar, z [B, D]."""
    batch = ObjectiveBatch(None, mu[None], logvar[None], z[None], log_lik[None], t, T, n_data)
    return {k: v[0] for k, v in objective(batch, MemberSettings([cfg])).items()}


def gaussian_posteriors(S: torch.Tensor, s2: float, m: int, seed: int):
    """m examples whose posteriors N(mu_i, s2 I) have aggregate N(0, S): mu ~ N(0, S - s2 I)."""
    g = torch.Generator().manual_seed(seed)
    d = S.shape[0]
    L = torch.linalg.cholesky(S - s2 * torch.eye(d, dtype=torch.float64))
    mu = torch.randn(m, d, generator=g, dtype=torch.float64) @ L.T
    logvar = torch.full((m, d), math.log(s2), dtype=torch.float64)
    z = mu + math.sqrt(s2) * torch.randn(m, d, generator=g, dtype=torch.float64)
    return z, mu, logvar


def gaussian_tc(S: torch.Tensor) -> float:
    """TC of N(0, S): 0.5 (sum_d log S_dd - log det S)."""
    return 0.5 * (torch.log(torch.diagonal(S)).sum() - torch.logdet(S)).item()


def mean_tc(S, estimator, n_data=10_000, m=1024, reps=8):
    return (
        sum(tc_decomposition(*gaussian_posteriors(S, 0.3, m, r), n_data, estimator)["tc"].item() for r in range(reps))
        / reps
    )


CORRELATED = torch.tensor([[1.0, 0.6, 0.3], [0.6, 1.0, 0.5], [0.3, 0.5, 1.0]], dtype=torch.float64)


@pytest.mark.parametrize("estimator", ["mws", "mss"])
def test_terms_sum_to_the_monte_carlo_kl(estimator):
    z, mu, logvar = gaussian_posteriors(CORRELATED, 0.3, 200, 0)
    t = tc_decomposition(z, mu, logvar, 5000, estimator)
    log_q = -0.5 * (math.log(2 * math.pi) + logvar + (z - mu) ** 2 / logvar.exp()).sum(1)
    log_p = -0.5 * (math.log(2 * math.pi) + z**2).sum(1)
    assert (t["mi"] + t["tc"] + t["dwkl"]).item() == pytest.approx((log_q - log_p).mean().item(), abs=1e-9)


def test_mss_weights_sum_to_one_and_mws_to_one_over_n():
    assert log_importance_weights(64, 1000, "mss").exp().sum(1) == pytest.approx(torch.ones(64, dtype=torch.float32))
    assert log_importance_weights(64, 1000, "mws").exp().sum(1) == pytest.approx(torch.full((64,), 1e-3))


# Bias of the estimators, measured (8 minibatches of M = 1024, posterior variance 0.3, N = 10,000):
# stratified sampling is within 0.01 nats of the closed form on average (per-minibatch std 0.002 factorised,
# 0.02 correlated); minibatch-weighted sampling equals it plus (D - 1) log N exactly in expectation: its
# weights 1/(NM) sum to 1/N, so log q(z) and each log q(z_d) sit log N low (docs/reference.md's formula).
TC_TOL = 0.03


def test_tc_of_a_factorised_posterior_is_near_zero():
    S = torch.diag(torch.tensor([1.0, 0.7, 1.5], dtype=torch.float64))
    assert gaussian_tc(S) == pytest.approx(0.0)
    assert mean_tc(S, "mss") == pytest.approx(0.0, abs=TC_TOL)
    assert mean_tc(S, "mws") - 2 * math.log(10_000) == pytest.approx(0.0, abs=TC_TOL)


def test_tc_of_a_correlated_gaussian_matches_the_closed_form():
    exact = gaussian_tc(CORRELATED)  # 0.30 nats
    assert exact > 0.25
    assert mean_tc(CORRELATED, "mss") == pytest.approx(exact, abs=TC_TOL)
    assert mean_tc(CORRELATED, "mws") - 2 * math.log(10_000) == pytest.approx(exact, abs=TC_TOL)


def test_tcvae_with_unit_weights_equals_the_plain_kl_up_to_monte_carlo_error():
    """alpha = beta = gamma = 1: the regulariser is mean_i[log q(z_i|x_i) - log p(z_i)], the one-sample
    estimate of the KL, whatever the estimator. Its error against the closed-form KL of beta_vae is the
    Monte-Carlo error of that estimate: here within 4 standard errors of the per-example differences."""
    g = torch.Generator().manual_seed(0)
    m, d = 4000, 4
    mu = torch.randn(m, d, generator=g, dtype=torch.float64) * 1.5
    logvar = torch.randn(m, d, generator=g, dtype=torch.float64) * 0.5 - 1.0
    z = mu + (0.5 * logvar).exp() * torch.randn(m, d, generator=g, dtype=torch.float64)
    log_lik = torch.zeros(m, dtype=torch.float64)
    plain = solo_objective(log_lik, mu, logvar, z, ObjectiveConfig(), 0, 1, 10_000)
    for est in ("mws", "mss"):
        tc = solo_objective(log_lik, mu, logvar, z, ObjectiveConfig(kind="beta_tcvae", tc_estimator=est), 0, 1, 10_000)
        log_q = -0.5 * (math.log(2 * math.pi) + logvar + (z - mu) ** 2 / logvar.exp()).sum(1)
        log_p = -0.5 * (math.log(2 * math.pi) + z**2).sum(1)
        diff = log_q - log_p - kl_per_dim(mu, logvar).sum(1)
        stderr = diff.std().item() / math.sqrt(m)
        assert abs(tc["regulariser"].item() - plain["regulariser"].item()) <= 4 * stderr
        assert tc["kl"].item() == pytest.approx(plain["kl"].item())
        assert tc["loss"].item() == pytest.approx(tc["regulariser"].item())


def test_weights_apply_to_their_terms():
    z, mu, logvar = gaussian_posteriors(CORRELATED, 0.3, 64, 1)
    log_lik = torch.full((64,), -5.0, dtype=torch.float64)
    cfg = ObjectiveConfig(
        kind="beta_tcvae", alpha=0.5, beta=6.0, gamma=2.0, anneal={"kind": "linear", "warmup_steps": 10}
    )
    t = solo_objective(log_lik, mu, logvar, z, cfg, 5, 100, 1000)
    assert t["regulariser"].item() == pytest.approx((0.5 * t["mi"] + 6 * t["tc"] + 2 * t["dwkl"]).item())
    assert t["loss"].item() == pytest.approx(5.0 + 0.5 * t["regulariser"].item())  # a_5 = 0.5 multiplies it all


def test_beta_tcvae_refuses_free_bits_and_capacity():
    with pytest.raises(ValueError, match="beta_tcvae"):
        ObjectiveConfig(kind="beta_tcvae", free_bits=0.5)
    with pytest.raises(ValueError, match="beta_tcvae"):
        ObjectiveConfig(kind="beta_tcvae", anneal="capacity")


def test_training_logs_the_terms():
    cfg = TrialConfig.model_validate(
        {
            "data": {"kind": "ppca", "n_samples": 400},
            "model": {"kind": "mlp", "latent_dim": 3, "hidden": [16], "likelihood": "gaussian"},
            "objective": {"kind": "beta_tcvae", "beta": 4.0},
            "train": {"epochs": 2, "batch_size": 50, "device": "cpu"},
            "metrics": {"iw_samples": 2},
        }
    )
    reports = list(train(cfg))
    m = reports[-1].metrics
    assert reports[-1].state == "completed"
    for k in ("train/mi", "train/tc", "train/dwkl", "train/loss", "train/recon", "train/kl", "train/regulariser"):
        assert math.isfinite(m[k])
    # the logged regulariser is the weighted sum of the logged terms (epoch means of batch means)
    assert m["train/regulariser"] == pytest.approx(m["train/mi"] + 4 * m["train/tc"] + m["train/dwkl"], rel=1e-5)
    assert m["train/kl_weight"] == 1.0


def test_config_hash_unchanged_for_configs_without_the_new_settings():
    # hashes computed by vaebench before objective.kind/alpha/gamma/tc_estimator and metrics.disentanglement*
    # existed (main at 4905eb1): records made then are still found on resume
    assert TrialConfig().config_hash() == "02d58afbd61fcbf1"
    assert (
        TrialConfig.model_validate({"data": {"kind": "dsprites"}, "objective": {"beta": 4}}).config_hash()
        == "62e2de304dc628b2"
    )
    base = TrialConfig.model_validate({"data": {"kind": "dsprites"}})
    for change in (
        {"objective": {"kind": "beta_tcvae"}},
        {"objective": {"tc_estimator": "mss"}},
        {"metrics": {"disentanglement": ["mig"]}},
        {"metrics": {"disentanglement_preset": "publish"}},
        {"train": {"lr_schedule": "cosine"}},
    ):
        other = TrialConfig.model_validate({"data": {"kind": "dsprites"}, **change})
        assert other.config_hash() != base.config_hash(), change
