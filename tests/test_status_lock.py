"""`vaebench status` asks the record's lock whether a sweep is running (issue 19): a driver that
was killed leaves its parent run RUNNING, and only the lock knows that nobody sweeps it."""

import os
import sys
from pathlib import Path

from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
from report_fixtures import grid_study, write_synthetic_study  # noqa: E402

from vaebench.cli import app  # noqa: E402
from vaebench.record.writer import Record  # noqa: E402


def _status(uri: str) -> str:
    result = CliRunner().invoke(app, ["status", "part", "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


def test_status_reads_the_lock_not_the_parent_status(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    rec = write_synthetic_study(uri, grid_study("part", epochs=2), states={0: "killed", 1: "failed"})
    parent = rec.parent_run()
    rec.reopen_study(parent.run_id)  # as a sweep leaves it: RUNNING until it ends

    driver = Record(uri, "part")
    driver.lock()  # a live driver (flock conflicts between open files, within one process too)
    out = _status(uri)
    assert "partial (10 of 12), sweep running" in out and f"pid {os.getpid()}" in out

    driver._lock_file.close()  # killed: the kernel drops the flock, the holder's line stays in the file
    assert Path(driver._lock_file.name).read_text()  # (a clean unlock would have emptied it)
    assert Record(uri, "part").holder() is None
    out = _status(uri)
    assert "partial (10 of 12), interrupted" in out and "sweep running" not in out
    assert rec.parent_run().status == "RUNNING"  # status only reads: the next sweep settles the record

    again = Record(uri, "part")
    note = again.lock()  # the next driver takes the lock at once and names the dead one
    assert note is not None and f"pid {os.getpid()}" in note
    again.unlock()
