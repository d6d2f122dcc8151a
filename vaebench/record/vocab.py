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
ENVIRONMENTS_TAG = "vaebench.environments"  # parent run: the machines and library versions that trained it
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
# Every tag and Optuna user attribute vaebench writes: name -> (where, what it holds). The reference
# page of the record (docs/record.md) is generated from this table (python -m vaebench.docs_gen), and a
# test fails when a "vaebench.*" name in the code is missing here.
TAGS: dict[str, tuple[str, str]] = {
    ENVIRONMENTS_TAG: (
        "parent run",
        "the machines (CPU, cores, OS) and library versions that trained the record's trials, as JSON; a sweep "
        "resumed on another machine adds its own",
    ),
    ROLE: ("parent and trial runs", "`study` on a study record's parent run, `trial` on each trial run"),
    "vaebench.definition": (
        "parent and trial runs",
        "hash of the study definition's fixed part (what an extension never changes); a reader keeps the trials "
        "whose value equals their parent's",
    ),
    "vaebench.factors": ("parent run", "the factors' dotted paths, as a JSON list in file order"),
    "vaebench.search": ("parent run", "the search kind: grid, random, tpe or nsga2"),
    "vaebench.seeds": ("parent run", "the seeds, as a JSON list"),
    OPTUNA_STUDY: ("parent run", "a search's Optuna study name in the Optuna storage (NAME-RUNID8)"),
    SUPERSEDED: ("parent run", "`true` on the parent run of a record replaced by `--fresh` (kept readable)"),
    STATE: (
        "trial runs",
        "running, then completed, diverged or pruned (final: a resume keeps them), or failed or killed (rerun "
        "by a resume); written after the run's metrics and artifacts",
    ),
    HASH: ("trial runs", "hash of the trial's full config, seed included: its identity on resume"),
    POINT: ("trial runs", "the trial's factor levels, as JSON"),
    "vaebench.point_key": ("trial runs", "hash of the factor levels without the seed: the seeds of a point share it"),
    "vaebench.attempt": ("trial runs", "0, or how many times the trial was restarted after its worker died"),
    OPTUNA_TRIAL: ("trial runs", "a search trial's Optuna trial number"),
    "vaebench.pack": ("trial runs", "a packed trial's pack and its size, e.g. `p3/27`"),
    "vaebench.diverged_epoch": ("trial runs", "the epoch whose loss turned NaN or infinite (state diverged)"),
    "vaebench.lock": (
        "experiment (tracking server)",
        "the lease of the sweep writing the record: host, pid, since; renewed every few seconds, taken over "
        "after 120 s without renewal (a SQLite store uses a file lock instead)",
    ),
    "vaebench.interrupted": (
        "Optuna study user attribute",
        "numbers of the Optuna trials cut off by an interrupt, `--max-trials` or a killed driver (told FAIL, "
        "asked again once)",
    ),
    "vaebench.resumes": (
        "Optuna trial user attribute",
        "the number of the interrupted Optuna trial whose values this trial asks again",
    ),
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
