"""GridSearch and OptunaSearch on their own: no training, no MLflow; a real Optuna SQLite
storage in tmp_path. Results are made up so that the expected decisions follow by hand."""

from __future__ import annotations

import optuna
import pytest

from vaebench.study.spec import Study
from vaebench.sweep.search import CONTINUE, GridSearch, OptunaSearch

RANGE = {"objective.beta": {"low": 0.5, "high": 4.0}}  # continuous: the sampler never proposes a point twice


def study(**kw) -> Study:
    base = {
        "name": "s",
        "data": {"kind": "ppca", "n_samples": 100},
        "space": {"objective.beta": [1.0, 2.0, 4.0]},
        "seeds": [0, 1],
        "train": {"epochs": 8},
    }
    return Study.model_validate({**base, **kw})


def test_grid_order_and_skips():
    st = study()
    first = GridSearch(st, {})
    order = [(p.point, p.spec.seed) for p in first.suggest(4) + first.suggest(10)]
    assert order == [(i, s) for i in range(3) for s in (0, 1)]  # file order, each seed of a point in turn
    assert first.suggest(1) == [] and first.total == 6
    done = {p.key: ("completed", {}) for p in GridSearch(st, {}).suggest(3)}
    rest = GridSearch(st, done).suggest(10)
    assert len(rest) == 3 and not {p.key for p in rest} & set(done)


def test_pruning_waits_for_every_seed_and_reports_their_mean(tmp_path):
    st = study(search={"kind": "random", "budget": 5, "pruner": "median"}, space=RANGE)
    search = OptunaSearch(st, f"sqlite:///{tmp_path}/o.db", "s-1", {})
    good = {"val/elbo": -100.0}
    # three points run to the end: the median pruner's start-up
    for _ in range(3):
        seeds = search.suggest(2)
        for epoch in range(1, 9):
            for p in seeds:
                assert search.on_trial_result(p.key, epoch, good) == CONTINUE
        for p in seeds:
            search.on_trial_complete(p.key, "completed", good)
    a, b = search.suggest(2)
    assert a.point == b.point and a.spec.seed != b.spec.seed
    # epoch 2 (past the warm-up of 8 // 4 = 2 epochs): one seed alone decides nothing
    for epoch in (1, 2):
        assert search.on_trial_result(a.key, epoch, {"val/elbo": -500.0}) == CONTINUE
    decision = None
    for epoch in (1, 2):
        decision = search.on_trial_result(b.key, epoch, {"val/elbo": -700.0})
    assert set(decision.prune) == {a.key, b.key}  # the mean of both seeds is below the median: both stop
    trial = search.optuna.trials[a.point]
    assert trial.intermediate_values == {1: -600.0, 2: -600.0}  # the mean over seeds, per epoch
    for p in (a, b):
        search.on_trial_complete(p.key, "pruned", {"val/elbo": -600.0})
    assert search.optuna.trials[a.point].state == optuna.trial.TrialState.PRUNED
    assert [t.value for t in search.optuna.trials[:3]] == [-100.0, -100.0, -100.0]


def test_a_point_proposed_again_waits_instead_of_running_twice(tmp_path):
    st = study(space={"objective.beta": [1.0]}, seeds=[0], search={"kind": "random", "budget": 2})
    search = OptunaSearch(st, f"sqlite:///{tmp_path}/o.db", "s-1", {})
    (p,) = search.suggest(5)  # the second point is the same config, running: not planned again
    assert search.suggest(5) == []
    trials = search.optuna.trials
    assert len(trials) == 2 and all(t.state == optuna.trial.TrialState.RUNNING for t in trials)
    search.on_trial_complete(p.key, "completed", {"val/elbo": -42.0})
    assert [(t.state, t.value) for t in search.optuna.trials] == [(optuna.trial.TrialState.COMPLETE, -42.0)] * 2


def test_interrupted_point_is_asked_again_once_with_its_values(tmp_path):
    st = study(search={"kind": "random", "budget": 2}, space=RANGE)
    storage = f"sqlite:///{tmp_path}/o.db"
    first = OptunaSearch(st, storage, "s-1", {})
    a, b = first.suggest(2)
    first.on_trial_complete(a.key, "completed", {"val/elbo": -10.0})  # one seed of the point is final
    first.interrupt()
    again = OptunaSearch(st, storage, "s-1", {a.key: ("completed", {"val/elbo": -10.0})})
    (p,) = again.suggest(1)  # only the seed that had not ended
    assert p.key == b.key and p.spec.point == b.spec.point and again.adopted == {a.key: {"vaebench.optuna_trial": "1"}}
    again.on_trial_complete(b.key, "completed", {"val/elbo": -20.0})
    told = again.optuna.trials[p.point]
    assert told.value == pytest.approx(-15.0) and told.user_attrs["vaebench.resumes"] == 0
    assert again.optuna.trials[0].state == optuna.trial.TrialState.FAIL
    assert len(again.suggest(5)) == 2  # the budget counts points: one more, with both its seeds
