"""A study is data (as in disentanglement_lib): a YAML file naming a base trial config,
the factors that vary, the seeds and how to search. This module validates it and expands
it into trial specs; it runs nothing.

    name: collapse                      # the MLflow experiment
    description: ...
    data/model/objective/train/metrics  # base sections (vaebench.study.config)
    resources: {cpus_per_trial: 1, gpus_per_trial: 0, pack: auto}   # pack: auto | off | N
    space:                              # dotted setting path -> levels (list) or range (mapping)
      objective.beta: [0.5, 1, 4]
      objective.anneal: [none, linear, {kind: cyclical, cycles: 4, ratio: 0.5}]
      train.lr: {low: 1.0e-4, high: 1.0e-2, log: true}
    seeds: [0, 1, 2]
    search: {kind: grid}                # or random|tpe|nsga2 with budget, objectives, pruner
    trial_limit: 100000                 # refuse a study implying more trials (the default)
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from vaebench.record.store import short
from vaebench.record.vocab import DIS_SCORES, TRAIN_TERMS, VAL_METRICS
from vaebench.study.config import (
    DataConfig,
    DigitsData,
    MetricsConfig,
    ModelConfig,
    ObjectiveConfig,
    Section,
    Seed,
    TrainConfig,
    TrialConfig,
    flatten,
    set_dotted,
)
from vaebench.study.yaml_input import YamlInputError, parse, read_text

STUDY_DIR = Path("studies")
# metrics a search may optimise (vaebench.core.metrics / vaebench.core.train), and val/kl_dim/NN
OBJECTIVE_METRICS = (
    tuple(f"val/{m}" for m in VAL_METRICS)
    + tuple(f"train/{m}" for m in TRAIN_TERMS)
    + tuple(f"val/dis/{m}" for m in DIS_SCORES)
)
DATA_FILE_FIELDS = ("train_images", "val_images", "path")  # idx, npz and text settings naming files
TRIAL_LIMIT = 100_000  # trials a study may imply unless trial_limit says otherwise


class StudyError(ValueError):
    """Bad study input; the message names the file, the field and what is allowed."""


class Range(Section):
    """A range for search: uniform (or log-uniform) in [low, high], on a ``step`` grid if given.
    Integers stay integers when low, high (and step) are all integers."""

    low: int | float = Field(description="the smallest value")
    high: int | float = Field(description="the largest value (above low)")
    log: bool = Field(False, description="sample uniformly in log space (low > 0)")
    step: int | float | None = Field(None, gt=0, description="sample on a grid of this step from low; null: continuous")

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self

    @property
    def is_int(self) -> bool:
        return all(isinstance(v, int) for v in (self.low, self.high, self.step) if v is not None)


PACK_ALLOWED = "auto, off, or a whole number >= 1 (the most members per pack)"


# Ray schedules resources in steps of 0.0001 and takes a quantity above 1 whole only; a trial
# takes at least a hundredth of a CPU (a smaller share would put thousands of trials on a core)
MIN_SHARE, MAX_UNITS = 0.01, 10_000
RESOURCE_ALLOWED = f"from {MIN_SHARE} to 1 in steps of 0.0001, or a whole number up to {MAX_UNITS:,}"


def check_share(v: float, zero: bool) -> float:
    """A cpus/gpus_per_trial value Ray can schedule (``zero``: 0 is allowed too)."""
    if zero and v == 0:
        return v
    whole = v > 1 and float(v).is_integer()
    if not (MIN_SHARE <= v <= 1 and abs(round(v, 4) - v) < 1e-12) and not (whole and v <= MAX_UNITS):
        raise ValueError(f"got {v}; allowed: {'0, or ' if zero else ''}{RESOURCE_ALLOWED}")
    return v


class Resources(Section):
    """What each trial (or pack of trials) asks of Ray."""

    cpus_per_trial: float = Field(
        1.0, description="CPUs of a trial or a pack (one task): its torch threads; fractions allowed"
    )
    gpus_per_trial: float = Field(0.0, description="GPUs of a trial or a pack; fractions share a GPU")
    # packed trials (vaebench.core.pack): auto sizes packs from memory and slots, off runs every trial alone
    pack: Literal["auto", "off"] | int = Field(
        "auto",
        description="packed trials: auto (sized from memory and slots), off (every trial alone), or N (at most N "
        "members per pack); --pack overrides it",
    )

    @field_validator("pack", mode="before")
    @classmethod
    def _pack(cls, v: Any) -> Any:
        return parse_pack(v)

    @field_validator("cpus_per_trial")
    @classmethod
    def _cpus(cls, v: float) -> float:
        return check_share(v, zero=False)

    @field_validator("gpus_per_trial")
    @classmethod
    def _gpus(cls, v: float) -> float:
        return check_share(v, zero=True)


def effective_pack(study: Study) -> Literal["auto", "off"] | int:
    """resources.pack as a sweep applies it: "auto" is off for a search with a pruner. A pack's
    members advance in lockstep, so a pruner would find no finished trial to compare with
    until the pack ends; an explicit N packs anyway."""
    pack = study.resources.pack
    return "off" if pack == "auto" and study.search.pruner != "none" else pack


def parse_pack(v: Any) -> Literal["auto", "off"] | int:
    """resources.pack / --pack: "auto", "off" or N >= 1 (also as the string "N")."""
    if isinstance(v, str) and v.strip().isdigit():
        v = int(v)
    if v in ("auto", "off") or (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
        return v
    raise ValueError(f"got {v!r}; allowed: {PACK_ALLOWED}")


class Search(Section):
    """How the points of the space are chosen: every one (grid) or an Optuna search."""

    kind: Literal["grid", "random", "tpe", "nsga2"] = Field(
        "grid", description="grid: the full factorial in file order; random, tpe, nsga2: Optuna samplers"
    )
    budget: int | None = Field(
        None, ge=1, description="points a search runs, each once per seed (required unless kind is grid)"
    )
    objectives: dict[str, Literal["min", "max"]] = Field(
        {"val/elbo": "max"},
        description="metric -> min or max, of each point's mean over its seeds at the last epoch; two or more for "
        "nsga2; the first ranks points in status",
    )
    pruner: Literal["none", "median", "hyperband"] = Field(
        "none", description="Optuna pruner on the first objective's mean over seeds per epoch (single objective only)"
    )

    @model_validator(mode="after")
    def _consistent(self) -> Search:
        if not self.objectives:
            raise ValueError("objectives: name at least one metric, e.g. {val/elbo: max}")
        for name in self.objectives:
            if name not in OBJECTIVE_METRICS and not re.fullmatch(r"val/kl_dim/\d\d", name):
                raise ValueError(
                    f"objectives: unknown metric {name!r}; allowed: {', '.join(OBJECTIVE_METRICS)}, val/kl_dim/NN"
                )
        if self.kind == "grid":
            if self.pruner != "none":
                raise ValueError("pruner: a grid runs every trial to the end; pruners are for random|tpe|nsga2")
            return self
        if self.budget is None:
            raise ValueError(f"budget: search kind '{self.kind}' needs a number of trials")
        if self.kind == "nsga2" and len(self.objectives) < 2:
            raise ValueError("objectives: nsga2 needs two or more, e.g. {val/recon: min, val/kl: min}")
        if len(self.objectives) > 1 and self.pruner != "none":
            raise ValueError("pruner: Optuna cannot prune a multi-objective search; use pruner: none")
        return self

    @property
    def directions(self) -> list[str]:
        return ["minimize" if d == "min" else "maximize" for d in self.objectives.values()]


# The store's tightest limits on a study's name: MLflow names the record's parent run after the
# study (a run name is at most 250 characters; the experiment name 256 in PostgreSQL), and a
# SQLite store's lock file is "mlflow.db.NAME.lock", one file name of at most 255 bytes. 200
# leaves room for a store file named up to ~50 characters.
MAX_NAME = 200


class Study(Section):
    """A study file: the base settings of every trial, the factors that vary, the seeds and the search."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        max_length=MAX_NAME,
        description="the study's MLflow experiment and report folder: letters, digits, _ . - (not starting with . - _)",
    )
    description: str = Field("", description="what the study asks; shown in the MLflow UI and the report")
    data: DataConfig = Field(DigitsData(), description="the dataset, chosen by its kind")
    model: ModelConfig = Field(ModelConfig(), description="encoder, decoder and likelihood")
    objective: ObjectiveConfig = Field(ObjectiveConfig(), description="the training objective")
    train: TrainConfig = Field(TrainConfig(), description="the optimisation")
    metrics: MetricsConfig = Field(MetricsConfig(), description="the held-out metrics' settings")
    data_seed: Seed = Field(0, description="data generation and the train/validation split, shared by all seeds")
    resources: Resources = Field(Resources(), description="what each trial asks of Ray, and packing")
    space: dict[str, list[Any] | Range] = Field(
        description="the factors: dotted path of any setting -> a list of levels, or a range for a search"
    )
    seeds: list[Seed] = Field([0], min_length=1, description="every point runs once per seed; each seed once")
    search: Search = Field(Search(), description="grid, or an Optuna search with its budget, objectives and pruner")
    # the most trials (points x seeds) the study may imply, counted by arithmetic before any is
    # built; a guard, not part of what the study trains (a record's definition leaves it out)
    trial_limit: int = Field(
        TRIAL_LIMIT, ge=1, description="refuse a study implying more trials (points x seeds); a guard, not recorded"
    )

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int]) -> list[int]:
        # a repeated seed would be the same trial twice (one config hash): refused, for grid and search alike
        repeated = sorted(s for s, n in Counter(seeds).items() if n > 1)
        if repeated:
            raise ValueError(
                f"seed(s) {', '.join(map(str, repeated[:5]))} repeated; each seed may appear once, e.g. [0, 1, 2]"
            )
        return seeds

    def base(self) -> dict[str, Any]:
        """The base trial config as a plain dict (every default filled in)."""
        d = self.model_dump(mode="json", include={"data", "model", "objective", "train", "metrics", "data_seed"})
        d["train"]["threads"] = max(1, int(self.resources.cpus_per_trial))
        return d

    def trial_config(self, point: dict[str, Any], seed: int) -> TrialConfig:
        """The validated config of one trial: base, with the point's values set, and the seed."""
        d = self.base()
        for path, value in point.items():
            set_dotted(d, path, copy.deepcopy(value))
        d["seed"] = seed
        return TrialConfig.model_validate(d)

    def iter_grid(self) -> Iterator[dict[str, Any]]:
        """The full factorial of the space's levels, in file order (last factor fastest), one at a time."""
        keys = list(self.space)
        return (dict(zip(keys, combo)) for combo in itertools.product(*(self.space[k] for k in keys)))

    def grid(self) -> list[dict[str, Any]]:
        return list(self.iter_grid())

    def n_points(self) -> int:
        """Points the study runs: the product of the level counts for a grid, the budget for a search."""
        if self.search.kind != "grid":
            return self.search.budget or 0
        return math.prod(len(v) for v in self.space.values() if isinstance(v, list))

    def n_trials(self) -> int:
        """Trials (runs) the study implies: points x seeds. Arithmetic: nothing is built."""
        return self.n_points() * len(self.seeds)


@dataclass(frozen=True)
class TrialSpec:
    """One trial to run: a point of the space, a seed, and the resulting full config."""

    point: dict[str, Any]
    seed: int
    config: TrialConfig

    @property
    def config_hash(self) -> str:
        return self.config.config_hash()

    @property
    def point_key(self) -> str:
        """Identity of the point (the config without the seed): groups a point's seeds."""
        return point_key(self.point)


def point_key(point: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(point, sort_keys=True).encode()).hexdigest()[:12]


def iter_trials(study: Study) -> Iterator[TrialSpec]:
    """Every (point, seed) of a grid study, built one at a time (a grid is counted by
    ``Study.n_trials`` and need never be held in memory)."""
    for p in study.iter_grid():
        for s in study.seeds:
            yield TrialSpec(p, s, study.trial_config(p, s))


def expand(study: Study) -> list[TrialSpec]:
    """Every (point, seed) of a grid study, as a list."""
    return list(iter_trials(study))


# ------------------------------------------------------------------------- loading


def resolve_path(ref: str | Path) -> Path:
    """A study file path, or a bare name looked up as studies/NAME.yaml."""
    p = Path(ref)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    return STUDY_DIR / f"{ref}.yaml"


def load_study(path: str | Path, overrides: list[str] | None = None, open_data: bool = True) -> Study:
    """Read, override (``--set a.b=value``) and validate a study file. Raises StudyError.

    Bounded (vaebench.study.yaml_input): at most 1 MB of UTF-8, no duplicate keys, aliases
    that stay small; a study implying more than ``trial_limit`` trials is refused
    by arithmetic. With ``open_data``, every data file the study names is read as a trial
    would read it, so a corrupt or misshapen file fails here, not in every trial."""
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"{path}: no such study file" if not path.exists() else f"{path}: not a file")
    try:
        raw, root = parse(read_text(path))
    except YamlInputError as e:
        msg = str(e)
        raise StudyError(msg if msg.startswith(str(path)) else f"{path}{msg}") from None
    except yaml.YAMLError as e:
        raise StudyError(f"{path}: not valid YAML: {_cut_text(str(e))}") from None
    if not isinstance(raw, dict):
        raise StudyError(
            f"{path}: a study is a mapping of fields (name, data, model, space, ...), got {type(raw).__name__}"
        )
    for item in overrides or []:
        _override(raw, item)
    try:
        study = Study.model_validate(raw)
    except ValidationError as e:
        raise StudyError(_format_errors(path, root, e)) from None
    _check_size(path, root, study)
    _check_factors(path, root, study)
    _check_pruned_objective(path, root, study)
    _check_space(path, root, study)
    _check_data_files(path, root, study)
    _check_plugins(path, root, study, open_data)
    if open_data:
        _open_data(path, root, study)
    return study


def _check_plugins(path: Path, root: yaml.Node | None, study: Study, run: bool) -> None:
    """File plugins made absolute (inside the study's project); with ``run``, every plugin imported,
    built and run on one real batch (vaebench.study.plugin_checks)."""
    from vaebench.study.plugin_checks import PluginCheckError, check_plugins, make_file_refs_absolute

    try:
        make_file_refs_absolute(study, path.resolve().parent)
        if run:
            check_plugins(study)
    except PluginCheckError as e:
        loc = ("space", e.field.removeprefix("space.")) if e.field.startswith("space.") else tuple(e.field.split("."))
        raise StudyError(f"{path}{_line(root, loc)}: {_cut_text(str(e), 1200)}") from None


def _override(raw: dict[str, Any], item: str) -> None:
    """Apply one ``--set dotted.path=value``; the value is YAML, bounded as a file is."""
    key, sep, value = item.partition("=")
    where = f"--set {short(item)}"
    if not sep or not key.strip():
        raise StudyError(f"{where}: expected dotted.path=value, e.g. train.epochs=5")
    if len(value.encode("utf-8", "surrogateescape")) > 100_000:
        raise StudyError(f"{where}: the value is longer than 100,000 bytes")
    try:
        parsed, _ = parse(value)
    except YamlInputError as e:
        raise StudyError(f"{where}: {str(e).lstrip(' :')}") from None
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or "not valid YAML"
        raise StudyError(
            f"{where}: the value is not valid YAML ({problem}); quote strings, write lists as "
            "[1, 2] and mappings as {kind: linear}"
        ) from None
    key = key.strip()
    try:
        if key.startswith("space.") and isinstance(raw.get("space", {}), dict):
            raw.setdefault("space", {})[key.removeprefix("space.")] = parsed  # a factor's key is itself dotted
        else:
            set_dotted(raw, key, parsed)
    except (KeyError, AttributeError, TypeError):
        raise StudyError(f"{where}: {short(key)} does not name a setting") from None


def _cut_text(text: str, limit: int = 600) -> str:
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def _check_size(path: Path, root: yaml.Node | None, study: Study) -> None:
    """A study implying more trials than trial_limit is refused before any is built."""
    n, limit = study.n_trials(), study.trial_limit
    if n > limit:
        what = (
            " x ".join(f"{len(v)} {k}" for k, v in study.space.items() if isinstance(v, list))
            if study.search.kind == "grid"
            else f"budget {study.search.budget}"
        )
        raise StudyError(
            f"{path}{_line(root, ('space',))}: the study implies {n:,} trials ({what} x "
            f"{len(study.seeds)} seeds), more than trial_limit ({limit:,}); use fewer levels "
            "or seeds, or raise trial_limit (a top-level field, or --set trial_limit=N)"
        )


def _data_configs(study: Study) -> list[tuple[str, Any]]:
    """(field, data config) of every data set the study's trials can use: the base, and each
    combination of the space's data levels (deduplicated)."""
    keys = [k for k, v in study.space.items() if k.split(".")[0] == "data" and isinstance(v, list)]
    if not keys:
        files = [f for f in DATA_FILE_FIELDS if getattr(study.data, f, None) is not None]
        return [(" / ".join(f"data.{f}" for f in files) or "data", study.data)]
    out: dict[str, tuple[str, Any]] = {}
    for combo in itertools.product(*(study.space[k] for k in keys)):
        cfg = study.trial_config(dict(zip(keys, combo)), study.seeds[0]).data
        blob = json.dumps(cfg.model_dump(mode="json"), sort_keys=True)
        out.setdefault(blob, ("space." + " / space.".join(keys), cfg))
    return list(out.values())


def _open_data(path: Path, root: yaml.Node | None, study: Study) -> None:
    """Read every file-based data set (idx, npz, text) as a trial would: a file that cannot be
    read, has the wrong shape or dtype fails here with the file and the field."""
    from vaebench.data import DataError, load_data

    for field, cfg in _data_configs(study):
        if cfg.kind not in ("idx", "npz", "mnist", "fashion_mnist", "text"):
            continue  # bundled or generated (or a plugin: vaebench.study.plugin_checks): nothing on disk to check
        try:
            load_data(cfg, study.data_seed)
        except DataError as e:
            line = _line(root, tuple(field.split(" ")[0].split(".", 1)))
            raise StudyError(f"{path}{line}: {field}: {_cut_text(str(e))}") from None
        except (OSError, ValueError, MemoryError) as e:
            raise StudyError(
                f"{path}: {field}: cannot read the data ({type(e).__name__}: {_cut_text(str(e))})"
            ) from None


def _check_factors(path: Path, root: yaml.Node | None, study: Study) -> None:
    """Disentanglement metrics need data whose generative factors are known."""
    from vaebench.study.config import BUILTIN_DATA, FACTOR_KINDS

    # a data plugin's factors are checked when it is imported (vaebench.study.plugin_checks)
    if study.metrics.disentanglement and study.data.kind not in FACTOR_KINDS and study.data.kind in BUILTIN_DATA:
        raise StudyError(
            f"{path}{_line(root, ('metrics', 'disentanglement'))}: metrics.disentanglement: "
            f"{', '.join(study.metrics.disentanglement)} need data with known generative factors, and data.kind "
            f"{study.data.kind!r} has none; allowed with data.kind: {', '.join(FACTOR_KINDS)} (otherwise leave "
            f"metrics.disentanglement empty)"
        )


def _check_pruned_objective(path: Path, root: yaml.Node | None, study: Study) -> None:
    """A pruner compares the objective's values during training: the objective must be computed
    before the last epoch (iw_nll and the disentanglement metrics may be set to the last only)."""
    s, m = study.search, study.metrics
    if s.pruner == "none":
        return
    metric = next(iter(s.objectives))
    if metric == "val/iw_nll" and m.iw_every == "last":
        field, fix = ("metrics", "iw_every"), "null (every evaluation) or a number of epochs"
    elif metric.startswith("val/dis/") and m.disentanglement_every is None:
        field, fix = ("metrics", "disentanglement_every"), "a number of epochs"
    else:
        return
    raise StudyError(
        f"{path}{_line(root, field)}: {'.'.join(field)}: search.pruner {s.pruner} needs {metric} during training, "
        f"and {'.'.join(field)} computes it at the last epoch only; allowed with a pruner: {fix} "
        f"(or search.pruner: none)"
    )


def _check_data_files(path: Path, root: yaml.Node | None, study: Study) -> None:
    """Files named by idx/npz data settings must exist; they are made absolute so that Ray
    workers, whatever their working directory, read the same file."""
    for field in DATA_FILE_FIELDS:
        value = getattr(study.data, field, None)
        if value is None:
            continue
        if not Path(value).is_file():
            raise StudyError(
                f"{path}{_line(root, ('data', field))}: data.{field}: no such file: {_cut_text(value, 300)}"
            )
        setattr(study.data, field, str(Path(value).resolve()))
    for key, levels in study.space.items():
        if key.split(".")[0] == "data" and key.rsplit(".", 1)[-1] in DATA_FILE_FIELDS and isinstance(levels, list):
            for i, level in enumerate(levels):
                if not Path(str(level)).is_file():
                    raise StudyError(
                        f"{path}{_line(root, ('space', key))}: space.{key}: no such file: {short(level, 300)}"
                    )
                levels[i] = str(Path(str(level)).resolve())


def _check_space(path: Path, root: yaml.Node | None, study: Study) -> None:
    if not study.space:
        raise StudyError(f"{path}: space: is empty; name at least one factor, e.g. objective.beta: [1, 4]")
    settings = flatten(study.base())
    settings_prefixes = {".".join(k.split(".")[:i]) for k in settings for i in range(1, k.count(".") + 2)}
    for key, levels in study.space.items():
        where = f"{path}{_line(root, ('space', key))}: space.{_cut_text(key, 120)}"
        if key == "seed":
            raise StudyError(f"{where}: seeds are given by the top-level 'seeds' list, not in space")
        if key not in settings_prefixes:
            near = sorted(k for k in settings if k.split(".")[0] == key.split(".")[0]) or sorted(settings)
            raise StudyError(f"{where}: names no setting. Settings under that section: {', '.join(near[:40])}")
        if isinstance(levels, Range):
            if study.search.kind == "grid":
                raise StudyError(
                    f"{where}: a range (low/high) needs search kind random|tpe|nsga2; a grid takes a list of levels"
                )
            levels = [levels.low, levels.high]  # both ends must be allowed values of the setting
        if not levels:
            raise StudyError(f"{where}: has no levels; give a non-empty list")
        seen: dict[str, Any] = {}
        check = _level_check(study, key)
        for level in levels:  # each level must give a valid trial config on its own
            try:
                h = check(level)
            except ValidationError as e:
                prefix = () if e.title == "TrialConfig" else (key.split(".", 1)[0],)  # a section's error
                msgs = "; ".join(f"{'.'.join(map(str, prefix + err['loc']))}: {err['msg']}" for err in e.errors())
                raise StudyError(f"{where}: level {short(level)} is not allowed: {msgs}") from None
            if h in seen and isinstance(study.space[key], list):  # 1 and 1.0, none and {kind: none}
                raise StudyError(
                    f"{where}: levels {short(seen[h])} and {short(level)} give the same setting; "
                    "each level may appear once"
                )
            seen.setdefault(h, level)


# sections whose settings are checked together with another section's (TrialConfig._factors_known)
_JOINT_SECTIONS = ("data", "metrics")


def _level_check(study: Study, key: str) -> Any:
    """A function of one level of factor ``key``: validates the config the level gives and returns
    a hash of what it sets (equal for levels that give the same setting). Raises ValidationError.

    A factor of 20,000 levels is checked in about a second: only the level's own section is
    validated (a whole TrialConfig, with its hash, for data and metrics, whose settings are
    checked against each other, and for top-level settings)."""
    section = key.split(".", 1)[0]
    if "." not in key or section in _JOINT_SECTIONS:
        return lambda level: study.trial_config({key: level}, study.seeds[0]).config_hash()
    from pydantic import TypeAdapter

    adapter = TypeAdapter(TrialConfig.model_fields[section].annotation)
    base = study.base()[section]
    rest = key.split(".", 1)[1]

    def check(level: Any) -> str:
        d = copy.deepcopy(base)
        set_dotted(d, rest, copy.deepcopy(level))
        return json.dumps(adapter.validate_python(d).model_dump(mode="json"), sort_keys=True)

    return check


def _format_errors(path: Path, root: yaml.Node | None, e: ValidationError) -> str:
    lines = [f"{path}: {e.error_count()} problem(s):"]
    for err in e.errors(include_input=True, include_url=False)[:20]:
        loc = tuple(str(p) for p in err["loc"] if not (isinstance(p, str) and p in _UNION_TAGS))
        field = _cut_text(".".join(loc), 120) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (not a setting of this section)"
        elif err["type"] == "literal_error" and "expected" in err.get("ctx", {}):
            msg = f"got {short(err['input'])}; allowed: {err['ctx']['expected']}"
        lines.append(f"  {field}{_line(root, loc)}: {msg}")
    return "\n".join(lines)


# pydantic puts the discriminator's tag in error locations ('data', 'digits', 'binarize')
_UNION_TAGS = {
    "digits",
    "dsprites",
    "ppca",
    "idx",
    "npz",
    "mnist",
    "plugin",
    "none",
    "linear",
    "sigmoid",
    "cyclical",
    "capacity",
    "list[any]",
    "Range",
}


def _line(root: yaml.Node | None, loc: tuple[str, ...]) -> str:
    """' (line N)' of the deepest YAML node on the path ``loc``, or '' when unknown."""
    node, line = root, None
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if k.value == key), None)
            if match is None:
                break
            line, node = match[0].start_mark.line + 1, match[1]
        elif isinstance(node, yaml.SequenceNode) and key.isdigit() and int(key) < len(node.value):
            node = node.value[int(key)]
            line = node.start_mark.line + 1
        else:
            break
    return f" (line {line})" if line else ""
