"""Where trials run (docs/design.md, sweep: Executor). The driver submits Jobs and polls Events;
an executor never writes to MLflow or Optuna and never raises for a trial's failure.

Every executor speaks the messages of ``vaebench.core.trial.run_trial`` ("start", "epoch",
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
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from vaebench.core.trial import run_trial
from vaebench.record.vocab import PACK_TAG

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


def ray_kill(actor: Any) -> None:
    import ray

    ray.kill(actor, no_restart=True)


# --------------------------------------------------------------------------- in-process


class InlineExecutor:
    """Runs up to ``workers`` jobs in this process, interleaved one message per poll.
    ``trial`` is the job's message stream (run_trial); an exception escaping it stands for a
    dead worker: the job restarts from scratch, up to ``max_retries`` times."""

    def __init__(
        self,
        workers: int = 1,
        trial: Callable[[dict[str, Any]], Iterator[dict[str, Any]]] = run_trial,
        max_retries: int = MAX_RETRIES,
    ):
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


# words of Ray's refusal when a cluster with token authentication meets a client without its token.
# Ray 2.60 raises only "Failed to connect to Ray cluster at ..." after its retries; the reason is in
# its core's log lines on stderr ("Unauthenticated: RPC error: InvalidAuthToken: ..."), which
# connect_ray captures while it connects.
_AUTH_WORDS = ("unauthenticated", "invalidauthtoken", "authentication token")


def connect_message(address: str | None, e: BaseException, log: str = "") -> str:
    """The error of a failed ray.init, saying which failure it was: a cluster that refused this
    client's credentials (in the exception or in Ray's ``log`` lines) is named as an
    authentication failure, with what to set; anything else as a connection failure."""
    where = f" at {address}" if address else ""
    said = f"{e}" or type(e).__name__
    hit = next(
        (line.strip() for line in [said, *log.splitlines()] if any(w in line.lower() for w in _AUTH_WORDS)), None
    )
    if hit is not None:
        reason = hit.split("Unauthenticated:", 1)[-1].strip() if "Unauthenticated:" in hit else hit
        return (
            f"Ray{where} refused this client's authentication ({reason[:200]}): the cluster uses token "
            "authentication; set RAY_AUTH_MODE=token and the cluster's token (RAY_AUTH_TOKEN or "
            "RAY_AUTH_TOKEN_PATH) in this shell, as on the cluster's nodes"
        )
    return f"cannot start or reach Ray{where}: {said}"


@contextmanager
def _stderr_lines() -> Iterator[list[str]]:
    """Ray's core writes to file descriptor 2, past Python's sys.stderr: capture it into the
    yielded list (filled on exit) and pass it on unchanged afterwards."""
    import tempfile

    out: list[str] = []
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (an embedding host): nothing to capture
        yield out
        return
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode(errors="replace")
            out.extend(text.splitlines())


def connect_ray(address: str | None, cpus_per_trial: float, gpus_per_trial: float) -> None:
    """Start a local Ray (all cores, no dashboard, token authentication) or join ``address``;
    check that one trial's resources fit on some node. Raises ExecutorError."""
    if not address:
        local_ray_auth()  # before ray is imported: Ray reads its authentication settings once, on import
    import ray

    log: list[str] = []
    try:
        if address:
            with _stderr_lines() as log:
                ray.init(address=address, logging_level="ERROR", log_to_driver=False)
            auth = [x for x in log if any(w in x.lower() for w in _AUTH_WORDS)]
            if log and not auth:  # a connection that worked: Ray's words go on to the user
                print("\n".join(log), file=sys.stderr)
        else:
            # address="local": always a new instance, never one that `ray start` left on the machine.
            # Ray prestarts a worker per CPU as it starts; preloading the trial module there imports
            # torch (~2.5 s) while Ray starts instead of when the first trials arrive (benchmarks/).
            # The raylet reads the variable once, when ray.init starts it.
            saved = os.environ.get(PRELOAD_VAR)
            os.environ[PRELOAD_VAR] = ",".join(filter(None, [saved, run_trial.__module__]))
            try:
                ray.init(
                    address="local",
                    num_cpus=os.cpu_count(),
                    include_dashboard=False,
                    logging_level="ERROR",
                    log_to_driver=False,
                )
            finally:
                if saved is None:
                    os.environ.pop(PRELOAD_VAR, None)
                else:
                    os.environ[PRELOAD_VAR] = saved
    except Exception as e:  # connection refused, bad address, ...
        raise ExecutorError(connect_message(address, e, "\n".join(log))) from None
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if gpus_per_trial > 0 and not any(n.get("GPU", 0) >= gpus_per_trial for n in nodes):
        total = sum(n.get("GPU", 0) for n in nodes)
        ray.shutdown()
        raise ExecutorError(
            f"resources.gpus_per_trial is {gpus_per_trial} but no node of the Ray cluster has that "
            f"many GPUs (cluster total: {total:g}); set gpus_per_trial: 0 or use --address of a GPU cluster"
        )
    if not any(n.get("CPU", 0) >= cpus_per_trial for n in nodes):
        most = max((n.get("CPU", 0) for n in nodes), default=0)
        ray.shutdown()
        raise ExecutorError(f"resources.cpus_per_trial is {cpus_per_trial} but the largest Ray node has {most:g} CPUs")


def _probe_plugins(refs: list[tuple[str, str]]) -> dict[str, str]:
    """On a Ray worker: "group:ref" -> "sha256:<hash>" when it imports there, else the error."""
    import socket

    from vaebench.plugins import PluginError, resolve

    out = {"@host": socket.gethostname()}
    for group, ref in refs:
        try:
            out[f"{group}:{ref}"] = f"sha256:{resolve(ref, group).sha256}"
        except PluginError as e:
            out[f"{group}:{ref}"] = str(e)
    return out


PROBE_TIMEOUT_S = 120.0  # a worker starts and imports torch and the plugin in seconds


def check_plugins_on_nodes(plugins: dict[str, dict[str, Any]]) -> None:
    """Every alive node of the connected Ray imports each plugin (``{"group:ref": identity}``, the
    record's) with the same source: one probe task per node (``NodeAffinitySchedulingStrategy``),
    before any trial starts. Raises ExecutorError naming the plugin, the node and what went wrong, so
    a plugin missing on a node fails the sweep once, at start, rather than each of its trials."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if not plugins:
        return
    refs = [tuple(key.split(":", 1)) for key in plugins]  # group has no ':'
    probe = ray.remote(num_cpus=0)(_probe_plugins)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    futures = [
        probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(refs)
        for n in nodes
    ]
    try:
        answers = ray.get(futures, timeout=PROBE_TIMEOUT_S)
    except Exception as e:  # noqa: BLE001  (a worker that cannot even start)
        raise ExecutorError(f"checking the plugins on the Ray workers failed: {type(e).__name__}: {e}") from None
    for node, answer in zip(nodes, answers):
        where = f"{answer.get('@host', '?')} ({node.get('NodeManagerAddress', '?')})"
        for key, ident in plugins.items():
            got = answer.get(key, "")
            if not got.startswith("sha256:"):
                raise ExecutorError(
                    f"plugin {key.split(':', 1)[1]} cannot be imported on the Ray node {where}: {got}; on a "
                    "cluster, install the plugin's package on every node (a file plugin: the same path on every node)"
                )
            if ident.get("sha256") and got != f"sha256:{ident['sha256']}":
                raise ExecutorError(
                    f"plugin {key.split(':', 1)[1]} on the Ray node {where} is not the driver's code "
                    f"({got} vs sha256:{ident['sha256']}); install the same version on every node"
                )


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

    def __init__(
        self,
        workers: int,
        cpus_per_trial: float,
        gpus_per_trial: float,
        prefix: str = "vaebench",
        max_retries: int = MAX_RETRIES,
    ):
        self.workers, self.cpus, self.gpus, self.prefix, self.max_retries = (
            workers,
            cpus_per_trial,
            gpus_per_trial,
            prefix,
            max_retries,
        )
        self.tasks: dict[Any, _RayTask] = {}  # generator -> task

    def capacity(self) -> int:
        return max(0, self.workers - len(self.tasks))

    def submit(self, jobs: list[Job]) -> None:
        for job in jobs:
            self._launch(job, 0)

    def _launch(self, job: Job, attempt: int) -> None:
        import ray

        gen = (
            ray.remote(run_trial)
            .options(num_cpus=self.cpus, num_gpus=self.gpus, max_retries=0, name=f"{self.prefix}:{job.name}")
            .remote(job.config)
        )
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


# --------------------------------------------------------------------------- packed (issue 11)


class PackWorker:
    """What runs in one Ray actor: packs (vaebench.core.pack.PackTrainer) one after another or, for a
    job the packs do not support, one solo trial (run_trial), behind the same ``step()``: the
    messages of one epoch, each with "member", and whether the worker is done. ``load`` starts
    the next pack in the same process, so a worker's start (torch's import, ~3 s of CPU) is paid
    once per slot, not once per pack; nothing else carries over (each trial seeds its own init,
    order and noise, and the trainer sets the threads)."""

    trainer: Any = None
    messages: Iterator[dict[str, Any]] = iter(())

    def load(self, configs: list[dict[str, Any]], threads: int, packed: bool) -> None:
        self.trainer, self.messages = None, iter(())  # the last pack's tensors go before the next's
        if packed:
            from vaebench.core.pack import PackTrainer

            self.trainer = PackTrainer(configs, threads)
        else:
            self.messages = run_trial(configs[0])

    def step(self) -> tuple[list[dict[str, Any]], bool]:
        if self.trainer is not None:
            return self.trainer.step(), self.trainer.done
        out = []
        for msg in self.messages:
            out.append({**msg, "member": 0})
            if msg["kind"] != "start":
                return out, msg["kind"] == "end"
        return out + [
            {"kind": "end", "state": "failed", "member": 0, "traceback": "the trial stopped without a final message"}
        ], True

    def stop(self, members: list[int]) -> None:
        if self.trainer is not None:
            self.trainer.stop(members)

    def pid(self) -> int:
        return os.getpid()


@dataclass(eq=False)  # compared by identity
class _Pack:
    id: str
    jobs: list[Job]  # member i = jobs[i]
    packed: bool
    actor: Any = None
    ref: Any = None  # the step() in flight
    ended: set[str] = field(default_factory=set)  # keys that ended or were cancelled: no more events
    attempt: int = 0

    @property
    def live(self) -> list[Job]:
        return [j for j in self.jobs if j.key not in self.ended]


class PackedExecutor:
    """Packs of jobs (vaebench.core.pack.plan_packs: same shape, settings PackTrainer supports) as
    Ray actors wrapping PackTrainer, at most ``workers`` packs at once, each with the CPUs (and
    GPUs) of one trial; jobs the packs do not support run alone in the same kind of actor.
    Members end independently (one Event per member per epoch, exactly as solo jobs, plus the
    ``vaebench.pack`` tag on "start"); ``cancel`` masks members. A pack whose worker dies is
    rerun with the members that had not ended ("restart" events for those), up to
    ``max_retries`` times, then they end failed. ``lookahead``: how many packs' worth of jobs
    per free slot ``capacity`` asks for. Ray is connected by the caller."""

    def __init__(
        self,
        workers: int,
        cpus_per_trial: float,
        gpus_per_trial: float,
        prefix: str = "vaebench",
        max_retries: int = MAX_RETRIES,
        pack: Any = "auto",
        lookahead: int = 1,
    ):
        self.workers, self.cpus, self.gpus, self.prefix, self.max_retries = (
            workers,
            cpus_per_trial,
            gpus_per_trial,
            prefix,
            max_retries,
        )
        self.pack, self.lookahead = pack, lookahead
        self.running: dict[Any, _Pack] = {}  # step ref -> pack
        self.queued: deque[_Pack] = deque()  # planned, waiting for a slot
        self.where: dict[str, _Pack] = {}  # key -> its pack
        self.count = 0
        self._actor_class: Any = None
        self.idle: list[Any] = []  # workers whose pack ended normally: the next pack runs in one
        self.keep_idle = True  # until a worker dies (_worker_died)

    def _pack_size(self) -> int:
        from vaebench.core.pack import MAX_PACK

        if isinstance(self.pack, int):
            return self.pack
        return MAX_PACK["cuda" if self.gpus > 0 else "cpu"] if self.pack == "auto" else 1

    def capacity(self) -> int:
        """Nothing while packs wait for a slot; else ``lookahead`` full packs per free slot (the
        jobs of one submission are planned together: a larger lookahead, more balanced packs)."""
        if self.queued:
            return 0
        return max(0, self.workers - len(self.running)) * self._pack_size() * self.lookahead

    def submit(self, jobs: list[Job]) -> None:
        from vaebench.core.pack import pack_key, plan_packs

        if not jobs:
            return
        free = max(1, self.workers - len(self.running))
        device = "cuda" if self.gpus > 0 else None
        for group in plan_packs([j.config for j in jobs], self.pack, device=device, slots=free):
            members = [jobs[i] for i in group]
            packed = len(members) > 1 and pack_key(members[0].config) is not None  # a pack of one runs solo
            self.count += 1
            pack = _Pack(f"p{self.count}/{len(members)}", members, packed)
            for j in members:
                self.where[j.key] = pack
            self.queued.append(pack)
        self._fill()

    def _fill(self) -> None:
        while self.queued and len(self.running) < self.workers:
            self._launch(self.queued.popleft())

    def _launch(self, pack: _Pack) -> None:
        import ray

        if self._actor_class is None:
            self._actor_class = ray.remote(PackWorker)
        threads = max(1, int(self.cpus))
        if self.idle:
            pack.actor = self.idle.pop()
        else:
            pack.actor = self._actor_class.options(
                num_cpus=self.cpus, num_gpus=self.gpus, max_restarts=0, max_task_retries=0
            ).remote()
        pack.jobs = pack.live  # a rerun holds only the members that had not ended
        pack.actor.load.remote([j.config for j in pack.jobs], threads, pack.packed)  # an actor runs calls in order
        pack.ref = pack.actor.step.remote()
        self.running[pack.ref] = pack

    def poll(self, timeout: float) -> list[Event]:
        import ray

        self._fill()
        if not self.running:
            return []
        ready, _ = ray.wait(list(self.running), num_returns=1, timeout=timeout)
        events: list[Event] = []
        for ref in ready:
            pack = self.running.pop(ref)
            try:
                msgs, done = ray.get(ref)
            except ray.exceptions.RayError as e:  # the actor's process died, or its node
                events += self._worker_died(pack, e)
                continue
            for msg in msgs:
                job = pack.jobs[msg.pop("member")]
                if job.key in pack.ended:
                    continue
                tags = {PACK_TAG: pack.id} if msg["kind"] == "start" and pack.packed else {}
                if msg["kind"] == "end":
                    pack.ended.add(job.key)
                    self.where.pop(job.key, None)
                events.append(Event(job.key, msg["kind"], msg, tags))
            if done or not pack.live:
                for job in pack.live:  # never left waiting: a worker that is done has ended every member
                    pack.ended.add(job.key)
                    self.where.pop(job.key, None)
                    events.append(failed(job.key, "the pack ended without a final message for this trial"))
                self._release(pack, reuse=done)
            else:
                pack.ref = pack.actor.step.remote()
                self.running[pack.ref] = pack
        self._fill()
        return events

    def _worker_died(self, pack: _Pack, error: Exception) -> list[Event]:
        live = pack.live
        self._release(pack)
        # A lost worker (or node) means fewer slots than ``workers``: an idle worker would hold its
        # CPU while the rerun's new worker waits for one, for ever. From now on a pack's worker
        # ends with its pack.
        self.keep_idle = False
        while self.idle:
            try:
                ray_kill(self.idle.pop())
            except Exception:  # noqa: BLE001, S110  (already gone)
                pass
        if not live:
            return []
        if pack.attempt < self.max_retries:
            self.count += 1
            rerun = _Pack(f"p{self.count}/{len(live)}", live, pack.packed, attempt=pack.attempt + 1)
            for j in live:
                self.where[j.key] = rerun
            self.queued.appendleft(rerun)
            return [Event(j.key, "restart", {"error": str(error)}) for j in live]
        for j in live:
            self.where.pop(j.key, None)
        return [failed(j.key, f"the pack's Ray worker died {pack.attempt + 1} times: {error}") for j in live]

    def _release(self, pack: _Pack, reuse: bool = False) -> None:
        """Free the pack's slot; its worker runs the next pack if ``reuse`` (it ended normally:
        no step in flight), else it is killed."""
        import ray

        if pack.ref is not None:
            self.running.pop(pack.ref, None)
        if reuse and self.keep_idle and pack.actor is not None:
            self.idle.append(pack.actor)
            pack.actor = None
        if pack.actor is not None:
            try:
                ray.kill(pack.actor, no_restart=True)
            except Exception:  # noqa: BLE001, S110  (already gone)
                pass
            pack.actor = None

    def cancel(self, keys: list[str]) -> None:
        by_pack: dict[int, tuple[_Pack, list[int]]] = {}
        for key in keys:
            pack = self.where.pop(key, None)
            if pack is None:
                continue
            pack.ended.add(key)
            members = by_pack.setdefault(id(pack), (pack, []))[1]
            members += [i for i, j in enumerate(pack.jobs) if j.key == key]
        for pack, members in by_pack.values():
            if pack in self.queued and not pack.live:
                self.queued.remove(pack)
            elif pack.actor is not None:
                if pack.live:
                    pack.actor.stop.remote(members)  # after the step in flight: its messages for them are dropped
                else:
                    self._release(pack)

    def close(self) -> None:
        import ray

        self.cancel(list(self.where))
        for pack in list(self.running.values()):
            self._release(pack)
        self.queued.clear()
        while self.idle:
            try:
                ray.kill(self.idle.pop(), no_restart=True)
            except Exception:  # noqa: BLE001, S110  (already gone)
                pass


# A grid is known in advance: the packed executor takes two packs' worth of trials per free slot,
# so that it plans them together, as `vaebench validate` shows (collapse.yaml: four packs of 27 for
# two slots, ending together), rather than one slot's worth at a time. A search asks one round at a
# time so that its sampler gets feedback.
GRID_LOOKAHEAD = 2


def choose_executor(
    study: Any,
    inline: bool,
    address: str | None = None,
    workers: int | None = None,
    plugins: dict[str, Any] | None = None,
) -> Executor:
    """The one place that decides where a study's trials run: in this process (``inline``), one Ray
    task per trial (``resources.pack`` off, or auto with a pruner), or packs of trials per Ray task.
    Connects to (or starts) Ray first and checks that every node imports the study's ``plugins``
    (the record definition's entry); raises ExecutorError when it cannot, once, before any trial."""
    from vaebench.study.spec import effective_pack

    if inline:
        return InlineExecutor(workers=1)
    res = study.resources
    connect_ray(address, res.cpus_per_trial, res.gpus_per_trial)
    try:  # every node imports the plugins: fail once, here, not in each trial
        check_plugins_on_nodes(plugins or {})
    except ExecutorError:
        import ray

        ray.shutdown()
        raise
    workers = workers or cluster_workers(res.cpus_per_trial, res.gpus_per_trial)
    pack = effective_pack(study)
    prefix = f"vaebench:{study.name}"
    if pack == "off":
        return RayExecutor(workers, res.cpus_per_trial, res.gpus_per_trial, prefix=prefix)
    # packed trials (vaebench.core.pack): a pack takes one worker's resources
    lookahead = GRID_LOOKAHEAD if study.search.kind == "grid" else 1
    return PackedExecutor(
        workers, res.cpus_per_trial, res.gpus_per_trial, prefix=prefix, pack=pack, lookahead=lookahead
    )
