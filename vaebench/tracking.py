"""The MLflow record of a study, written by one writer (the sweep driver) and read by
``status``, ``report`` and users (DESIGN.md, one writer).

Layout: one experiment per study (named after it); a parent run per study record
(tag ``vaebench.role=study``); one child run per trial and seed (``vaebench.role=trial``,
``mlflow.parentRunId``), tagged with ``vaebench.trial_state`` and ``vaebench.config_hash``;
params are the trial's config flattened with dotted names; metrics are logged per epoch
with step = epoch, in one batch per epoch (each SQLite call costs ~13 ms).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run, RunTag, ViewType

from vaebench.store import resolve_tracking_uri, store_missing  # noqa: F401  (where the store is found)

ROLE, STATE, HASH, POINT = "vaebench.role", "vaebench.trial_state", "vaebench.config_hash", "vaebench.point"
SUPERSEDED, OPTUNA_STUDY, OPTUNA_TRIAL = "vaebench.superseded", "vaebench.optuna_study", "vaebench.optuna_trial"
# trial states; the first three are final (a resumed sweep keeps them), the others are rerun
FINAL_STATES = ("completed", "diverged", "pruned")
RERUN_STATES = ("failed", "killed", "running")
MLFLOW_STATUS = {"completed": "FINISHED", "diverged": "FINISHED", "pruned": "FINISHED",
                 "failed": "FAILED", "killed": "KILLED"}
MAX_PARAMS_PER_CALL = 100  # MLflow's log_batch limits
MAX_METRICS_PER_CALL = 1000


def artifact_root(uri: str, study: str) -> str | None:
    """For a SQLite store, artifacts go beside the database (sweeps/artifacts/NAME);
    a tracking server chooses its own."""
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri.removeprefix("sqlite:///"))
    return (db.parent / "artifacts" / study).resolve().as_uri()


def param_value(v: Any) -> str:
    return json.dumps(v) if isinstance(v, (list, dict)) else str(v)


def new_sqlite_store(db: Path) -> None:
    """Create the MLflow SQLite store ``db`` (which does not exist) as a copy of an empty one.

    MLflow creates a store by running its whole chain of schema migrations: ~4 s on 2 cores,
    paid by every new study database and every test. The result depends only on the
    versions of MLflow, SQLAlchemy and alembic, so it is built once per version set in the
    user's cache and copied. Its Default experiment is deleted so that MLflow recreates it as
    for any new store (its artifact location depends on the working directory). On any
    failure (no writable cache, a changed schema) nothing is copied and MLflow creates the
    store itself."""
    import alembic
    import mlflow
    import sqlalchemy

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vaebench"
    template = cache / f"mlflow-{mlflow.__version__}-sqlalchemy-{sqlalchemy.__version__}-alembic-{alembic.__version__}.db"
    try:
        if not template.is_file():
            cache.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=cache) as tmp:
                built = Path(tmp) / "store.db"
                MlflowClient(tracking_uri=f"sqlite:///{built}").search_experiments()  # runs the migrations
                with sqlite3.connect(built) as con:
                    con.execute("DELETE FROM experiment_tags WHERE experiment_id = 0")
                    con.execute("DELETE FROM experiments WHERE experiment_id = 0")
                con.close()
                os.replace(built, template)  # atomic: concurrent builders each publish a whole file
        shutil.copyfile(template, db)
    except (OSError, sqlite3.Error):
        db.unlink(missing_ok=True)


class Record:
    """Reads and writes one study's runs through MlflowClient."""

    def __init__(self, uri: str, study: str):
        if uri.startswith("sqlite:///"):
            db = Path(uri.removeprefix("sqlite:///"))
            db.parent.mkdir(parents=True, exist_ok=True)
            if not db.exists():
                new_sqlite_store(db)
        self.uri, self.study = uri, study
        self.client = MlflowClient(tracking_uri=uri)
        self._experiment_id: str | None = None

    # ------------------------------------------------------------------ reading

    @property
    def experiment_id(self) -> str | None:
        if self._experiment_id is None:
            exp = self.client.get_experiment_by_name(self.study)
            self._experiment_id = exp.experiment_id if exp is not None else None
        return self._experiment_id

    def parent_run(self) -> Run | None:
        """The current study record: the newest parent run not superseded by --fresh."""
        if self.experiment_id is None:
            return None
        runs = self.client.search_runs(
            [self.experiment_id], f"tags.`{ROLE}` = 'study'", order_by=["attributes.start_time DESC"])
        current = [r for r in runs if r.data.tags.get(SUPERSEDED) != "true"]
        return current[0] if current else None

    def trial_runs(self, parent_id: str) -> list[Run]:
        """Every live (not deleted) trial run of a study record, oldest first."""
        runs: list[Run] = []
        token = None
        while True:
            page = self.client.search_runs(
                [self.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'",
                run_view_type=ViewType.ACTIVE_ONLY, max_results=1000,
                order_by=["attributes.start_time ASC"], page_token=token)
            runs += page
            token = page.token
            if not token:
                return runs

    # ------------------------------------------------------------------ writing

    def start_study(self, description: str, study_yaml: str, tags: dict[str, str]) -> Run:
        """Create the experiment if needed and a new parent run; older parents are superseded."""
        if self.experiment_id is None:
            self._experiment_id = self.client.create_experiment(
                self.study, artifact_location=artifact_root(self.uri, self.study))
        old = self.parent_run()
        if old is not None:
            self.client.set_tag(old.info.run_id, SUPERSEDED, "true")
        run = self.client.create_run(
            self.experiment_id, run_name=self.study,
            tags={ROLE: "study", "mlflow.note.content": description, **tags})
        self.client.log_text(run.info.run_id, study_yaml, "study.yaml")
        return run

    def start_trial(self, parent_id: str, name: str, params: dict[str, Any], tags: dict[str, str]) -> str:
        run = self.client.create_run(
            self.experiment_id, run_name=name,
            tags={ROLE: "trial", "mlflow.parentRunId": parent_id, STATE: "running", **tags})
        items = [Param(k, param_value(v)) for k, v in params.items()]
        for i in range(0, len(items), MAX_PARAMS_PER_CALL):
            self.client.log_batch(run.info.run_id, params=items[i:i + MAX_PARAMS_PER_CALL])
        return run.info.run_id

    def log_epoch(self, run_id: str, epoch: int, metrics: dict[str, float], tags: dict[str, str] | None = None) -> None:
        """All of one epoch's metrics (step = epoch) in one call."""
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, epoch) for k, v in metrics.items()]
        tag_items = [RunTag(k, v) for k, v in (tags or {}).items()]
        for i in range(0, max(len(items), 1), MAX_METRICS_PER_CALL):
            self.client.log_batch(run_id, metrics=items[i:i + MAX_METRICS_PER_CALL], tags=tag_items if i == 0 else ())

    def log_artifacts(self, run_id: str, files: Iterable[Path], artifact_path: str | None = None) -> None:
        for f in files:
            self.client.log_artifact(run_id, str(f), artifact_path)

    def end_trial(self, run_id: str, state: str, tags: dict[str, str] | None = None) -> None:
        self.client.log_batch(run_id, tags=[RunTag(STATE, state)] + [RunTag(k, v) for k, v in (tags or {}).items()])
        self.client.set_terminated(run_id, MLFLOW_STATUS[state])

    def end_study(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status)

    def discard_run(self, run: Run | str) -> None:
        """End a superseded trial run (an interrupted or failed attempt about to be rerun) as
        KILLED if it was left RUNNING, then soft-delete it: MLflow keeps it restorable, but
        readers see each trial once."""
        run = self.client.get_run(run) if isinstance(run, str) else run
        if run.info.status == "RUNNING":
            self.client.set_terminated(run.info.run_id, "KILLED")
        self.client.delete_run(run.info.run_id)
