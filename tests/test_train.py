"""The training loop: learning, determinism, divergence, config errors, every model family."""

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from vaebench.core.models import build_model
from vaebench.core.objectives import anneal_factor
from vaebench.core.train import train
from vaebench.data import DataError
from vaebench.study.config import TrialConfig


def digits_cfg(**over) -> TrialConfig:
    base = {
        "data": {"kind": "digits", "binarize": True},
        "model": {"latent_dim": 4, "hidden": [64]},
        "train": {"epochs": 4, "batch_size": 64, "lr": 2e-3, "device": "cpu"},
        "metrics": {"iw_samples": 8},
    }
    for k, v in over.items():
        base.setdefault(k, {}).update(v) if isinstance(v, dict) else base.__setitem__(k, v)
    return TrialConfig.model_validate(base)


def run(cfg: TrialConfig):
    return list(train(cfg))


def without_timing(m: dict) -> dict:
    return {k: v for k, v in m.items() if k not in ("train/epoch_seconds", "train/member_seconds")}


def test_digits_improves_and_is_bit_for_bit_repeatable():
    a, b = run(digits_cfg()), run(digits_cfg())
    assert [r.state for r in a] == ["running"] * 3 + ["completed"]
    assert a[-1].metrics["val/elbo"] > a[0].metrics["val/elbo"] + 1.0
    assert a[-1].metrics["train/loss"] < a[0].metrics["train/loss"]
    for ra, rb in zip(a, b):
        assert without_timing(ra.metrics) == without_timing(rb.metrics)  # exact equality, not approx
    for pa, pb in zip(a[-1].model.parameters(), b[-1].model.parameters()):
        assert torch.equal(pa, pb)
    c = run(digits_cfg(seed=1))
    assert c[-1].metrics["val/elbo"] != a[-1].metrics["val/elbo"]


def test_metrics_do_not_disturb_training():
    # evaluating every epoch draws its own noise: the trained weights are the same as with no evaluation
    every = run(digits_cfg(metrics={"every": 1}))
    last_only = run(digits_cfg(metrics={"every": 4}))
    assert "val/elbo" not in last_only[0].metrics and "val/elbo" in every[0].metrics
    assert every[-1].metrics["train/loss"] == last_only[-1].metrics["train/loss"]
    assert every[-1].metrics["val/elbo"] == last_only[-1].metrics["val/elbo"]


def test_iw_every_computes_the_bound_only_where_asked_and_changes_nothing_else():
    every = run(digits_cfg(metrics={"iw_samples": 8}))
    for iw_every, epochs_with_iw in (("last", [4]), (3, [3, 4]), (None, [1, 2, 3, 4])):
        got = run(digits_cfg(metrics={"iw_samples": 8, "iw_every": iw_every}))
        assert [r.epoch for r in got if "val/iw_nll" in r.metrics] == epochs_with_iw
        for g, e in zip(got, every):  # iw_nll draws its noise last: every other number is the same
            expected = {k: v for k, v in e.metrics.items() if k != "val/iw_nll" or g.epoch in epochs_with_iw}
            assert without_timing(g.metrics) == without_timing(expected)


def test_every_metric_is_reported():
    last = run(digits_cfg())[-1].metrics
    expected = {
        "val/elbo",
        "val/recon",
        "val/kl",
        "val/active_units",
        "val/mi",
        "val/iw_nll",
        "val/collapsed_dims",
        "val/collapsed_fraction",
        "val/posterior_collapse",
        "val/mi_ceiling",
        "val/examples",
        "train/loss",
        "train/recon",
        "train/kl",
        "train/regulariser",
        "train/kl_weight",
        "train/epoch_seconds",
        "train/member_seconds",
        "train/steps",
    } | {f"val/kl_dim/{j:02d}" for j in range(4)}
    expected |= {"conv/elbo_rel_change", "conv/active_units_change", "conv/still_moving"}  # the final epoch's
    assert set(last) == expected
    assert all(math.isfinite(v) for v in last.values())
    assert last["val/examples"] == 359  # digits: round(20% of 1,797) held out
    assert last["val/elbo"] == pytest.approx(-(last["val/recon"] + last["val/kl"]))
    assert last["val/kl"] == pytest.approx(sum(last[f"val/kl_dim/{j:02d}"] for j in range(4)), rel=1e-5)


def test_threads_are_set_and_denormals_flushed():
    supported = torch.set_flush_denormal(False)  # False where the CPU cannot flush them
    tiny = torch.tensor([1e-39])  # a denormal float32
    assert (tiny * 1.0).item() != 0.0
    run(digits_cfg(train={"epochs": 1, "threads": 1}))
    assert torch.get_num_threads() == 1
    if supported:
        assert (tiny * 1.0).item() == 0.0, "train() left denormals on: Adam's step slows 2-5x on CPU"


def test_nan_loss_ends_as_diverged_not_exception():
    cfg = digits_cfg(
        data={"kind": "digits", "binarize": False},
        model={"likelihood": "gaussian", "sigma": 0.05},
        train={"optimizer": "sgd", "lr": 1.0e4, "epochs": 5},
    )
    reports = run(cfg)
    assert reports[-1].state == "diverged"
    assert reports[-1].epoch < 5
    assert not all(
        math.isfinite(v)
        for k, v in reports[-1].metrics.items()
        if k not in ("train/epoch_seconds", "train/member_seconds")
    )


def test_kl_weight_follows_schedule():
    cfg = digits_cfg(
        objective={"beta": 2.0, "anneal": {"kind": "cyclical", "cycles": 2, "ratio": 0.5}}, train={"epochs": 4}
    )
    steps_per_epoch = math.ceil(len(range(1437)) / 64)  # digits: 1,797 images, 20% held out
    T = 4 * steps_per_epoch
    for r in run(cfg):
        t_last = r.epoch * steps_per_epoch - 1
        assert r.metrics["train/kl_weight"] == pytest.approx(2.0 * anneal_factor(cfg.objective.anneal, t_last, T))


@pytest.mark.parametrize(
    "objective",
    [
        {"anneal": "linear"},
        {"anneal": "sigmoid"},
        {"anneal": {"kind": "capacity", "c_max": 5.0, "gamma": 10.0}},
        {"free_bits": 0.5},
        {"free_bits": 0.5, "free_bits_mode": "total"},
    ],
)
def test_objective_variants_train(objective):
    last = run(digits_cfg(objective=objective, train={"epochs": 2}))[-1]
    assert last.state == "completed" and math.isfinite(last.metrics["val/elbo"])


def test_free_bits_keep_kl_up():
    # with lambda = 0.5 nats/dim the regulariser never drops below lambda * J
    last = run(digits_cfg(objective={"beta": 4.0, "free_bits": 0.5}))[-1]
    assert last.metrics["train/regulariser"] >= 0.5 * 4 - 1e-6


@pytest.mark.parametrize("likelihood", ["gaussian", "gaussian_learned"])
def test_gaussian_likelihoods_train(likelihood):
    last = run(
        digits_cfg(
            data={"kind": "digits", "binarize": False},
            model={"likelihood": likelihood, "sigma": 0.3},
            train={"epochs": 2},
        )
    )[-1]
    assert last.state == "completed" and math.isfinite(last.metrics["val/iw_nll"])


def test_conv_on_dsprites():
    cfg = TrialConfig.model_validate(
        {
            "data": {"kind": "dsprites", "n_samples": 256},
            "model": {"kind": "conv", "latent_dim": 6, "channels": [8, 8, 16, 16]},
            "train": {"epochs": 1, "batch_size": 64},
            "metrics": {"iw_samples": 2},
        }
    )
    last = run(cfg)[-1]
    assert last.state == "completed" and last.metrics["val/recon"] > 0


@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 64, 64), (3, 32, 32)])
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian_learned"])
def test_conv_decoder_output_shape(shape, likelihood):
    from vaebench.study.config import ModelConfig

    model = build_model(ModelConfig(kind="conv", latent_dim=5, likelihood=likelihood), shape)
    x = torch.rand(3, *shape)
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (3, 5)
    z = torch.randn(7, 3, 5)  # leading sample dim, as in the importance-weighted bound
    assert model.decode(z).shape == (7, 3, shape[0] * (2 if likelihood == "gaussian_learned" else 1), *shape[1:])
    assert model.log_likelihood(x, z).shape == (7, 3)


def test_logvar_is_clamped():
    from vaebench.study.config import LOGVAR_MAX, LOGVAR_MIN, ModelConfig

    model = build_model(ModelConfig(kind="mlp", latent_dim=2, hidden=[4]), (3,))
    with torch.no_grad():
        model.encoder.head.bias.copy_(torch.tensor([0.0, 0.0, 1e4, -1e4]))
    _, logvar = model.encode(torch.zeros(1, 3))
    assert logvar.tolist() == [[LOGVAR_MAX, LOGVAR_MIN]]


@pytest.mark.parametrize(
    "section,bad,field",
    [
        ("model", {"likelihood": "poisson"}, "model.likelihood"),
        ("model", {"latent_dim": 0}, "model.latent_dim"),
        ("objective", {"beta": -1.0}, "objective.beta"),
        ("objective", {"free_bits": -0.5}, "objective.free_bits"),
        ("train", {"epochs": 0}, "train.epochs"),
        ("model", {"kind": "linear", "likelihood": "bernoulli"}, "model"),
    ],
)
def test_bad_config_is_refused(section, bad, field):
    with pytest.raises(ValidationError) as e:
        digits_cfg(**{section: bad})
    assert any(".".join(map(str, err["loc"])) == field for err in e.value.errors()), e.value.errors()


def test_missing_data_file_fails_before_training(tmp_path):
    cfg = TrialConfig.model_validate({"data": {"kind": "npz", "path": str(tmp_path / "absent.npz")}})
    with pytest.raises(DataError, match="absent.npz"):
        next(train(cfg))


def test_npz_vectors_train(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x_train=(rng.random((300, 20)) > 0.5).astype(np.uint8) * 255)
    cfg = TrialConfig.model_validate(
        {
            "data": {"kind": "npz", "path": str(tmp_path / "d.npz")},
            "model": {"latent_dim": 3, "hidden": [16]},
            "train": {"epochs": 1},
        }
    )
    assert run(cfg)[-1].state == "completed"
