"""A study's plugins checked before anything runs (docs/plugins.md, Validation).

For every plugin a study's trials can use (the base kinds and the levels of ``model.*``,
``objective.*`` and ``data.*`` factors): a file reference is made absolute and must lie in the
study's project folder; the reference must import and name a class or a function; a model must
have the protocol's methods (vaebench.core.protocol), accept ``model.args``, and on two real
examples of the study's data give ``encode`` -> (mu, logvar) [2, J] and ``log_likelihood`` -> [2],
floating point and finite; an objective must return finite terms with ``loss`` on a small batch;
a data plugin must return train and val. Each failure is a ``PluginCheckError`` naming the field,
the plugin and what is wrong; ``load_study`` adds the file and line.

``identities(study)`` is what the record keeps of each plugin (name, version, source hash).
"""

from __future__ import annotations

import copy
import itertools
import json
from pathlib import Path
from typing import Any

import torch

from vaebench.plugins import PluginError, Resolved, absolute_file_ref, is_builtin, is_file_ref, resolve

FIELDS = {"model": "vaebench.models", "objective": "vaebench.objectives", "data": "vaebench.data"}
MAX_COMBOS = 64  # distinct model settings checked on real data (a larger space: the first 64)


class PluginCheckError(ValueError):
    """What is wrong with a plugin; ``field`` is the study field that names it (for the line)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def _last_line(e: BaseException) -> str:
    return (f"{type(e).__name__}: {e}".strip().splitlines() or [type(e).__name__])[-1][:300]


def _is_plugin(section: str, kind: Any) -> bool:
    if not isinstance(kind, str):
        return False
    if section == "data":
        from vaebench.study.config import BUILTIN_DATA

        return kind not in BUILTIN_DATA
    return not is_builtin(kind, FIELDS[section]) and kind not in ("beta_vae", "beta_tcvae")


def make_file_refs_absolute(study: Any, study_dir: Path) -> None:
    """``./x.py:Name`` kinds (base and factor levels) -> absolute paths, so that any worker, whatever
    its working directory, imports the same file; refused outside the study's project folder."""
    for section in FIELDS:
        sec = getattr(study, section)
        if (
            _is_plugin(section, sec.kind)
            and is_file_ref(sec.kind)
            and not Path(sec.kind.rpartition(":")[0]).is_absolute()
        ):
            try:
                sec.kind = absolute_file_ref(sec.kind, study_dir)
            except PluginError as e:
                raise PluginCheckError(f"{section}.kind", f"{section}.kind {sec.kind}: {e}") from None
        levels = study.space.get(f"{section}.kind")
        if isinstance(levels, list):
            for i, level in enumerate(levels):
                if (
                    _is_plugin(section, level)
                    and is_file_ref(level)
                    and not Path(level.rpartition(":")[0]).is_absolute()
                ):
                    try:
                        levels[i] = absolute_file_ref(level, study_dir)
                    except PluginError as e:
                        raise PluginCheckError(f"space.{section}.kind", f"space.{section}.kind {level}: {e}") from None


def plugin_refs(study: Any) -> list[tuple[str, str, str]]:
    """(field, group, ref) of every plugin the study's trials can use."""
    out = []
    for section, group in FIELDS.items():
        kind = getattr(study, section).kind
        if _is_plugin(section, kind):
            out.append((f"{section}.kind", group, kind))
        levels = study.space.get(f"{section}.kind")
        for level in levels if isinstance(levels, list) else []:
            if _is_plugin(section, level):
                out.append((f"space.{section}.kind", group, level))
    return list(dict.fromkeys(out))


def identities(study: Any) -> dict[str, dict[str, Any]]:
    """{"group:ref": {qualname, version, sha256}} of the study's plugins ({} for built-ins only)."""
    out = {}
    for field, group, ref in plugin_refs(study):
        try:
            out[f"{group}:{ref}"] = resolve(ref, group).record()
        except PluginError as e:
            raise PluginCheckError(field, f"{field}: plugin {ref}: {e}") from None
    return out


def _model_configs(study: Any) -> list[tuple[str, Any]]:
    """(field, TrialConfig) of each distinct model/data combination of the study (at most MAX_COMBOS)."""
    keys = [k for k, v in study.space.items() if k.split(".")[0] in ("model", "data") and isinstance(v, list)]
    out: dict[str, tuple[str, Any]] = {}
    combos = itertools.product(*(study.space[k] for k in keys)) if keys else [()]
    for combo in itertools.islice(combos, MAX_COMBOS):
        cfg = study.trial_config(dict(zip(keys, copy.deepcopy(combo))), study.seeds[0])
        field = "model.kind" if not keys else ("space." + " / space.".join(keys))
        blob = json.dumps([cfg.model.model_dump(mode="json"), cfg.data.model_dump(mode="json")], sort_keys=True)
        out.setdefault(blob, (field, cfg))
    return list(out.values())


def check_plugins(study: Any) -> None:
    """Every check of the module docstring; PluginCheckError on the first failure."""
    refs = plugin_refs(study)
    if not refs:
        return
    resolved: dict[tuple[str, str], Resolved] = {}
    for field, group, ref in refs:
        try:
            resolved[(group, ref)] = resolve(ref, group)
        except PluginError as e:
            raise PluginCheckError(field, f"{field}: plugin {ref}: {e}") from None
    for field, group, ref in refs:
        if group == "vaebench.models":
            _check_model_class(field, ref, resolved[(group, ref)].obj)
    from vaebench.data import DataError, load_data

    data_cache: dict[str, Any] = {}
    for field, cfg in _model_configs(study):
        if not _is_plugin("model", cfg.model.kind) and not _is_plugin("data", cfg.data.kind):
            continue
        key = json.dumps(cfg.data.model_dump(mode="json"), sort_keys=True)
        if key not in data_cache:
            try:
                data_cache[key] = load_data(cfg.data, cfg.data_seed)
            except DataError as e:
                raise PluginCheckError("data.kind", f"data.kind {cfg.data.kind}: {e}") from None
            except Exception as e:  # a data plugin may raise anything
                raise PluginCheckError(
                    "data.kind", f"data.kind: plugin {cfg.data.kind} failed: {_last_line(e)}"
                ) from None
        if _is_plugin("model", cfg.model.kind):
            where = "model.kind" if field == "model.kind" else field
            check_model_on_data(where, cfg, data_cache[key].train[:2])
    for field, group, ref in refs:
        if group == "vaebench.objectives":
            check_objective(field, ref, study)
    if study.metrics.disentanglement and _is_plugin("data", study.data.kind):
        from vaebench.data import ground_truth

        try:
            gt = ground_truth(study.data)
        except DataError as e:
            raise PluginCheckError("data.kind", f"data.kind {study.data.kind}: {e}") from None
        if gt is None:
            raise PluginCheckError(
                "metrics.disentanglement",
                f"metrics.disentanglement: {', '.join(study.metrics.disentanglement)} need the data's generative "
                f"factors, and the data plugin {study.data.kind} returns no ground_truth (docs/plugins.md); "
                "leave metrics.disentanglement empty or return one",
            )


def _check_model_class(field: str, ref: str, obj: Any) -> None:
    from vaebench.core.protocol import REQUIRED_METHODS

    if isinstance(obj, type):
        missing = [m for m in REQUIRED_METHODS if not callable(getattr(obj, m, None))]
        if missing:
            raise PluginCheckError(
                field,
                f"{field}: plugin {ref}: the class has no {', '.join(missing)}; a model needs encode(x) -> "
                "(mu, logvar) and log_likelihood(x, z) -> [B] (docs/plugins.md)",
            )


def check_model_on_data(field: str, cfg: Any, x: torch.Tensor) -> None:
    """Build the model as a trial would and run encode and log_likelihood on the examples ``x``."""
    from vaebench.core.models.plugin import construct
    from vaebench.core.protocol import REQUIRED_METHODS

    ref, J = cfg.model.kind, cfg.model.latent_dim
    obj = resolve(ref, "vaebench.models").obj
    torch.manual_seed(cfg.seed)
    try:
        model = construct(obj, tuple(x.shape[1:]), J, dict(cfg.model.args))
    except TypeError as e:
        raise PluginCheckError(
            "model.args",
            f"model.args {json.dumps(cfg.model.args)}: plugin {ref} rejects them: {_last_line(e)}",
        ) from None
    except Exception as e:
        raise PluginCheckError(field, f"{field}: plugin {ref}: building the model failed: {_last_line(e)}") from None
    missing = [m for m in REQUIRED_METHODS if not callable(getattr(model, m, None))]
    if missing:
        raise PluginCheckError(field, f"{field}: plugin {ref}: the model has no {', '.join(missing)} (docs/plugins.md)")
    if not isinstance(model, torch.nn.Module):
        raise PluginCheckError(field, f"{field}: plugin {ref}: built a {type(model).__name__}, not a torch.nn.Module")
    bad = f"{field}: plugin {ref}: on 2 real examples [2, {', '.join(map(str, x.shape[1:]))}]"
    try:
        enc = model.encode(x)
    except Exception as e:
        raise PluginCheckError(field, f"{bad}, encode(x) raised {_last_line(e)}") from None
    if not (isinstance(enc, tuple | list) and len(enc) == 2 and all(isinstance(t, torch.Tensor) for t in enc)):
        raise PluginCheckError(field, f"{bad}, encode(x) returned {type(enc).__name__}; expected (mu, logvar)")
    for name, t in zip(("mu", "logvar"), enc):
        _check_tensor(field, bad, f"encode(x)'s {name}", t, (2, J))
    try:
        ll = model.log_likelihood(x, enc[0])
    except Exception as e:
        raise PluginCheckError(field, f"{bad}, log_likelihood(x, z) raised {_last_line(e)}") from None
    if not isinstance(ll, torch.Tensor):
        raise PluginCheckError(
            field, f"{bad}, log_likelihood(x, z) returned {type(ll).__name__}; expected a tensor [2]"
        )
    _check_tensor(field, bad, "log_likelihood(x, z)", ll, (2,))


def _check_tensor(field: str, bad: str, what: str, t: torch.Tensor, shape: tuple[int, ...]) -> None:
    if tuple(t.shape) != shape:
        raise PluginCheckError(field, f"{bad}, {what} has shape {list(t.shape)}; expected {list(shape)}")
    if not t.is_floating_point():
        raise PluginCheckError(field, f"{bad}, {what} has dtype {t.dtype}; expected a floating-point tensor")
    if not torch.isfinite(t).all():
        raise PluginCheckError(field, f"{bad}, {what} holds NaN or infinite values")


def check_objective(field: str, ref: str, study: Any) -> None:
    """Call the objective on a small synthetic batch of one member (B = 4, J = latent_dim, x of the
    study's base data shape unknown here: a vector): a dict with ``loss`` and finite terms [1]."""
    from vaebench.core.objectives import MemberSettings, ObjectiveBatch, objective

    cfg = study.trial_config({}, study.seeds[0]).objective.model_copy(update={"kind": ref})
    J = study.model.latent_dim
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(1, 4, J, generator=g), torch.zeros(1, 4, J)
    z = mu + torch.randn(1, 4, J, generator=g)
    batch = ObjectiveBatch(torch.rand(1, 4, 8), mu, logvar, z, -10 * torch.ones(1, 4), 0, 100, 1000)
    try:
        terms = objective(batch, MemberSettings([cfg]))
    except Exception as e:
        raise PluginCheckError(field, f"{field}: plugin {ref}: on a batch of 4 it raised {_last_line(e)}") from None
    for name, v in terms.items():
        if not isinstance(v, torch.Tensor) or v.shape != (1,) or not torch.isfinite(v).all():
            raise PluginCheckError(
                field,
                f"{field}: plugin {ref}: term {name!r} must be a finite tensor [M] (one value per member), "
                f"got {v!r:.80}",
            )
