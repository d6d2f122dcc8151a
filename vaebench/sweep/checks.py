"""Checks of what a sweep needs from the machine, made before Ray starts or anything is
written: the Ray address and an MLflow server answer (a TCP connect with a timeout), and
the device a study asks for exists.

Each raises CheckError with a message that names the value and what is allowed; the
command line turns it into exit 2.
"""

from __future__ import annotations

import re
import socket
import time
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from vaebench.record.store import short

if TYPE_CHECKING:
    from vaebench.study.spec import Study

ADDRESS_TIMEOUT_S = 3.0  # a Ray head on a live network answers a TCP connect in milliseconds
_HOST_PORT = re.compile(r"^(?:ray://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.-]*):(\d{1,5})$")


class CheckError(ValueError):
    """A value the sweep cannot use; the message says why and what is allowed."""


def parse_address(address: str) -> tuple[str, int] | None:
    """(host, port) of ``HOST:PORT`` or ``ray://HOST:PORT``; None for ``auto``. CheckError otherwise."""
    if address == "auto":
        return None
    m = _HOST_PORT.match(address)
    port = int(m.group(2)) if m else 0
    if not m or not 1 <= port <= 65535:
        raise CheckError(
            f"--address {short(address)}: allowed: HOST:PORT of a Ray head (e.g. 10.0.0.5:6379), "
            "ray://HOST:PORT of a Ray client server, or auto (the cluster `ray start` left on this machine)"
        )
    return m.group(1).strip("[]"), port


def check_address(address: str, timeout: float = ADDRESS_TIMEOUT_S) -> None:
    """The address is well formed and something accepts a TCP connection there within
    ``timeout`` seconds. Ray's own connect retries for minutes on an unreachable address;
    this answers in at most ``timeout`` (plus name resolution)."""
    target = parse_address(address)
    if target is None:
        return
    host, port = target
    why = _connect(host, port, timeout)
    if why is not None:
        raise CheckError(
            f"--address {address}: cannot reach a Ray cluster there ({why}); start one with "
            f"`ray start --head --port={port}` on {host}, or leave out --address to start a local Ray"
        )


def _connect(host: str, port: int, timeout: float) -> str | None:
    """None when something at host:port accepts a TCP connection within ``timeout``, else why not."""
    started = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as e:
        why = "no answer" if isinstance(e, TimeoutError) else (e.strerror or str(e))
        return f"{why}, after {time.monotonic() - started:.1f} s"


def check_server(uri: str, timeout: float = ADDRESS_TIMEOUT_S) -> None:
    """An http(s) tracking URI names a host that accepts a connection: MLflow's client would
    otherwise retry a dead server for minutes, after Ray has started. Other URIs pass."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    why = _connect(parts.hostname, port, timeout)
    if why is not None:
        raise CheckError(
            f"tracking server {uri}: nothing answers at {parts.hostname}:{port} ({why}); start "
            "`mlflow server` there, or give another --tracking-uri"
        )


def requested_devices(study: Study) -> set[str]:
    """Every train.device a trial of the study can get: the base value and any levels."""
    devices = {study.train.device}
    levels = study.space.get("train.device")
    if isinstance(levels, list):
        devices.update(str(v) for v in levels)
    return devices


def check_device(study: Study, local: bool = True, where: str | None = None) -> None:
    """``train.device: cuda`` needs a GPU per trial (Ray hides GPUs from a task that asks
    for none) and, for a local Ray, CUDA on this machine. ``auto`` and ``cpu`` always run."""
    if "cuda" not in requested_devices(study):
        return
    where = where or study.name
    if study.resources.gpus_per_trial <= 0:
        raise CheckError(
            f"{where}: train.device is cuda but resources.gpus_per_trial is 0, and Ray gives a "
            "trial without GPUs none; set resources.gpus_per_trial (e.g. 1 or 0.5), or train.device: auto"
        )
    if local:
        import torch

        if not torch.cuda.is_available():
            raise CheckError(
                f"{where}: train.device is cuda but this machine has no CUDA device "
                f"(torch {torch.__version__}); use train.device: auto or cpu, or --address of a GPU "
                "cluster"
            )
