"""A study's MLflow record as pandas (docs/design.md: "a function that returns a study's runs
as a pandas DataFrame"). Everything here reads the tracking store only, so results and
reports can be rebuilt at any time from any machine that sees it.

    from vaebench.record.results import trials_frame, histories_frame

    trials = trials_frame("collapse")                      # one row per trial
    trials.groupby("objective.beta")["val/active_units"].mean()
    curves = histories_frame("collapse", metrics=["val/elbo"], trials=trials)
    curves.pivot_table(index="epoch", columns="objective.beta", values="value")

Only the current record of a study is read: the newest parent run (tag
``vaebench.role=study``) not superseded by ``vaebench sweep --fresh``, and its live
(not deleted) trial runs.
"""

from __future__ import annotations

import gc
import json
import math
import re
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from vaebench.record.environment import ENVIRONMENTS_TAG, environments
from vaebench.record.runs import TrialRun
from vaebench.record.store import resolve_tracking_uri, store_missing
from vaebench.record.vocab import (
    DEFINITION_TAG,
    FACTORS,
    HASH,
    OPTUNA_STUDY,
    OPTUNA_TRIAL,
    POINT,
    POINT_KEY,
    SEARCH,
    SEEDS,
    STATE,
)
from vaebench.record.writer import Record

#: columns of ``trials_frame`` that describe the run rather than its config or metrics
META_COLUMNS = [
    "run_id",
    "run_name",
    "state",
    "seed",
    "point_key",
    "config_hash",
    "optuna_trial",
    "epochs",
    "start_time",
    "duration_s",
]
STATE_ORDER = ["completed", "diverged", "pruned", "failed", "killed", "running"]


class ReportError(ValueError):
    """The record cannot be read as asked (unknown study, no trials, unknown factor);
    the message names the problem and what exists instead."""


@dataclass
class StudyRecord:
    """The current record of one study: its parent run's tags and its live trial runs."""

    name: str
    uri: str
    parent_run_id: str
    description: str
    factors: list[str]
    search: str
    seeds: list[int]
    optuna_study: str | None
    runs: list[TrialRun] = field(repr=False)
    record: Record = field(repr=False)
    environments: list[dict[str, Any]] = field(default_factory=list)  # machines that trained the trials


def load_record(study: str, tracking_uri: str | None = None) -> StudyRecord:
    """The current record of study ``study`` (the MLflow experiment name). Raises ReportError
    when the store, the study or its trials are missing; never creates a store."""
    uri = resolve_tracking_uri(tracking_uri)
    if store_missing(uri):
        raise ReportError(
            f"no tracking store at {uri} (the file does not exist); give --tracking-uri or set MLFLOW_TRACKING_URI"
        )
    rec = Record(uri, study)
    parent = rec.parent_run()
    if parent is None:
        names = sorted(e.name for e in rec.client.search_experiments() if e.name != "Default")
        raise ReportError(
            f"no study record named {study!r} in {uri}"
            + (f"; studies there: {', '.join(names)}" if names else "; the store holds no studies")
        )
    runs = current_definition(_read_trials(rec, parent.run_id), parent.tags.get(DEFINITION_TAG))
    if not runs:
        raise ReportError(
            f"study {study!r} has no trial runs in {uri} (record {parent.run_id}): run `vaebench sweep` first"
        )
    tags = parent.tags
    factors = json.loads(tags.get(FACTORS, "null")) or _factors_from_points(runs)
    return StudyRecord(
        name=study,
        uri=uri,
        parent_run_id=parent.run_id,
        description=tags.get("mlflow.note.content", ""),
        factors=factors,
        search=tags.get(SEARCH, "grid"),
        seeds=json.loads(tags.get(SEEDS, "[]")),
        optuna_study=tags.get(OPTUNA_STUDY),
        runs=runs,
        record=rec,
        environments=environments(tags.get(ENVIRONMENTS_TAG)),
    )


def current_definition(runs: list[TrialRun], parent_definition: str | None) -> list[TrialRun]:
    """The runs made under the record's definition. The driver never mixes definitions in one
    record; this keeps a table from averaging another configuration's trials if a record was
    written otherwise (an older vaebench, a hand-made run). Runs without the tag (records older
    than definitions) are kept: nothing says they differ."""
    if parent_definition is None:
        return runs
    return [r for r in runs if r.tags.get(DEFINITION_TAG, parent_definition) == parent_definition]


def _factors_from_points(runs: list[TrialRun]) -> list[str]:
    seen: dict[str, None] = {}
    for r in runs:
        seen.update(dict.fromkeys(json.loads(r.tags.get(POINT, "{}"))))
    return list(seen)


# ----------------------------------------------------------------------------- reading the store
#
# Runs, tags, params and final metrics are read through MlflowClient (search_runs: ~2.7 s for
# 1,000 trials, benchmarks/RESULTS.md). Histories are where the public API is too slow: one
# get_metric_history request per run and key (35,000 for 1,000 trials of 35 metrics), so on a
# database store they come from one SQL query per 500 runs (``SqlHistories``, 6.7 s for 1.75
# million rows), which checks MLflow's schema first and falls back to the public API on any error.


def _read_trials(rec: Record, parent_id: str) -> list[TrialRun]:
    """Every live trial run of the record, oldest first, with the last epoch each logged."""
    runs = rec.trial_runs(parent_id)
    if runs:
        steps = _fetch_histories(rec.uri, [r.run_id for r in runs], list(EPOCH_KEYS))
        last = steps.groupby("run_id", observed=True)["epoch"].max().to_dict() if len(steps) else {}
        for r in runs:
            r.last_step = int(last.get(r.run_id, 0))
    return runs


EPOCH_KEYS = ("train/epoch_seconds", "train/loss", "val/elbo")  # logged at every epoch a trial ran


class SqlHistories:
    """The one direct read of MLflow's tables: metric histories from a database store
    (SQLite, PostgreSQL, MySQL, MS SQL) with plain SQLAlchemy, no MLflow internals. ``open``
    refuses (raises) any URI that is not a database, or whose ``metrics`` table lacks the
    columns read; callers fall back to ``MlflowClient.get_metric_history``."""

    COLUMNS = ("run_uuid", "key", "step", "value", "is_nan", "timestamp")
    SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")

    def __init__(self, engine: Any, table: Any):
        self.engine, self.table = engine, table

    @classmethod
    def open(cls, uri: str) -> SqlHistories:
        import sqlalchemy as sa

        if uri.split(":", 1)[0].split("+", 1)[0] not in cls.SCHEMES:
            raise ValueError(f"{uri}: not a database store")
        engine = sa.create_engine(uri)
        try:
            table = sa.Table("metrics", sa.MetaData(), autoload_with=engine)
            missing = [c for c in cls.COLUMNS if c not in table.c]
            if missing:
                raise ValueError(f"MLflow's metrics table has no column {', '.join(missing)}")
        except Exception:
            engine.dispose()
            raise
        return cls(engine, table)

    def rows(self, run_ids: list[str], keys: list[str]) -> list[tuple]:
        """(run_id, key, step, value, is_nan, timestamp) of ``keys`` for ``run_ids``, unordered
        (numpy sorts faster than the database)."""
        import sqlalchemy as sa

        m = self.table.c
        out: list[tuple] = []
        try:
            with self.engine.connect() as conn:
                for i in range(0, len(run_ids), 500):
                    result = conn.execute(
                        sa.select(m.run_uuid, m.key, m.step, m.value, m.is_nan, m.timestamp).where(
                            m.key.in_(keys), m.run_uuid.in_(run_ids[i : i + 500])
                        )
                    )
                    out += _rows(result)
        finally:
            self.engine.dispose()
        return out


def _rows(result: Any) -> list[tuple]:
    """All rows of a SQLAlchemy result straight from the DBAPI cursor: the plain values
    (str, int, float) need none of SQLAlchemy's per-row processing, which would cost more
    than the query itself on 100,000 metric rows."""
    cursor = getattr(result, "cursor", None)
    if cursor is None:  # pragma: no cover
        return [tuple(r) for r in result.all()]
    try:
        return cursor.fetchall()
    finally:
        result.close()


# ----------------------------------------------------------------------------- typing back

_INT = re.compile(r"^[+-]?\d+$")


def parse_param(text: str) -> Any:
    """An MLflow param string back to the value it was written from (``tracking.param_value``):
    'True'/'False' -> bool, 'None' -> None, integers, floats (also 'nan', 'inf', '1e-05'),
    JSON lists and mappings; anything else stays a string."""
    if text in ("True", "False"):
        return text == "True"
    if text == "None":
        return None
    if _INT.match(text):
        return int(text)
    try:
        return float(text)
    except ValueError:
        pass
    if text[:1] in "[{":
        try:
            return json.loads(text)
        except ValueError:
            pass
    return text


def _typed_column(values: list[Any]) -> pd.Series | list[Any]:
    """ints and floats mixed -> float; None beside numbers -> NaN; otherwise as parsed."""
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        if all(isinstance(v, int) for v in present) and len(present) == len(values):
            return pd.Series(values, dtype="int64")
        return pd.Series([math.nan if v is None else float(v) for v in values], dtype="float64")
    if present and len(present) == len(values) and all(isinstance(v, bool) for v in present):
        return pd.Series(values, dtype="bool")
    return pd.Series(values, dtype="object")


# ----------------------------------------------------------------------------- labels


def level_label(value: Any, kind_unique: bool = False) -> Any:
    """A factor level as shown in tables and legends: scalars as they are, a mapping like
    {kind: cyclical, cycles: 4, ratio: 0.5} as 'cyclical(cycles=4, ratio=0.5)', or just
    'cyclical' when ``kind_unique`` (no other level of the factor has that kind); lists as JSON."""
    if isinstance(value, dict):
        kind = value.get("kind")
        rest = {k: v for k, v in value.items() if k != "kind"}
        if kind is not None and (kind_unique or not rest):
            return str(kind)
        inner = ", ".join(f"{k}={level_label(v)}" for k, v in sorted(rest.items()))
        return f"{kind}({inner})" if kind is not None else f"({inner})"
    if isinstance(value, (list, tuple)):
        return json.dumps(value)
    return value


def common_settings(levels: list[Any]) -> dict[str, Any]:
    """The settings every level of a factor of mappings shares (same key, same value; ``kind``
    excepted), e.g. cell=gru in every level of model.args: {} unless there are two or more
    distinct levels, all mappings."""
    distinct = list({json.dumps(v, sort_keys=True): v for v in levels}.values())
    if len(distinct) < 2 or not all(isinstance(v, dict) for v in distinct):
        return {}
    first = distinct[0]
    return {
        k: v
        for k, v in first.items()
        if k != "kind"
        and all(k in d and json.dumps(d[k], sort_keys=True) == json.dumps(v, sort_keys=True) for d in distinct)
    }


def mapping_labels(levels: list[Any]) -> dict[str, Any]:
    """JSON of each level -> its label: kinds used by one level only are shown bare, and the
    settings every level shares (``common_settings``) are left out, so that a label says what
    tells its level apart; a level that differs from the others only by lacking a setting keeps
    the shared ones (its label would be empty)."""
    kinds: dict[Any, set[str]] = {}
    for v in levels:
        k = v.get("kind") if isinstance(v, dict) else v
        kinds.setdefault(k, set()).add(json.dumps(v, sort_keys=True))
    common = common_settings(levels)
    out: dict[str, Any] = {}
    for v in levels:
        k = v.get("kind") if isinstance(v, dict) else v
        rest = {key: x for key, x in v.items() if key not in common} if common else v
        shown = rest or v
        out[json.dumps(v, sort_keys=True)] = level_label(shown, kind_unique=len(kinds.get(k, ())) == 1)
    return out


def short_names(factors: Iterable[str]) -> dict[str, str]:
    """Each dotted factor path -> its shortest unambiguous dotted suffix:
    objective.beta -> beta, but model.kind and data.kind stay whole when both are factors."""
    factors = list(factors)
    out = {}
    for f in factors:
        parts = f.split(".")
        for n in range(1, len(parts) + 1):
            cand = ".".join(parts[-n:])
            if sum(1 for g in factors if g == cand or g.endswith("." + cand)) == 1:
                out[f] = cand
                break
        else:
            out[f] = f
    return out


def resolve_factor(name: str, factors: Iterable[str]) -> str:
    """A factor given by its path or by an unambiguous suffix (beta, anneal) -> its path."""
    factors = list(factors)
    if name in factors:
        return name
    matches = [f for f in factors if f.endswith("." + name)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ReportError(f"factor {name!r} is ambiguous: it could be {', '.join(matches)}")
    raise ReportError(f"{name!r} is not a factor of this study; its factors are: {', '.join(factors)}")


# ----------------------------------------------------------------------------- frames


def trials_frame(study: str, tracking_uri: str | None = None, *, record: StudyRecord | None = None) -> pd.DataFrame:
    """One row per trial run of the current record of study ``study``.

    Columns, in order:

    - ``run_id``, ``run_name``, ``state`` (completed | diverged | pruned | failed | killed |
      running), ``seed``, ``point_key`` (the same for every seed of a point of the space),
      ``config_hash``, ``optuna_trial`` (search studies, else NaN), ``epochs`` (the last
      epoch logged; 0 when none), ``start_time`` (UTC timestamp), ``duration_s``;
    - one column per factor of the study, named by its dotted path (``objective.beta``). A
      factor whose levels are scalars holds the trial's typed value (it is also the param of
      that name), list levels (``model.hidden``) as tuples so that rows can be grouped by
      them; a factor with mapping levels (``objective.anneal``) holds the level's label,
      e.g. ``"cyclical(cycles=4, ratio=0.5)"`` or ``"linear"``;
    - every param of the trial config with its dotted name (``model.latent_dim``,
      ``objective.anneal.kind``, ...), typed back from MLflow's strings: int, float, bool,
      None (NaN in a numeric column), str, and lists/mappings from their JSON;
    - every metric's final value (the value at the last epoch logged), named by its key:
      ``val/elbo``, ``val/recon``, ``val/kl``, ``val/kl_dim/00``, ..., ``val/active_units``,
      ``val/mi``, ``val/iw_nll``, ``val/collapsed_fraction``, ``train/loss``, ... A failed
      trial may have none (NaN); a diverged or pruned one has those of its last logged epoch.

    ``frame.attrs`` holds the record: ``study``, ``tracking_uri``, ``parent_run_id``,
    ``description``, ``factors`` (paths, in file order), ``search``, ``seeds``,
    ``optuna_study``, ``environments`` (the machines and library versions that trained the
    trials, as the sweep recorded them) and ``state_counts`` ({state: trials}).

    Raises ReportError for an unknown study, a missing store or a record with no trials.
    """
    rec = record or load_record(study, tracking_uri)
    rows, params_raw, metric_names = [], [], {}
    points = []
    for r in rec.runs:
        tags = r.tags
        point = json.loads(tags.get(POINT, "{}"))
        points.append(point)
        end = r.end_time or None
        rows.append(
            {
                "run_id": r.run_id,
                "run_name": r.run_name,
                "state": tags.get(STATE, "unknown"),
                "point_key": tags.get(POINT_KEY),
                "config_hash": tags.get(HASH),
                "optuna_trial": int(tags[OPTUNA_TRIAL]) if OPTUNA_TRIAL in tags else math.nan,
                "epochs": r.last_step,
                "start_time": pd.Timestamp(r.start_time, unit="ms", tz="UTC") if r.start_time else pd.NaT,
                "duration_s": (end - r.start_time) / 1000 if end and r.start_time else math.nan,
            }
        )
        params_raw.append(r.params)
        metric_names.update(dict.fromkeys(r.metrics))
    meta = pd.DataFrame(rows)
    param_names = sorted({k for p in params_raw for k in p})
    params = {k: _typed_column([parse_param(p[k]) if k in p else None for p in params_raw]) for k in param_names}
    if "seed" in params:
        meta.insert(3, "seed", params.pop("seed"))
    else:
        meta.insert(3, "seed", pd.Series([math.nan] * len(meta)))
    metric_cols = sorted(metric_names, key=lambda k: (not k.startswith("val/"), k))
    metrics = {k: pd.Series([r.metrics.get(k, math.nan) for r in rec.runs], dtype="float64") for k in metric_cols}
    factor_cols = {}
    for f in rec.factors:
        if f in params and not any(isinstance(p.get(f), dict) for p in points):
            col = params[f]  # the param column is the factor column; lists become tuples (hashable)
            if col.dtype == object and any(isinstance(v, list) for v in col):
                params[f] = pd.Series([tuple(v) if isinstance(v, list) else v for v in col], dtype="object")
            continue
        labels = mapping_labels([p[f] for p in points if f in p])
        factor_cols[f] = pd.Series(
            [labels.get(json.dumps(p[f], sort_keys=True)) if f in p else None for p in points], dtype="object"
        )
    frame = pd.concat(
        [
            meta,
            pd.DataFrame(factor_cols, index=meta.index),
            pd.DataFrame(params, index=meta.index),
            pd.DataFrame(metrics, index=meta.index),
        ],
        axis=1,
    )
    ordered = META_COLUMNS + [f for f in rec.factors if f in frame.columns]
    frame = frame[ordered + [c for c in frame.columns if c not in ordered]]
    counts = frame["state"].value_counts()
    frame.attrs.update(
        study=rec.name,
        tracking_uri=rec.uri,
        parent_run_id=rec.parent_run_id,
        description=rec.description,
        factors=list(rec.factors),
        # per factor of mappings, the settings every level shares (left out of the level labels)
        factor_common={
            f: common_settings([p[f] for p in points if f in p])
            for f in rec.factors
            if common_settings([p[f] for p in points if f in p])
        },
        search=rec.search,
        seeds=list(rec.seeds),
        optuna_study=rec.optuna_study,
        environments=list(rec.environments),
        state_counts={
            s: int(counts[s]) for s in STATE_ORDER + sorted(set(counts.index) - set(STATE_ORDER)) if s in counts
        },
    )
    return frame


def histories_frame(
    study: str,
    tracking_uri: str | None = None,
    metrics: Iterable[str] | None = None,
    *,
    trials: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Per-epoch histories in long form: one row per (trial, metric, epoch).

    Columns: ``run_id`` (categorical), ``epoch`` (1-based; MLflow's step), ``metric``
    (categorical, the key: ``val/elbo``, ``train/loss``, ``val/kl_dim/03``, ...), ``value``
    (float; a diverged epoch's NaN is not logged by the sweep), then ``state``, ``seed`` and
    one column per factor, as in ``trials_frame``. Rows are ordered by trial (the order of
    ``trials``), then metric (the order asked), then epoch.

    ``metrics`` names the keys to fetch (default: every key any trial logged; asking only
    for what you need is faster on big studies). Pass ``trials`` (a ``trials_frame`` of the
    same study, or a subset of its rows, e.g. the completed trials) to reuse it instead of
    reading the runs again. Reshape with pandas as needed, e.g.
    ``h[h.metric == "val/elbo"].pivot_table(index="epoch", columns="objective.beta", values="value")``.

    On a SQLite or other database store this is one query per 500 trials; on a tracking
    server, one request per trial and key, 16 at a time.
    """
    if trials is None:
        trials = trials_frame(study, tracking_uri)
    uri = trials.attrs.get("tracking_uri") or resolve_tracking_uri(tracking_uri)
    keys = list(metrics) if metrics is not None else [c for c in trials.columns if "/" in c]
    run_ids = trials["run_id"].tolist()
    long = _fetch_histories(uri, run_ids, keys)
    # the trial's state, seed and factor levels, taken by position (a merge copies more)
    at = pd.Index(run_ids).get_indexer(long["run_id"].cat.categories)[long["run_id"].cat.codes]
    extra = ["state", "seed"] + [f for f in trials.attrs.get("factors", []) if f in trials.columns]
    for c in extra:
        long[c] = trials[c].take(at).reset_index(drop=True)
    # order: trials as in ``trials``, then metric, then epoch
    order = np.lexsort((long["epoch"].to_numpy(), long["metric"].cat.codes.to_numpy(), at))
    long = long.iloc[order].reset_index(drop=True)
    long.attrs.update(trials.attrs)
    return long


def _fetch_histories(uri: str, run_ids: list[str], keys: list[str]) -> pd.DataFrame:
    """The histories of ``keys`` for ``run_ids`` as run_id (categorical), epoch, metric
    (categorical), value. A database store answers one SQL query per 500 runs for all the keys
    (``SqlHistories``); any other store, or any error there, one MlflowClient call per run and
    key, 16 at a time. A step logged twice (never by the driver) keeps its latest value."""
    with _no_gc():  # millions of row tuples: the cyclic GC would rescan them again and again
        return _frame_from_rows(_history_rows(uri, run_ids, keys), keys)


def _history_rows(uri: str, run_ids: list[str], keys: list[str]) -> list[tuple]:
    if not keys or not run_ids:
        return []
    try:
        return SqlHistories.open(uri).rows(run_ids, keys)
    except Exception:  # not a database, another schema, a driver missing: the public API
        pass
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)

    def one(job: tuple[str, str]) -> list[tuple]:
        rid, key = job
        return [
            (rid, key, x.step, x.value, math.isnan(x.value), x.timestamp) for x in client.get_metric_history(rid, key)
        ]

    rows: list[tuple] = []
    with ThreadPoolExecutor(16) as pool:
        for part in pool.map(one, [(r, k) for r in run_ids for k in keys]):
            rows += part
    return rows


@contextmanager
def _no_gc() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _frame_from_rows(rows: list[tuple], keys: list[str]) -> pd.DataFrame:
    if not rows:
        return pd.DataFrame(
            {
                "run_id": pd.Categorical([]),
                "epoch": np.array([], dtype="int64"),
                "metric": pd.Categorical([]),
                "value": np.array([], dtype="float64"),
            }
        )
    run, key, step, value, nan, stamp = zip(*rows)  # columns from row tuples, in C
    run_c = pd.Categorical(run)
    logged = set(key)
    key_c = pd.Categorical(key, categories=[k for k in dict.fromkeys(keys) if k in logged])
    step_a = np.asarray(step, dtype="int64")
    value_a = np.asarray(value, dtype="float64")
    value_a[np.asarray(nan, dtype=bool)] = np.nan
    order = np.lexsort((np.asarray(stamp, dtype="int64"), step_a, key_c.codes, run_c.codes))
    r, k, step_a, value_a = run_c.codes[order], key_c.codes[order], step_a[order], value_a[order]
    # a (run, metric, step) logged twice is adjacent now: keep the last logged
    last = np.ones(len(step_a), dtype=bool)
    last[:-1] = ~((r[1:] == r[:-1]) & (k[1:] == k[:-1]) & (step_a[1:] == step_a[:-1]))
    return pd.DataFrame(
        {
            "run_id": pd.Categorical.from_codes(r[last], categories=run_c.categories),
            "epoch": step_a[last],
            "metric": pd.Categorical.from_codes(k[last], categories=key_c.categories),
            "value": value_a[last],
        }
    )
