"""Where a study's record lives: the MLflow tracking store and the Optuna storage.

The default store is found from the study, not from the current folder: it sits in
``sweeps/`` beside the project the study belongs to (for a study file in a folder named
``studies/``, that folder's parent; else the current folder), so the same study file
reaches the same store from wherever the command runs. ``MLFLOW_TRACKING_URI`` replaces
the default, ``--tracking-uri`` replaces both. Every URI is checked here (format, and for
SQLite whether the file exists or can be created) before anything starts or is written.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

STUDY_FOLDER = "studies"
STORE_FOLDER = "sweeps"
STORE_FILE = "mlflow.db"
OPTUNA_FILE = "optuna.db"

# tracking URIs vaebench accepts: SQLite, an MLflow server, or a database MLflow supports
_SERVER = re.compile(r"^https?://[^/\s:]+(:\d{1,5})?(/\S*)?$")
_DATABASE = re.compile(r"^(postgresql|mysql|mssql)(\+\w+)?://\S+$")

TRACKING_HELP = (
    "MLflow tracking URI: sqlite:///PATH.db, a PATH ending in .db, http(s)://HOST[:PORT] of an MLflow "
    "server, or postgresql|mysql|mssql://... (default: $MLFLOW_TRACKING_URI, else "
    "sqlite:///PROJECT/sweeps/mlflow.db, PROJECT being the folder above the study's studies/ folder, "
    "else the current folder)"
)
STORAGE_HELP = (
    "Optuna storage URL of a search study: sqlite:///PATH.db or postgresql|mysql://... "
    "(default sqlite:///PROJECT/sweeps/NAME/optuna.db, beside the tracking store's project)"
)


class StoreAddressError(ValueError):
    """A tracking URI, storage URL or store location that cannot be used (bad input, exit 2); the
    message says what is allowed. A store that fails while in use raises vaebench.record.writer.StoreError."""


def short(value: object, limit: int = 80) -> str:
    """repr(value), cut to ``limit`` characters: messages never print unbounded input."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 20]}...({len(text)} characters)"


def project_root(study_path: str | Path | None) -> Path:
    """The project a study belongs to: the parent of its ``studies/`` folder, else the
    current folder (absolute either way)."""
    if study_path is not None:
        folder = Path(study_path).resolve().parent
        if folder.name == STUDY_FOLDER:
            return folder.parent
    return Path.cwd().resolve()


def default_store(study_path: str | Path | None = None) -> Path:
    """The default MLflow SQLite file of a study: PROJECT/sweeps/mlflow.db."""
    return project_root(study_path) / STORE_FOLDER / STORE_FILE


def default_storage(study_path: str | Path | None, study_name: str) -> str:
    """The default Optuna storage of a search study: PROJECT/sweeps/NAME/optuna.db."""
    return f"sqlite:///{project_root(study_path) / STORE_FOLDER / study_name / OPTUNA_FILE}"


def resolve_tracking_uri(cli: str | None = None, study_path: str | Path | None = None) -> str:
    """--tracking-uri wins, then MLFLOW_TRACKING_URI, then the default store beside the
    study's project. Checked and made absolute (a relative SQLite path is taken from the
    current folder, as MLflow does). Raises StoreAddressError."""
    if cli:
        return check_tracking_uri(cli, "--tracking-uri")
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return check_tracking_uri(env, "MLFLOW_TRACKING_URI")
    return f"sqlite:///{default_store(study_path)}"


def sqlite_path(uri: str) -> Path | None:
    """The file of a ``sqlite:///`` URI, else None."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def _absolute_sqlite(uri: str, source: str) -> str:
    path = uri.removeprefix("sqlite:///")
    if not path or path.startswith(":memory:"):
        raise StoreAddressError(f"{source} {short(uri)}: names no file; give sqlite:///PATH.db")
    return f"sqlite:///{Path(path).resolve()}"


def check_tracking_uri(uri: str, source: str = "--tracking-uri") -> str:
    """The URI, absolute, or StoreAddressError saying what is allowed."""
    if uri.startswith("sqlite:///"):
        return _absolute_sqlite(uri, source)
    if _SERVER.match(uri) or _DATABASE.match(uri):
        return uri
    if "://" not in uri and ":" not in uri.split("/")[0] and uri.endswith(".db"):
        return f"sqlite:///{Path(uri).resolve()}"  # a plain path to a .db file: a SQLite store
    raise StoreAddressError(
        f"{source} {short(uri)}: not a tracking URI vaebench can use; allowed: sqlite:///PATH.db, "
        "a PATH ending in .db, http(s)://HOST[:PORT] of an MLflow server, "
        "postgresql|mysql|mssql://USER@HOST/DB"
    )


def check_storage(url: str, source: str = "--storage") -> str:
    """An Optuna storage URL (absolute for SQLite), or StoreAddressError."""
    if url.startswith("sqlite:///"):
        return _absolute_sqlite(url, source)
    if re.match(r"^(postgresql|mysql)(\+\w+)?://\S+$", url):
        return url
    raise StoreAddressError(
        f"{source} {short(url)}: not an Optuna storage URL vaebench can use; allowed: "
        "sqlite:///PATH.db, postgresql://USER@HOST/DB, mysql://USER@HOST/DB"
    )


def store_missing(uri: str) -> bool:
    """A SQLite store whose file does not exist: readers must say so, not create it."""
    path = sqlite_path(uri)
    return path is not None and not path.is_file()


def check_readable(uri: str) -> None:
    """For readers (status, report, ui): a SQLite store must exist; never created here."""
    if store_missing(uri):
        raise StoreAddressError(
            f"no tracking store at {uri} (the file does not exist); run `vaebench sweep` there first, "
            "or give --tracking-uri or set MLFLOW_TRACKING_URI"
        )


def check_writable(uri: str, what: str = "tracking store") -> None:
    """For writers: a SQLite file that exists must be a writable file in a writable folder;
    one that does not must be creatable (its nearest existing folder writable, and no file
    where a folder is needed). Checked without writing anything."""
    path = sqlite_path(uri)
    if path is None:
        return
    if path.exists():
        if not path.is_file():
            raise StoreAddressError(f"{what} {path}: is not a file")
        for p in (path, path.parent):  # SQLite writes a journal beside the database
            if not os.access(p, os.W_OK):
                raise StoreAddressError(f"{what} {p}: is read-only; make it writable or give another location")
        return
    folder = path.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise StoreAddressError(f"{what} {path}: cannot be created: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise StoreAddressError(f"{what} {path}: cannot be created: {folder} is read-only")


def ensure_folder(uri: str) -> Path | None:
    """Create the folder of a SQLite URI's file (SQLite creates the file, not its folder).
    Returns the folder when this call created it (``remove_if_empty`` undoes it), else None."""
    path = sqlite_path(uri)
    if path is None or path.parent.exists():
        return None
    top = path.parent
    while not top.parent.exists():
        top = top.parent
    path.parent.mkdir(parents=True, exist_ok=True)
    return top


def remove_if_empty(folder: Path | None) -> None:
    """Remove the folders ``ensure_folder`` made when no file was written into them (a refused
    sweep leaves nothing behind)."""
    if folder is not None and folder.is_dir() and not any(p.is_file() for p in folder.rglob("*")):
        shutil.rmtree(folder)
