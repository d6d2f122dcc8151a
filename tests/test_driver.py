"""The sweep driver, fast tier: the InlineExecutor (trials in this process), a real SQLite
MLflow store and a real Optuna SQLite storage in tmp_path, read back through MLflow's and
Optuna's public APIs. Trials are tiny (pPCA data, MLP latent 2, hidden [8], 2 epochs) so
each takes milliseconds; a driver killed at a chosen point of the loop runs in a child
process that ends itself with os._exit (as SIGKILL would: no cleanup at all)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pytest
from mlflow import MlflowClient
from mlflow.entities import ViewType

from vaebench.core.trial import run_trial
from vaebench.record.definition import changes, definition
from vaebench.record.mlflow_view import EXPERIMENT_KIND, TRAINING
from vaebench.record.naming import run_name
from vaebench.record.vocab import DEFINITION_TAG, INTERRUPTED, RESUMES
from vaebench.record.writer import Record
from vaebench.study.spec import expand, load_study
from vaebench.sweep.driver import SweepError, SweepOptions, run_sweep
from vaebench.sweep.executors import InlineExecutor

STUDY = """\
name: {name}
data: {{kind: ppca, n_samples: 400}}
model: {{kind: mlp, latent_dim: 2, hidden: [8], likelihood: gaussian}}
train: {{epochs: {epochs}, batch_size: 128}}
metrics: {{iw_samples: 2, iw_examples: 50}}
space:
{space}
seeds: {seeds}
search: {search}
"""
GRID_SPACE = "  objective.beta: [0.5, 2.0]\n  train.lr: [1.0e-3, 3.0e-3]"
SEARCH_SPACE = "  train.lr: [1.0e-3, 3.0e-3, 1.0e-2]\n  objective.beta: {low: 0.5, high: 2.0}"


def study_file(
    tmp: Path,
    name: str = "g",
    epochs: int = 2,
    seeds: str = "[0, 1]",
    space: str = GRID_SPACE,
    search: str = "{kind: grid}",
) -> Path:
    p = tmp / f"{name}.yaml"
    p.write_text(STUDY.format(name=name, epochs=epochs, space=space, seeds=seeds, search=search))
    return p


def search_file(tmp: Path, budget: int = 3, seeds: str = "[0, 1]", name: str = "s", pruner: str = "none") -> Path:
    return study_file(
        tmp, name, seeds=seeds, space=SEARCH_SPACE, search=f"{{kind: random, budget: {budget}, pruner: {pruner}}}"
    )


def opts(tmp: Path, **kw) -> SweepOptions:
    return SweepOptions(tracking_uri=f"sqlite:///{tmp}/m.db", storage=f"sqlite:///{tmp}/optuna.db", inline=True, **kw)


def sweep(path: Path, tmp: Path, overrides: list[str] | None = None, executor=None, **kw):
    study = load_study(path, overrides)
    return run_sweep(study, path.read_text(), opts(tmp, **kw), executor=executor)


def runs(tmp: Path, name: str, view=ViewType.ACTIVE_ONLY, role: str = "trial"):
    client = MlflowClient(f"sqlite:///{tmp}/m.db")
    exp = client.get_experiment_by_name(name)
    return client.search_runs(
        [exp.experiment_id],
        f"tags.`vaebench.role` = '{role}'",
        run_view_type=view,
        max_results=5000,
        order_by=["attributes.start_time ASC"],
    )


def optuna_study(tmp: Path, name: str) -> optuna.Study:
    (parent,) = [p for p in runs(tmp, name, role="study") if p.data.tags.get("vaebench.superseded") != "true"]
    return optuna.load_study(study_name=parent.data.tags["vaebench.optuna_study"], storage=f"sqlite:///{tmp}/optuna.db")


def check_record(tmp: Path, name: str, hashes: set[str], epochs: int = 2) -> list:
    """The record's invariants: one current parent, FINISHED; every trial once, final, closed;
    every history one value per epoch; every trial tagged with the parent's definition."""
    parents = runs(tmp, name, role="study")
    current = [p for p in parents if p.data.tags.get("vaebench.superseded") != "true"]
    assert len(current) == 1 and current[0].info.status == "FINISHED"
    kids = [r for r in runs(tmp, name) if r.data.tags["mlflow.parentRunId"] == current[0].info.run_id]
    got = [r.data.tags["vaebench.config_hash"] for r in kids]
    assert sorted(got) == sorted(hashes) and len(got) == len(set(got))
    client = MlflowClient(f"sqlite:///{tmp}/m.db")
    for r in kids:
        assert r.data.tags["vaebench.trial_state"] == "completed" and r.info.status == "FINISHED"
        assert r.data.tags[DEFINITION_TAG] == current[0].data.tags[DEFINITION_TAG]
        assert [m.step for m in client.get_metric_history(r.info.run_id, "val/elbo")] == list(range(1, epochs + 1))
        m = r.data.metrics
        assert m["val/elbo"] == pytest.approx(-(m["val/recon"] + m["val/kl"]), rel=1e-5)
    return kids


def check_search(tmp: Path, name: str, budget: int, seeds: int) -> None:
    """Optuna: nothing RUNNING or WAITING; `budget` points not interrupted, all distinct; each
    completed point told the mean over its seeds of the recorded val/elbo."""
    st = optuna_study(tmp, name)
    interrupted = set(st.user_attrs.get(INTERRUPTED, []))
    trials = st.get_trials()
    assert {t.state for t in trials} <= {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL}
    points = [t for t in trials if t.number not in interrupted]
    assert len(points) == budget
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in points)
    assert len({json.dumps(t.params, sort_keys=True) for t in points}) == budget  # never a point twice
    for n in interrupted:  # each interrupted point was asked again exactly once
        assert sum(t.user_attrs.get(RESUMES) == n for t in trials) == 1
    kids = [r for r in runs(tmp, name) if r.data.tags["vaebench.trial_state"] == "completed"]
    by_point: dict[str, list[float]] = {}
    for r in kids:
        by_point.setdefault(r.data.tags["vaebench.point"], []).append(r.data.metrics["val/elbo"])
    assert len(kids) == budget * seeds and all(len(v) == seeds for v in by_point.values())
    by_trial: dict[int, list[float]] = {}
    for r in kids:
        by_trial.setdefault(int(r.data.tags["vaebench.optuna_trial"]), []).append(r.data.metrics["val/elbo"])
    assert set(by_trial) == {t.number for t in points}  # every run names the trial that was told its value
    for t in points:
        point = json.dumps({"train.lr": t.params["train.lr"], "objective.beta": t.params["objective.beta"]})
        assert t.value == pytest.approx(sum(by_point[point]) / seeds)
        assert t.value == pytest.approx(sum(by_trial[t.number]) / seeds)


def search_hashes(tmp: Path, name: str) -> set[str]:
    return {r.data.tags["vaebench.config_hash"] for r in runs(tmp, name)}


@pytest.fixture(autouse=True)
def _isolate(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    yield
    mlflow.set_tracking_uri(None)


# --------------------------------------------------------------------------- grid


def test_grid_record_and_resume(tmp_path):
    path = study_file(tmp_path)
    s = sweep(path, tmp_path)
    assert s.exit_code == 0 and s.counts == {"completed": 8}
    hashes = {sp.config_hash for sp in expand(load_study(path))}
    first = check_record(tmp_path, "g", hashes)
    (parent,) = runs(tmp_path, "g", role="study")
    client = MlflowClient(f"sqlite:///{tmp_path}/m.db")
    # the experiment opens in the MLflow UI's training view; runs are named as the UI's column shows
    # them (distinct in 20 characters) and carry the params of their model kind
    exp = client.get_experiment_by_name("g")
    assert exp.tags[EXPERIMENT_KIND] == TRAINING
    spec_of = {sp.config_hash: sp for sp in expand(load_study(path))}
    for r in first:
        spec = spec_of[r.data.tags["vaebench.config_hash"]]
        assert r.info.run_name == run_name(spec, load_study(path).space) and len(r.info.run_name) <= 20
        assert set(r.data.params) == set(spec.config.params()) | {"seed"} and "model.channels" not in r.data.params
    assert len({r.info.run_name for r in first}) == 8
    # the parent keeps the definition in force
    assert json.loads(
        Path(client.download_artifacts(parent.info.run_id, "definition.json", str(tmp_path))).read_text()
    ) == definition(load_study(path))
    again = sweep(path, tmp_path)
    assert again.exit_code == 0 and again.skipped == 8
    assert {r.info.run_id for r in check_record(tmp_path, "g", hashes)} == {r.info.run_id for r in first}


def test_report_reads_only_the_records_definition(tmp_path):
    """A trial run written under another definition (by hand, or an older vaebench) is left out
    of the tables, not averaged in as one more seed."""
    from vaebench.record.results import trials_frame

    path = study_file(tmp_path)
    sweep(path, tmp_path)
    uri = f"sqlite:///{tmp_path}/m.db"
    assert len(trials_frame("g", uri)) == 8
    (parent,) = runs(tmp_path, "g", role="study")
    spec = expand(load_study(path))[0]
    rec = Record(uri, "g")
    stray = rec.start_trial(
        parent.info.run_id,
        "stray",
        {**spec.config.params(), "seed": spec.seed},
        {
            "vaebench.config_hash": spec.config_hash,
            "vaebench.point": json.dumps(spec.point),
            "vaebench.point_key": spec.point_key,
            DEFINITION_TAG: "another",
        },
    )
    rec.end_trial(stray, "completed")
    frame = trials_frame("g", uri)
    assert len(frame) == 8 and stray not in set(frame["run_id"])


def test_changed_definition_is_refused_before_any_write(tmp_path):
    path = study_file(tmp_path)
    sweep(path, tmp_path, max_trials=2)
    before = [
        (r.info.run_id, r.info.status, r.info.end_time) for r in runs(tmp_path, "g") + runs(tmp_path, "g", role="study")
    ]
    with pytest.raises(SweepError) as e:
        sweep(path, tmp_path, ["train.epochs=3", "train.batch_size=64"])
    msg = str(e.value)
    assert "train.epochs: 2 -> 3" in msg and "train.batch_size: 128 -> 64" in msg and "--fresh" in msg
    after = [
        (r.info.run_id, r.info.status, r.info.end_time) for r in runs(tmp_path, "g") + runs(tmp_path, "g", role="study")
    ]
    assert after == before  # nothing written
    path.write_text(path.read_text().replace("objective.beta: [0.5, 2.0]", "objective.beta: [0.5]"))
    with pytest.raises(SweepError, match=r"space.objective.beta: \[0.5, 2.0\] -> \[0.5\]"):
        sweep(path, tmp_path)  # a level removed is a change (editing the YAML as much as --set)
    path.write_text(path.read_text().replace("objective.beta: [0.5]", "objective.beta: [0.5, 2.0]"))
    # --fresh starts a new record with the new definition; the old one stays
    s = sweep(path, tmp_path, ["train.epochs=3"], fresh=True)
    assert s.exit_code == 0 and s.skipped == 0
    hashes = {sp.config_hash for sp in expand(load_study(path, ["train.epochs=3"]))}
    check_record(tmp_path, "g", hashes, epochs=3)
    # resuming now means the newest record
    assert sweep(path, tmp_path, ["train.epochs=3"]).skipped == 8


def test_extension_adds_levels_and_seeds(tmp_path):
    path = study_file(tmp_path, seeds="[0]")
    sweep(path, tmp_path)
    old = {r.info.run_id for r in runs(tmp_path, "g")}
    path.write_text(path.read_text().replace("objective.beta: [0.5, 2.0]", "objective.beta: [0.5, 2.0, 4.0]"))
    s = sweep(path, tmp_path, ["seeds=[0, 1]"])
    assert s.exit_code == 0 and s.skipped == 4 and s.counts["completed"] == 12
    assert any("extended" in n for n in s.notes)
    kids = check_record(tmp_path, "g", {sp.config_hash for sp in expand(load_study(path, ["seeds=[0, 1]"]))})
    assert old <= {r.info.run_id for r in kids}
    (parent,) = runs(tmp_path, "g", role="study")
    client = MlflowClient(f"sqlite:///{tmp_path}/m.db")
    defn = json.loads(Path(client.download_artifacts(parent.info.run_id, "definition.json", str(tmp_path))).read_text())
    assert defn["seeds"] == [0, 1] and defn["space"]["objective.beta"]["levels"] == [0.5, 2.0, 4.0]
    shown = Path(client.download_artifacts(parent.info.run_id, "study.yaml", str(tmp_path / "dl"))).read_text()
    assert shown == path.read_text()  # the parent shows the study file in force


def test_new_description_is_recorded_without_rerunning(tmp_path):
    """Rewording the study's description keeps the record (same definition: nothing reruns) and
    the parent shows the new words and the study file as it is now."""
    path = study_file(tmp_path)
    sweep(path, tmp_path)
    path.write_text("description: what the runs found\n" + path.read_text())
    s = sweep(path, tmp_path)
    assert s.exit_code == 0 and s.skipped == 8 and any("description" in n for n in s.notes)
    (parent,) = runs(tmp_path, "g", role="study")
    assert parent.data.tags["mlflow.note.content"] == "what the runs found"
    client = MlflowClient(f"sqlite:///{tmp_path}/m.db")
    shown = Path(client.download_artifacts(parent.info.run_id, "study.yaml", str(tmp_path / "dl"))).read_text()
    assert shown == path.read_text()
    again = sweep(path, tmp_path)
    assert not again.notes  # said once


def test_definition_changes_are_listed():
    from vaebench.study.spec import Study

    base = {"name": "x", "space": {"objective.beta": [1, 2]}, "seeds": [0]}
    old = definition(Study.model_validate(base))
    assert changes(old, definition(Study.model_validate({**base, "seeds": [0, 1]}))) == []
    assert changes(old, definition(Study.model_validate({**base, "space": {"objective.beta": [1, 2, 3]}}))) == []
    assert changes(old, definition(Study.model_validate({**base, "seeds": [1]}))) == [("seeds", [0], [1])]
    assert changes(
        old, definition(Study.model_validate({**base, "space": {"objective.beta": [1, 2], "train.lr": [0.1]}}))
    ) == [("space.train.lr", None, [0.1])]
    s = {**base, "search": {"kind": "random", "budget": 4}}
    old = definition(Study.model_validate(s))
    assert changes(old, definition(Study.model_validate({**s, "search": {"kind": "random", "budget": 8}}))) == []
    assert changes(old, definition(Study.model_validate({**s, "search": {"kind": "random", "budget": 2}}))) == [
        ("search.budget", 4, 2)
    ]


def test_a_setting_added_later_leaves_older_records_matching_at_its_default():
    """train.lr_schedule came after records existed: a record written without it still matches a
    study at its default (constant), and a study that sets it to cosine is a change."""
    from vaebench.record.definition import LATER_SETTINGS, fixed_hash
    from vaebench.study.spec import Study

    base = {"name": "x", "space": {"objective.beta": [1, 2]}, "seeds": [0]}
    now = definition(Study.model_validate(base))
    older = json.loads(json.dumps(now))  # what a vaebench before the setting wrote: no such key
    for key in LATER_SETTINGS:
        older["base"].pop(key, None)
    assert changes(older, now) == [] and fixed_hash(older) == fixed_hash(now)
    cosine = definition(Study.model_validate({**base, "train": {"lr_schedule": "cosine"}}))
    assert changes(older, cosine) == [("train.lr_schedule", None, "cosine")]
    assert fixed_hash(cosine) != fixed_hash(now)


def test_equal_configs_run_once(tmp_path):
    """Levels 1.0 and 1 give one config: refused by the study schema, or run once."""
    from vaebench.study.spec import Study, StudyError

    path = study_file(tmp_path, seeds="[0]", space="  objective.beta: [1.0, 1, 2.0]")
    try:
        load_study(path)
    except StudyError as e:
        assert "objective.beta" in str(e)
    study = Study.model_validate(
        {
            "name": "g",
            "data": {"kind": "ppca", "n_samples": 400},
            "seeds": [0],
            "model": {"kind": "mlp", "latent_dim": 2, "hidden": [8], "likelihood": "gaussian"},
            "train": {"epochs": 2},
            "space": {"objective.beta": [1.0, 1, 2.0]},
        }
    )
    s = run_sweep(study, "name: g\n", opts(tmp_path))  # the search itself never runs a config twice
    assert s.counts == {"completed": 2}
    check_record(tmp_path, "g", {sp.config_hash for sp in expand(study)})


# --------------------------------------------------------------------------- interrupts, restarts


def term_after(epochs: int):
    """run_trial, sending this process SIGTERM after ``epochs`` epochs in all (as Ctrl-C would)."""
    seen = {"n": 0}

    def trial(config):
        for msg in run_trial(config):
            if msg["kind"] == "epoch":
                seen["n"] += 1
                if seen["n"] == epochs:
                    os.kill(os.getpid(), signal.SIGTERM)
            yield msg

    return trial


def test_sigterm_then_resume_grid(tmp_path):
    path = study_file(tmp_path, epochs=3)
    s = sweep(path, tmp_path, executor=InlineExecutor(workers=2, trial=term_after(7)))
    assert s.exit_code == 130 and s.counts["killed"] == 2
    kids = runs(tmp_path, "g")
    assert not any(r.info.status == "RUNNING" for r in kids)
    assert {r.info.status for r in kids if r.data.tags["vaebench.trial_state"] == "killed"} == {"KILLED"}
    assert runs(tmp_path, "g", role="study")[0].info.status == "KILLED"
    again = sweep(path, tmp_path)
    assert again.exit_code == 0
    check_record(tmp_path, "g", {sp.config_hash for sp in expand(load_study(path))}, epochs=3)


def test_sigterm_then_resume_search_has_its_budget(tmp_path):
    path = search_file(tmp_path, budget=4)
    s = sweep(path, tmp_path, executor=InlineExecutor(workers=3, trial=term_after(5)))
    assert s.exit_code == 130
    st = optuna_study(tmp_path, "s")
    assert not any(t.state == optuna.trial.TrialState.RUNNING for t in st.get_trials())  # all told
    assert st.user_attrs[INTERRUPTED]
    again = sweep(path, tmp_path)
    assert again.exit_code == 0
    check_search(tmp_path, "s", budget=4, seeds=2)
    check_record(tmp_path, "s", search_hashes(tmp_path, "s"))


@pytest.mark.parametrize("seeds,max_trials,runs_needed", [("[0]", 2, 2), ("[0, 1]", 3, 3)])
def test_max_trials_resumes_to_the_budget(tmp_path, seeds, max_trials, runs_needed):
    """Issue 9's case: budget 4, --max-trials 2, run again: 4 distinct points (it was 2). With two
    seeds and --max-trials 3 a point is cut between its seeds."""
    path = search_file(tmp_path, budget=4, seeds=seeds)
    for _ in range(runs_needed):
        assert sweep(path, tmp_path, max_trials=max_trials).exit_code == 0
    n = len(json.loads(seeds))
    check_search(tmp_path, "s", budget=4, seeds=n)
    check_record(tmp_path, "s", search_hashes(tmp_path, "s"))
    assert sweep(path, tmp_path, max_trials=max_trials).skipped == 4 * n  # nothing more to run


def test_search_straight_through(tmp_path):
    path = search_file(tmp_path, budget=3)
    assert sweep(path, tmp_path).exit_code == 0
    check_search(tmp_path, "s", budget=3, seeds=2)
    first = [t.params for t in optuna_study(tmp_path, "s").trials]
    # a resumed study with a larger budget does not replay the opening points
    assert sweep(path, tmp_path, ["search.budget=5"]).exit_code == 0
    check_search(tmp_path, "s", budget=5, seeds=2)
    assert [t.params for t in optuna_study(tmp_path, "s").trials][:3] == first


def test_dead_worker_restarts_in_a_fresh_run(tmp_path):
    path = study_file(tmp_path, seeds="[0]", space="  objective.beta: [1.0]")
    state = {"died": False}

    def dies_once(config):
        for msg in run_trial(config):
            if msg["kind"] == "epoch" and not state["died"]:
                state["died"] = True
                raise RuntimeError("worker lost")
            yield msg

    s = sweep(path, tmp_path, executor=InlineExecutor(trial=dies_once))
    assert s.exit_code == 0
    (run,) = check_record(tmp_path, "g", {sp.config_hash for sp in expand(load_study(path))})
    assert run.data.tags["vaebench.attempt"] == "1"
    (deleted,) = runs(tmp_path, "g", ViewType.DELETED_ONLY)
    assert deleted.info.status == "KILLED" and deleted.data.tags["vaebench.attempt"] == "0"


# --------------------------------------------------------------------------- a driver killed at each point


class Killed(BaseException):
    """A driver killed on the spot: not an Exception, so no clean-up of the driver runs (as with
    SIGKILL). The real SIGKILL is test_killed_child_process_then_resumed."""


def crash_at(monkeypatch, where: str, n: int) -> None:
    """Make the n-th passage through crash point ``where`` kill the driver."""
    from mlflow import MlflowClient as Client

    from vaebench.record.writer import Record as Rec

    seen = {"n": 0}

    def die(owner, name, when=lambda *a, **k: True, after=False):
        orig = getattr(owner, name)

        def wrapper(*a, **k):
            hit = when(*a, **k)
            if hit and not after:
                seen["n"] += 1
                if seen["n"] >= n:
                    raise Killed(where)
            out = orig(*a, **k)
            if hit and after:
                seen["n"] += 1
                if seen["n"] >= n:
                    raise Killed(where)
            return out

        monkeypatch.setattr(owner, name, wrapper)

    if where == "before_parent":
        die(Client, "create_run", lambda self, exp, *a, **k: k.get("tags", {}).get("vaebench.role") == "study")
    elif where == "after_state_tag":  # the trial's state tag is written, its run not yet closed
        die(Client, "set_terminated")
    elif where == "before_close":  # the trial ended; nothing of its end written, its metrics still buffered
        die(Rec, "end_trial")
    elif where == "between_flushes":  # an epoch buffered, not yet sent
        die(Rec, "log_epoch", after=True)
    elif where == "before_tell":
        die(optuna.study.Study, "tell")
    elif where == "during_artifact":  # the checkpoint written, the run's state not
        die(Client, "log_artifact", after=True)
    else:
        raise ValueError(where)


def killed(monkeypatch, where: str, n: int, path: Path, tmp: Path) -> None:
    crash_at(monkeypatch, where, n)
    with pytest.raises(Killed):
        sweep(path, tmp, executor=InlineExecutor(workers=2))
    monkeypatch.undo()
    monkeypatch.chdir(tmp)


@pytest.mark.parametrize(
    "where,n",
    [("before_parent", 1), ("after_state_tag", 3), ("before_close", 3), ("between_flushes", 5), ("during_artifact", 2)],
)
def test_grid_killed_then_resumed(tmp_path, monkeypatch, where, n):
    path = study_file(tmp_path)
    killed(monkeypatch, where, n, path, tmp_path)
    if where == "before_parent":
        assert MlflowClient(f"sqlite:///{tmp_path}/m.db").get_experiment_by_name("g") is not None
        assert runs(tmp_path, "g", role="study") == []
    before = runs(tmp_path, "g") if where != "before_parent" else []
    tagged_final = {r.info.run_id for r in before if r.data.tags["vaebench.trial_state"] == "completed"}
    if where == "after_state_tag":
        assert any(r.info.status == "RUNNING" for r in before if r.info.run_id in tagged_final)
    if where != "before_parent":
        assert runs(tmp_path, "g", role="study")[0].info.status == "RUNNING"  # a killed driver ends nothing
    s = sweep(path, tmp_path)
    assert s.exit_code == 0 and s.skipped == len(tagged_final)
    kids = check_record(tmp_path, "g", {sp.config_hash for sp in expand(load_study(path))})
    assert tagged_final <= {r.info.run_id for r in kids}  # a run tagged final is kept (and closed), not rerun
    assert len(runs(tmp_path, "g", role="study")) == 1


@pytest.mark.parametrize(
    "where,n",
    [("before_tell", 2), ("after_state_tag", 4), ("between_flushes", 6), ("during_artifact", 3), ("before_close", 2)],
)
def test_search_killed_then_resumed(tmp_path, monkeypatch, where, n):
    path = search_file(tmp_path, budget=3)
    killed(monkeypatch, where, n, path, tmp_path)
    st = optuna_study(tmp_path, "s")
    assert any(t.state == optuna.trial.TrialState.RUNNING for t in st.get_trials())  # left by the dead driver
    assert sweep(path, tmp_path).exit_code == 0
    check_search(tmp_path, "s", budget=3, seeds=2)
    check_record(tmp_path, "s", search_hashes(tmp_path, "s"))


CHILD = r"""
import os, sys
from vaebench.record.mlflow_view import EXPERIMENT_KIND, TRAINING
from vaebench.record.naming import run_name
from vaebench.record.writer import Record
from vaebench.study.spec import load_study
from vaebench.sweep.driver import SweepOptions, run_sweep
from vaebench.sweep.executors import InlineExecutor

path, tmp, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
seen = {"n": 0}
log_epoch = Record.log_epoch

def log_then_die(self, *a, **k):  # killed with epochs buffered, not yet sent
    log_epoch(self, *a, **k)
    seen["n"] += 1
    if seen["n"] >= n:
        os._exit(9)

Record.log_epoch = log_then_die
o = SweepOptions(tracking_uri=f"sqlite:///{tmp}/m.db", storage=f"sqlite:///{tmp}/optuna.db", inline=True)
run_sweep(load_study(path), open(path).read(), o, executor=InlineExecutor(workers=2))
sys.exit(3)  # not reached when the crash point was hit
"""


def test_killed_child_process_then_resumed(tmp_path):
    """A real process death (os._exit: no clean-up, no finally, the lock released by the kernel)."""
    path = search_file(tmp_path, budget=3)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), str(tmp_path), "6"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 9, proc.stderr[-3000:]
    s = sweep(path, tmp_path)
    assert s.exit_code == 0
    assert any("took over the lock" in note for note in s.notes)  # the dead driver's lock
    check_search(tmp_path, "s", budget=3, seeds=2)
    check_record(tmp_path, "s", search_hashes(tmp_path, "s"))


# --------------------------------------------------------------------------- the lock


def test_second_driver_is_refused_at_once(tmp_path):
    path = study_file(tmp_path)
    holder = Record(f"sqlite:///{tmp_path}/m.db", "g")
    assert holder.lock() is None
    t0 = time.monotonic()
    with pytest.raises(SweepError) as e:
        sweep(path, tmp_path)
    assert time.monotonic() - t0 < 10
    assert f"pid {os.getpid()}" in str(e.value) and socket.gethostname() in str(e.value) and "since" in str(e.value)
    holder.unlock()
    assert sweep(path, tmp_path).exit_code == 0


def test_cli_lock_refusal_exit_2(tmp_path):
    path = study_file(tmp_path)
    holder = Record(f"sqlite:///{tmp_path}/m.db", "g")
    holder.lock()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "vaebench.cli",
            "sweep",
            str(path),
            "--inline",
            "--tracking-uri",
            f"sqlite:///{tmp_path}/m.db",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    holder.unlock()
    assert proc.returncode == 2, proc.stderr
    assert "another driver" in proc.stderr and f"pid {os.getpid()}" in proc.stderr and "Traceback" not in proc.stderr
    assert MlflowClient(f"sqlite:///{tmp_path}/m.db").get_experiment_by_name("g") is None  # nothing written


def test_cli_refused_search_leaves_no_folder(tmp_path):
    """A search study refused (lock held) exits 2 and leaves neither its record nor the folder of
    its default Optuna storage (sweeps/NAME) behind."""
    path = search_file(tmp_path)
    holder = Record(f"sqlite:///{tmp_path}/m.db", "s")
    holder.lock()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "vaebench.cli",
            "sweep",
            str(path),
            "--inline",
            "--tracking-uri",
            f"sqlite:///{tmp_path}/m.db",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    holder.unlock()
    assert proc.returncode == 2 and "another driver" in proc.stderr, proc.stderr
    assert not (tmp_path / "sweeps").exists()


# --------------------------------------------------------------------------- store failures


def test_artifact_store_failure_ends_cleanly(tmp_path):
    path = study_file(tmp_path, epochs=3)
    blocked = {"done": False}

    def block_artifacts_after_first(config):
        for msg in run_trial(config):
            if msg["kind"] == "end" and not blocked["done"] and (tmp_path / "artifacts" / "g").is_dir():
                # the artifact folder becomes a file: every later artifact write fails (as on a full disk)
                blocked["done"] = True
                import shutil

                shutil.rmtree(tmp_path / "artifacts" / "g")
                (tmp_path / "artifacts" / "g").write_text("")
            yield msg

    s = sweep(path, tmp_path, executor=InlineExecutor(workers=2, trial=block_artifacts_after_first))
    assert s.exit_code == 1 and s.store_error and f"sqlite:///{tmp_path}/m.db" in s.store_error
    (parent,) = runs(tmp_path, "g", role="study")
    assert parent.info.status == "FAILED"  # never FINISHED by a crash
    kids = runs(tmp_path, "g")
    assert not any(r.info.status == "RUNNING" for r in kids)
    assert any(r.data.tags["vaebench.trial_state"] == "killed" for r in kids)


def test_tracking_server_down_fails_within_bounds(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens there once closed
    path = study_file(tmp_path)
    t0 = time.monotonic()
    s = run_sweep(
        load_study(path), path.read_text(), SweepOptions(tracking_uri=f"http://127.0.0.1:{port}", inline=True)
    )
    assert time.monotonic() - t0 < 60
    assert s.exit_code == 1 and f"http://127.0.0.1:{port}" in s.store_error


# --------------------------------------------------------------------------- duplicate seeds


@pytest.mark.parametrize("kind", ["grid", "random"])
def test_duplicate_seeds_are_refused_or_merged(tmp_path, kind):
    """`seeds: [0, 0]`: refused by the study schema, or merged (one run per config hash, every
    Optuna trial told), the same way for grid and search."""
    from vaebench.study.spec import StudyError

    path = study_file(tmp_path, seeds="[0, 0]") if kind == "grid" else search_file(tmp_path, budget=2, seeds="[0, 0]")
    try:
        study = load_study(path)
    except StudyError as e:
        assert "seeds" in str(e)
        return
    s = run_sweep(study, path.read_text(), opts(tmp_path))
    assert s.exit_code == 0
    name = "g" if kind == "grid" else "s"
    hashes = [r.data.tags["vaebench.config_hash"] for r in runs(tmp_path, name)]
    assert len(hashes) == len(set(hashes)) == (4 if kind == "grid" else 2)
    if kind == "random":
        assert {t.state for t in optuna_study(tmp_path, "s").trials} == {optuna.trial.TrialState.COMPLETE}


# --------------------------------------------------------------------------- the command line


def cli(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    return subprocess.Popen(
        [sys.executable, "-m", "vaebench.cli", *args],
        cwd=cwd,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_cli_changed_definition_exit_2(tmp_path):
    path = study_file(tmp_path)
    sweep(path, tmp_path, max_trials=1)
    proc = cli(
        "sweep",
        str(path),
        "--inline",
        "--tracking-uri",
        f"sqlite:///{tmp_path}/m.db",
        "--set",
        "train.epochs=3",
        cwd=tmp_path,
    )
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert "train.epochs: 2 -> 3" in err and "--fresh" in err and "Traceback" not in err
    assert len(runs(tmp_path, "g")) == 1


def test_cli_interrupt_after_fresh_says_how_to_resume(tmp_path):
    path = study_file(tmp_path, epochs=400)
    uri = f"sqlite:///{tmp_path}/m.db"
    proc = cli("sweep", str(path), "--inline", "--fresh", "--tracking-uri", uri, cwd=tmp_path)
    client = MlflowClient(uri)

    def training() -> bool:
        try:
            return bool(runs(tmp_path, "g"))
        except Exception:  # no store or experiment yet
            return False

    deadline = time.monotonic() + 120
    while not training() and time.monotonic() < deadline:
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "run the same command without --fresh to resume" in err
    (run,) = runs(tmp_path, "g")
    assert run.info.status == "KILLED" and run.data.tags["vaebench.trial_state"] == "killed"
    assert client.get_metric_history(run.info.run_id, "val/elbo")  # its buffered epochs were flushed


def test_deleted_database_ends_cleanly(tmp_path):
    path = study_file(tmp_path, epochs=3)
    gone = {"done": False}

    def delete_store_after_first(config):
        for msg in run_trial(config):
            if msg["kind"] == "end" and not gone["done"]:
                gone["done"] = True
                (tmp_path / "m.db").unlink()
            yield msg

    t0 = time.monotonic()
    s = sweep(path, tmp_path, executor=InlineExecutor(workers=2, trial=delete_store_after_first))
    assert time.monotonic() - t0 < 60
    assert s.exit_code == 1 and s.store_error.startswith(f"the tracking store sqlite:///{tmp_path}/m.db failed")
    assert "OperationalError: " in s.store_error and "\n" not in s.store_error  # the cause, in one line


def test_pruned_points_stop_early_and_are_told_pruned(tmp_path):
    """The median pruner through the whole loop (InlineExecutor, cancel, record, tell): pruned
    points stop before their last epoch, their runs tagged pruned; what Optuna was told at each
    epoch is the run's recorded history."""
    path = study_file(
        tmp_path,
        "p",
        epochs=8,
        seeds="[0]",
        space="  train.lr: [1.0e-2, 5.0e-3, 1.0e-7]\n  objective.beta: {low: 0.5, high: 2.0}",
        search="{kind: random, budget: 8, pruner: median}",
    )
    s = sweep(path, tmp_path)
    assert s.exit_code == 0 and s.counts["pruned"] >= 1
    client = MlflowClient(f"sqlite:///{tmp_path}/m.db")
    st = optuna_study(tmp_path, "p")
    by_trial = {int(r.data.tags["vaebench.optuna_trial"]): r for r in runs(tmp_path, "p")}
    assert len(by_trial) == 8
    for t in st.trials:
        run = by_trial[t.number]
        history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val/elbo")}
        assert t.intermediate_values == pytest.approx(history)  # one seed: the mean is the value
        if t.state == optuna.trial.TrialState.PRUNED:
            assert run.data.tags["vaebench.trial_state"] == "pruned" and run.info.status == "FINISHED"
            assert 2 <= len(history) < 8  # from the end of the warm-up (step 8 // 4 = 2) on, before the end
        else:
            assert t.state == optuna.trial.TrialState.COMPLETE and len(history) == 8
            assert t.value == pytest.approx(run.data.metrics["val/elbo"])
