"""`vaebench status` on records written through vaebench.record.vocab.Record (tests/report_fixtures.py):
partial or complete with the planned count, still-moving trials counted, the best point's mean."""

import sys
from pathlib import Path

from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
from report_fixtures import grid_study, write_synthetic_study  # noqa: E402

from vaebench.cli import app  # noqa: E402
from vaebench.record.results import trials_frame  # noqa: E402


def test_status_partial_complete_moving_and_best(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    write_synthetic_study(uri, grid_study("part", epochs=3), states={0: "failed", 5: "killed"})
    write_synthetic_study(uri, grid_study("full", epochs=3))
    run = CliRunner().invoke
    part = run(app, ["status", "part", "--tracking-uri", uri])  # no study file: the record's study.yaml says N
    assert part.exit_code == 0, part.output
    assert "partial (10 of 12)" in part.output and "failed 1" in part.output and "killed 1" in part.output
    full = run(app, ["status", "full", "--tracking-uri", uri])
    assert "complete (12 of 12)" in full.output
    t = trials_frame("full", uri)
    moving = int((t["conv/still_moving"] == 1).sum())
    assert f"still moving at the last epoch: {moving} of 12 completed trials" in full.output
    best = t.groupby("point_key")["val/elbo"].mean().max()
    assert f"best val/elbo {best:.4g} (mean of 3 seeds)" in full.output


def test_status_counts_the_extended_definition_not_the_file(tmp_path):
    """A 4-trial record extended with `--set seeds=[0,1]`: the record's definition (8 trials)
    is the plan, whatever the study file on disk (4) says."""
    import yaml

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    small = grid_study("quick", epochs=2, seeds=(0,))
    rec = write_synthetic_study(uri, small, per_epoch_calls=False)
    parent = rec.parent_run()
    write_synthetic_study(uri, {**small, "seeds": [0, 1]}, per_epoch_calls=False, parent=parent)
    assert len(trials_frame("quick", uri)) == 8
    study_file = tmp_path / "quick.yaml"
    study_file.write_text(yaml.safe_dump(small, sort_keys=False))  # the file still says seeds [0]
    for target in (str(study_file), "quick"):
        res = CliRunner().invoke(app, ["status", target, "--tracking-uri", uri])
        assert res.exit_code == 0, res.output
        assert "complete (8 of 8)" in res.output, res.output
    res = CliRunner().invoke(app, ["status", str(study_file), "--tracking-uri", uri])
    assert "differs from quick.yaml as it is now (4)" in res.output
