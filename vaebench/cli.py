"""The ``vaebench`` command line (Typer). Exit codes (DESIGN.md): 0 every trial ended
(completed, diverged or pruned), 1 some trial failed, 2 bad input (nothing written),
130 interrupted."""

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

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.split("\n")[0] if __doc__ else None)
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
    inline: bool = typer.Option(False, "--inline", help="run the trials one at a time in this process, without Ray "
                                                        "(debugging a study: breakpoints and tracebacks work)"),
    pack: Optional[str] = typer.Option(None, "--pack", help="packed trials: auto|off|N (overrides resources.pack)"),
) -> None:
    """Run a study's trials on Ray, recording every epoch in MLflow; re-running resumes."""
    from vaebench.progress import Progress
    from vaebench.sweep import SweepError, SweepOptions, run_sweep

    path, study = _load(study_file, set_)
    if pack is not None:
        _set_pack(study, pack)
    opts = SweepOptions(resolve_tracking_uri(tracking_uri), storage, address, workers, max_trials, fresh, inline)
    try:
        summary = run_sweep(study, path.read_text(), opts, Progress(enabled=True, console=err))
    except SweepError as e:
        _fail(str(e))
    for note in summary.notes:
        err.print(f"note: {note}", highlight=False, markup=False)
    counts = ", ".join(f"{n} {s}" for s, n in sorted(summary.counts.items())) or "nothing to run"
    err.print(f"{study.name}: {counts}" + (f" ({summary.skipped} already done, not rerun)" if summary.skipped else ""),
              highlight=False)
    for name, line in summary.failed:
        err.print(f"  failed: {name}: {line}", highlight=False, markup=False)
    if summary.store_error:
        _fail(f"{summary.store_error}; the sweep stopped (runs in flight were ended as killed where the store "
              "still took writes); run the same command again to resume once the store works", 1)
    if summary.interrupted:
        again = "the same command without --fresh" if fresh else "the same command"
        err.print(f"interrupted: in-flight trials were ended as killed; run {again} to resume this record", highlight=False)
    raise typer.Exit(summary.exit_code)


def _set_pack(study, value: str) -> None:
    from vaebench.study import PACK_ALLOWED

    try:
        study.resources.pack = value  # validated on assignment
    except ValueError:
        _fail(f"--pack {value!r}: allowed: {PACK_ALLOWED}")


@app.command()
def validate(study_file: str = typer.Argument(..., help="study YAML file, or NAME"),
             set_: Optional[list[str]] = typer.Option(None, "--set", help="override: dotted.path=value"),
             pack: Optional[str] = typer.Option(None, "--pack", help="auto|off|N (overrides resources.pack)")) -> None:
    """Check a study file; print its factors, the number of trials it implies and how they are packed."""
    path, study = _load(study_file, set_)
    if pack is not None:
        _set_pack(study, pack)
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
    from vaebench.pack import packing_summary

    out.print(packing_summary(study), highlight=False)


@app.command()
def status(study: str = typer.Argument(..., help="study YAML file or study NAME"),
           tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help=TRACKING_HELP)) -> None:
    """Trials of the current study record by state, and the best so far."""
    name = study
    path = resolve_path(study)
    if path.is_file():
        name = _load(study)[1].name
    uri = resolve_tracking_uri(tracking_uri)
    if store_missing(uri):
        _fail(f"no tracking store at {uri} (the file does not exist); give --tracking-uri or set MLFLOW_TRACKING_URI")
    record = Record(uri, name)
    parent = record.parent_run()
    if parent is None:
        _fail(f"no study record named {name!r} in {record.uri}")
    runs = record.trial_runs(parent.info.run_id)
    counts = Counter(r.data.tags.get(STATE, "unknown") for r in runs)
    out.print(f"[bold]{name}[/]  record {parent.info.run_id}  status {parent.info.status}  ({record.uri})")
    out.print("  ".join(f"{s} {counts[s]}" for s in sorted(counts)) or "no trials yet")
    done = [r for r in runs if r.data.tags.get(STATE) == "completed" and "val/elbo" in r.data.metrics]
    if done:
        best = max(done, key=lambda r: r.data.metrics["val/elbo"])
        out.print(f"best val/elbo {best.data.metrics['val/elbo']:.4f}: {best.info.run_name}")


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
