"""Where trials run (DESIGN.md, sweep: Executor). The driver submits Jobs and polls Events;
an executor never writes to MLflow or Optuna and never raises for a trial's failure.

Every executor speaks the messages of ``vaebench.trial.run_trial`` ("start", "epoch",
"end"), one Event each, plus "restart" when a trial's worker died and the trial starts again
from scratch (the driver discards the partial run and opens a new one).

- ``InlineExecutor``: runs jobs in this process, one message per poll (tests, ``sweep --inline``).
- ``RayExecutor``: one Ray streaming-generator task per job; a job whose worker died is
  rerun up to MAX_RETRIES times, then ends failed.
"""

from __future__ import annotations

import atexit
import math
import os
import secrets
import shutil
import sys
import tempfile
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from vaebench.trial import run_trial

MAX_RETRIES = 2  # a trial whose worker dies is rerun this many times, then failed
PRELOAD_VAR = "RAY_preload_python_modules"  # Ray (experimental): modules its workers import at start


@dataclass(frozen=True)
class Job:
    key: str  # the trial's identity in the record: its config hash
    config: dict[str, Any]  # TrialConfig as JSON (model_dump(mode="json"))
    name: str  # run name, for Ray task names and messages


@dataclass(frozen=True)
class Event:
    key: str
    kind: Literal["start", "epoch", "end", "restart"]
    msg: dict[str, Any]  # run_trial's message; for "restart": {"error": str}
    tags: dict[str, str] = field(default_factory=dict)  # e.g. {"vaebench.pack": "p3/16"} on "start"


class Executor(Protocol):
    def capacity(self) -> int: ...  # how many more jobs it takes now

    def submit(self, jobs: list[Job]) -> None: ...

    def poll(self, timeout: float) -> list[Event]: ...  # [] on timeout; never raises for a trial's failure

    def cancel(self, keys: list[str]) -> None: ...  # pruned/interrupted: no more events for them

    def close(self) -> None: ...  # cancel everything still running


class ExecutorError(RuntimeError):
    """The executor cannot start (bad resources, unreachable cluster); nothing was written."""


def failed(key: str, text: str) -> Event:
    return Event(key, "end", {"kind": "end", "state": "failed", "traceback": text})


# --------------------------------------------------------------------------- in-process


class InlineExecutor:
    """Runs up to ``workers`` jobs in this process, interleaved one message per poll.
    ``trial`` is the job's message stream (run_trial); an exception escaping it stands for a
    dead worker: the job restarts from scratch, up to ``max_retries`` times."""

    def __init__(self, workers: int = 1, trial: Callable[[dict[str, Any]], Iterator[dict[str, Any]]] = run_trial,
                 max_retries: int = MAX_RETRIES):
        self.workers, self.trial, self.max_retries = workers, trial, max_retries
        self.running: dict[str, tuple[Job, Iterator[dict[str, Any]], int]] = {}  # key -> (job, messages, attempt)
        self.turns: deque[str] = deque()

    def capacity(self) -> int:
        return max(0, self.workers - len(self.running))

    def submit(self, jobs: list[Job]) -> None:
        for job in jobs:
            self.running[job.key] = (job, iter(self.trial(job.config)), 0)
            self.turns.append(job.key)

    def poll(self, timeout: float) -> list[Event]:
        while self.turns:
            key = self.turns.popleft()
            if key not in self.running:  # cancelled
                continue
            job, messages, attempt = self.running[key]
            try:
                msg = next(messages)
            except StopIteration:
                msg = {"kind": "end", "state": "failed", "traceback": "the trial stopped without a final message"}
            except Exception as e:  # the "worker" died
                if attempt < self.max_retries:
                    self.running[key] = (job, iter(self.trial(job.config)), attempt + 1)
                    self.turns.append(key)
                    return [Event(key, "restart", {"error": f"{type(e).__name__}: {e}"})]
                del self.running[key]
                return [failed(key, f"the worker died {attempt + 1} times: {traceback.format_exc()}")]
            if msg["kind"] == "end":
                del self.running[key]
            else:
                self.turns.append(key)
            return [Event(key, msg["kind"], msg)]
        return []

    def cancel(self, keys: list[str]) -> None:
        for key in keys:
            entry = self.running.pop(key, None)
            if entry is not None and hasattr(entry[1], "close"):
                entry[1].close()

    def close(self) -> None:
        self.cancel(list(self.running))


# --------------------------------------------------------------------------- Ray


def connect_ray(address: str | None, cpus_per_trial: float, gpus_per_trial: float) -> None:
    """Start a local Ray (all cores, no dashboard, token authentication) or join ``address``;
    check that one trial's resources fit on some node. Raises ExecutorError."""
    if not address:
        local_ray_auth()  # before ray is imported: Ray reads its authentication settings once, on import
    import ray

    try:
        if address:
            ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        else:
            # address="local": always a new instance, never one that `ray start` left on the machine.
            # Ray prestarts a worker per CPU as it starts; preloading the trial module there imports
            # torch (~2.5 s) while Ray starts instead of when the first trials arrive (benchmarks/).
            # The raylet reads the variable once, when ray.init starts it.
            saved = os.environ.get(PRELOAD_VAR)
            os.environ[PRELOAD_VAR] = ",".join(filter(None, [saved, run_trial.__module__]))
            try:
                ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,
                         logging_level="ERROR", log_to_driver=False)
            finally:
                if saved is None:
                    os.environ.pop(PRELOAD_VAR, None)
                else:
                    os.environ[PRELOAD_VAR] = saved
    except Exception as e:  # connection refused, bad address, ...
        raise ExecutorError(f"cannot start or reach Ray{f' at {address}' if address else ''}: {e}") from None
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if gpus_per_trial > 0 and not any(n.get("GPU", 0) >= gpus_per_trial for n in nodes):
        total = sum(n.get("GPU", 0) for n in nodes)
        ray.shutdown()
        raise ExecutorError(f"resources.gpus_per_trial is {gpus_per_trial} but no node of the Ray cluster has that "
                            f"many GPUs (cluster total: {total:g}); set gpus_per_trial: 0 or use --address of a GPU cluster")
    if not any(n.get("CPU", 0) >= cpus_per_trial for n in nodes):
        most = max((n.get("CPU", 0) for n in nodes), default=0)
        ray.shutdown()
        raise ExecutorError(f"resources.cpus_per_trial is {cpus_per_trial} but the largest Ray node has {most:g} CPUs")


def local_ray_auth() -> None:
    """A local Ray requires a token of its own (Ray's documented token authentication,
    RAY_AUTH_MODE=token): Ray 2.60 binds its GCS, raylet and worker ports on every interface
    whatever ray.init is given (its public options choose no bind address), so a client from
    another machine can reach the ports but cannot join without this token. The token lives in
    a 0600 file removed when the driver exits; workers inherit the variables from the raylet.
    A user who set RAY_AUTH_MODE keeps their own setting; in a process that imported ray
    before (a notebook, a test session) it cannot be switched on and the local Ray runs as Ray's
    default."""
    if os.environ.get("RAY_AUTH_MODE") or "ray" in sys.modules:
        return
    folder = tempfile.mkdtemp(prefix="vaebench-ray-")
    token = Path(folder) / "token"
    fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)


def cluster_workers(cpus_per_trial: float, gpus_per_trial: float) -> int:
    """How many trials the connected cluster runs at once."""
    import ray

    total = ray.cluster_resources()
    n = math.floor(total.get("CPU", 1) / cpus_per_trial + 1e-9)
    if gpus_per_trial > 0:
        n = min(n, math.floor(total.get("GPU", 0) / gpus_per_trial + 1e-9))
    return max(1, n)


@dataclass
class _RayTask:
    job: Job
    gen: Any  # ray ObjectRefGenerator
    attempt: int = 0


class RayExecutor:
    """One Ray streaming-generator task per job (``run_trial``), at most ``workers`` at once.
    Ray is connected by the caller (connect_ray)."""

    def __init__(self, workers: int, cpus_per_trial: float, gpus_per_trial: float, prefix: str = "vaebench",
                 max_retries: int = MAX_RETRIES):
        self.workers, self.cpus, self.gpus, self.prefix, self.max_retries = (
            workers, cpus_per_trial, gpus_per_trial, prefix, max_retries)
        self.tasks: dict[Any, _RayTask] = {}  # generator -> task

    def capacity(self) -> int:
        return max(0, self.workers - len(self.tasks))

    def submit(self, jobs: list[Job]) -> None:
        for job in jobs:
            self._launch(job, 0)

    def _launch(self, job: Job, attempt: int) -> None:
        import ray

        gen = ray.remote(run_trial).options(
            num_cpus=self.cpus, num_gpus=self.gpus, max_retries=0,
            name=f"{self.prefix}:{job.name}").remote(job.config)
        self.tasks[gen] = _RayTask(job, gen, attempt)

    def poll(self, timeout: float) -> list[Event]:
        import ray

        if not self.tasks:
            return []
        ready, _ = ray.wait(list(self.tasks), num_returns=1, timeout=timeout)
        events = []
        for gen in ready:
            task = self.tasks[gen]
            key = task.job.key
            try:
                msg = ray.get(next(gen))
            except StopIteration:
                del self.tasks[gen]
                events.append(failed(key, "the trial stopped without a final message"))
                continue
            except ray.exceptions.RayError as e:  # the worker process died, or its node
                del self.tasks[gen]
                if task.attempt < self.max_retries:
                    self._launch(task.job, task.attempt + 1)
                    events.append(Event(key, "restart", {"error": str(e)}))
                else:
                    events.append(failed(key, f"the Ray worker died {task.attempt + 1} times: {e}"))
                continue
            if msg["kind"] == "end":
                del self.tasks[gen]
            events.append(Event(key, msg["kind"], msg))
        return events

    def cancel(self, keys: list[str]) -> None:
        import ray

        wanted = set(keys)
        for gen, task in list(self.tasks.items()):
            if task.job.key in wanted:
                del self.tasks[gen]
                try:
                    ray.cancel(gen, force=True)
                except Exception:  # already finished, or its worker is gone
                    pass

    def close(self) -> None:
        self.cancel([t.job.key for t in self.tasks.values()])
