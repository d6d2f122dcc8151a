"""The MLflow record of a study (docs/design.md, sweep: Record): the only code that writes
MLflow. Read by ``status``, ``report`` and users.

Layout: one experiment per study (named after it); a parent run per study record
(tag ``vaebench.role=study``) holding the study definition in force (``definition.json``,
``study.yaml``, tag ``vaebench.definition``); one child run per trial and seed
(``vaebench.role=trial``, ``mlflow.parentRunId``), tagged with ``vaebench.trial_state``,
``vaebench.config_hash`` and ``vaebench.definition``; params are the trial's config flattened
with dotted names; metrics per epoch with step = epoch.

Writes are buffered: a run's epoch metrics are kept and sent in one ``log_batch`` (several
steps) every FLUSH_SECONDS and when the trial ends (each SQLite call costs ~13 ms). A trial's
final state tag is written only after its metrics and artifacts, so a driver killed between
flushes loses only what a resume reruns.

Every failure of the store raises StoreError naming the store and the cause.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import socket
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run, RunTag, ViewType

from vaebench.record.mlflow_view import EXPERIMENT_KIND, experiment_tags, show_as_training
from vaebench.record.runs import StudyRun, TrialRun
from vaebench.record.vocab import (
    FINAL_STATES,
    LOCK_TAG,
    MAX_METRICS_PER_CALL,
    MAX_PARAMS_PER_CALL,
    MLFLOW_STATUS,
    ROLE,
    STATE,
    SUPERSEDED,
    artifact_root,
    param_value,
)

FLUSH_SECONDS = 5.0  # buffered epoch metrics reach the store at least this often (VAEBENCH_FLUSH_SECONDS overrides)
# A tracking server that stays down fails a request after at most ~45 s: 4 attempts of at most
# 10 s each, with backoffs 1 + 2 + 4 s (+ up to 1 s jitter each). The user's own values win.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
# A store that stops answering mid-sweep (a tracking server restarted, its database restarted) is
# waited for this long before the sweep fails (VAEBENCH_STORE_PATIENCE overrides): a write that
# failed to reach it, or that it refused with a server error, is tried again every few seconds.
# Before the sweep has reached the store once (patience 0) a failure is reported at once.
STORE_PATIENCE = 120.0
LEASE_SECONDS = 120.0  # a server lease not renewed for this long belongs to a dead driver
DEFINITION_FILE = "definition.json"


class StoreError(RuntimeError):
    """The tracking store failed; the message names it and the cause."""


class LockError(RuntimeError):
    """Another driver holds the record; the message says who (host, pid, since when)."""


def new_sqlite_store(db: Path) -> None:
    """Create the MLflow SQLite store ``db`` (which does not exist) as a copy of an empty one.

    MLflow creates a store by running its whole chain of schema migrations: ~4 s on 2 cores,
    paid by every new study database and every test. The result depends only on the
    versions of MLflow, SQLAlchemy and alembic, so it is built once per version set in the
    user's cache and copied. Its Default experiment is deleted so that MLflow recreates it as
    for any new store (its artifact location depends on the working directory). On any
    failure (no writable cache, a changed schema) nothing is copied and MLflow creates the
    store itself."""
    import alembic
    import mlflow
    import sqlalchemy

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vaebench"
    template = (
        cache / f"mlflow-{mlflow.__version__}-sqlalchemy-{sqlalchemy.__version__}-alembic-{alembic.__version__}.db"
    )
    try:
        if not template.is_file():
            cache.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=cache) as tmp:
                built = Path(tmp) / "store.db"
                MlflowClient(tracking_uri=f"sqlite:///{built}").search_experiments()  # runs the migrations
                with sqlite3.connect(built) as con:
                    con.execute("DELETE FROM experiment_tags WHERE experiment_id = 0")
                    con.execute("DELETE FROM experiments WHERE experiment_id = 0")
                con.close()
                os.replace(built, template)  # atomic: concurrent builders each publish a whole file
        shutil.copyfile(template, db)
    except (OSError, sqlite3.Error):
        db.unlink(missing_ok=True)


def sqlite_path(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def root_cause(e: BaseException) -> str:
    """'OperationalError: no such table: metrics': the innermost exception of a chain, its first line."""
    seen = set()
    while (e.__cause__ or e.__context__) is not None and id(e) not in seen:
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:300]}" if text else type(e).__name__


def holder_text(info: dict[str, Any]) -> str:
    return f"host {info.get('host', '?')}, pid {info.get('pid', '?')}, since {info.get('since', '?')}"


def transient(e: BaseException) -> bool:
    """A failure that a store coming back would cure: the server unreachable or its database down
    (a connection refused or reset, an HTTP 5xx, a database connection lost), not a refused
    request. Requests that never reached the server, or that the server failed inside its
    database transaction, wrote nothing: sending them again writes them once."""
    text = root_cause(e) + " " + str(e)[:2000]
    codes = getattr(e, "error_code", "")
    return codes in ("INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE") or any(
        w in text
        for w in (
            "Max retries exceeded",
            "Connection refused",
            "ConnectionError",
            "Connection aborted",
            "RemoteDisconnected",
            "server closed the connection",
            "could not connect to server",
            "connection to server",
            "OperationalError",
            "terminating connection",
            "too many 500 error responses",
            "too many 502 error responses",
            "too many 503 error responses",
        )
    )


class _Patient:
    """MlflowClient whose calls wait out a store that is briefly away (``transient`` failures),
    for up to ``record.patience`` seconds in all per call, trying again every few seconds."""

    def __init__(self, client: MlflowClient, record: Record):
        self._client, self._record = client, record

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            deadline = time.monotonic() + self._record.patience
            wait = 1.0
            while True:
                try:
                    return attr(*args, **kwargs)
                except Exception as e:
                    if not transient(e) or time.monotonic() + wait > deadline:
                        raise
                    self._record.waited += wait
                    time.sleep(wait)
                    wait = min(wait * 2, 8.0)

        return call


class Record:
    """Reads and writes one study's runs through MlflowClient."""

    def __init__(self, uri: str, study: str, create: bool = True):
        """``create=False``: a SQLite store that does not exist yet is made only by create_store
        (the sweep checks everything it can before it writes anything)."""
        self.uri, self.study = uri, study
        self.failed = False  # a write failed: the lease is left to go stale rather than wait on a dead server
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # reading definition.json, study.yaml
        # MLflow logs a failing SQL statement with all its parameters before raising; the driver
        # reports the failure itself, in one line (StoreError)
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
        if uri.startswith(("http://", "https://")):
            for k, v in HTTP_DEFAULTS.items():
                os.environ.setdefault(k, v)
            # MLflow prints a "View run at" line for every run it ends on a server: two per trial
            os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        self._experiment_id: str | None = None
        self._client: MlflowClient | None = None
        self._buffer: dict[str, list[Metric]] = {}  # run id -> metrics not yet sent
        self._last_flush = time.monotonic()
        self.flush_seconds = float(os.environ.get("VAEBENCH_FLUSH_SECONDS", FLUSH_SECONDS))
        self._lock_file: Any = None
        self._lease: dict[str, Any] | None = None
        self.patience = 0.0  # seconds a write waits for a store that is away; set once the sweep has reached it
        self.waited = 0.0  # seconds spent waiting for the store, all calls together
        if create:
            self.create_store()
            _ = self.client

    @property
    def client(self) -> MlflowClient:
        """Made on first use: MlflowClient opens (and for SQLite creates) the store at once."""
        if self._client is None:
            with self._store("open"):
                self._client = _Patient(MlflowClient(tracking_uri=self.uri), self)  # type: ignore[assignment]
        return self._client

    def create_store(self) -> None:
        db = sqlite_path(self.uri)
        if db is not None and not db.exists():
            with self._store("create the store"):
                db.parent.mkdir(parents=True, exist_ok=True)
                new_sqlite_store(db)

    @property
    def exists(self) -> bool:
        """False for a SQLite store whose file is not there (yet)."""
        db = sqlite_path(self.uri)
        return db is None or db.is_file()

    @contextmanager
    def _store(self, what: str) -> Iterator[None]:
        """Any failure inside is the store's: re-raised as StoreError naming it."""
        try:
            yield
        except (StoreError, LockError):
            raise
        except Exception as e:
            self.failed = True
            raise StoreError(f"the tracking store {self.uri} failed ({what}): {root_cause(e)}") from e

    # ------------------------------------------------------------------ reading

    @property
    def experiment_id(self) -> str | None:
        if self._experiment_id is None and self.exists:
            with self._store("read the experiment"):
                exp = self.client.get_experiment_by_name(self.study)
            self._experiment_id = exp.experiment_id if exp is not None else None
        return self._experiment_id

    def parent_run(self) -> StudyRun | None:
        """The current study record: the newest parent run not superseded by --fresh."""
        if self.experiment_id is None:
            return None
        with self._store("read the study record"):
            runs = self.client.search_runs(
                [self.experiment_id], f"tags.`{ROLE}` = 'study'", order_by=["attributes.start_time DESC"]
            )
        current = [r for r in runs if r.data.tags.get(SUPERSEDED) != "true"]
        return study_run(current[0]) if current else None

    def trial_runs(self, parent_id: str) -> list[TrialRun]:
        """Every live (not deleted) trial run of a study record, oldest first."""
        runs: list[TrialRun] = []
        token = None
        with self._store("read the trial runs"):
            while True:
                page = self.client.search_runs(
                    [self.experiment_id],
                    f"tags.`mlflow.parentRunId` = '{parent_id}'",
                    run_view_type=ViewType.ACTIVE_ONLY,
                    max_results=1000,
                    order_by=["attributes.start_time ASC"],
                    page_token=token,
                )
                runs += [trial_run(r) for r in page]
                token = page.token
                if not token:
                    return runs

    def definition(self, parent: StudyRun) -> dict[str, Any] | None:
        """The study definition a parent run keeps (None for records made before definitions)."""
        text = self.parent_artifact(parent.run_id, DEFINITION_FILE, "read the study definition")
        return None if text is None else json.loads(text)

    def study_yaml(self, parent_id: str) -> str | None:
        """The study file as the driver logged it with the record (None for a record without one)."""
        return self.parent_artifact(parent_id, "study.yaml", "read the study file")

    def parent_artifact(self, run_id: str, name: str, what: str) -> str | None:
        """The text of artifact ``name`` of run ``run_id``, None when the run has none (read without
        MLflow's download progress bar: the constructor turns it off)."""
        with self._store(what), tempfile.TemporaryDirectory() as tmp:
            if name not in {a.path for a in self.client.list_artifacts(run_id)}:
                return None
            return Path(self.client.download_artifacts(run_id, name, tmp)).read_text()

    # ------------------------------------------------------------------ the lock

    def lock(self, take_over: bool = False) -> str | None:
        """Take the record's lock or raise LockError naming its holder. Returns a note when a
        dead driver's lock was taken over. SQLite: an flock on ``<db>.<study>.lock`` beside the
        store (the kernel releases it when its holder dies, however it dies). Tracking server:
        a lease in the experiment tag ``vaebench.lock``, renewed at every flush, stale after
        LEASE_SECONDS."""
        me = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "since": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        db = sqlite_path(self.uri)
        if db is not None:
            path = db.with_name(f"{db.name}.{self.study}.lock")
            with self._store(f"open the lock file {path}"):
                path.parent.mkdir(parents=True, exist_ok=True)
                f = open(path, "a+")  # noqa: SIM115 (held open for the whole sweep: the flock lives with it)
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                try:
                    info = json.loads(f.read() or "{}")
                except ValueError:
                    info = {}
                f.close()
                raise LockError(
                    f"study {self.study!r} in {self.uri} is being swept by another driver "
                    f"({holder_text(info)}; lock file {path})"
                ) from None
            f.seek(0)
            try:
                old = json.loads(f.read() or "{}")
            except ValueError:
                old = {}
            f.seek(0)
            f.truncate()
            f.write(json.dumps(me))
            f.flush()
            self._lock_file = f
            return (
                f"took over the lock of a driver that ended without releasing it ({holder_text(old)})" if old else None
            )
        return self._take_lease(me, take_over)

    def holder(self) -> dict[str, Any] | None:
        """Who sweeps the record now ({host, pid, since}), or None when its lock is free; asks the
        lock itself, as a second driver would, never the parent run's status (a killed driver
        leaves that RUNNING). Takes nothing."""
        db = sqlite_path(self.uri)
        if db is not None:
            path = db.with_name(f"{db.name}.{self.study}.lock")
            try:
                f = open(path)  # noqa: SIM115 (closed below, after the flock test)
            except OSError:
                return None  # no lock file: no driver has swept, or the last one ended before the store
            with f:
                try:
                    fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    try:
                        return json.loads(f.read() or "{}")
                    except ValueError:
                        return {}
                fcntl.flock(f, fcntl.LOCK_UN)
                return None
        if self.experiment_id is None:
            return None
        with self._store("read the lock"):
            held = self.client.get_experiment(self.experiment_id).tags.get(LOCK_TAG)
        info = json.loads(held) if held else None
        return info if info and time.time() - info.get("beat", 0) < LEASE_SECONDS else None

    def _take_lease(self, me: dict[str, Any], take_over: bool = False) -> str | None:
        """``take_over``: a lease still fresh is taken too (the user confirmed that its driver is
        gone); a driver that is in fact alive finds its lease taken at its next renewal and stops."""
        with self._store("take the lock"):
            exp = self._ensure_experiment()
            held = self.client.get_experiment(exp).tags.get(LOCK_TAG)
            note = None
            if held and take_over:
                info = json.loads(held)
                note = f"took over the lock of a driver, as asked (--take-over): {holder_text(info)}"
            elif held:
                info = json.loads(held)
                if time.time() - info.get("beat", 0) < LEASE_SECONDS:
                    raise LockError(
                        f"study {self.study!r} in {self.uri} is being swept by another driver "
                        f"({holder_text(info)}; experiment tag {LOCK_TAG})"
                    )
                note = f"took over the lock of a driver silent for over {LEASE_SECONDS:.0f} s ({holder_text(info)})"
            self._lease = {**me, "token": os.urandom(8).hex(), "beat": time.time()}
            self.client.set_experiment_tag(exp, LOCK_TAG, json.dumps(self._lease))
            time.sleep(1.0)  # two drivers writing at once: the last write wins, the other sees it and stops
            now = json.loads(self.client.get_experiment(exp).tags.get(LOCK_TAG) or "{}")
            if now.get("token") != self._lease["token"]:
                self._lease = None
                raise LockError(
                    f"study {self.study!r} in {self.uri} is being swept by another driver ({holder_text(now)})"
                )
            return note

    def _renew_lease(self) -> None:
        if self._lease is not None:
            now = json.loads(self.client.get_experiment(self.experiment_id).tags.get(LOCK_TAG) or "{}")
            if now.get("token") not in (None, self._lease["token"]):  # taken over (--take-over elsewhere)
                self._lease = None
                raise StoreError(
                    f"the lock of study {self.study!r} in {self.uri} was taken over by another driver "
                    f"({holder_text(now)}); this driver stops writing"
                )
            self._lease["beat"] = time.time()
            self.client.set_experiment_tag(self.experiment_id, LOCK_TAG, json.dumps(self._lease))

    def unlock(self) -> None:
        if self._lock_file is not None:  # emptied: a lock file with a holder in it was left by a dead driver
            self._lock_file.truncate(0)
            if not self.exists:  # the sweep stopped before it made the store: it leaves nothing behind
                Path(self._lock_file.name).unlink(missing_ok=True)
            self._lock_file.close()
            self._lock_file = None
        if self._lease is not None and self.failed:
            self._lease = None
        if self._lease is not None:
            self._lease = None
            try:
                self.client.delete_experiment_tag(self.experiment_id, LOCK_TAG)
            except Exception:  # a server that is down: the lease goes stale by itself
                pass

    # ------------------------------------------------------------------ writing

    def _ensure_experiment(self) -> str:
        """The study's experiment, created tagged to open in the MLflow UI's training view
        (an experiment made before that tag gets it here)."""
        if self.experiment_id is None:
            self._experiment_id = self.client.create_experiment(
                self.study, artifact_location=artifact_root(self.uri, self.study), tags=experiment_tags()
            )
        elif self.client.get_experiment(self._experiment_id).tags.get(EXPERIMENT_KIND) is None:
            show_as_training(self.client, self._experiment_id)
        return self._experiment_id

    def start_study(
        self, description: str, study_yaml: str, tags: dict[str, str], defn: dict[str, Any] | None = None
    ) -> StudyRun:
        """Create the experiment if needed and a new parent run holding ``defn`` (the sweep always
        gives one); older parents are superseded."""
        with self._store("start the study record"):
            self._ensure_experiment()
            old = self.parent_run()
            if old is not None:
                self.client.set_tag(old.run_id, SUPERSEDED, "true")
            run = self.client.create_run(
                self.experiment_id,
                run_name=self.study,
                tags={ROLE: "study", "mlflow.note.content": description, **tags},
            )
            self.set_definition(run.info.run_id, defn, study_yaml, tags)
            return study_run(run)

    def set_definition(self, run_id: str, defn: dict[str, Any] | None, study_yaml: str, tags: dict[str, str]) -> None:
        with self._store("write the study definition"):
            if defn is not None:
                self.client.log_dict(run_id, defn, DEFINITION_FILE)
            self.client.log_text(run_id, study_yaml, "study.yaml")
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def reopen_study(self, run_id: str) -> None:
        with self._store("reopen the study record"):
            self.client.update_run(run_id, status="RUNNING")

    def start_trial(self, parent_id: str, name: str, params: dict[str, Any], tags: dict[str, str]) -> str:
        with self._store("start a trial run"):
            run = self.client.create_run(
                self.experiment_id,
                run_name=name,
                tags={ROLE: "trial", "mlflow.parentRunId": parent_id, STATE: "running", **tags},
            )
            items = [Param(k, param_value(v)) for k, v in params.items()]
            for i in range(0, len(items), MAX_PARAMS_PER_CALL):
                self.client.log_batch(run.info.run_id, params=items[i : i + MAX_PARAMS_PER_CALL])
            return run.info.run_id

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        with self._store("tag a run"):
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def log_epoch(self, run_id: str, epoch: int, metrics: dict[str, float]) -> None:
        """Buffer one epoch's metrics (step = epoch); flush_due sends them."""
        now = int(time.time() * 1000)
        self._buffer.setdefault(run_id, []).extend(Metric(k, float(v), now, epoch) for k, v in metrics.items())

    def flush(self, run_id: str | None = None) -> None:
        """Send the buffered metrics of ``run_id`` (or of every run): one log_batch per run."""
        with self._store("log metrics"):
            for rid in [run_id] if run_id is not None else list(self._buffer):
                items = self._buffer.get(rid, [])
                for i in range(0, len(items), MAX_METRICS_PER_CALL):
                    self.client.log_batch(rid, metrics=items[i : i + MAX_METRICS_PER_CALL])
                self._buffer.pop(rid, None)
            if run_id is None:
                self._last_flush = time.monotonic()

    def flush_due(self) -> None:
        """Flush when FLUSH_SECONDS have passed since the last flush (and renew a server lease)."""
        if time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()
            with self._store("renew the lock"):
                self._renew_lease()

    def end_trial(
        self, run_id: str, state: str, tags: dict[str, str] | None = None, artifacts: dict[str, bytes] | None = None
    ) -> None:
        """Metrics, then artifacts, then the final state tag, then the run's status: a trial
        tagged final has everything; one killed before its tag is rerun."""
        self.flush(run_id)
        with self._store("end a trial run"):
            if artifacts:
                with tempfile.TemporaryDirectory() as tmp:
                    for fname, blob in artifacts.items():
                        (Path(tmp) / fname).write_bytes(blob)
                        self.client.log_artifact(run_id, str(Path(tmp) / fname))
            self.client.log_batch(run_id, tags=[RunTag(STATE, state)] + [RunTag(k, v) for k, v in (tags or {}).items()])
            self.client.set_terminated(run_id, MLFLOW_STATUS[state])

    def log_artifacts(self, run_id: str, files: list[Path], artifact_path: str | None = None) -> None:
        with self._store("log artifacts"):
            for f in files:
                self.client.log_artifact(run_id, str(f), artifact_path)

    def close_final(self, run: TrialRun) -> None:
        """A run tagged final but left RUNNING (its driver died between the tag and closing it)."""
        with self._store("close a trial run"):
            self.client.set_terminated(run.run_id, MLFLOW_STATUS[run.tags[STATE]])

    def end_study(self, run_id: str, status: str = "FINISHED") -> None:
        with self._store("end the study record"):
            self.client.set_terminated(run_id, status)

    def discard_run(self, run: TrialRun | str) -> None:
        """End a superseded trial run (an interrupted or failed attempt about to be rerun) as
        KILLED if it was left RUNNING, then soft-delete it: MLflow keeps it restorable, but
        readers see each trial once."""
        run_id = run if isinstance(run, str) else run.run_id
        self._buffer.pop(run_id, None)
        with self._store("discard a trial run"):
            status = self.client.get_run(run_id).info.status if isinstance(run, str) else run.status
            if status == "RUNNING":
                self.client.set_terminated(run_id, "KILLED")
            self.client.delete_run(run_id)


def study_run(run: Run) -> StudyRun:
    return StudyRun(run.info.run_id, run.info.status, dict(run.data.tags))


def trial_run(run: Run) -> TrialRun:
    return TrialRun(
        run.info.run_id,
        run.info.run_name,
        run.info.start_time,
        run.info.end_time,
        dict(run.data.tags),
        dict(run.data.params),
        dict(run.data.metrics),
        status=run.info.status,
    )


__all__ = ["FINAL_STATES", "LockError", "Record", "StoreError", "new_sqlite_store"]
