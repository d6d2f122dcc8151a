"""Names shared by the writer of a study's MLflow record (vaebench.record.writer) and its readers
(``status``, ``report``, users): tags, states, the tracking URI (DESIGN.md, one writer).

Layout: one experiment per study (named after it); a parent run per study record
(tag ``vaebench.role=study``); one child run per trial and seed (``vaebench.role=trial``,
``mlflow.parentRunId``), tagged with ``vaebench.trial_state`` and ``vaebench.config_hash``;
params are the trial's config flattened with dotted names; metrics per epoch with
step = epoch. vaebench.record.writer writes it (and defines Record, importable from here too).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vaebench.record.store import resolve_tracking_uri, store_missing  # noqa: F401  (where the store is found)

ROLE, STATE, HASH, POINT = "vaebench.role", "vaebench.trial_state", "vaebench.config_hash", "vaebench.point"
SUPERSEDED, OPTUNA_STUDY, OPTUNA_TRIAL = "vaebench.superseded", "vaebench.optuna_study", "vaebench.optuna_trial"
# trial states; the first three are final (a resumed sweep keeps them), the others are rerun
FINAL_STATES = ("completed", "diverged", "pruned")
RERUN_STATES = ("failed", "killed", "running")
MLFLOW_STATUS = {
    "completed": "FINISHED",
    "diverged": "FINISHED",
    "pruned": "FINISHED",
    "failed": "FAILED",
    "killed": "KILLED",
}
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


def __getattr__(name: str):
    # Record and new_sqlite_store live in vaebench.record.writer (the only module that writes MLflow);
    # imported lazily because vaebench.record.writer imports the names above
    if name in ("Record", "new_sqlite_store"):
        from vaebench.record import writer as record

        return getattr(record, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
