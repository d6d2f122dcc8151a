"""Session fixtures with real services: a two-node Ray cluster and an MLflow tracking server,
both on 127.0.0.1, started once and stopped by their own PIDs (never `ray stop`, which would
stop every Ray on the machine)."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
SERVICES = {"ray_cluster", "mlflow_server"}  # session fixtures that start real services


def pytest_collection_modifyitems(config, items):
    """A test that uses a real Ray cluster or MLflow server belongs to the integration tier,
    whether or not its module says so."""
    for item in items:
        if SERVICES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)


def http_ok(url: str) -> bool:
    """True once ``url`` answers 200 (a server's health endpoint)."""
    try:
        return urllib.request.urlopen(url, timeout=2).status == 200
    except OSError:
        return False


def wait_for(check, what: str = "", timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise RuntimeError(f"timed out waiting for {what}")


@dataclass
class RayCluster:
    address: str
    env: dict[str, str]  # the environment a client of this cluster needs (token auth)


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory) -> RayCluster:
    """`ray start --head` on 127.0.0.1 plus a second node joined to it, 1 CPU each.
    Ray >= 2.59 authenticates with a token: the cluster and its clients share this one."""
    tmp = tmp_path_factory.mktemp("ray")
    token = tmp / "token"
    token.write_text(secrets.token_hex(32))
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    port = free_port()
    common = ["--num-cpus=1", "--node-ip-address=127.0.0.1", "--disable-usage-stats", "--block"]
    log = open(tmp / "ray.log", "w")
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", f"--port={port}", "--include-dashboard=false", *common],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    procs = [head]
    worker_cmd = [str(BIN / "ray"), "start", f"--address=127.0.0.1:{port}", *common]
    try:

        def port_open() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        wait_for(port_open, "the Ray head", timeout=300)
        procs.append(
            subprocess.Popen(worker_cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        )
        probe = (
            f"import ray; ray.init(address='127.0.0.1:{port}', logging_level='ERROR'); "
            "import sys; sys.exit(0 if sum(n['Alive'] for n in ray.nodes()) == 2 else 1)"
        )
        restarts = 0

        def two_nodes() -> bool:
            # Ray gives a raylet a fixed 30 s to register; on a loaded machine `ray start` can
            # exit on that timeout, so a node whose process ended is started again (twice at most)
            nonlocal restarts
            if procs[-1].poll() is not None and restarts < 2:
                restarts += 1
                procs.append(
                    subprocess.Popen(worker_cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
                )
            try:
                return (
                    subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, timeout=90).returncode
                    == 0
                )
            except subprocess.TimeoutExpired:
                return False

        wait_for(two_nodes, "two live Ray nodes", timeout=300)
        yield RayCluster(f"127.0.0.1:{port}", env)
    finally:
        for p in reversed(procs):
            stop(p)
        log.close()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> str:
    """A real `mlflow server` on 127.0.0.1 with a SQLite backend, serving artifacts."""
    tmp = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    log = open(tmp / "server.log", "w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{tmp}/server.db",
            "--artifacts-destination",
            str(tmp / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=tmp,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: http_ok(f"{url}/health"), "the MLflow server")
        yield url
    finally:
        stop(proc)
        log.close()
