"""How the MLflow UI opens a study's experiment.

MLflow 3's UI chose an experiment's page layout from the experiment tag
``mlflow.experimentKind`` (``custom_model_development``: the model-training view of runs,
metric charts and parameters), and ``experiment_tags`` still sets it for the UIs that read it.
From MLflow 3.5 or so (3.18 here) the UI ignores the tag: a workflow switch decides, read from
the URL's ``workflowType`` parameter (``machine_learning`` or ``genai``) and otherwise from the
browser's local storage, where it starts as ``genai``. So ``runs_url`` builds the link
``vaebench ui`` prints: the runs table of the study's experiment with
``workflowType=machine_learning``, filtered to the trials of the current record
(``tags.mlflow.parentRunId``). A filter also makes the table flat: MLflow folds child runs under
their parent only when the table is neither filtered nor sorted by a metric, so every trial is
a row, best ELBO first. The installed bundle's strings are checked by tests/test_mlflow_view.py.

Call ``experiment_tags()`` where the experiment is created
(``client.create_experiment(name, artifact_location=..., tags=experiment_tags())``), or
``show_as_training(client, experiment_id)`` for an experiment that exists already.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlencode

EXPERIMENT_KIND = "mlflow.experimentKind"
TRAINING = "custom_model_development"


def experiment_tags() -> dict[str, str]:
    """The tags that make a new experiment open in the MLflow UI's model-training view."""
    return {EXPERIMENT_KIND: TRAINING}


def show_as_training(client: Any, experiment_id: str) -> None:
    """Tag an existing experiment (an MlflowClient's) to open in the model-training view."""
    for key, value in experiment_tags().items():
        client.set_experiment_tag(experiment_id, key, value)


WORKFLOW = ("workflowType", "machine_learning")


def runs_url(base: str, experiment_id: str | None = None, parent_run_id: str | None = None) -> str:
    """The MLflow UI's address for a study: the runs table of ``experiment_id`` in the training
    view, the trials of record ``parent_run_id`` flat and best ELBO first; without an experiment,
    the experiments list in the training view. ``base``: http://HOST:PORT."""
    if experiment_id is None:
        return f"{base}/#/experiments?{urlencode([WORKFLOW])}"
    query = [WORKFLOW]
    if parent_run_id is not None:
        query += [
            ("searchFilter", f"tags.mlflow.parentRunId = '{parent_run_id}'"),
            ("orderByKey", "metrics.`val/elbo`"),
            ("orderByAsc", "false"),
        ]
    return f"{base}/#/experiments/{experiment_id}/runs?{urlencode(query, quote_via=quote)}"
