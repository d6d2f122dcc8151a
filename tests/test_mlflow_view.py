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


def test_runs_url_opens_the_training_view_with_the_trials_flat():
    from urllib.parse import parse_qs, urlsplit

    from vaebench.record.mlflow_view import runs_url

    url = runs_url("http://127.0.0.1:5000", "7", "abc123")
    route, _, query = urlsplit(url).fragment.partition("?")
    assert route == "/experiments/7/runs"
    q = parse_qs(query)
    assert q["workflowType"] == ["machine_learning"]
    assert q["searchFilter"] == ["tags.mlflow.parentRunId = 'abc123'"]
    assert q["orderByKey"] == ["metrics.`val/elbo`"] and q["orderByAsc"] == ["false"]
    assert "workflowType=machine_learning" in runs_url("http://h:1")


def test_installed_ui_reads_the_url_parameters():
    """The bundle takes the workflow from the URL's workflowType (values genai and
    machine_learning) and reads searchFilter/orderByKey from the runs page's URL."""
    js = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"
    text = "".join(f.read_text(errors="ignore") for f in js.glob("*.js"))
    if not text:
        pytest.skip("this MLflow install has no UI bundle")
    assert 'get("workflowType")' in text and 'MACHINE_LEARNING="machine_learning"' in text
    assert '"searchFilter","orderByKey","orderByAsc"' in text


@pytest.mark.integration
@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_ui_stops_its_server_on_a_signal(tmp_path, signame):
    """`vaebench ui` (signalled itself, not its process group) leaves no server on its port."""
    import signal
    import socket
    import subprocess
    import sys

    from conftest import free_port, http_ok, wait_for

    from vaebench.record.writer import Record

    uri = f"sqlite:///{tmp_path}/m.db"
    Record(uri, "served").start_study("d", "name: served\n", {})
    port = free_port()
    log = tmp_path / "ui.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vaebench.cli", "ui", "served", "--port", str(port), "--tracking-uri", uri],
            cwd=tmp_path,
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: http_ok(f"http://127.0.0.1:{port}/health"), "vaebench ui", timeout=400)
        assert "workflowType=machine_learning" in log.read_text()
        proc.send_signal(getattr(signal, signame))
        assert proc.wait(timeout=90) == 0
        with socket.socket() as s, pytest.raises(OSError):
            s.settimeout(2)
            s.connect(("127.0.0.1", port))
    finally:
        if proc.poll() is None:
            proc.kill()
