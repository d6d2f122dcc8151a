"""strong_decoder_checks on hand-built trial frames, and the study file's grid."""

from __future__ import annotations

import math

import pandas as pd

from vaebench.reproduce import FREE_BITS_TOL, MI_NEAR_ZERO, REPRODUCTIONS, strong_decoder_checks, study_path
from vaebench.study.spec import expand, load_study

J = 4


def _row(decoder, remedy, seed, kl_dims, mi, au, cd, iw, state="completed"):
    return {
        "state": state,
        "seed": seed,
        "model.latent_dim": J,
        "model.args.decoder": decoder,
        "model.args.word_dropout": 0.5 if remedy == "word_dropout" else math.nan,
        "objective.anneal.kind": "linear" if remedy == "anneal" else "none",
        "objective.free_bits": 0.25 if remedy == "free_bits" else 0.0,
        "val/kl": sum(kl_dims),
        "val/mi": mi,
        "val/active_units": au,
        "val/collapsed_dims": cd,
        "val/iw_nll": iw,
        **{f"val/kl_dim/{j:02d}": v for j, v in enumerate(kl_dims)},
    }


def _frame(**over) -> pd.DataFrame:
    rows = []
    for seed in (0, 1, 2):
        rows.append(_row("factorised", "none", seed, [1.0, 0.8, 0.5, 0.2], 2.0, 4, 0, 9.0))
        rows.append(_row("rnn", "none", seed, [0.0] * J, over.get("mi", 0.001), 0, over.get("cd", J), 6.3))
        rows.append(_row("rnn", "free_bits", seed, over.get("fb", [0.26, 0.25, 0.24, 0.2]), 0.5, 4, 0, 6.6))
        rows.append(_row("rnn", "anneal", seed, [0.3, 0.0, 0.0, 0.0], 0.2, 1, 3, 6.4))
        rows.append(_row("rnn", "word_dropout", seed, [0.5, 0.4, 0.0, 0.0], 0.6, 2, 2, 6.5))
    return pd.DataFrame(rows)


def test_checks_pass_on_the_expected_pattern():
    checks = strong_decoder_checks(_frame())
    assert all(c.passed for c in checks), [c for c in checks if not c.passed]
    assert len(checks) == 10


def test_checks_fail_when_collapse_or_free_bits_do_not_hold():
    failed = {c.name.split(" (")[0] for c in strong_decoder_checks(_frame(cd=3)) if not c.passed}
    assert failed == {"GRU decoder, no remedy: collapsed dims per seed"}
    failed = [c.name for c in strong_decoder_checks(_frame(mi=MI_NEAR_ZERO + 0.01)) if not c.passed]
    assert len(failed) == 1 and "MI per seed" in failed[0]
    bad_fb = [0.25, 0.25, 0.25, 0.25 - FREE_BITS_TOL - 0.01]
    failed = [c.name for c in strong_decoder_checks(_frame(fb=bad_fb)) if not c.passed]
    assert len(failed) == 1 and "free bits" in failed[0]


def test_checks_fail_for_a_failed_trial():
    f = _frame()
    f.loc[1, "state"] = "failed"
    assert not all(c.passed for c in strong_decoder_checks(f))


def test_study_is_registered_and_expands():
    assert REPRODUCTIONS["strong_decoder"].checks is strong_decoder_checks
    study = load_study(study_path("strong_decoder"))
    specs = list(expand(study))
    assert len(specs) == 27
    kinds = {(s.config.model.args.get("decoder"), s.config.objective.free_bits) for s in specs}
    assert ("rnn", 0.25) in kinds and ("factorised", 0.0) in kinds
