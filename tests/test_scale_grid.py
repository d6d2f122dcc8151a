"""A grid of 90,000 trials (issue 19): planning and run creation scale with the trials in
flight, not with the grid. The sweep starts its first trial in seconds, holds nothing per trial of
the grid, and a resume passes over the trials already done without building their configs.
Fast tier: the InlineExecutor and a real SQLite store read back through MLflow's public API."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

from mlflow import MlflowClient
from test_driver import study_file

from vaebench.study.spec import Study, load_study
from vaebench.sweep.driver import SweepOptions, run_sweep
from vaebench.sweep.search import GridSearch

BIG = "  objective.beta: [{}]\n  train.lr: [{}]".format(
    ", ".join(f"{0.01 * (i + 1):.2f}" for i in range(300)), ", ".join(f"{1e-4 * (i + 1):.4f}" for i in range(300))
)


def big_study(tmp: Path) -> Path:
    return study_file(tmp, name="big", epochs=1, seeds="[0]", space=BIG)


class Counting:
    """Counts the trial configs a GridSearch builds (Study.trial_config, the costly step)."""

    def __init__(self, monkeypatch):
        self.n = 0
        real = Study.trial_config

        def counted(study, point, seed):
            self.n += 1
            return real(study, point, seed)

        monkeypatch.setattr(Study, "trial_config", counted)


def test_a_grid_plans_only_what_it_is_asked(tmp_path, monkeypatch):
    study = load_study(big_study(tmp_path))
    assert study.n_trials() == 90_000
    built = Counting(monkeypatch)
    started = time.monotonic()
    first = GridSearch(study, {}).suggest(64)
    assert time.monotonic() - started < 5
    assert len(first) == 64 and built.n == 64  # 64 configs for 64 trials, not 90,000
    assert [p.point for p in first] == list(range(64))


def test_a_resumed_grid_skips_done_trials_without_building_them(tmp_path, monkeypatch):
    study = load_study(big_study(tmp_path))
    done_specs = GridSearch(study, {}).suggest(5_000)
    finals = {p.key: ("completed", {}) for p in done_specs}
    done = {(p.spec.point_key, p.spec.seed) for p in done_specs}
    built = Counting(monkeypatch)
    started = time.monotonic()
    nxt = GridSearch(study, finals, done).suggest(2)
    assert time.monotonic() - started < 5
    assert [p.point for p in nxt] == [5_000, 5_001]
    assert built.n == 2  # the 5,000 done were passed over by their point key and seed
    # without the record's point keys the same trials are found by their config hashes (built)
    assert [p.key for p in GridSearch(study, finals).suggest(2)] == [p.key for p in nxt]


def test_a_sweep_of_90000_trials_starts_at_once_and_resumes(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    path = big_study(tmp_path)
    study = load_study(path)
    for _ in range(2):  # a first sweep of 3 trials, then a resume of 3 more
        started = time.monotonic()
        summary = run_sweep(study, path.read_text(), SweepOptions(uri, inline=True, max_trials=3))
        assert summary.exit_code == 0
        assert time.monotonic() - started < 60  # was over 300 s before the first trial (issue 19)
    assert summary.skipped == 3 and summary.counts["completed"] == 6
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("big")
    runs = client.search_runs([exp.experiment_id], "tags.`vaebench.role` = 'trial'")
    hashes = [r.data.tags["vaebench.config_hash"] for r in runs]
    assert len(runs) == 6 and len(set(hashes)) == 6  # the resume ran the next 3, none again
    assert {r.info.status for r in runs} == {"FINISHED"}
    first_six = [json.dumps(p, sort_keys=True) for p in itertools.islice(study.iter_grid(), 6)]
    assert sorted(json.dumps(json.loads(r.data.tags["vaebench.point"]), sort_keys=True) for r in runs) == sorted(
        first_six
    )
