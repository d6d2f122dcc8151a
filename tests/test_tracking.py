"""The MLflow store a Record creates: a copy of a cached empty store (vaebench.record.vocab.new_sqlite_store)
must behave exactly like one MLflow creates itself."""

from __future__ import annotations

import sqlite3

from mlflow import MlflowClient

from vaebench.record.writer import Record, new_sqlite_store


def schema(db) -> tuple[set, list]:
    """Every table and index with its SQL, and the migration head. The SQL as a set of clauses:
    MLflow's own stores list a table's constraints in varying order (alembic's batch mode)."""

    def clauses(sql: str | None) -> frozenset[str]:
        return frozenset(line.strip().rstrip(",") for line in (sql or "").splitlines())

    with sqlite3.connect(db) as con:
        objects = {
            (kind, name, clauses(sql)) for kind, name, sql in con.execute("SELECT type, name, sql FROM sqlite_master")
        }
        version = con.execute("SELECT version_num FROM alembic_version").fetchall()
    con.close()
    return objects, version


def test_new_store_is_a_copy_of_mlflows_own(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    own = tmp_path / "own" / "mlflow.db"
    own.parent.mkdir()
    MlflowClient(tracking_uri=f"sqlite:///{own}").search_experiments()  # MLflow's migrations

    copied = tmp_path / "a" / "mlflow.db"
    rec = Record(f"sqlite:///{copied}", "s")
    assert len(list((tmp_path / "cache" / "vaebench").glob("mlflow-*.db"))) == 1  # the template was built
    (objects, version), (own_objects, own_version) = schema(copied), schema(own)
    assert version == own_version  # the same migration head
    assert objects ^ own_objects == set()  # the same tables and indexes
    # the Default experiment is the one MLflow makes for a new store here, not the template's
    default, own_default = (
        rec.client.get_experiment("0"),
        MlflowClient(tracking_uri=f"sqlite:///{own}").get_experiment("0"),
    )
    assert (default.name, default.artifact_location) == (own_default.name, own_default.artifact_location)

    parent = rec.start_study("d", "name: s\n", {})
    run_id = rec.start_trial(parent.run_id, "t", {"a": 1}, {})
    rec.log_epoch(run_id, 1, {"val/elbo": -90.5})
    rec.end_trial(run_id, "completed")
    assert MlflowClient(tracking_uri=f"sqlite:///{copied}").get_run(run_id).data.metrics == {"val/elbo": -90.5}

    # a second store is copied from the same template, and is independent of the first
    other = tmp_path / "b" / "mlflow.db"
    Record(f"sqlite:///{other}", "s")
    assert len(list((tmp_path / "cache" / "vaebench").glob("mlflow-*.db"))) == 1
    assert (
        MlflowClient(tracking_uri=f"sqlite:///{other}").search_runs(
            [e.experiment_id for e in MlflowClient(tracking_uri=f"sqlite:///{other}").search_experiments()]
        )
        == []
    )


def test_unwritable_cache_leaves_the_store_to_mlflow(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    db = tmp_path / "m.db"
    new_sqlite_store(db)
    assert not db.exists()  # nothing half-made
    rec = Record(f"sqlite:///{db}", "s")  # MLflow creates it
    assert rec.start_study("d", "name: s\n", {}).status == "RUNNING"
