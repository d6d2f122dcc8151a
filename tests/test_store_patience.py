"""Which store failures a sweep waits out (vaebench.record.writer.transient), on real failures:
an MLflow client whose server is not there, and a store that refuses a request. The waiting
itself, with a real server stopped and started again, is tests/test_scale_cluster.py's."""

from __future__ import annotations

import socket
import time

import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from vaebench.cli import app
from vaebench.record.writer import Record, StoreError, transient


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_absent_server_is_transient_a_refused_request_is_not(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(Exception) as absent:
        MlflowClient(f"http://127.0.0.1:{_closed_port()}").search_experiments()
    assert transient(absent.value)
    with pytest.raises(Exception) as refused:
        MlflowClient(f"sqlite:///{tmp_path / 'm.db'}").get_run("0" * 32)  # no such run: waiting cures nothing
    assert not transient(refused.value)


def test_patience_bounds_the_wait_and_zero_fails_at_once(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    rec = Record(f"http://127.0.0.1:{_closed_port()}", "s", create=False)
    started = time.monotonic()
    with pytest.raises(StoreError):
        _ = rec.experiment_id  # patience 0 (the store never reached): at once
    assert time.monotonic() - started < 5 and rec.waited == 0
    rec.patience = 4.0
    rec._experiment_id = None
    started = time.monotonic()
    with pytest.raises(StoreError, match="127.0.0.1"):
        _ = rec.experiment_id
    took = time.monotonic() - started
    assert 2.5 <= took < 10 and rec.waited >= 3  # tried again after 1 s and 2 s, then gave up (4 s)


def test_take_over_is_for_a_server_lock(tmp_path):
    study = tmp_path / "s.yaml"
    study.write_text("name: s\nspace: {objective.beta: [1]}\n")
    result = CliRunner().invoke(
        app, ["sweep", str(study), "--take-over", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]
    )
    assert result.exit_code == 2 and "tracking server" in result.output
    assert not (tmp_path / "m.db").exists()
