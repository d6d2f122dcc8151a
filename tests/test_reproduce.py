"""`vaebench reproduce`: the linear_collapse reproduction passes end to end (a real sweep on a
local Ray, recorded in MLflow, read back and checked against docs/reference.md's closed form), and
every reproduction's checks can fail: they are run on doctored and hand-built frames.

beta_dsprites and annealing are too slow for CI (minutes on 2 cores): only their checks
functions are tested here, on small hand-built DataFrames."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from typer.testing import CliRunner

from vaebench.cli import app
from vaebench.reproduce import (
    DSPRITES_BETAS,
    IW_TOL,
    LINEAR_KL_TOL,
    REPRODUCTIONS,
    annealing_checks,
    beta_dsprites_checks,
    linear_closed_form,
    linear_collapse_checks,
    run_reproduction,
    study_path,
)
from vaebench.study.spec import load_study


def failed(checks) -> list[str]:
    return [c.name for c in checks if not c.passed]


# ----------------------------------------------------------------------------- registry


@pytest.mark.parametrize("name", sorted(REPRODUCTIONS))
def test_study_files_load_and_are_named_after_the_reproduction(name):
    study = load_study(study_path(name))
    assert study.name == name
    assert study.search.kind == "grid"
    assert REPRODUCTIONS[name].shows and REPRODUCTIONS[name].runtime


def test_unknown_name_exits_2_and_lists_the_names(tmp_path):
    result = CliRunner().invoke(app, ["reproduce", "no_such_thing", "--tracking-uri", f"sqlite:///{tmp_path}/m.db"])
    assert result.exit_code == 2, result.output
    for name in REPRODUCTIONS:
        assert name in result.output
    assert not (tmp_path / "m.db").exists()  # nothing written


# ----------------------------------------------------------------------------- linear_collapse, end to end


@pytest.fixture(scope="module")
def linear_run(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('reproduce')}/m.db"
    result = CliRunner().invoke(app, ["reproduce", "linear_collapse", "--tracking-uri", uri])
    return uri, result


def test_linear_collapse_passes(linear_run):
    uri, result = linear_run
    assert result.exit_code == 0, result.output
    assert "FAIL" not in result.output
    assert "PASS" in result.output
    n = len(linear_collapse_checks(_frame(uri)))
    assert f"{n}/{n} checks passed" in result.output


def test_linear_collapse_reuses_the_record(linear_run):
    uri, _ = linear_run
    before = _frame(uri)
    checks = run_reproduction("linear_collapse", uri)  # every trial final: no sweep, no Ray
    assert checks and all(c.passed for c in checks), failed(checks)
    after = _frame(uri)
    assert sorted(after["run_id"]) == sorted(before["run_id"])
    assert len(after) == 8 and (after["state"] == "completed").all()


def test_linear_collapse_check_fails_on_doctored_record(linear_run):
    uri, _ = linear_run
    trials = _frame(uri)
    assert not failed(linear_collapse_checks(trials))
    # KL of the largest dim of one trial off by 0.1 nats
    bad = trials.copy()
    i = bad.index[(bad["objective.beta"] == 1.0) & (bad["seed"] == 0)][0]
    col = max((c for c in bad.columns if c.startswith("val/kl_dim/")), key=lambda c: bad.at[i, c])
    bad.at[i, col] += 0.1
    assert failed(linear_collapse_checks(bad)) == ["beta=1 seed=0: KL per dim, sorted (nats)"]


def test_a_failing_check_exits_1(linear_run, monkeypatch):
    import dataclasses

    from vaebench import reproduce as mod

    uri, _ = linear_run

    def doctored(trials):  # the real checks on the record, with one KL off by 0.1 nats
        bad = trials.copy()
        bad.loc[bad.index[0], "val/kl_dim/00"] += 0.1
        return linear_collapse_checks(bad)

    monkeypatch.setitem(
        mod.REPRODUCTIONS, "linear_collapse", dataclasses.replace(mod.REPRODUCTIONS["linear_collapse"], checks=doctored)
    )
    result = CliRunner().invoke(app, ["reproduce", "linear_collapse", "--tracking-uri", uri])
    assert result.exit_code == 1, result.output
    assert "FAIL" in result.output
    n = len(doctored(_frame(uri)))
    assert f"{n - 1}/{n} checks passed" in result.output


def _frame(uri: str) -> pd.DataFrame:
    from vaebench.record.results import trials_frame

    return trials_frame("linear_collapse", uri)


# ----------------------------------------------------------------------------- linear_collapse, hand-built


def test_closed_form_matches_the_worked_example():
    kl, active, collapsed = linear_closed_form([5, 2, 0.8, 0.3, 0.1], 0.5, 1.0, 4)
    assert kl == pytest.approx([1.1513, 0.6931, 0.2350, 0.0], abs=1e-4) and (active, collapsed) == (3, 1)
    kl, active, collapsed = linear_closed_form([5, 2, 0.8, 0.3, 0.1], 0.5, 2.0, 4)
    assert kl == pytest.approx([0.8047, 0.3466, 0.0, 0.0], abs=1e-4) and (active, collapsed) == (2, 2)


def linear_frame(betas=(0.3, 1.0, 2.5, 20.0), seeds=(0, 1)) -> pd.DataFrame:
    """The closed-form optimum as a trials frame (KL dims in an unsorted order)."""
    rows = []
    for beta in betas:
        kl, active, collapsed = linear_closed_form([5, 2, 0.8, 0.3, 0.1], 0.5, beta, 4)
        for seed in seeds:
            row = {
                "state": "completed",
                "seed": seed,
                "objective.beta": beta,
                "data.eigenvalues": [5.0, 2.0, 0.8, 0.3, 0.1],
                "model.sigma": math.sqrt(0.5),
                "model.latent_dim": 4,
                "metrics.active_threshold": 0.01,
                "val/active_units": float(active),
                "val/collapsed_dims": float(collapsed),
            }
            row.update({f"val/kl_dim/{j:02d}": v + 0.005 for j, v in enumerate(reversed(kl))})
            rows.append(row)
    return pd.DataFrame(rows)


def test_linear_checks_pass_at_the_optimum_and_fail_off_it():
    good = linear_frame()
    checks = linear_collapse_checks(good)
    assert not failed(checks)
    assert len(checks) == 1 + 8 + 4 * 2

    bad = good.copy()
    bad.loc[0, "val/kl_dim/03"] += LINEAR_KL_TOL + 0.01  # beta 0.3 seed 0, largest dim
    assert failed(linear_collapse_checks(bad)) == ["beta=0.3 seed=0: KL per dim, sorted (nats)"]

    bad = good.copy()
    bad.loc[3, "val/active_units"] = 2.0  # beta 1 seed 1
    assert failed(linear_collapse_checks(bad)) == ["beta=1: active units, seeds 0, 1"]

    bad = good.copy()
    bad.loc[7, "val/collapsed_dims"] = 3.0  # beta 20 seed 1
    assert failed(linear_collapse_checks(bad)) == ["beta=20: collapsed dims, seeds 0, 1"]


def test_linear_checks_fail_for_a_trial_that_did_not_complete():
    bad = linear_frame()
    bad.loc[2, "state"] = "failed"
    for c in [c for c in bad.columns if c.startswith("val/")]:
        bad.loc[2, c] = math.nan
    assert set(failed(linear_collapse_checks(bad))) == {
        "trials completed",
        "beta=1 seed=0: KL per dim, sorted (nats)",
        "beta=1: active units, seeds 0, 1",
        "beta=1: collapsed dims, seeds 0, 1",
    }
    assert failed(linear_collapse_checks(bad.iloc[0:0])) == ["trials completed"]


# ----------------------------------------------------------------------------- beta_dsprites, hand-built


def dsprites_frame() -> pd.DataFrame:
    """Plausible numbers: rate falls and distortion rises with beta; the IW bound below -ELBO."""
    rows = []
    for i, beta in enumerate(DSPRITES_BETAS):
        for seed in (0, 1):
            rate, dist = 30.0 / (i + 1) + seed, 95.0 + 20 * i - seed
            rows.append(
                {
                    "state": "completed",
                    "seed": seed,
                    "objective.beta": beta,
                    "val/kl": rate,
                    "val/recon": dist,
                    "val/elbo": -(rate + dist),
                    "val/iw_nll": rate + dist - 5.0,
                }
            )
    return pd.DataFrame(rows)


def test_dsprites_checks_pass_on_a_good_frame():
    checks = beta_dsprites_checks(dsprites_frame())
    assert not failed(checks)
    assert len(checks) == 4 + 10


def test_dsprites_checks_fail_when_rate_or_distortion_is_not_monotone():
    bad = dsprites_frame()
    bad.loc[bad["objective.beta"] == 8.0, "val/kl"] = 100.0
    assert [n.split(" ")[0] for n in failed(beta_dsprites_checks(bad))] == ["rate"]
    bad = dsprites_frame()
    bad.loc[bad["objective.beta"] == 2.0, "val/recon"] = 50.0
    assert [n.split(" ")[0] for n in failed(beta_dsprites_checks(bad))] == ["distortion"]


def test_dsprites_checks_fail_when_the_iw_bound_exceeds_the_elbo():
    bad = dsprites_frame()
    bad.loc[3, "val/iw_nll"] = -bad.loc[3, "val/elbo"] + IW_TOL + 0.1  # beta 2 seed 1
    assert failed(beta_dsprites_checks(bad)) == ["beta=2 seed=1: -ELBO - iw_nll (nats)"]
    ok = dsprites_frame()
    ok.loc[3, "val/iw_nll"] = -ok.loc[3, "val/elbo"] + IW_TOL / 2  # within Monte-Carlo tolerance
    assert not failed(beta_dsprites_checks(ok))


def test_dsprites_checks_fail_for_missing_betas_or_trials():
    bad = dsprites_frame()
    assert "betas in the record" in failed(beta_dsprites_checks(bad[bad["objective.beta"] != 16.0]))
    bad.loc[0, "state"] = "diverged"
    assert {"trials completed", "beta=1 seed=0: -ELBO - iw_nll (nats)"} <= set(failed(beta_dsprites_checks(bad)))


# ----------------------------------------------------------------------------- annealing, hand-built


def annealing_frame() -> pd.DataFrame:
    """The verified pattern: without free bits dims collapse whatever the schedule; with free
    bits none does, at a price in ELBO. Labels as trials_frame gives them."""
    rows = []
    for anneal in ("none", "linear", "cyclical"):
        for fb in (0.0, 0.25):
            for seed in (0, 1):
                if fb == 0:
                    au, cd, elbo = (5, 19, -18.4) if anneal == "none" else (8, 6, -18.3)
                else:
                    au, cd, elbo = 32, 0, -21.5
                rows.append(
                    {
                        "state": "completed",
                        "seed": seed,
                        "objective.anneal": anneal,
                        "objective.free_bits": fb,
                        "model.latent_dim": 32,
                        "val/active_units": float(au),
                        "val/collapsed_dims": float(cd),
                        "val/collapsed_fraction": cd / 32,
                        "val/elbo": elbo,
                    }
                )
    return pd.DataFrame(rows)


def test_annealing_checks_pass_on_the_verified_pattern():
    checks = annealing_checks(annealing_frame())
    assert not failed(checks)
    verdicts = {c.name.split(":")[0]: c.measured.split(":")[0] for c in checks if "avoids collapse" in c.name}
    assert verdicts == {
        "anneal=none free_bits=0": "no",
        "anneal=none free_bits=0.25": "yes",
        "anneal=linear free_bits=0": "no",
        "anneal=linear free_bits=0.25": "yes",
        "anneal=cyclical free_bits=0": "no",
        "anneal=cyclical free_bits=0.25": "yes",
    }


def test_annealing_checks_fail_when_the_pattern_does_not_hold():
    # the baseline does not collapse: its verdict and both baseline thresholds fail
    bad = annealing_frame()
    base = (bad["objective.anneal"] == "none") & (bad["objective.free_bits"] == 0)
    bad.loc[base, ["val/active_units", "val/collapsed_dims", "val/collapsed_fraction"]] = [32.0, 0.0, 0.0]
    assert [n.split(":")[0] for n in failed(annealing_checks(bad))] == [
        "baseline (none, free bits 0)",
        "baseline (none, free bits 0)",
        "anneal=none free_bits=0",
    ]

    # one dim collapses under free bits with linear annealing, seed 1
    bad = annealing_frame()
    i = bad.index[(bad["objective.anneal"] == "linear") & (bad["objective.free_bits"] > 0) & (bad["seed"] == 1)][0]
    bad.loc[i, ["val/active_units", "val/collapsed_dims"]] = [31.0, 1.0]
    assert failed(annealing_checks(bad)) == [
        "anneal=linear free_bits=0.25: avoids collapse",
        "free bits > 0: active units of every trial",
    ]

    # free bits cost nothing: the ELBO-cost check fails
    bad = annealing_frame()
    bad.loc[(bad["objective.anneal"] == "cyclical") & (bad["objective.free_bits"] > 0), "val/elbo"] = -18.5
    assert failed(annealing_checks(bad)) == ["anneal=cyclical: ELBO cost of free bits 0.25 (nats, seed mean)"]


def test_annealing_checks_fail_for_a_failed_trial():
    bad = annealing_frame()
    bad.loc[3, "state"] = "failed"  # none, free bits 0.25, seed 1
    bad.loc[3, ["val/active_units", "val/collapsed_dims", "val/collapsed_fraction", "val/elbo"]] = math.nan
    assert set(failed(annealing_checks(bad))) == {
        "trials completed",
        "anneal=none free_bits=0.25: avoids collapse",
        "free bits > 0: active units of every trial",
    }
