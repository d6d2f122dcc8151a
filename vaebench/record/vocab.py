"""Names shared by the writer of a study's MLflow record (vaebench.record.writer) and its readers
(``status``, ``report``, users): tags, states and metric names, in one place (docs/design.md: one writer).

Layout: one experiment per study (named after it); a parent run per study record
(tag ``vaebench.role=study``); one child run per trial and seed (``vaebench.role=trial``,
``mlflow.parentRunId``), tagged with ``vaebench.trial_state`` and ``vaebench.config_hash``;
params are the trial's config flattened with dotted names; metrics per epoch with
step = epoch. vaebench.record.writer writes it; vaebench.record.runs types its runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROLE, STATE, HASH, POINT = "vaebench.role", "vaebench.trial_state", "vaebench.config_hash", "vaebench.point"
SUPERSEDED, OPTUNA_STUDY, OPTUNA_TRIAL = "vaebench.superseded", "vaebench.optuna_study", "vaebench.optuna_trial"
POINT_KEY, ATTEMPT, DIVERGED_EPOCH = "vaebench.point_key", "vaebench.attempt", "vaebench.diverged_epoch"
# parent-run tags: the study's factors, search kind and seeds (JSON)
FACTORS, SEARCH, SEEDS = "vaebench.factors", "vaebench.search", "vaebench.seeds"
DEFINITION_TAG = "vaebench.definition"  # the definition's fixed hash, on the parent and every trial run
PACK_TAG = "vaebench.pack"  # a packed trial's pack id and size, e.g. "p3/16"
LOCK_TAG = "vaebench.lock"  # experiment tag: the lease of a driver writing to a tracking server
INTERRUPTED = "vaebench.interrupted"  # Optuna study user attr: numbers of points cut off by an interrupt
RESUMES = "vaebench.resumes"  # Optuna trial user attr: the interrupted point this trial asks again
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
# metric names (without the val/ or train/ prefix); metrics are logged per epoch with step = epoch
VAL_METRICS = (
    "elbo",
    "recon",
    "kl",
    "active_units",
    "mi",
    "iw_nll",
    "collapsed_dims",
    "collapsed_fraction",
    "posterior_collapse",
)
TRAIN_TERMS = ("loss", "recon", "kl", "regulariser")  # train/NAME; beta_tcvae adds mi, tc, dwkl
# the disentanglement metrics a study may ask for (metrics.disentanglement) and the scores they
# record as val/dis/NAME (dci gives three)
DIS_METRICS = ("beta_vae", "factor_vae", "mig", "dci", "sap", "modularity")
DIS_SCORES = (
    "beta_vae",
    "factor_vae",
    "mig",
    "dci_disentanglement",
    "dci_completeness",
    "dci_informativeness",
    "sap",
    "modularity",
)
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
