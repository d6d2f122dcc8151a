"""The ``vaebench`` command line (Typer).

Exit codes: 0 every trial ended (completed, diverged or pruned), 1 some trial failed or
the store failed, 2 bad input (nothing written), 130 interrupted. Every value a command
takes (the study file, ``--set``, URIs, the Ray address, the store's folder) is checked
before Ray starts or anything is written.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table
from rich.text import Text

from vaebench.console import err, fail, out, say
from vaebench.record.store import (
    STORAGE_HELP,
    TRACKING_HELP,
    StoreAddressError,
    check_readable,
    check_storage,
    check_writable,
    default_storage,
    ensure_folder,
    remove_if_empty,
    resolve_tracking_uri,
    short,
    store_missing,
)
from vaebench.reproduce import REPRODUCTIONS
from vaebench.study.spec import Study, StudyError, load_study, resolve_path
from vaebench.sweep.checks import CheckError, check_address, check_device, check_server

HELP = "Sweeps and ablations of VAEs: study YAML -> Ray -> MLflow -> reports."
app = typer.Typer(
    add_completion=False, no_args_is_help=True, help=HELP, rich_markup_mode=None
)  # plain help: flags without <bool>


def _version(value: bool) -> None:
    if value:
        from vaebench import __version__

        print(f"vaebench {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="print vaebench's version and exit"
    ),
) -> None:
    """Sweeps and ablations of VAEs: study YAML -> Ray -> MLflow -> reports."""


def _load(study_file: str, overrides: list[str] | None = None) -> tuple[Path, Study]:
    path = resolve_path(study_file)
    try:
        return path, load_study(path, overrides)
    except StudyError as e:
        fail(str(e))


def _tracking_uri(cli: str | None, study_path: Path | None) -> str:
    try:
        return resolve_tracking_uri(cli, study_path)
    except StoreAddressError as e:
        fail(str(e))


@app.command()
def sweep(
    study_file: str = typer.Argument(..., help="study YAML file, or NAME for studies/NAME.yaml"),
    max_trials: Optional[int] = typer.Option(None, "--max-trials", min=1, help="start at most N new trial runs"),
    workers: Optional[int] = typer.Option(
        None, "--workers", min=1, help="trials at once (default: what the cluster fits)"
    ),
    address: Optional[str] = typer.Option(
        None, "--address", help="Ray cluster: HOST:PORT, ray://HOST:PORT or auto (default: start a local Ray)"
    ),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help=TRACKING_HELP),
    storage: Optional[str] = typer.Option(None, "--storage", help=STORAGE_HELP),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="override a setting: dotted.path=value (repeatable)"),
    fresh: bool = typer.Option(False, "--fresh", help="start a new study record; the old one stays readable"),
    inline: bool = typer.Option(
        False,
        "--inline",
        help="run the trials one at a time in this process, without Ray "
        "(debugging a study: breakpoints and tracebacks work)",
    ),
    pack: Optional[str] = typer.Option(None, "--pack", help="packed trials: auto|off|N (overrides resources.pack)"),
    take_over: bool = typer.Option(
        False,
        "--take-over",
        help="take the record's lock on a tracking server from a driver that died less than "
        "2 minutes ago (names it and asks first; --yes answers)",
    ),
    yes: bool = typer.Option(False, "--yes", help="with --take-over: do not ask (needed when not interactive)"),
) -> None:
    """Run a study's trials on Ray, recording every epoch in MLflow; re-running resumes."""
    path, study = _load(study_file, set_)
    if pack is not None:
        _set_pack(study, pack)
    uri = _tracking_uri(tracking_uri, path)
    try:
        check_writable(uri)
        check_server(uri)
        if storage is not None:
            storage = check_storage(storage)
        elif study.search.kind != "grid":
            storage = default_storage(path, study.name)
        if study.search.kind != "grid":
            check_writable(storage, "Optuna storage")
        check_device(study, local=address is None, where=str(path))
        if address is not None:
            check_address(address)  # bounded: Ray's own connect retries for minutes
    except (StoreAddressError, CheckError) as e:
        fail(str(e))
    say(f"store: {uri}" + (f"; Optuna storage: {storage}" if study.search.kind != "grid" else ""))
    if take_over:
        _confirm_take_over(uri, study.name, yes)

    from vaebench.sweep.driver import SweepError, SweepOptions, run_sweep
    from vaebench.sweep.progress import Progress

    made = ensure_folder(storage) if study.search.kind != "grid" else None  # SQLite makes the file, not its folder
    opts = SweepOptions(
        tracking_uri=uri,
        storage=storage,
        address=address,
        workers=workers,
        max_trials=max_trials,
        fresh=fresh,
        inline=inline,
        take_over=take_over,
    )
    try:
        summary = run_sweep(study, path.read_text(encoding="utf-8"), opts, Progress(enabled=True, console=err))
    except SweepError as e:
        remove_if_empty(made)
        fail(str(e))
    for note in summary.notes:
        say(f"note: {note}")
    counts = ", ".join(f"{n} {s}" for s, n in sorted(summary.counts.items())) or "nothing to run"
    say(f"{study.name}: {counts}" + (f" ({summary.skipped} already done, not rerun)" if summary.skipped else ""))
    if summary.throughput:
        say(f"  {summary.throughput}")
    for name, line in summary.failed:
        say(f"  failed: {name}: {line}")
    if summary.store_error:
        fail(
            f"{summary.store_error}; the sweep stopped (runs in flight were ended as killed where the store "
            "still took writes); run the same command again to resume once the store works",
            1,
        )
    if summary.interrupted:
        again = "the same command without --fresh" if fresh else "the same command"
        say(f"interrupted: in-flight trials were ended as killed; run {again} to resume this record")
    raise typer.Exit(summary.exit_code)


def _confirm_take_over(uri: str, name: str, yes: bool) -> None:
    """--take-over: name the lock's holder and ask (``yes`` answers); exit 2 when refused."""
    from vaebench.record.writer import Record, StoreError, holder_text, sqlite_path

    if sqlite_path(uri) is not None:
        fail(
            "--take-over is for a tracking server's lock; a SQLite store's lock is freed by the kernel "
            "when its driver ends, whatever ends it (stop the driver that holds it)"
        )
    try:
        holder = Record(uri, name, create=False).holder()
    except StoreError as e:
        fail(str(e), 1)
    if holder is None:
        say("--take-over: the lock is free; nothing to take over")
        return
    question = f"study {name!r} in {uri} is locked by a driver ({holder_text(holder)}); take its lock over"
    if yes:
        say(f"{question}: yes (--yes)")
    elif sys.stdin.isatty():
        if not typer.confirm(f"{question}? Only if that driver is gone", default=False):
            fail("not taken over; nothing was written")
    else:
        fail(f"{question}? Not asked: the input is not a terminal; add --yes to confirm")


def _levels_text(levels: list, shown: int = 12) -> str:
    """A factor's levels for the validate table: the first ``shown`` and a count, never thousands."""
    text = ", ".join(str(v) if len(str(v)) <= 60 else short(v, 60) for v in levels[:shown])
    return text if len(levels) <= shown else f"{text}, ... ({len(levels):,} levels)"


def _set_pack(study, value: str) -> None:
    from vaebench.study.spec import PACK_ALLOWED

    try:
        study.resources.pack = value  # validated on assignment
    except ValueError:
        fail(f"--pack {value!r}: allowed: {PACK_ALLOWED}")


@app.command()
def validate(
    study_file: str = typer.Argument(..., help="study YAML file, or NAME"),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="override: dotted.path=value"),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help=TRACKING_HELP),
    pack: Optional[str] = typer.Option(None, "--pack", help="auto|off|N (overrides resources.pack)"),
) -> None:
    """Check a study file, its data files and device; print its factors, the number of trials it implies
    and how they would be packed."""
    path, study = _load(study_file, set_)
    if pack is not None:
        _set_pack(study, pack)
    uri = _tracking_uri(tracking_uri, path)
    try:
        check_device(study, local=True, where=str(path))
    except CheckError as e:
        fail(str(e))
    table = Table(title=f"{study.name}: {path}")
    table.add_column("factor")
    table.add_column("levels / range")
    for k, v in study.space.items():
        table.add_row(k, str(v) if not isinstance(v, list) else _levels_text(v))
    out.print(table)
    seeds, n = len(study.seeds), study.n_trials()  # what `sweep` runs, counted without building a trial
    if study.search.kind == "grid":
        out.print(f"grid: {study.n_points():,} points x {seeds} seeds = {n:,} trials, {study.train.epochs} epochs each")
    else:
        out.print(
            f"{study.search.kind} search: budget {study.search.budget} points x {seeds} seeds "
            f"= {n:,} trials; objectives {study.search.objectives}; pruner {study.search.pruner}"
        )
    from vaebench.core.pack import packing_summary

    out.print(packing_summary(study), highlight=False)
    say(f"store: {uri}" + (" (not created yet)" if store_missing(uri) else ""))


@app.command()
def status(
    study: str = typer.Argument(..., metavar="STUDY", help="study YAML file or study NAME"),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", metavar="URI", help=TRACKING_HELP),
) -> None:
    """Trials of the current study record by state, whether it is complete, and the best point."""
    from vaebench.record.vocab import FINAL_STATES, POINT
    from vaebench.record.writer import Record
    from vaebench.sweep.progress import best_point

    name, st, path = study, None, resolve_path(study)
    if path.is_file():
        st = _load(study)[1]
        name = st.name
    uri = _tracking_uri(tracking_uri, path if path.is_file() else None)
    try:
        check_readable(uri)
        check_server(uri)
    except (StoreAddressError, CheckError) as e:
        fail(str(e))
    say(f"store: {uri}")
    record = Record(uri, name)
    parent = record.parent_run()
    if parent is None:
        fail(f"no study record named {name!r} in {record.uri}")
    # the record's definition, not the file: `--set seeds=[0,1]` may have extended the record beyond it
    defn = _definition_of_record(record, parent)
    st = st or _study_of_record(record, parent.run_id)
    runs = record.trial_runs(parent.run_id)
    counts = Counter(r.state or "unknown" for r in runs)
    ended = sum(counts[s] for s in FINAL_STATES)
    total = planned_trials(defn) if defn is not None else st.n_trials() if st is not None else None
    if total is None:
        word = parent.status.lower()
    elif ended >= total:
        word = f"complete ({ended} of {total})"
    else:
        word = f"partial ({ended} of {total})" + _sweep_state(record, parent.status)
    out.print(f"[bold]{name}[/]  {word}  record {parent.run_id}", highlight=False, soft_wrap=True)
    if defn is not None and path.is_file() and st is not None and st.n_trials() != total:
        out.print(
            f"the record's definition ({total} trials) differs from {path.name} as it is now ({st.n_trials()}): "
            "the counts are the record's",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
    out.print("  ".join(f"{s} {counts[s]}" for s in sorted(counts)) or "no trials yet", highlight=False)
    done = [r for r in runs if r.state == "completed"]
    flagged = [r for r in done if "conv/still_moving" in r.metrics]
    if flagged:
        moving = sum(r.metrics["conv/still_moving"] == 1 for r in flagged)
        out.print(
            f"still moving at the last epoch: {moving} of {len(flagged)} completed trials (conv/still_moving)",
            highlight=False,
        )
    metric, direction = next(iter(st.search.objectives.items())) if st is not None else ("val/elbo", "max")
    best = best_point(
        ((r.point_key, "completed", r.metrics) for r in done),
        metric,
        direction,
    )
    if best is not None:
        r = next(r for r in done if r.point_key == best.point)
        out.print(
            f"{best}: {r.tags.get(POINT, r.run_name)}",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )


def _sweep_state(record, status: str) -> str:
    """', sweep running (holder)' while a driver holds the record's lock; ', interrupted' when the
    record was stopped or its driver died (the parent run left RUNNING, the lock free)."""
    from vaebench.record.writer import holder_text

    holder = record.holder()
    if holder is not None:
        return f", sweep running ({holder_text(holder)})"
    if status == "RUNNING":
        return ", interrupted (its driver ended without closing the record; run the sweep again to resume)"
    return ", interrupted" if status in ("KILLED", "FAILED") else ""


def planned_trials(defn: dict) -> int:
    """Trials a record's definition (``vaebench.record.definition.definition``) implies: points
    (the product of the level counts of a grid, the budget of a search) times seeds."""
    if defn["search"].get("kind", "grid") != "grid":
        points = int(defn["search"].get("budget") or 0)
    else:
        points = 1
        for v in defn["space"].values():
            points *= len(v["levels"]) if "levels" in v else 1
    return points * len(defn["seeds"])


def _definition_of_record(record, parent) -> dict | None:
    """The definition the record keeps (definition.json of its parent run), None for a record
    older than definitions or unreadable."""
    try:
        return record.definition(parent)
    except Exception:
        return None


def _study_of_record(record, parent_id: str) -> Study | None:
    """The study definition the driver logged with the record (study.yaml), or None."""
    import yaml

    try:
        return Study.model_validate(yaml.safe_load(record.study_yaml(parent_id)))
    except Exception:  # an old or foreign record: status without the planned total
        return None


@app.command()
def ui(
    study: Optional[str] = typer.Argument(
        None,
        help="a study YAML file or study NAME: open its record's trials (and find its project's store); "
        "default: the store under the current folder",
    ),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help=TRACKING_HELP),
    port: int = typer.Option(5000, "--port", min=1, max=65535, help="the port the UI listens on"),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="the interface the UI listens on (127.0.0.1: this machine only)"
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the MLflow command instead of running it"),
) -> None:
    """The MLflow UI on the same store as the sweeps, opened at a study's trials in the training view;
    a missing store is refused, never created. Ctrl-C or SIGTERM stops the server."""
    from vaebench.record.mlflow_view import runs_url

    path = resolve_path(study) if study else None
    name = None
    if path is not None and not path.is_file():
        if Path(study).suffix in (".yaml", ".yml") or "/" in study:
            fail(f"{path}: no such study file")
        name, path = study, None  # a study name in the store
    elif path is not None:
        name = _load(study)[1].name
    uri = _tracking_uri(tracking_uri, path)
    if uri.startswith(("http://", "https://")):
        fail(f"the store is the MLflow server {uri}: open it in a browser (`vaebench ui` serves a database store)")
    try:
        check_readable(uri)
    except StoreAddressError as e:
        fail(str(e))
    say(f"store: {uri}")
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    if uri.startswith("sqlite:///"):
        cmd += [
            "--default-artifact-root",
            (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").resolve().as_uri(),
        ]
    if dry_run:
        print(" ".join(cmd))  # plain: a command line is never wrapped
        return
    base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    if name is not None:
        from vaebench.record.writer import Record

        record = Record(uri, name)
        parent = record.parent_run()
        if parent is None:
            fail(f"no study record named {name!r} in {uri}")
        say(f"open {runs_url(base, record.experiment_id, parent.run_id)}")
    else:
        say(f"open {runs_url(base)}")
    raise typer.Exit(serve(cmd))


def serve(cmd: list[str]) -> int:
    """Run the server ``cmd`` until it ends, or until SIGINT or SIGTERM reach this process: then
    stop the server's whole process group (MLflow's server starts workers of its own) and wait
    for it, so that no server is left on the port. Returns its exit code (0 when stopped)."""
    import os
    import signal

    proc = subprocess.Popen(cmd, start_new_session=True)  # its own group: a signal reaches it only through here
    stopping: list[int] = []

    def stop(signum: int, frame: object) -> None:
        stopping.append(signum)
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    old = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            try:
                code = proc.wait(timeout=10 if stopping else None)
                break
            except subprocess.TimeoutExpired:  # it did not stop on SIGTERM
                os.killpg(proc.pid, signal.SIGKILL)
        try:  # workers the server left behind in its group
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    return 0 if stopping else code


@app.command()
def reproduce(
    name: str = typer.Argument(..., help=f"the reproduction to run: {', '.join(sorted(REPRODUCTIONS))}"),
    tracking_uri: Optional[str] = typer.Option(None, "--tracking-uri", help=TRACKING_HELP),
    address: Optional[str] = typer.Option(
        None, "--address", help="Ray cluster: HOST:PORT, ray://HOST:PORT or auto (default: start a local Ray)"
    ),
    workers: Optional[int] = typer.Option(
        None, "--workers", min=1, help="trials at once (default: what the cluster fits)"
    ),
    fresh: bool = typer.Option(False, "--fresh", help="rerun from scratch in a new study record instead of reusing it"),
) -> None:
    """Run a study whose outcome is known and check it: PASS or FAIL per check; exit 0 iff all pass."""
    from vaebench import reproduce as repro

    if name not in repro.REPRODUCTIONS:  # before importing Ray and MLflow: an unknown name answers at once
        fail(str(repro.UnknownReproduction(name)))
    study_file = repro.study_path(name)
    uri = _tracking_uri(tracking_uri, study_file)
    try:
        check_writable(uri)
        check_server(uri)
        if address is not None:
            check_address(address)
    except (StoreAddressError, CheckError) as e:
        fail(str(e))
    say(f"store: {uri}")

    from vaebench.record.results import ReportError
    from vaebench.sweep.driver import SweepError
    from vaebench.sweep.progress import Progress

    try:
        checks = repro.run_reproduction(
            name, uri, address, workers, rerun=fresh, progress=Progress(enabled=True, console=err)
        )
    except (StudyError, SweepError) as e:
        fail(str(e))
    except ReportError as e:
        fail(str(e), 1)
    except KeyboardInterrupt as e:
        fail(str(e) or "interrupted", 130)
    out.print(Text(repro.REPRODUCTIONS[name].shows, style="dim"))
    repro.print_checks(f"reproduce {name} ({study_file}; {uri})", checks, out)
    raise typer.Exit(0 if checks and all(c.passed for c in checks) else 1)


@app.command()
def docs() -> None:
    """How to read this documentation offline: serve the docs site from a checkout with MkDocs."""
    from vaebench.docs_gen import ROOT

    site = ROOT / "mkdocs.yml"
    where = f"in {ROOT}" if site.is_file() else "in a checkout of vaebench (the folder with mkdocs.yml)"
    print(
        f"The documentation is the Markdown under docs/, built into a site by MkDocs. {where}:\n"
        '  pip install -e ".[docs]"      # MkDocs and the Material theme (once)\n'
        "  mkdocs serve                  # http://127.0.0.1:8000, rebuilt on every edit\n"
        "  mkdocs build -d /tmp/site     # static HTML; open /tmp/site/index.html\n"
        "Both work offline: the site fetches no fonts, scripts or images from the network."
    )


from vaebench.report.command import report  # noqa: E402  (the report command lives beside the report code)

app.command("report")(report)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
