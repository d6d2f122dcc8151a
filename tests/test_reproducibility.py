"""A fresh run of a small study against its committed ablation table (tests/data/): every cell
within the seed spread everywhere, and digit for digit where the machine and library versions
are the committed table's (the reproducibility statement every report carries)."""

import json
import math
from pathlib import Path

import pandas as pd

from vaebench.record.environment import environment
from vaebench.record.results import trials_frame
from vaebench.report.render import BIT_FOR_BIT, render_report
from vaebench.report.tables import METRICS
from vaebench.study.spec import load_study
from vaebench.sweep.driver import SweepOptions, run_sweep

DATA = Path(__file__).parent / "data"


def test_fresh_run_matches_the_committed_table(tmp_path):
    path = DATA / "repro_small.yaml"
    study = load_study(path)
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    summary = run_sweep(study, path.read_text(), SweepOptions(tracking_uri=uri, inline=True))
    assert summary.exit_code == 0 and summary.counts["completed"] == 6
    trials = trials_frame("repro_small", uri)
    assert trials.attrs["environments"] == [environment()]  # the sweep recorded its machine
    rep = render_report(trials, tmp_path / "out", formats=["md", "csv"])
    fresh = pd.read_csv(tmp_path / "out" / "ablation.csv")
    ref = pd.read_csv(DATA / "repro_small_ablation.csv")
    assert list(fresh["objective.beta"]) == list(ref["objective.beta"])
    assert list(fresh["completed"]) == list(ref["completed"]) == [3, 3]
    same_machine = json.loads((DATA / "repro_small_environment.json").read_text()) == environment()
    for m in METRICS:
        for f, r in zip(fresh.to_dict("records"), ref.to_dict("records")):
            a, b, spread = f[f"{m.key} mean"], r[f"{m.key} mean"], r[f"{m.key} std"]
            if same_machine:  # bit for bit (the csv holds 17 significant digits)
                assert a == b or (math.isnan(a) and math.isnan(b)), (m.key, a, b)
            else:  # another CPU or other versions: within the seeds' spread
                assert abs(a - b) <= max(spread, 1e-9 * abs(b)), (m.key, a, b, spread)
    md = (rep.out / "report.md").read_text()
    assert BIT_FOR_BIT in md and "Trials trained on: " + environment()["cpu"] in md
    env = json.loads((rep.out / "environment.json").read_text())
    assert env["trained_on"] == [environment()] and env["rendered_on"] == environment()
