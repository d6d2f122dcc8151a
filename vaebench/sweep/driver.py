"""The sweep driver (docs/design.md, sweep): a short loop over Search x Executor x Record.

    search  (vaebench.sweep.search)     what runs next; takes epoch and final results
    executor (vaebench.sweep.executors) where trials run; streams run_trial's messages as Events
    record  (vaebench.record.writer)     the only writer of MLflow; one definition and a lock per record

Resuming: a trial whose config hash already has a final run (completed, diverged, pruned)
in the current record is not run again; runs left failed, killed or RUNNING are
soft-deleted and rerun. A record keeps one study definition: a study that only adds
levels, seeds or budget extends it; any other change stops the sweep before it writes
anything (DefinitionError, exit 2) until ``--fresh``.
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vaebench.record.definition import changes, definition, fixed_hash
from vaebench.record.environment import ENVIRONMENTS_TAG, environment, merged
from vaebench.record.naming import run_name
from vaebench.record.runs import StudyRun
from vaebench.record.store import default_storage
from vaebench.record.vocab import (
    ATTEMPT,
    DEFINITION_TAG,
    DIVERGED_EPOCH,
    FACTORS,
    FINAL_STATES,
    HASH,
    OPTUNA_STUDY,
    POINT,
    POINT_KEY,
    SEARCH,
    SEEDS,
)
from vaebench.record.writer import STORE_PATIENCE, LockError, Record, StoreError, sqlite_path
from vaebench.study.spec import Study, TrialSpec
from vaebench.sweep.executors import Executor, ExecutorError, Job, choose_executor
from vaebench.sweep.progress import Best, Progress, best_point
from vaebench.sweep.search import GridSearch, OptunaSearch, Planned, Search, SearchStoreError


class SweepError(RuntimeError):
    """The sweep cannot start (bad resources, unreachable cluster, a changed definition,
    a held lock); nothing was written. Exit code 2."""


@dataclass
class SweepOptions:
    tracking_uri: str
    storage: str | None = None  # Optuna storage URL; default sqlite under sweeps/NAME/
    address: str | None = None  # Ray cluster; None starts a local one
    workers: int | None = None  # concurrent trials; default: what the cluster fits
    max_trials: int | None = None  # new trial runs started by this invocation
    fresh: bool = False
    inline: bool = False  # run trials in this process (InlineExecutor), no Ray
    take_over: bool = False  # take a tracking server's lease even if fresh (the user confirmed its driver is gone)


@dataclass
class Summary:
    counts: Counter = field(default_factory=Counter)  # state -> trials, this record, all invocations
    failed: list[tuple[str, str]] = field(default_factory=list)  # (run name, last traceback line)
    interrupted: bool = False
    skipped: int = 0  # final trials found in the record and not rerun
    store_error: str | None = None  # the store failed: the message naming it and the cause
    notes: list[str] = field(default_factory=list)  # e.g. a dead driver's lock taken over, a record extended
    model_steps: int = 0  # optimiser steps the trials of this invocation took (train/steps), all models together
    seconds: float = 0.0  # this invocation's wall time, from the record's opening to the end

    @property
    def throughput(self) -> str:
        """'25,920 model-steps in 14 s: 1,851 model-steps/s' (empty when nothing trained)."""
        if not self.model_steps or self.seconds <= 0:
            return ""
        return (
            f"{self.model_steps:,} model-steps in {self.seconds:.0f} s: "
            f"{self.model_steps / self.seconds:,.0f} model-steps/s (start, evaluation and logging included)"
        )

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return 1 if self.store_error or self.counts["failed"] else 0


@dataclass
class Live:
    """A trial in flight."""

    planned: Planned
    run_id: str
    attempt: int = 0
    epoch: int = 0
    metrics: dict[str, float] = field(default_factory=dict)  # latest value of each metric


def run_sweep(
    study: Study,
    study_text: str,
    opts: SweepOptions,
    progress: Progress | None = None,
    executor: Executor | None = None,
) -> Summary:
    """Run or resume ``study``; returns the summary (``exit_code`` 0, 1 or 130). Raises
    SweepError (exit 2) when it cannot start; then nothing was written."""
    try:
        record = Record(opts.tracking_uri, study.name, create=False)
        note = record.lock(take_over=opts.take_over)
    except LockError as e:
        raise SweepError(str(e)) from None
    except StoreError as e:
        return Summary(store_error=str(e))
    try:
        try:
            parent, defn = check_definition(record, study, opts.fresh)
        except StoreError as e:
            return Summary(store_error=str(e))
        if sqlite_path(record.uri) is None:  # a server or database, reached once: from now on it is waited for
            record.patience = float(os.environ.get("VAEBENCH_STORE_PATIENCE", STORE_PATIENCE))
        own_ray = executor is None and not opts.inline
        if executor is None:
            try:  # before any write: a study that cannot run writes nothing
                executor = choose_executor(study, opts.inline, opts.address, opts.workers, defn.get("plugins", {}))
            except ExecutorError as e:
                raise SweepError(str(e)) from None
        try:
            try:
                record.create_store()
            except StoreError as e:
                return Summary(store_error=str(e))
            driver = Driver(study, study_text, opts, progress or Progress(enabled=False), record, executor)
            if note:
                driver.summary.notes.append(note)
            return driver.run(parent, defn)
        finally:
            executor.close()
            if own_ray:
                import ray

                ray.shutdown()
    finally:
        record.unlock()


def check_definition(record: Record, study: Study, fresh: bool) -> tuple[StudyRun | None, dict[str, Any]]:
    """The current parent run (None for a new record) and the study's definition; raises
    SweepError when the study changes the record's definition beyond an extension."""
    defn = definition(study)
    parent = None if fresh else record.parent_run()
    if parent is not None:
        old = record.definition(parent)
        diff = changes(old, defn) if old is not None else []
        if diff:
            lines = "\n".join(f"  {f}: {brief(o)} -> {brief(n)}" for f, o, n in diff)
            raise SweepError(
                f"study {study.name!r} differs from the definition of its record in {record.uri} "
                f"(a record holds one definition; adding levels, seeds or budget extends it):\n{lines}\n"
                f"either run with --fresh to start a new record (the old one stays readable), "
                f"or undo the change to resume the record"
            )
    return parent, defn


def plugin_params(config: Any, plugins: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """plugin.SECTION.{qualname,version,sha256} of the trial's plugins: what the run ran."""
    from vaebench.study.plugin_checks import FIELDS

    out = {}
    for section, group in FIELDS.items():
        ident = plugins.get(f"{group}:{getattr(config, section).kind}")
        for k, v in (ident or {}).items():
            out[f"plugin.{section}.{k}"] = "none" if v is None else v
    return out


class Driver:
    def __init__(
        self, study: Study, study_text: str, opts: SweepOptions, progress: Progress, record: Record, executor: Executor
    ):
        self.study, self.study_text, self.opts, self.progress = study, study_text, opts, progress
        self.record, self.executor = record, executor
        self.summary = Summary()
        self.live: dict[str, Live] = {}  # key (config hash) -> trial in flight
        self.finals: dict[str, tuple[str, dict[str, float]]] = {}  # key -> (state, final metrics)
        self.final_runs: dict[str, str] = {}  # key -> run id of its final run
        self.point_of: dict[str, str] = {}  # key -> its point's key (the seeds of a point share it)
        self.done_points: set[tuple[str, int]] = set()  # (point key, seed) of each trial in finals
        self.launched = 0
        self.stop_signal: int | None = None
        self.parent_id = ""
        self.definition_hash = ""
        self.plugins: dict[str, dict[str, Any]] = {}  # "group:ref" -> the plugin's identity (definition)

    # ------------------------------------------------------------------ set-up

    def _open(self, parent: StudyRun | None, defn: dict[str, Any]) -> Search:
        self.definition_hash = fixed_hash(defn)
        self.plugins = defn.get("plugins", {})
        tags = {
            DEFINITION_TAG: self.definition_hash,
            FACTORS: json.dumps(list(self.study.space)),
            SEARCH: self.study.search.kind,
            SEEDS: json.dumps(self.study.seeds),
        }
        if parent is None:
            parent = self.record.start_study(self.study.description, self.study_text, tags, defn)
            if self.study.search.kind != "grid":
                optuna_name = f"{self.study.name}-{parent.run_id[:8]}"
                self.record.set_tags(parent.run_id, {OPTUNA_STUDY: optuna_name})
                parent.tags[OPTUNA_STUDY] = optuna_name
        else:
            self.record.reopen_study(parent.run_id)
            old = self.record.definition(parent)
            if old != defn:  # extended (check_definition refused anything else), or a record older than definitions
                self.record.set_definition(parent.run_id, defn, self.study_text, tags)
                self.summary.notes.append(
                    "the record's definition was extended to the study's (levels, seeds or budget added)"
                    if old
                    else "the record was made before vaebench kept study definitions; it now keeps this study's"
                )
            elif parent.description != self.study.description:
                # the same definition, new words: the record shows the study file as it is now
                self.record.set_definition(
                    parent.run_id, None, self.study_text, {"mlflow.note.content": self.study.description}
                )
                self.summary.notes.append("the record's description and study.yaml now match the study file's")
        self.parent_id = parent.run_id
        # the machine and library versions that train this record's trials (a resumed sweep on
        # another machine adds its own): the report's reproducibility statement names them
        env = merged(parent.tags.get(ENVIRONMENTS_TAG), environment())
        if env is not None:
            self.record.set_tags(self.parent_id, {ENVIRONMENTS_TAG: env})
        self._load_existing()
        if self.study.search.kind == "grid":
            return GridSearch(self.study, self.finals, self.done_points)
        storage = self.opts.storage or default_storage(None, self.study.name)
        if storage.startswith("sqlite:///"):
            Path(storage.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        return OptunaSearch(self.study, storage, parent.tags[OPTUNA_STUDY], self.finals)

    def _load_existing(self) -> None:
        """Keep final runs of the record; soft-delete interrupted or failed ones (they rerun)."""
        for run in self.record.trial_runs(self.parent_id):
            h, state = run.config_hash, run.state
            if state in FINAL_STATES and h not in self.finals:
                if run.status == "RUNNING":  # the driver died between the state tag and closing the run
                    self.record.close_final(run)
                self.finals[h] = (state, dict(run.metrics))
                self.final_runs[h] = run.run_id
                self.point_of[h] = run.point_key
                seed = run.params.get("seed", "")
                if POINT_KEY in run.tags and seed.isdigit():
                    self.done_points.add((run.tags[POINT_KEY], int(seed)))
                self.summary.counts[state] += 1
                self.summary.skipped += 1
            else:
                self.record.discard_run(run)

    # ------------------------------------------------------------------ the loop

    def run(self, parent: StudyRun | None, defn: dict[str, Any]) -> Summary:
        # Ctrl-C and SIGTERM only set a flag: an exception raised asynchronously could land inside
        # an MLflow write and leave its transaction broken. The loop wakes at least every second.
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            handlers = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        search: Search | None = None
        started = time.monotonic()
        try:
            search = self._open(parent, defn)
            self.progress.start(self.study.name, search.total, self.summary.counts, max_trials=self.opts.max_trials)
            while self.stop_signal is None:
                room = self.executor.capacity()
                if self.opts.max_trials is not None:
                    room = min(room, self.opts.max_trials - self.launched)
                if room > 0:
                    self._launch(search.suggest(room))
                self._drain(search)
                if not self.live:
                    break
                for event in self.executor.poll(1.0):
                    self._handle(search, event)
                self.record.flush_due()
                self.progress.update(self.summary.counts, len(self.live), self._best(), self._partial())
            if self.stop_signal is not None:
                self.summary.interrupted = True
                self._stop_all(search)
            search.interrupt()  # --max-trials may leave a point with seeds not started: it is asked again on resume
            self.record.flush()
            self.record.end_study(self.parent_id, "KILLED" if self.summary.interrupted else "FINISHED")
        except (StoreError, SearchStoreError) as e:
            self.summary.store_error = str(e)
            self._abandon(search)
        except Exception:  # a bug: nothing left RUNNING where the store still takes writes, and the
            self._abandon(search)  # parent never marked FINISHED; the traceback goes on to the user
            raise
        finally:
            for sig, old in handlers.items():
                signal.signal(sig, old)
            self.summary.seconds = time.monotonic() - started
            self.progress.stop(self.summary.counts)
        return self.summary

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.stop_signal = signum

    def _launch(self, planned: list[Planned]) -> None:
        jobs = []
        for p in planned:
            self.live[p.key] = Live(p, self._open_run(p, 0))
            self.point_of[p.key] = p.spec.point_key
            self.launched += 1
            jobs.append(Job(p.key, p.spec.config.model_dump(mode="json"), self._name(p.spec)))
        if jobs:
            self.executor.submit(jobs)

    def _open_run(self, p: Planned, attempt: int) -> str:
        spec = p.spec
        tags = {
            HASH: spec.config_hash,
            POINT: json.dumps(spec.point),
            POINT_KEY: spec.point_key,
            ATTEMPT: str(attempt),
            DEFINITION_TAG: self.definition_hash,
            **p.tags,
        }
        params = {**spec.config.params(), **plugin_params(spec.config, self.plugins), "seed": spec.seed}
        return self.record.start_trial(self.parent_id, self._name(spec), params, tags)

    def _drain(self, search: Search) -> None:
        """What the search has for the record besides trials to start: tags for kept runs, refused points."""
        while search.adopted:
            key, tags = search.adopted.popitem()
            self.record.set_tags(self.final_runs[key], tags)
        while search.refused:
            self.summary.failed.append(search.refused.pop(0))
            self.summary.counts["failed"] += 1

    def _handle(self, search: Search, ev: Any) -> None:
        t = self.live.get(ev.key)
        if t is None:  # cancelled
            return
        if ev.kind == "start" and ev.tags:
            self.record.set_tags(t.run_id, ev.tags)
        elif ev.kind == "epoch":
            t.epoch = ev.msg["epoch"]
            steps = ev.msg["metrics"].get("train/steps")
            if steps is not None and math.isfinite(steps):
                self.summary.model_steps += int(steps - t.metrics.get("train/steps", 0))
            t.metrics.update(ev.msg["metrics"])
            if ev.msg["state"] != "diverged":  # a diverged epoch's NaNs are not logged
                self.record.log_epoch(t.run_id, t.epoch, ev.msg["metrics"])
            decision = search.on_trial_result(ev.key, t.epoch, t.metrics)
            if decision.prune:
                self.executor.cancel(list(decision.prune))
                for key in decision.prune:
                    if key in self.live:
                        self._finish(search, self.live[key], "pruned", {})
        elif ev.kind == "restart":  # the worker died: the trial starts again from scratch in a fresh run
            self.record.discard_run(t.run_id)
            t.attempt += 1
            t.run_id, t.epoch, t.metrics = self._open_run(t.planned, t.attempt), 0, {}
        elif ev.kind == "end":
            self._finish(search, t, ev.msg["state"], ev.msg)

    def _finish(self, search: Search, t: Live, state: str, msg: dict[str, Any]) -> None:
        artifacts = dict(msg.get("artifacts", {}))
        tags = {}
        if "traceback" in msg:
            artifacts["traceback.txt"] = msg["traceback"].encode()
            self.summary.failed.append((self._name(t.planned.spec), msg["traceback"].strip().splitlines()[-1]))
        if state == "diverged":
            tags[DIVERGED_EPOCH] = str(msg.get("epoch", t.epoch))
        self.record.end_trial(t.run_id, state, tags, artifacts)
        del self.live[t.planned.key]
        self.finals[t.planned.key] = (state, dict(t.metrics))
        self.final_runs[t.planned.key] = t.run_id
        self.summary.counts[state] += 1
        search.on_trial_complete(t.planned.key, state, dict(t.metrics))

    def _partial(self) -> float:
        """The running trials' share of their epochs done, summed (for the progress line's ETA)."""
        return sum(t.epoch / max(t.planned.spec.config.train.epochs, 1) for t in self.live.values())

    def _name(self, spec: TrialSpec) -> str:
        return run_name(spec, self.study.space)

    def _best(self) -> Best | None:
        """The best point so far: the objective's mean over the point's completed seeds."""
        metric, direction = next(iter(self.study.search.objectives.items()))
        return best_point(((self.point_of.get(k, k), s, m) for k, (s, m) in self.finals.items()), metric, direction)

    # ------------------------------------------------------------------ stopping

    def _stop_all(self, search: Search) -> None:
        """Interrupted: cancel in-flight trials, end their runs KILLED, settle open points."""
        self.executor.close()
        for t in list(self.live.values()):
            self.record.end_trial(t.run_id, "killed")
            self.summary.counts["killed"] += 1
            del self.live[t.planned.key]
        search.interrupt()

    def _abandon(self, search: Search | None) -> None:
        """After a crash or a store failure: best effort, and each write at most once tried
        (a store that is down must not multiply its timeouts). Runs in flight end KILLED, open
        points are settled, the parent ends FAILED."""
        self.record.patience = 0.0  # the store already failed its patience once: no second wait per write
        self.executor.close()
        try:
            for t in list(self.live.values()):
                self.record.end_trial(t.run_id, "killed")
                self.summary.counts["killed"] += 1
                del self.live[t.planned.key]
            if self.parent_id:
                self.record.end_study(self.parent_id, "FAILED")
        except Exception:  # the store refuses writes: what is left RUNNING is settled by the next sweep
            pass
        try:
            if search is not None:
                search.interrupt()
        except Exception:  # the Optuna storage is down too: the next sweep settles RUNNING trials
            pass


def brief(value: Any, limit: int = 200) -> str:
    """A value as JSON, cut at ``limit`` characters (messages never print an unbounded input)."""
    text = json.dumps(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"
