"""How the MLflow UI opens a study's experiment.

MLflow 3's UI chooses an experiment's page layout from the experiment tag
``mlflow.experimentKind``; without it, an experiment shows MLflow's GenAI pages (traces,
evaluations) first. ``custom_model_development`` is the model-training view: runs,
metrics charts and parameters. The installed MLflow's UI bundle lists the values it knows
(``genai_development``, ``custom_model_development``, ...); the test checks ours is one.

Call ``experiment_tags()`` where the experiment is created
(``client.create_experiment(name, artifact_location=..., tags=experiment_tags())``), or
``show_as_training(client, experiment_id)`` for an experiment that exists already.
"""

from __future__ import annotations

from typing import Any

EXPERIMENT_KIND = "mlflow.experimentKind"
TRAINING = "custom_model_development"


def experiment_tags() -> dict[str, str]:
    """The tags that make a new experiment open in the MLflow UI's model-training view."""
    return {EXPERIMENT_KIND: TRAINING}


def show_as_training(client: Any, experiment_id: str) -> None:
    """Tag an existing experiment (an MlflowClient's) to open in the model-training view."""
    for key, value in experiment_tags().items():
        client.set_experiment_tag(experiment_id, key, value)
