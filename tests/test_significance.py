"""Confidence intervals of table differences and the best-value mark, on hand-built frames
with known answers (vaebench.report.significance, vaebench.report.tables)."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from vaebench.report.significance import difference
from vaebench.report.tables import (
    METRICS,
    ablation_table,
    cell,
    marginal_table,
    to_markdown,
)

SEEDS = list(range(10))


def standard(x):
    return (x - x.mean()) / x.std(ddof=1)


def frame(shift_sigma: float, paired: bool = True, same_noise: bool = False) -> pd.DataFrame:
    """Two levels of beta x 10 seeds; val/elbo ~ N(-20, 1) (fixed draws, standardised so each
    row's mean is exact and its sample std exactly 1) and the second level shifted by
    ``shift_sigma`` std. ``paired``: both rows have seeds 0..9 (else the second 100..109)."""
    rng = np.random.default_rng(0)
    noise = standard(rng.normal(size=10))
    other = noise if same_noise else standard(rng.normal(size=10))
    rows = [{"beta": 1.0, "seed": s, "val/elbo": -20 + noise[i]} for i, s in enumerate(SEEDS)]
    rows += [
        {"beta": 2.0, "seed": s if paired else 100 + s, "val/elbo": -20 + shift_sigma + other[i] * 1.0}
        for i, s in enumerate(SEEDS)
    ]
    t = pd.DataFrame(rows)
    t["state"] = "completed"
    t.attrs["factors"] = ["beta"]
    return t


ELBO = [m for m in METRICS if m.key == "val/elbo"]


def test_welch_interval_matches_scipy():
    a, b = [1.0, 2.0, 4.0, 3.5], [0.0, 0.5, -1.0, 0.2, 0.1]
    d = difference(a, b)
    res = stats.ttest_ind(a, b, equal_var=False)
    ci = res.confidence_interval(0.95)
    assert d.test == "welch" and d.delta == pytest.approx(np.mean(a) - np.mean(b))
    assert (d.lo, d.hi) == pytest.approx((ci.low, ci.high))


def test_paired_interval_matches_scipy_and_beats_welch_on_shared_noise():
    base = {s: float(v) for s, v in zip(SEEDS, np.random.default_rng(1).normal(0, 3, 10))}
    shifted = {s: v + 0.5 + 0.1 * (-1) ** s for s, v in base.items()}  # seed noise shared, sd 3 >> shift
    d = difference(shifted, base)
    ci = stats.ttest_rel(list(shifted.values()), list(base.values())).confidence_interval(0.95)
    assert d.test == "paired" and (d.lo, d.hi) == pytest.approx((ci.low, ci.high)) and d.significant
    assert not difference(list(shifted.values()), list(base.values())).significant  # unpaired: lost in the noise


def test_one_value_has_no_interval_and_constant_counts_are_exact():
    assert difference([1.0], [0.0, 1.0]).test == "" and not difference([1.0], [0.0, 1.0]).significant
    d = difference({0: 32.0, 1: 32.0}, {0: 0.0, 1: 0.0})
    assert d.significant and d.lo == d.hi == 32


@pytest.mark.parametrize("paired", [True, False])
def test_three_sigma_shift_is_marked_and_a_tenth_is_not(paired):
    big = ablation_table(frame(3.0, paired), ["beta"], baseline={"beta": 1.0}, metrics=ELBO)
    small = ablation_table(frame(0.1, paired), ["beta"], baseline={"beta": 1.0}, metrics=ELBO)
    row = big.iloc[1]
    assert row["val/elbo delta"] == pytest.approx(3.0) and row["val/elbo delta_sig"]
    assert row["val/elbo delta_test"] == ("paired" if paired else "welch")
    assert not small.iloc[1]["val/elbo delta_sig"] and small.iloc[1]["val/elbo delta_lo"] < 0
    # the best mark: the 3-sigma row beats the runner-up beyond the noise, the 0.1-sigma row does not
    assert big["val/elbo best"].tolist() == [False, True]
    assert small["val/elbo best"].tolist() == [False, False]
    md = to_markdown(big)
    assert "Δ +3.00 [" in md and "]\\*" in md and "**" in md
    assert "\\*" not in to_markdown(small) and "**" not in to_markdown(small)


def test_paired_shift_of_a_tenth_with_identical_seed_noise_is_exact():
    # same noise per seed in both rows: the per-seed difference is exactly 0.1 -> an exact, marked difference
    row = ablation_table(frame(0.1, True, same_noise=True), ["beta"], baseline={"beta": 1.0}, metrics=ELBO).iloc[1]
    assert row["val/elbo delta_lo"] == pytest.approx(0.1) and row["val/elbo delta_sig"]


def test_pooled_rows_say_n_counts_trials_and_marginal_table_pools():
    t = frame(3.0, paired=True)
    t = pd.concat([t.assign(latent=8), t.assign(latent=32)], ignore_index=True)
    t.attrs["factors"] = ["beta", "latent"]
    table = ablation_table(t, ["beta"], metrics=ELBO)
    assert table.attrs["pooled"] == ["latent"] and table["val/elbo n"].tolist() == [20, 20]
    marg = marginal_table(t, metrics=ELBO)
    assert marg["factor"].tolist() == ["beta", "beta", "latent", "latent"]
    assert marg["val/elbo mean"].iloc[:2].tolist() == pytest.approx([-20, -17])
    assert "(20)" in cell(marg.iloc[0].to_dict(), ELBO[0])
    assert math.isclose(marg["val/elbo mean"].iloc[2], -18.5)
