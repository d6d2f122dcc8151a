"""vaebench.record.results reads histories through one SQL adapter (SqlHistories) with a fallback to
MLflow's public API: both paths give the same frames, a schema it does not expect sends it to
the fallback, and the adapter is what a SQLite store normally uses."""

import math
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

sys.path.insert(0, str(Path(__file__).parent))
from report_fixtures import grid_study, write_synthetic_study  # noqa: E402

import vaebench.record.results as results  # noqa: E402
from vaebench.record.results import SqlHistories, histories_frame, trials_frame  # noqa: E402


@pytest.fixture(scope="module")
def uri(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('paths') / 'mlflow.db'}"
    write_synthetic_study(uri, grid_study("paths", epochs=3, seeds=(0, 1)), states={1: "diverged", 2: "failed"})
    return uri


def frames(uri):
    t = trials_frame("paths", uri)
    return t, histories_frame("paths", uri, trials=t)


def test_sql_and_public_api_paths_agree(uri, monkeypatch):
    calls = []
    real_rows = SqlHistories.rows
    monkeypatch.setattr(SqlHistories, "rows", lambda self, *a: calls.append(1) or real_rows(self, *a))
    t_sql, h_sql = frames(uri)
    assert calls  # a SQLite store is read by the adapter

    def refuse(cls, uri):
        raise ValueError("a tracking server")

    monkeypatch.setattr(SqlHistories, "open", classmethod(refuse))
    t_api, h_api = frames(uri)
    pd.testing.assert_frame_equal(t_sql, t_api)
    pd.testing.assert_frame_equal(h_sql, h_api)
    # against MLflow directly: one run's history, and the epochs column
    rid = t_api.loc[t_api["state"] == "diverged", "run_id"].iloc[0]
    ref = {m.step: m.value for m in MlflowClient(uri).get_metric_history(rid, "train/loss")}
    got = h_api[(h_api["run_id"] == rid) & (h_api["metric"] == "train/loss")].set_index("epoch")["value"].to_dict()
    assert got == ref and t_api.set_index("run_id").loc[rid, "epochs"] == max(ref)
    assert (t_api.loc[t_api["state"] == "failed", "epochs"] == 0).all()
    assert len(h_api) > 100 and not math.isnan(h_api["value"].iloc[0])


def test_an_unexpected_schema_falls_back(uri, monkeypatch):
    t, h = frames(uri)
    monkeypatch.setattr(SqlHistories, "COLUMNS", SqlHistories.COLUMNS + ("no_such_column",))
    with pytest.raises(ValueError, match="no_such_column"):
        SqlHistories.open(uri)
    t2, h2 = frames(uri)
    pd.testing.assert_frame_equal(h, h2)
    pd.testing.assert_frame_equal(t, t2)


def test_non_database_uris_are_refused():
    for u in ("http://localhost:5000", "file:///tmp/mlruns", "databricks"):
        with pytest.raises(ValueError, match="not a database"):
            results.SqlHistories.open(u)
