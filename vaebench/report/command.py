"""The ``vaebench report`` command. Registered in ``vaebench.cli`` with
``app.command("report")(report)``. Exit codes: 0 written (and logged), 1 written but not
logged to MLflow, 2 bad input (unknown study, empty record, unknown factor or format)."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console

from vaebench.console import fail
from vaebench.record.store import (
    STORAGE_HELP,
    TRACKING_HELP,
    StoreAddressError,
    check_readable,
    check_storage,
    default_storage,
    project_root,
    resolve_tracking_uri,
    short,
)
from vaebench.sweep.checks import CheckError, check_server

# a study name that is one plain folder name: no separator, no leading dot (so not '..'), bounded
_FOLDER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")


def report_folder(name: str, root: Path) -> Path:
    """root/sweeps/NAME/report for a study name that is a plain folder name: beside the study's
    store and Optuna storage, in the run state git never tracks, so a report never overwrites
    the committed example reports under reports/. The name comes from the command line or the
    store (any MLflow experiment name), so an absolute path, a separator or '..' could point
    anywhere: refused (StoreAddressError) rather than followed."""
    if not _FOLDER_NAME.match(name):
        raise StoreAddressError(
            f"study name {short(name)} is not a plain folder name (letters, digits, _ . -, not starting "
            "with a dot), so it cannot name a folder under sweeps/; give --out FOLDER"
        )
    return root / "sweeps" / name / "report"


def _split(values: list[str] | None) -> list[str]:
    """Repeatable options that also take comma-separated lists: --group-by beta,free_bits."""
    return [v.strip() for item in values or [] for v in item.split(",") if v.strip()]


def report(
    study: str = typer.Argument(
        ...,
        metavar="STUDY",
        help="study YAML file, NAME for studies/NAME.yaml, or the name of a study in the tracking store",
    ),
    out: Optional[Path] = typer.Option(
        None,
        "--out",
        metavar="DIR",
        help="output folder (default PROJECT/sweeps/NAME/report, beside the study's store and never "
        "tracked by git; PROJECT being the folder above the study's studies/ folder, else the current "
        "folder)",
    ),
    group_by: Optional[list[str]] = typer.Option(
        None,
        "--group-by",
        metavar="FACTOR",
        help="factor of the ablation table's rows, by path or short name (objective.beta or "
        "beta); repeatable or comma-separated (default: every factor of the study)",
    ),
    baseline: Optional[list[str]] = typer.Option(
        None,
        "--baseline",
        metavar="PATH=VALUE",
        help="dotted.path=value: the baseline level of a grouping factor; cells show their "
        "difference to the baseline row with its 95% confidence interval over seeds "
        "(repeatable)",
    ),
    format: str = typer.Option(
        "md,html,tex,csv",
        "--format",
        metavar="FORMATS",
        help="outputs, comma-separated: md (report.md), html (index.html), tex, csv",
    ),
    collapse_axes: Optional[str] = typer.Option(
        None,
        "--collapse-axes",
        metavar="X[,Y]",
        help="one or two factors X,Y of the collapse map (default beta,free_bits)",
    ),
    curves_by: Optional[str] = typer.Option(
        None,
        "--curves-by",
        metavar="FACTOR",
        help="factor of the training curves' lines (default beta); their columns are the "
        "latent sizes (or the next factor)",
    ),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", metavar="URI", help=TRACKING_HELP),
    storage: Optional[str] = typer.Option(None, "--storage", metavar="URL", help=STORAGE_HELP),
    log: bool = typer.Option(
        True, "--log/--no-log", help="also log the report as artifacts (report/) of the study's parent run in MLflow"
    ),
) -> None:
    """Render a study's figures and ablation tables from its MLflow record into sweeps/NAME/report/."""
    err = Console(stderr=True, highlight=False)
    from vaebench.record.results import ReportError, load_record, trials_frame
    from vaebench.study.spec import StudyError, load_study, resolve_path

    started = time.perf_counter()
    path = resolve_path(study)
    objectives: list[str] | None = None
    if path.is_file():
        try:
            st = load_study(path, open_data=False)  # a report reads the record, not the data
        except StudyError as e:
            fail(str(e))
        name = st.name
        objectives = list(st.search.objectives)
    elif Path(study).suffix in (".yaml", ".yml"):
        fail(f"{study}: no such study file")
    else:
        name = study
    project = path if path.is_file() else None
    try:
        uri = resolve_tracking_uri(tracking_uri, project)
        check_readable(uri)
        check_server(uri)
        storage = check_storage(storage) if storage is not None else default_storage(project, name)
        target = out or report_folder(name, project_root(project))
    except (StoreAddressError, CheckError) as e:
        fail(str(e))
    err.print(f"store: {uri}", markup=False)
    try:
        record = load_record(name, uri)
    except ReportError as e:
        hint = "" if path.is_file() else f" (and no study file {path})"
        fail(
            f"unknown study {name!r}{hint}: {e}"
            if "no study record" in str(e) or "no tracking store" in str(e)
            else str(e)
        )
    if objectives is None and record.search != "grid":
        objectives = _objectives_from_record(record)

    import matplotlib

    matplotlib.use("Agg")
    from vaebench.report.render import render_report

    trials = trials_frame(name, record=record)
    try:
        rep = render_report(
            trials,
            target,
            group_by=_split(group_by) or None,
            baseline=baseline or [],
            formats=_split([format]),
            collapse_axes=_split([collapse_axes]) if collapse_axes else None,
            curves_by=curves_by,
            optuna_storage=storage,
            objective_names=objectives,
        )
    except ReportError as e:
        fail(str(e))
    drawn = sum(f.png is not None for f in rep.figures)
    err.print(
        f"{name}: {len(trials)} trials; wrote {target}/ ({drawn} figures, "
        f"{', '.join(p.name for p in rep.files if p.suffix != '.png')}) in {time.perf_counter() - started:.1f} s"
    )
    for f in rep.figures:
        if f.note:
            err.print(f"  {f.title}: {f.note}", markup=False)
    if log:
        try:
            record.record.client.log_artifacts(record.parent_run_id, str(target), artifact_path="report")
        except Exception as e:
            fail(f"the report is in {target}/ but logging it to MLflow run {record.parent_run_id} failed: {e}", 1)
        err.print(f"  logged as artifacts report/ of run {record.parent_run_id}")


def _objectives_from_record(record: Any) -> list[str] | None:
    """The search objectives from the study.yaml the driver logged to the parent run."""
    import yaml

    try:
        raw = yaml.safe_load(record.record.study_yaml(record.parent_run_id))
        return list((raw.get("search") or {}).get("objectives") or {"val/elbo": "max"})
    except Exception:
        return None


if __name__ == "__main__":  # python -m vaebench.report.command STUDY ...
    app = typer.Typer(add_completion=False)
    app.command()(report)
    sys.exit(app())
