"""Disentanglement metrics in studies: validation (exit 2 on data without factors), recorded at the final
epoch by the training loop, and one tiny dSprites study end to end through the CLI into MLflow and the
report (the figure, the table columns and the traversals of the best and worst trial by MIG)."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import yaml

from vaebench.core.disentanglement import evaluate_trial
from vaebench.core.train import train
from vaebench.study.config import TrialConfig
from vaebench.study.spec import StudyError, load_study

NAMES = ["beta_vae", "factor_vae", "mig", "dci", "sap", "modularity"]
KEYS = [
    "beta_vae",
    "factor_vae",
    "mig",
    "dci_disentanglement",
    "dci_completeness",
    "dci_informativeness",
    "sap",
    "modularity",
]


def cli(*args, cwd, env=None):
    return subprocess.run(
        [sys.executable, "-m", "vaebench.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )


def test_metrics_on_digits_are_a_bad_input(tmp_path):
    study = tmp_path / "bad.yaml"
    study.write_text(
        "name: bad\ndata: {kind: digits}\nmetrics:\n  disentanglement: [mig, sap]\nspace: {objective.beta: [1, 2]}\n"
    )
    with pytest.raises(
        StudyError, match=r"bad.yaml \(line 4\): metrics.disentanglement: .*data.kind 'digits'.*dsprites"
    ):
        load_study(study)
    for cmd in (["validate", str(study)], ["sweep", str(study), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]):
        proc = cli(*cmd, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert "metrics.disentanglement" in proc.stderr and "dsprites" in proc.stderr
        assert "Traceback" not in proc.stderr
    assert not (tmp_path / "m.db").exists()  # nothing written
    # a space level that sets such data is refused too, naming the level
    study.write_text(
        "name: bad\ndata: {kind: dsprites}\nmetrics: {disentanglement: [mig]}\nspace: {data: [{kind: digits}]}\n"
    )
    with pytest.raises(StudyError, match="metrics.disentanglement"):
        load_study(study)


def tiny(**metrics):
    return TrialConfig.model_validate(
        {
            "data": {"kind": "dsprites", "n_samples": 600},
            "model": {"kind": "mlp", "latent_dim": 4, "hidden": [32]},
            "train": {"epochs": 2, "batch_size": 64, "device": "cpu"},
            "metrics": {"iw_samples": 2, **metrics},
        }
    )


def test_training_loop_records_every_metric_at_the_final_epoch():
    reports = list(train(tiny(disentanglement=NAMES)))
    first, last = reports[0].metrics, reports[-1].metrics
    assert not any(k.startswith("val/dis/") for k in first)  # final epoch only by default
    assert sorted(k for k in last if k.startswith("val/dis/")) == sorted(f"val/dis/{k}" for k in KEYS)
    assert all(0.0 <= last[f"val/dis/{k}"] <= 1.0 for k in KEYS)
    # the same model, the same seed: the same numbers
    again = evaluate_trial(reports[-1].model, tiny(disentanglement=NAMES))
    assert again == {k: last[f"val/dis/{k}"] for k in KEYS}
    # scoring draws from its own generator: training is unchanged by it
    plain = list(train(tiny()))[-1].metrics
    assert plain["train/loss"] == last["train/loss"] and plain["val/elbo"] == last["val/elbo"]


def test_every_n_epochs():
    reports = list(train(tiny(disentanglement=["mig"], disentanglement_every=1)))
    assert all("val/dis/mig" in r.metrics for r in reports)


TINY_STUDY = {
    "name": "dis_tiny",
    "description": "tiny dSprites study with disentanglement metrics",
    "data": {"kind": "dsprites", "n_samples": 500},
    "model": {"kind": "mlp", "latent_dim": 4, "hidden": [32]},
    "train": {"epochs": 1, "batch_size": 64, "device": "cpu"},
    "metrics": {"iw_samples": 2, "disentanglement": NAMES},
    "space": {"objective.kind": ["beta_vae", "beta_tcvae"], "objective.beta": [1.0, 4.0]},
    "seeds": [0],
    "search": {"kind": "grid"},
}


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    root = tmp_path_factory.mktemp("dis_study")
    study = root / "dis_tiny.yaml"
    study.write_text(yaml.safe_dump(TINY_STUDY, sort_keys=False))
    uri = f"sqlite:///{root}/mlflow.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "MLFLOW_"))}
    proc = cli("sweep", str(study), "--tracking-uri", uri, "--workers", "2", cwd=root, env=env)
    assert proc.returncode == 0, proc.stderr
    return root, study, uri


@pytest.mark.integration  # the CLI starts a local Ray
def test_study_records_every_metric_in_mlflow(swept):
    from mlflow import MlflowClient

    from vaebench.record.results import trials_frame

    _, _, uri = swept
    trials = trials_frame("dis_tiny", uri)
    assert len(trials) == 4 and (trials["state"] == "completed").all()
    for k in KEYS:
        assert trials[f"val/dis/{k}"].map(lambda v: math.isfinite(v) and 0 <= v <= 1).all(), k
    assert sorted(trials["objective.kind"]) == ["beta_tcvae", "beta_tcvae", "beta_vae", "beta_vae"]
    tc = trials[trials["objective.kind"] == "beta_tcvae"]
    assert tc[["train/mi", "train/tc", "train/dwkl"]].notna().all().all()
    client = MlflowClient(tracking_uri=uri)
    for run_id in trials["run_id"]:
        assert "traversals.png" in {a.path for a in client.list_artifacts(run_id)}
        assert [m.step for m in client.get_metric_history(run_id, "val/dis/mig")] == [1]


@pytest.mark.integration  # the CLI starts a local Ray
def test_report_shows_the_figure_columns_and_traversals(swept):
    root, study, uri = swept
    proc = cli("report", str(study), "--tracking-uri", uri, "--out", str(root / "report"), cwd=root)
    assert proc.returncode == 0, proc.stderr
    out = root / "report"
    for name in ("disentanglement", "traversals_best", "traversals_worst"):
        assert (out / f"{name}.png").stat().st_size > 10_000, name
    md = (out / "report.md").read_text()
    assert "Disentanglement against beta" in md and "the best trial by MIG" in md
    table = (out / "ablation.md").read_text()
    for header in ("BetaVAE ↑", "FactorVAE ↑", "MIG ↑", "DCI-D ↑", "DCI-C ↑", "DCI-I ↑", "SAP ↑", "modularity ↑"):
        assert header in table
    csv = (out / "ablation.csv").read_text()
    assert "val/dis/mig mean" in csv


# ----------------------------------------------------------------------------- reproduce disentanglement


def good_frame():
    import pandas as pd

    rows = []
    for kind in ("beta_vae", "beta_tcvae"):
        for beta in (1.0, 8.0):
            for seed in (0, 1):
                row = {
                    "state": "completed",
                    "seed": seed,
                    "objective.kind": kind,
                    "objective.beta": beta,
                    "train/tc": (30.0 if beta == 1 else 25.0) if kind == "beta_tcvae" else math.nan,
                }
                row.update({f"val/dis/{k}": 0.6 for k in KEYS})
                rows.append(row)
    return pd.DataFrame(rows)


def test_reproduction_checks_pass_on_a_good_record_and_fail_otherwise():
    from vaebench.reproduce import REPRODUCTIONS, disentanglement_checks, study_path

    assert load_study(study_path("disentanglement")).name == "disentanglement"
    assert REPRODUCTIONS["disentanglement"].checks is disentanglement_checks
    checks = disentanglement_checks(good_frame())
    assert all(c.passed for c in checks), [c.name for c in checks if not c.passed]
    assert sum(c.name.startswith("oracle") for c in checks) == 7

    def failed(frame):
        return [c.name for c in disentanglement_checks(frame) if not c.passed]

    bad = good_frame().drop(columns=["val/dis/sap"])
    assert failed(bad) == ["every val/dis metric recorded for every trial, in [0, 1]"]
    bad = good_frame()
    bad.loc[3, "val/dis/beta_vae"] = 0.3
    assert failed(bad) == ["trained models: BetaVAE score of every trial"]
    bad = good_frame()
    bad.loc[(bad["objective.kind"] == "beta_tcvae") & (bad["seed"] == 1) & (bad["objective.beta"] == 8), "train/tc"] = (
        31
    )
    assert failed(bad) == ["beta_tcvae seed=1: train/tc at beta 8 below beta 1 (nats)"]
    bad = good_frame()
    bad.loc[0, "state"] = "failed"
    assert "trials completed" in failed(bad)
