"""Flags every reader needs beside a number: MI at its estimator's ceiling (log of its batch
size) is marked in the tables and explained in the report, never marked best; each column
says its split and sample count (IW-NLL on the first N validation examples, the rest on all)."""

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from report_fixtures import grid_study, write_synthetic_study  # noqa: E402

from vaebench.record.results import trials_frame  # noqa: E402
from vaebench.report import tables as T  # noqa: E402
from vaebench.report.render import render_report  # noqa: E402


def test_saturated_mi_is_flagged_and_splits_are_named(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    d = grid_study("sat", epochs=2, seeds=(0, 1), objective__beta=[0.5, 4.0])
    d["metrics"] = {"iw_samples": 4, "iw_examples": 100, "mi_batch_size": 64}
    write_synthetic_study(uri, d, per_epoch_calls=False)
    trials = trials_frame("sat", uri)
    ceiling = math.log(64)
    rep = render_report(trials, tmp_path / "out", formats=["md", "html", "tex", "csv"])
    table = rep.table
    at = table.set_index("objective.beta")["val/mi mean"]
    assert at[0.5] >= ceiling - T.CEILING_MARGIN > at[4.0]  # the record: beta 0.5 saturates, 4 does not
    flags = table.set_index("objective.beta")["val/mi ceiling"]
    assert bool(flags[0.5]) and not bool(flags[4.0])
    assert not table["val/mi best"].any() or not table.loc[table["val/mi ceiling"], "val/mi best"].any()
    md = (tmp_path / "out" / "report.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| 0.5 |"))
    mi_cell = row.split("|")[3 + [m.key for m in T.METRICS].index("val/mi")]
    assert T.CEILING_MARK in mi_cell
    other = next(line for line in md.splitlines() if line.startswith("| 4 |"))
    assert T.CEILING_MARK not in other
    assert "MI at its ceiling in 1 of 2 rows" in md and f"log B = {ceiling:.2f} nats" in md
    assert "ELBO ↑ (val, 359)" in md and "IW-NLL ↓ (val first 100, K=4)" in md and "MI ↑ (val, 359, B=64)" in md
    html = (tmp_path / "out" / "index.html").read_text()
    assert "MI at its ceiling" in html and "IW-NLL ↓ (val first 100, K=4)" in html
    tex = (tmp_path / "out" / "ablation.tex").read_text()
    assert r"$^{\top}$" in tex and "IW-NLL val first 100, K=4" in tex


def test_no_flag_below_the_ceiling(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    write_synthetic_study(
        uri, grid_study("free", epochs=2, seeds=(0,), objective__beta=[2.0, 4.0]), per_epoch_calls=False
    )
    trials = trials_frame("free", uri)
    table = T.ablation_table(trials, ["objective.beta"])
    assert (table["val/mi mean"] < math.log(256) - T.CEILING_MARGIN).all()
    assert not table["val/mi ceiling"].any() and T.ceiling_text(table) is None
