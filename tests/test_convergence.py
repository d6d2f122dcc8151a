"""Convergence flags (vaebench.core.convergence): the pure function on hand-made histories with
known answers, then on real training: a trial cut short is still moving; the linear-VAE
trial at its closed-form optimum is not (tests/test_linear_vae.py)."""

import math
import random

import pytest

from vaebench.core.convergence import ELBO_TOL, convergence, window_start
from vaebench.core.train import train
from vaebench.study.config import TrialConfig


def history(elbo, units=None, every=1):
    epochs = range(every, every * len(elbo) + 1, every)
    h = {"val/elbo": list(zip(epochs, elbo))}
    if units is not None:
        h["val/active_units"] = list(zip(epochs, units))
    return h


def test_window_is_the_last_fifth():
    assert window_start(40) == 32 and window_start(200) == 160 and window_start(5) == 4 and window_start(1) == 1


def test_flat_history_is_not_moving():
    # -20 nats with +-0.02 alternating noise: the fitted change is far below 0.5%
    elbo = [-30 + 10 * (1 - math.exp(-e / 3)) for e in range(1, 31)] + [-20 + 0.02 * (-1) ** e for e in range(10)]
    out = convergence(history(elbo, [5.0] * 40), 40)
    assert abs(out["conv/elbo_rel_change"]) < ELBO_TOL / 5
    assert out["conv/active_units_change"] == 0 and out["conv/still_moving"] == 0


def test_linear_rise_is_measured_exactly():
    # val/elbo rising 0.05 nats per epoch around -20: over the window 32..40 that is 0.4 nats, 2%
    elbo = [-22 + 0.05 * e for e in range(1, 41)]
    out = convergence(history(elbo), 40)
    mean = sum(elbo[31:]) / 9
    assert out["conv/elbo_rel_change"] == pytest.approx(0.05 * 8 / abs(mean), rel=1e-9)
    assert out["conv/still_moving"] == 1 and "conv/active_units_change" not in out


def test_units_switching_on_is_moving_even_with_a_flat_elbo():
    out = convergence(history([-20.0] * 40, [3.0] * 35 + [4.0] * 5), 40)
    assert (
        out["conv/elbo_rel_change"] == pytest.approx(0, abs=1e-12)
        and out["conv/active_units_change"] == 1
        and out["conv/still_moving"] == 1
    )


def test_noise_alone_is_rarely_moving():
    # a flat -7 nats with N(0, 0.1) evaluation noise: the fitted change is often above ELBO_TOL
    # (1.4% of the ELBO per std), but the flag needs it beyond 3 standard errors: a t with 7 dof
    # exceeds 3 with probability 0.02
    outs = []
    for seed in range(300):
        r = random.Random(seed)
        outs.append(convergence(history([-7 + r.gauss(0, 0.1) for _ in range(40)]), 40))
    assert sum(abs(o["conv/elbo_rel_change"]) > ELBO_TOL for o in outs) > 150
    assert sum(o["conv/still_moving"] for o in outs) / len(outs) < 0.05


def test_sparse_evaluations_reach_back_and_one_evaluation_gives_nothing():
    # every 30 epochs of 40: only epoch 40 is in the window; epoch 30 is taken as its start
    out = convergence(history([-21.0, -20.0], every=30) | {"val/elbo": [(30, -21.0), (40, -20.0)]}, 40)
    assert out["conv/elbo_rel_change"] == pytest.approx(1 / 20.5)
    assert convergence({"val/elbo": [(40, -20.0)]}, 40) == {}
    assert convergence({}, 40) == {}


def digits_config(epochs: int) -> TrialConfig:
    return TrialConfig.model_validate(
        {
            "data": {"kind": "digits", "binarize": True},
            "model": {"kind": "mlp", "latent_dim": 8, "hidden": [64]},
            "train": {"epochs": epochs, "batch_size": 64, "lr": 1e-3, "device": "cpu"},
            "metrics": {"iw_samples": 2, "iw_examples": 50},
        }
    )


def test_a_trial_cut_short_is_still_moving():
    reports = list(train(digits_config(5)))
    final = reports[-1].metrics
    assert reports[-1].state == "completed"
    assert final["conv/still_moving"] == 1
    assert final["conv/elbo_rel_change"] > ELBO_TOL  # improving, not noise: the ELBO climbs ~1 nat an epoch here
    assert all("conv/still_moving" not in r.metrics for r in reports[:-1])  # only the final epoch has them


def test_reconstructions_png_is_large_with_labelled_rows(tmp_path):
    """trial.image_grid: 8x8 digits upscaled to 64 px, three rows with their labels drawn left."""
    import io

    from PIL import Image

    from vaebench.core.trial import image_grid
    from vaebench.data import load_data

    cfg = digits_config(1)
    *_, last = train(cfg)
    img = Image.open(io.BytesIO(image_grid(last.model, load_data(cfg.data, cfg.data_seed)))).convert("L")
    assert img.width >= 8 * 64 and img.height >= 3 * 64
    label = img.crop((0, 0, img.width - 8 * 68 - 4, img.height))  # the label column
    assert label.width > 40 and min(label.getdata()) < 100  # dark text on white
    (tmp_path / "grid.png").write_bytes(image_grid(last.model, load_data(cfg.data, cfg.data_seed)))
