"""The sweep driver (DESIGN.md, one writer).

The driver owns the Optuna study (ask/tell) and every MLflow write. Trials run as Ray
streaming-generator tasks (``vaebench.trial.run_trial``) that yield one message per
epoch; the driver logs each epoch in one MLflow batch, reports it to the pruner, and
cancels pruned trials. Resuming: a trial whose config hash already has a final run
(completed, diverged, pruned) in the current study record is not run again; runs left
failed, killed or RUNNING (a driver killed with SIGKILL) are soft-deleted and rerun.

A grid study uses no Optuna state: its points are the full factorial. random, tpe and
nsga2 studies ask Optuna for points; every point runs once per seed, and Optuna is told
the mean over seeds of the final objective values.
"""

from __future__ import annotations

import json
import math
import os
import signal
import tempfile
import threading
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import ray

from vaebench.progress import Progress
from vaebench.study import Range, Study, TrialSpec, expand
from vaebench.tracking import (
    FINAL_STATES,
    HASH,
    MLFLOW_STATUS,
    OPTUNA_STUDY,
    OPTUNA_TRIAL,
    POINT,
    STATE,
    Record,
)
from vaebench.trial import run_trial

MAX_RETRIES = 2  # a trial whose Ray worker dies is rerun this many times, then failed
INTERRUPTED = "vaebench.interrupted"  # Optuna user attr of a trial cut off by an interrupt
PRELOAD_VAR = "RAY_preload_python_modules"  # Ray (experimental): modules its workers import at start


class SweepError(RuntimeError):
    """The sweep cannot start (bad resources, unreachable cluster); nothing was written."""


@dataclass
class SweepOptions:
    tracking_uri: str
    storage: str | None = None  # Optuna storage URL; default sqlite under sweeps/NAME/
    address: str | None = None  # Ray cluster; None starts a local one
    workers: int | None = None  # concurrent trials; default: what the cluster fits
    max_trials: int | None = None  # new trial runs started by this invocation
    fresh: bool = False


@dataclass
class Summary:
    counts: Counter = field(default_factory=Counter)  # state -> trials, this record, all invocations
    failed: list[tuple[str, str]] = field(default_factory=list)  # (run name, last traceback line)
    interrupted: bool = False
    skipped: int = 0  # final trials found in the record and not rerun

    @property
    def exit_code(self) -> int:
        return 130 if self.interrupted else (1 if self.counts["failed"] else 0)


@dataclass
class Running:
    spec: TrialSpec
    run_id: str
    gen: Any  # ray ObjectRefGenerator
    attempt: int = 0
    epoch: int = 0
    metrics: dict[str, float] = field(default_factory=dict)  # latest value of each metric


def default_storage(study: Study) -> str:
    path = Path("sweeps") / study.name / "optuna.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def connect_ray(address: str | None, study: Study) -> None:
    """Start a local Ray (all cores, no dashboard) or join ``address``; check resources fit."""
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
        raise SweepError(f"cannot start or reach Ray{f' at {address}' if address else ''}: {e}") from None
    res = study.resources
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if res.gpus_per_trial > 0 and not any(n.get("GPU", 0) >= res.gpus_per_trial for n in nodes):
        total = sum(n.get("GPU", 0) for n in nodes)
        ray.shutdown()
        raise SweepError(f"resources.gpus_per_trial is {res.gpus_per_trial} but no node of the Ray cluster has that "
                         f"many GPUs (cluster total: {total:g}); set gpus_per_trial: 0 or use --address of a GPU cluster")
    if not any(n.get("CPU", 0) >= res.cpus_per_trial for n in nodes):
        most = max((n.get("CPU", 0) for n in nodes), default=0)
        ray.shutdown()
        raise SweepError(f"resources.cpus_per_trial is {res.cpus_per_trial} but the largest Ray node has {most:g} CPUs")


def default_workers(study: Study) -> int:
    total = ray.cluster_resources()
    n = math.floor(total.get("CPU", 1) / study.resources.cpus_per_trial + 1e-9)
    if study.resources.gpus_per_trial > 0:
        n = min(n, math.floor(total.get("GPU", 0) / study.resources.gpus_per_trial + 1e-9))
    return max(1, n)


def run_sweep(study: Study, study_text: str, opts: SweepOptions, progress: Progress | None = None) -> Summary:
    """Run or resume ``study``; returns the summary (``exit_code`` 0, 1 or 130)."""
    connect_ray(opts.address, study)  # before any write: a study that cannot run writes nothing
    try:
        return Driver(study, study_text, opts, progress or Progress(enabled=False)).run()
    finally:
        ray.shutdown()


class Driver:
    def __init__(self, study: Study, study_text: str, opts: SweepOptions, progress: Progress):
        self.study, self.opts, self.progress = study, opts, progress
        self.record = Record(opts.tracking_uri, study.name)
        self.workers = opts.workers or default_workers(study)
        self.summary = Summary()
        self.running: dict[Any, Running] = {}  # generator -> running trial
        self.finals: dict[str, tuple[str, dict[str, float]]] = {}  # config hash -> (state, final metrics)
        self.launched = 0

        parent = None if opts.fresh else self.record.parent_run()
        if parent is None:
            optuna_name = None
            parent = self.record.start_study(study.description, study_text, {
                "vaebench.factors": json.dumps(list(study.space)),
                "vaebench.search": study.search.kind,
                "vaebench.seeds": json.dumps(study.seeds)})
            if study.search.kind != "grid":
                optuna_name = f"{study.name}-{parent.info.run_id[:8]}"
                self.record.client.set_tag(parent.info.run_id, OPTUNA_STUDY, optuna_name)
        else:
            optuna_name = parent.data.tags.get(OPTUNA_STUDY)
            self.record.client.update_run(parent.info.run_id, status="RUNNING")
        self.parent_id = parent.info.run_id
        self._load_existing()
        self.optuna = self._optuna(optuna_name) if optuna_name else None
        self.groups: dict[int, dict[str, Any]] = {}  # optuna trial number -> its point's bookkeeping

    # ------------------------------------------------------------------ set-up

    def _load_existing(self) -> None:
        """Keep final runs of the record; soft-delete interrupted or failed ones (they rerun)."""
        for run in self.record.trial_runs(self.parent_id):
            h, state = run.data.tags.get(HASH), run.data.tags.get(STATE)
            if state in FINAL_STATES and h not in self.finals:
                if run.info.status == "RUNNING":  # the driver died between the state tag and closing the run
                    self.record.client.set_terminated(run.info.run_id, MLFLOW_STATUS[state])
                self.finals[h] = (state, dict(run.data.metrics))
                self.summary.counts[state] += 1
                self.summary.skipped += 1
            else:
                self.record.discard_run(run)

    def _optuna(self, name: str) -> optuna.Study:
        s = self.study.search
        sampler = {"random": optuna.samplers.RandomSampler, "tpe": optuna.samplers.TPESampler,
                   "nsga2": optuna.samplers.NSGAIISampler}[s.kind](seed=self.study.seeds[0])
        epochs = self.study.train.epochs
        # median: no pruning before 3 points have finished, nor in the first quarter of the epochs
        # (early ELBOs rank learning rates by speed, not by where they end)
        pruner = {"none": optuna.pruners.NopPruner(),
                  "median": optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=max(1, epochs // 4)),
                  "hyperband": optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs)}[s.pruner]
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        st = optuna.create_study(storage=self.opts.storage or default_storage(self.study), study_name=name,
                                 sampler=sampler, pruner=pruner, directions=s.directions, load_if_exists=True)
        # trials left RUNNING by a killed driver are failed and marked; their points are asked again
        storage = st._storage
        for t in st.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            storage.set_trial_user_attr(t._trial_id, INTERRUPTED, True)
            storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
        trials = st.get_trials(deepcopy=False)
        for t in trials:
            if t.user_attrs.get(INTERRUPTED) and not any(
                    u.number > t.number and (u.params or u.system_attrs.get("fixed_params")) == t.params
                    for u in trials):
                st.enqueue_trial(t.params)
        return st

    # ------------------------------------------------------------------ the loop

    def run(self) -> Summary:
        # Ctrl-C and SIGTERM only set a flag: an exception raised asynchronously could land inside
        # an MLflow write and leave its transaction broken. The loop wakes at least every second.
        self.stop_signal: int | None = None
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            handlers = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        queue = deque(self._grid_specs()) if self.optuna is None else deque()
        total = len(queue) + self.summary.skipped if self.optuna is None else self.study.search.budget * len(self.study.seeds)
        self.progress.start(self.study.name, total, self.summary.counts)
        try:
            while self.stop_signal is None:
                while len(self.running) < self.workers and self._may_launch() and self.stop_signal is None:
                    if not queue:
                        queue.extend(self._ask())
                        if not queue:
                            break
                    self._launch(queue.popleft())
                if not self.running:
                    break
                self._poll()
            if self.stop_signal is not None:
                self.summary.interrupted = True
                self._kill_all()
        finally:
            for sig, old in handlers.items():
                signal.signal(sig, old)
            self.record.end_study(self.parent_id, "KILLED" if self.summary.interrupted else "FINISHED")
            self.progress.stop(self.summary.counts)
        return self.summary

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.stop_signal = signum

    def _may_launch(self) -> bool:
        return self.opts.max_trials is None or self.launched < self.opts.max_trials

    def _grid_specs(self) -> list[TrialSpec]:
        specs, seen = [], set(self.finals)
        for spec in expand(self.study):
            if spec.config_hash not in seen:
                seen.add(spec.config_hash)
                specs.append(spec)
        return specs

    def _ask(self) -> list[TrialSpec]:
        """The specs of the next Optuna point (search studies), one per seed not already final.
        A point whose every seed is already final (the sampler proposed it again) is told its
        recorded result at once instead of being trained twice."""
        while self.optuna is not None and self._search_used() < self.study.search.budget:
            trial = self.optuna.ask()
            point = {path: suggest(trial, path, levels) for path, levels in self.study.space.items()}
            try:
                specs = [TrialSpec(point, seed, self.study.trial_config(point, seed)) for seed in self.study.seeds]
            except ValueError as e:  # a sampled value the config refuses (e.g. out of a setting's range)
                self.optuna.tell(trial, state=optuna.trial.TrialState.FAIL)
                self.summary.failed.append((f"optuna trial {trial.number}", str(e).splitlines()[0]))
                self.summary.counts["failed"] += 1
                continue
            self.groups[trial.number] = {"trial": trial, "specs": specs, "reported": {}}
            todo = [s for s in specs if s.config_hash not in self.finals]
            if todo:
                return todo
            self._tell(trial.number)
        return []

    def _search_used(self) -> int:
        done = [t for t in self.optuna.get_trials(deepcopy=False)
                if t.state.is_finished() and not t.user_attrs.get(INTERRUPTED)]
        return len(done) + len(self.groups) - sum(1 for g in self.groups.values() if g.get("told"))

    def _launch(self, spec: TrialSpec, attempt: int = 0) -> None:
        trial_no = self._trial_number(spec)
        tags = {HASH: spec.config_hash, POINT: json.dumps(spec.point), "vaebench.point_key": spec.point_key,
                "vaebench.attempt": str(attempt)}
        if trial_no is not None:
            tags[OPTUNA_TRIAL] = str(trial_no)
        name = run_name(spec)
        run_id = self.record.start_trial(self.parent_id, name, {**spec.config.flat(), "seed": spec.seed}, tags)
        res = self.study.resources
        gen = ray.remote(run_trial).options(
            num_cpus=res.cpus_per_trial, num_gpus=res.gpus_per_trial, max_retries=0,
            name=f"vaebench:{self.study.name}:{name}").remote(spec.config.model_dump(mode="json"))
        self.running[gen] = Running(spec, run_id, gen, attempt)
        if attempt == 0:
            self.launched += 1
        self.progress.update(self.summary.counts, len(self.running), self._best())

    def _trial_number(self, spec: TrialSpec) -> int | None:
        return next((n for n, g in self.groups.items() if spec in g["specs"]), None)

    def _poll(self) -> None:
        ready, _ = ray.wait(list(self.running), num_returns=1, timeout=1.0)
        for gen in ready:
            r = self.running[gen]
            try:
                msg = ray.get(next(gen))
            except StopIteration:
                msg = {"kind": "end", "state": "failed", "traceback": "the trial stopped without a final message"}
            except ray.exceptions.RayError as e:  # the worker process died, or its node
                self._crashed(r, e)
                continue
            self._handle(r, msg)
        self.progress.update(self.summary.counts, len(self.running), self._best())

    def _handle(self, r: Running, msg: dict[str, Any]) -> None:
        if msg["kind"] == "epoch":
            r.epoch = msg["epoch"]
            r.metrics.update(msg["metrics"])
            if msg["state"] != "diverged":  # a diverged epoch's NaNs are not logged
                self.record.log_epoch(r.run_id, r.epoch, msg["metrics"])
            self._report_intermediate(r)
        elif msg["kind"] == "end":
            self._finish(r, msg["state"], msg)

    def _finish(self, r: Running, state: str, msg: dict[str, Any]) -> None:
        del self.running[r.gen]
        tags = {}
        with tempfile.TemporaryDirectory() as tmp:
            files = []
            for fname, blob in msg.get("artifacts", {}).items():
                (Path(tmp) / fname).write_bytes(blob)
                files.append(Path(tmp) / fname)
            if "traceback" in msg:
                (Path(tmp) / "traceback.txt").write_text(msg["traceback"])
                files.append(Path(tmp) / "traceback.txt")
                self.summary.failed.append((run_name(r.spec), msg["traceback"].strip().splitlines()[-1]))
            self.record.log_artifacts(r.run_id, files)
        if state == "diverged":
            tags["vaebench.diverged_epoch"] = str(msg.get("epoch", r.epoch))
        self.record.end_trial(r.run_id, state, tags)
        self.finals[r.spec.config_hash] = (state, dict(r.metrics))
        self.summary.counts[state] += 1
        n = self._trial_number(r.spec)
        if n is not None:
            self._tell(n)

    def _crashed(self, r: Running, err: Exception) -> None:
        """A dead worker: rerun the trial from scratch in a fresh run, up to MAX_RETRIES times."""
        del self.running[r.gen]
        if r.attempt < MAX_RETRIES:
            self.record.discard_run(r.run_id)
            self._launch(r.spec, r.attempt + 1)
            return
        self.running[r.gen] = r  # _finish removes it
        self._finish(r, "failed", {"traceback": f"the Ray worker died {MAX_RETRIES + 1} times: {err}"})

    # ------------------------------------------------------------------ Optuna

    def _report_intermediate(self, r: Running) -> None:
        """Report the mean over seeds of the first objective at each epoch all seeds reached;
        prune every seed of the point when the pruner says so."""
        n = self._trial_number(r.spec)
        metric = next(iter(self.study.search.objectives))
        if n is None or self.study.search.pruner == "none" or metric not in r.metrics:
            return
        group = self.groups[n]
        group["reported"].setdefault(r.epoch, {})[r.spec.seed] = r.metrics[metric]
        live = [s for s in group["specs"] if s.config_hash not in self.finals]
        values = group["reported"][r.epoch]
        if len(values) < len(live):
            return
        trial: optuna.Trial = group["trial"]
        trial.report(sum(values.values()) / len(values), r.epoch)
        if trial.should_prune():
            for other in [x for x in self.running.values() if x.spec in group["specs"]]:
                ray.cancel(other.gen, force=True)
                self._finish(other, "pruned", {})

    def _tell(self, number: int) -> None:
        """Once every seed of a point is final, tell Optuna the mean final objective(s)."""
        group = self.groups[number]
        finals = [self.finals.get(s.config_hash) for s in group["specs"]]
        if group.get("told") or any(f is None for f in finals):
            return
        group["told"] = True
        states = {state for state, _ in finals}
        trial = group["trial"]
        if "pruned" in states:
            self.optuna.tell(trial, state=optuna.trial.TrialState.PRUNED)
        elif states != {"completed"}:
            self.optuna.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            try:
                values = [sum(m[k] for _, m in finals) / len(finals) for k in self.study.search.objectives]
                self.optuna.tell(trial, values if len(values) > 1 else values[0])
            except KeyError:
                self.optuna.tell(trial, state=optuna.trial.TrialState.FAIL)

    def _best(self) -> float | None:
        metric, direction = next(iter(self.study.search.objectives.items()))
        vals = [m[metric] for s, m in self.finals.values() if s == "completed" and metric in m]
        return (min if direction == "min" else max)(vals) if vals else None

    # ------------------------------------------------------------------ interrupts

    def _kill_all(self) -> None:
        """Cancel in-flight trials and end their runs KILLED: nothing is left RUNNING."""
        for r in list(self.running.values()):
            ray.cancel(r.gen, force=True)
            self.record.end_trial(r.run_id, "killed")
            self.summary.counts["killed"] += 1
        if self.optuna is not None:
            for g in self.groups.values():
                if not g.get("told"):
                    g["trial"].set_user_attr(INTERRUPTED, True)
                    self.optuna.tell(g["trial"], state=optuna.trial.TrialState.FAIL)
        self.running.clear()


def suggest(trial: optuna.Trial, path: str, levels: list[Any] | Range) -> Any:
    """Optuna's choice for one factor. Mapping levels travel as JSON strings (Optuna's
    categorical choices must be plain values)."""
    if isinstance(levels, Range):
        if levels.is_int:
            return trial.suggest_int(path, int(levels.low), int(levels.high), step=int(levels.step or 1), log=levels.log)
        return trial.suggest_float(path, levels.low, levels.high, step=levels.step, log=levels.log)
    if all(v is None or isinstance(v, (bool, int, float, str)) for v in levels):
        return trial.suggest_categorical(path, levels)
    choice = trial.suggest_categorical(path, [json.dumps(v, sort_keys=True) for v in levels])
    return json.loads(choice)


def run_name(spec: TrialSpec) -> str:
    """'latent_dim=8 beta=4 anneal=cyclical s0': the last part of each factor's path."""
    def short(v: Any) -> str:
        if isinstance(v, dict):
            return str(v.get("kind", json.dumps(v, sort_keys=True)))
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    return " ".join(f"{k.rsplit('.', 1)[-1]}={short(v)}" for k, v in spec.point.items()) + f" s{spec.seed}"
