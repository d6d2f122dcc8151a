"""Plugins: models, objectives and datasets named in a study by reference (docs/plugins.md).

A reference (``model.kind``, ``objective.kind``, ``data.kind``) is one of

- a built-in name (``mlp``, ``beta_vae``, ``digits``...): resolved like an entry point, from
  this package's entry points when it is installed with metadata and from ``BUILTINS`` when
  it is not (an editable checkout without metadata still works);
- ``package.module:attr``: an importable object;
- ``./file.py:attr`` (any reference whose module part ends in ``.py``): a file, relative to the
  study file's folder and inside the study's project folder (checked by ``check_inside``);
- a name an installed distribution registers in the entry-point group ``vaebench.models``,
  ``vaebench.objectives`` or ``vaebench.data``.

``resolve`` returns the object with its identity for the record: the qualified name, the
distribution's name and version when an installed distribution provides it, and the sha256 of
the source file that defines it (the module's file; for a package, the module file of the
attribute, not the whole package). Nothing here trains or validates shapes: that is
``vaebench.study.plugin_checks``.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata as md
import importlib.util
import inspect
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GROUPS = {"model": "vaebench.models", "objective": "vaebench.objectives", "data": "vaebench.data"}

#: the built-in kinds as entry points ("module:attr"), the in-code copy of pyproject.toml's
#: [project.entry-points."vaebench.models"] (used when the package metadata is absent)
BUILTINS: dict[str, dict[str, str]] = {
    "vaebench.models": {
        "mlp": "vaebench.core.models.vae:mlp_vae",
        "conv": "vaebench.core.models.vae:conv_vae",
        "linear": "vaebench.core.models.vae:linear_vae",
        "pixelcnn": "vaebench.core.models.pixelcnn:PixelCNNVAE",
        "seq_vae": "vaebench.core.models.sequence:SequenceVAE",
    },
    "vaebench.objectives": {
        "mmd": "vaebench.core.mmd:mmd_objective",
    },
    "vaebench.data": {},
}

#: the files that mark a project's root folder (a file plugin must lie inside it)
PROJECT_MARKERS = ("pyproject.toml", "setup.cfg", "setup.py", ".git")


class PluginError(ValueError):
    """A reference that cannot be resolved; the message says what is wrong (not where: the caller
    adds the study file and field)."""


@dataclass(frozen=True)
class Resolved:
    """A resolved reference: the object and what the record keeps of it."""

    ref: str  # as written in the config (file references made absolute)
    obj: Any
    qualname: str  # module:attr
    builtin: bool
    distribution: str | None  # the installed distribution that provides the module, if any
    version: str | None
    source: str | None  # the file whose bytes are hashed
    sha256: str | None

    def record(self) -> dict[str, Any]:
        """The plugin's identity as params: name, distribution version, source hash."""
        return {"qualname": self.qualname, "version": self.version, "sha256": self.sha256}


def is_file_ref(ref: str) -> bool:
    module, sep, _ = ref.rpartition(":")
    return bool(sep) and module.endswith(".py")


def is_builtin(ref: str, group: str) -> bool:
    return ref in BUILTINS[group]


def project_root(study_dir: Path) -> Path:
    """The nearest folder at or above ``study_dir`` holding a project marker; ``study_dir`` if none."""
    study_dir = study_dir.resolve()
    for folder in (study_dir, *study_dir.parents):
        if any((folder / m).exists() for m in PROJECT_MARKERS):
            return folder
    return study_dir


def absolute_file_ref(ref: str, study_dir: Path) -> str:
    """``./my_vae.py:Class`` -> ``/abs/path/my_vae.py:Class``, refused outside the study's project."""
    module, _, attr = ref.rpartition(":")
    path = (study_dir / module).resolve()
    root = project_root(study_dir)
    if not path.is_relative_to(root):
        raise PluginError(
            f"the file {module} resolves to {path}, outside the study's project folder {root}; "
            "move it into the project or install it as a package"
        )
    if not path.is_file():
        raise PluginError(f"no such file: {path}")
    return f"{path}:{attr}"


def _entry_points(group: str) -> dict[str, str]:
    """name -> "module:attr" of the installed entry points of ``group``, the built-ins first."""
    out = dict(BUILTINS[group])
    try:
        for ep in md.entry_points(group=group):
            out.setdefault(ep.name, ep.value)
    except Exception:  # broken metadata of an unrelated distribution must not hide the built-ins
        pass
    return out


def available(group: str) -> list[str]:
    return sorted(_entry_points(group))


def _import_file(path: Path) -> Any:
    """Import a file as a module, once per process, under a name unique to its path; its folder
    goes on sys.path so it may import its neighbours."""
    name = "vaebench_plugin_" + path.stem + "_" + hashlib.sha256(str(path).encode()).hexdigest()[:8]
    if name in sys.modules:
        return sys.modules[name]
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise PluginError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _last_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".strip().splitlines()[-1][:300]


def _distribution(module_name: str) -> tuple[str | None, str | None]:
    """(distribution, version) that provides the top-level package of ``module_name``, if installed."""
    top = module_name.split(".")[0]
    try:
        dists = md.packages_distributions().get(top, [])
    except Exception:
        dists = []
    for dist in dists:
        try:
            return dist, md.version(dist)
        except md.PackageNotFoundError:
            continue
    return None, None


def _own_version() -> str | None:
    try:
        return md.version("vaebench")
    except md.PackageNotFoundError:
        return None


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def resolve(ref: str, group: str) -> Resolved:
    """Import what ``ref`` names (see the module docstring); PluginError when it cannot.

    A file reference must already be absolute (``absolute_file_ref``); a study makes it so."""
    if not isinstance(ref, str) or not ref.strip():
        raise PluginError("empty reference")
    builtin = is_builtin(ref, group)
    target = ref
    if builtin:  # fast path (build_model asks for every model): no metadata scan, no hashing
        module_name, _, attr = BUILTINS[group][ref].rpartition(":")
        obj = getattr(importlib.import_module(module_name), attr)
        return Resolved(ref, obj, f"{module_name}:{attr}", True, "vaebench", _own_version(), None, None)
    if ":" not in ref:  # a name: an entry point (the built-ins are entry points too)
        points = _entry_points(group)
        if ref not in points:
            raise PluginError(
                f"{ref!r} is neither a built-in kind nor an entry point of group {group} "
                f"(known: {', '.join(available(group))}), nor a reference package.module:attr or ./file.py:attr"
            )
        target = points[ref]
    module_name, _, attr = target.rpartition(":")
    if not module_name or not attr:
        raise PluginError(f"{ref!r}: expected package.module:attr or ./file.py:attr")
    try:
        if is_file_ref(target):
            path = Path(module_name)
            if not path.is_absolute():
                raise PluginError(f"{ref!r}: a file reference must be resolved against the study file first")
            if not path.is_file():
                raise PluginError(f"no such file: {path}")
            module = _import_file(path)
        else:
            module = importlib.import_module(module_name)
    except PluginError:
        raise
    except BaseException as e:  # a plugin's import may raise anything, SystemExit included
        raise PluginError(f"cannot import {module_name}: {_last_line(e)}") from None
    obj = module
    try:
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        raise PluginError(f"{module_name} has no attribute {attr!r}") from None
    if not (inspect.isclass(obj) or inspect.isfunction(obj) or inspect.isbuiltin(obj)):
        raise PluginError(f"{module_name}:{attr} is a {type(obj).__name__}, not a class or a function")
    # the file whose bytes define the object (a re-exported name: the defining module's file)
    source = inspect.getsourcefile(obj) if not inspect.isbuiltin(obj) else None
    source = source or getattr(module, "__file__", None)
    real_module = getattr(obj, "__module__", module_name) or module_name
    dist, version = (None, None) if is_file_ref(target) else _distribution(real_module)
    qualname = f"{module_name if is_file_ref(target) else real_module}:{getattr(obj, '__qualname__', attr)}"
    return Resolved(
        ref=ref,
        obj=obj,
        qualname=qualname,
        builtin=builtin,
        distribution=dist,
        version=version,
        source=source,
        sha256=file_sha256(source) if source and Path(source).is_file() else None,
    )
