"""The sweep's progress line: the best point's mean over seeds with its metric named, and an
ETA for the trials --max-trials lets this sweep run."""

from collections import Counter

import pytest
from rich.console import Console

from vaebench.sweep.progress import Best, Progress, best_point, planned


def test_best_point_is_the_mean_over_seeds():
    finals = [
        ("a", "completed", {"val/elbo": -19.0}),
        ("a", "completed", {"val/elbo": -23.0}),
        ("b", "completed", {"val/elbo": -20.0}),
        ("b", "completed", {"val/elbo": -20.5}),
        ("c", "diverged", {"val/elbo": -1.0}),
        ("d", "completed", {}),
    ]
    assert best_point(finals, "val/elbo", "max") == Best("val/elbo", -20.25, 2)  # not trial a's -19 alone
    assert best_point(finals, "val/elbo", "min") == Best("val/elbo", -21.0, 2)
    assert best_point([], "val/elbo") is None
    assert str(Best("val/recon", 12.3456, 3)) == "best val/recon 12.35 (mean of 3 seeds)"


def test_eta_honours_max_trials(capsys, monkeypatch):
    assert planned(108, 2, 10) == 12 and planned(108, 2, None) == 108 and planned(5, 2, 10) == 5
    clock = [100.0]
    monkeypatch.setattr("vaebench.sweep.progress.time.monotonic", lambda: clock[0])
    p = Progress(console=Console(stderr=True, force_terminal=False), every=0)
    p.start("collapse", 108, Counter(completed=2), max_trials=10)
    clock[0] += 40  # 4 new trials in 40 s: 10 s each, 6 of the 10 allowed left
    p.update(Counter(completed=6), 2, Best("val/elbo", -20.25, 2))
    assert p.eta_seconds(6) == pytest.approx(60)
    err = capsys.readouterr().err
    assert "at most 10 more (--max-trials)" in err
    assert "6/12 done (of 108)" in err and "best val/elbo -20.25 (mean of 2 seeds)" in err and "eta 60s" in err


def test_packed_trials_in_flight_count_towards_the_eta(capsys, monkeypatch):
    """Trials in packs end together: their epochs done keep the line and the ETA moving."""
    clock = [0.0]
    monkeypatch.setattr("vaebench.sweep.progress.time.monotonic", lambda: clock[0])
    p = Progress(console=Console(stderr=True, force_terminal=False), every=0)
    p.start("collapse", 108, Counter())
    clock[0] += 100  # 108 trials at a quarter of their epochs after 100 s: 300 s left
    p.update(Counter(), 108, None, partial=27.0)
    err = capsys.readouterr().err
    assert "0/108 done  running 108 (25% of their epochs)" in err and "eta 300s" in err
    assert p.eta_seconds(0) is None
