"""The study experiment opens in the MLflow UI's training view: the tag is stored on a real
store, and its value is one the installed MLflow UI knows."""

from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from vaebench.record.mlflow_view import (
    EXPERIMENT_KIND,
    TRAINING,
    experiment_tags,
    show_as_training,
)


def test_tag_is_stored(tmp_path):
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    new = client.create_experiment("new", tags=experiment_tags())
    old = client.create_experiment("old")
    show_as_training(client, old)
    for eid in (new, old):
        assert client.get_experiment(eid).tags[EXPERIMENT_KIND] == TRAINING


def test_installed_ui_knows_the_value():
    bundle = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"
    files = list(bundle.glob("main.*.js"))
    if not files:
        pytest.skip("this MLflow install has no UI bundle (mlflow-skinny): nothing opens the experiment")
    text = "".join(f.read_text(errors="ignore") for f in files)
    assert EXPERIMENT_KIND in text and f'CUSTOM_MODEL_DEVELOPMENT="{TRAINING}"' in text
