"""The ``vaebench`` command line (Typer). Exit codes: 0 every trial ended (completed,
diverged or pruned), 1 some trial failed, 2 bad input (nothing written), 130 interrupted."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from vaebench.study import StudyError, expand, load_study, resolve_path
from vaebench.tracking import DEFAULT_TRACKING_URI, STATE, Record, resolve_tracking_uri, store_missing

HELP = ("Sweeps and ablation studies of VAEs: run a study file's trials on Ray, record them in MLflow, render the "
        "report. Exit codes: 0 every trial ended, 1 some trial failed, 2 bad input, 130 interrupted.")
app = typer.Typer(add_completion=False, no_args_is_help=True, help=HELP, rich_markup_mode=None)  # plain help: flags without <bool>
out = Console()
err = Console(stderr=True, soft_wrap=True)  # error text is never wrapped mid-word

TRACKING_HELP = f"MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else {DEFAULT_TRACKING_URI})"


def _fail(message: str, code: int = 2) -> None:
    err.print(Text("error: ", style="bold red") + Text(message), highlight=False)
    raise typer.Exit(code)


def _load(study_file: str, overrides: list[str] | None = None):
    path = resolve_path(study_file)
    try:
        return path, load_study(path, overrides)
    except StudyError as e:
        _fail(str(e))


@app.command()
def sweep(
    study_file: str = typer.Argument(..., help="study YAML file, or NAME for studies/NAME.yaml"),
    max_trials: Optional[int] = typer.Option(None, "--max-trials", min=1, help="start at most N new trial runs"),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="trials at once (default: what the cluster fits)"),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (default: start a local Ray)"),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help=TRACKING_HELP),
    storage: Optional[str] = typer.Option(None, "--storage", help="Optuna storage URL (default sqlite:///sweeps/NAME/optuna.db)"),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="override a setting: dotted.path=value (repeatable)"),
    fresh: bool = typer.Option(False, "--fresh", help="start a new study record; the old one stays readable"),
) -> None:
    """Run a study's trials on Ray, recording every epoch in MLflow; re-running resumes."""
    from vaebench.progress import Progress
    from vaebench.sweep import SweepError, SweepOptions, run_sweep

    path, study = _load(study_file, set_)
    opts = SweepOptions(resolve_tracking_uri(tracking_uri), storage, address, workers, max_trials, fresh)
    try:
        summary = run_sweep(study, path.read_text(), opts, Progress(enabled=True, console=err))
    except SweepError as e:
        _fail(str(e))
    counts = ", ".join(f"{n} {s}" for s, n in sorted(summary.counts.items())) or "nothing to run"
    err.print(f"{study.name}: {counts}" + (f" ({summary.skipped} already done, not rerun)" if summary.skipped else ""),
              highlight=False)
    for name, line in summary.failed:
        err.print(f"  failed: {name}: {line}", highlight=False, markup=False)
    if summary.interrupted:
        err.print("interrupted: in-flight trials were ended as killed; run the same command to resume")
    raise typer.Exit(summary.exit_code)


@app.command()
def validate(study_file: str = typer.Argument(..., help="study YAML file, or NAME"),
             set_: Optional[list[str]] = typer.Option(None, "--set", help="override: dotted.path=value")) -> None:
    """Check a study file; print its factors and the number of trials it implies."""
    path, study = _load(study_file, set_)
    table = Table(title=f"{study.name}: {path}")
    table.add_column("factor")
    table.add_column("levels / range")
    for k, v in study.space.items():
        table.add_row(k, str(v) if not isinstance(v, list) else ", ".join(map(str, v)))
    out.print(table)
    seeds = len(study.seeds)
    if study.search.kind == "grid":
        n = len(expand(study))
        out.print(f"grid: {n // seeds} points x {seeds} seeds = {n} trials, {study.train.epochs} epochs each")
    else:
        out.print(f"{study.search.kind} search: budget {study.search.budget} points x {seeds} seeds "
                  f"= {study.search.budget * seeds} trials; objectives {study.search.objectives}; pruner {study.search.pruner}")


@app.command()
def status(study: str = typer.Argument(..., metavar="STUDY", help="study YAML file or study NAME"),
           tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", metavar="URI", help=TRACKING_HELP)) -> None:
    """Trials of the current study record by state, whether it is complete, and the best point."""
    from vaebench.progress import best_point
    from vaebench.tracking import FINAL_STATES

    name, st = study, None
    path = resolve_path(study)
    if path.is_file():
        st = _load(study)[1]
        name = st.name
    uri = resolve_tracking_uri(tracking_uri)
    if store_missing(uri):
        _fail(f"no tracking store at {uri} (the file does not exist); give --tracking-uri or set MLFLOW_TRACKING_URI")
    record = Record(uri, name)
    parent = record.parent_run()
    if parent is None:
        _fail(f"no study record named {name!r} in {record.uri}")
    st = st or _study_of_record(record, parent.info.run_id)
    runs = record.trial_runs(parent.info.run_id)
    counts = Counter(r.data.tags.get(STATE, "unknown") for r in runs)
    ended = sum(counts[s] for s in FINAL_STATES)
    total = planned_trials(st) if st is not None else None
    if total is None:
        word = parent.info.status.lower()
    elif ended >= total:
        word = f"complete ({ended} of {total})"
    else:
        word = f"partial ({ended} of {total})" + {"RUNNING": ", sweep running", "KILLED": ", interrupted"}.get(
            parent.info.status, "")
    out.print(f"[bold]{name}[/]  {word}  record {parent.info.run_id}  ({record.uri})", highlight=False, soft_wrap=True)
    out.print("  ".join(f"{s} {counts[s]}" for s in sorted(counts)) or "no trials yet", highlight=False)
    done = [r for r in runs if r.data.tags.get(STATE) == "completed"]
    flagged = [r for r in done if "conv/still_moving" in r.data.metrics]
    if flagged:
        moving = sum(r.data.metrics["conv/still_moving"] == 1 for r in flagged)
        out.print(f"still moving at the last epoch: {moving} of {len(flagged)} completed trials (conv/still_moving)",
                  highlight=False)
    metric, direction = next(iter(st.search.objectives.items())) if st is not None else ("val/elbo", "max")
    best = best_point(((r.data.tags.get("vaebench.point_key", r.info.run_id), "completed", r.data.metrics)
                       for r in done), metric, direction)
    if best is not None:
        r = next(r for r in done if r.data.tags.get("vaebench.point_key", r.info.run_id) == best.point)
        out.print(f"{best}: {r.data.tags.get('vaebench.point', r.info.run_name)}", highlight=False, markup=False,
                  soft_wrap=True)


def planned_trials(st) -> int:
    """The trials a study runs when complete: its grid's points (or its search budget) times its seeds."""
    import math

    points = math.prod(len(v) for v in st.space.values()) if st.search.kind == "grid" else st.search.budget
    return points * len(st.seeds)


def _study_of_record(record: Record, parent_id: str):
    """The study definition the driver logged with the record (study.yaml), or None."""
    import tempfile

    import yaml

    from vaebench.study import Study

    import os

    old = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # no progress bar in status's output
    try:
        with tempfile.TemporaryDirectory() as tmp:
            p = record.client.download_artifacts(parent_id, "study.yaml", tmp)
            return Study.model_validate(yaml.safe_load(Path(p).read_text()))
    except Exception:  # an old or foreign record: status without the planned total
        return None
    finally:
        if old is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = old


@app.command()
def ui(tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help=TRACKING_HELP),
       port: int = typer.Option(5000, "--port"), host: str = typer.Option("127.0.0.1", "--host")) -> None:
    """The MLflow UI on the same store as the sweeps."""
    uri = resolve_tracking_uri(tracking_uri)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    if uri.startswith("sqlite:///"):
        cmd += ["--default-artifact-root", (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").resolve().as_uri()]
    raise typer.Exit(subprocess.call(cmd))


from vaebench.report.command import report  # noqa: E402  (commands defined beside their modules)
from vaebench.reproduce import reproduce  # noqa: E402

app.command("report")(report)
app.command("reproduce")(reproduce)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
