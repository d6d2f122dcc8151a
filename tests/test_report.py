"""vaebench report and vaebench.record.results, on real records.

A session fixture runs two real tiny sweeps (``vaebench.sweep.driver.run_sweep``, local Ray) into a
temporary SQLite store: ``tiny`` (beta x free bits x 2 seeds, all complete) and ``broken``
(a conv model that fails on 8x8 digits, SGD at lr 1e4 that diverges). The tables are
checked against numbers recomputed from ``mlflow.search_runs``. Studies the sweep cannot
make cheaply (a search study with its Optuna storage, a study without a beta factor) are
written through ``vaebench.record.vocab.Record`` by ``tests/report_fixtures.py``.
"""

from __future__ import annotations

import io
import math
import re
import struct
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import typer
import yaml
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
from report_fixtures import grid_study, write_synthetic_study  # noqa: E402

from vaebench.record.results import (  # noqa: E402
    ReportError,
    histories_frame,
    level_label,
    parse_param,
    short_names,
    trials_frame,
)
from vaebench.report.command import report  # noqa: E402

TINY = {
    "name": "tiny",
    "description": "A tiny real study: beta x free bits on digits.",
    "data": {"kind": "digits"},
    "model": {"kind": "mlp", "latent_dim": 4, "hidden": [32]},
    "train": {"epochs": 2, "batch_size": 256},
    "metrics": {"iw_samples": 4},
    "space": {"objective.beta": [0.5, 2.0], "objective.free_bits": [0.0, 0.5]},
    "seeds": [0, 1],
}
GAUSSIAN_MLP = {"kind": "mlp", "latent_dim": 4, "hidden": [32], "likelihood": "gaussian"}
BROKEN = {
    "name": "broken",
    "description": "Trials that fail (conv on 8x8) and diverge (SGD at lr 1e4).",
    "data": {"kind": "digits"},
    "model": GAUSSIAN_MLP,
    "metrics": {"iw_samples": 4},
    "train": {"epochs": 2, "batch_size": 256, "optimizer": "sgd"},
    "space": {"model": [GAUSSIAN_MLP, {"kind": "conv", "latent_dim": 4}], "train.lr": [1.0e-3, 1.0e4]},
    "seeds": [0],
}
FIGURES = ["rate_distortion", "active_units", "kl_per_dim", "collapse_map", "training_curves"]
METRICS = ["val/elbo", "val/recon", "val/kl", "val/active_units", "val/mi", "val/iw_nll", "val/collapsed_fraction"]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def store(tmp_path_factory, ray_cluster):
    """A SQLite store with the real records of TINY and BROKEN (swept through the CLI on the
    session's Ray cluster); their study files."""
    root = tmp_path_factory.mktemp("report")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    files = {}
    for d in (TINY, BROKEN):
        files[d["name"]] = root / f"{d['name']}.yaml"
        files[d["name"]].write_text(yaml.safe_dump(d, sort_keys=False))
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "vaebench.cli",
                "sweep",
                str(files[d["name"]]),
                "--address",
                ray_cluster.address,
                "--tracking-uri",
                uri,
            ],
            env=ray_cluster.env,
            cwd=root,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode in (0, 1), proc.stderr  # 1: BROKEN has failed trials
    return {"uri": uri, "root": root, "files": files}


def cli(*args: str) -> click.testing.Result:  # noqa: F821
    app = typer.Typer(add_completion=False)
    app.command("report")(report)
    app.command("noop")(lambda: None)  # two commands: `report` is a subcommand, as in vaebench
    return CliRunner().invoke(app, ["report", *args])


@pytest.fixture(scope="session")
def tiny_report(store):
    out = store["root"] / "reports" / "tiny"
    res = cli(str(store["files"]["tiny"]), "--tracking-uri", store["uri"], "--out", str(out))
    assert res.exit_code == 0, res.output
    return out


def search_runs(uri: str, name: str) -> pd.DataFrame:
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=[name], filter_string="tags.`vaebench.role` = 'trial'")
    return runs


# --------------------------------------------------------------------------- the tables


def test_table_numbers_equal_search_runs(store, tiny_report):
    runs = search_runs(store["uri"], "tiny")
    assert len(runs) == 8 and set(runs["tags.vaebench.trial_state"]) == {"completed"}
    runs["beta"] = runs["params.objective.beta"].astype(float)
    runs["fb"] = runs["params.objective.free_bits"].astype(float)
    csv = pd.read_csv(tiny_report / "ablation.csv")
    md_rows = [line for line in (tiny_report / "ablation.md").read_text().splitlines()[2:] if line.startswith("|")]
    assert len(csv) == len(md_rows) == 4
    checked = 0
    for i, row in csv.iterrows():
        group = runs[(runs["beta"] == row["objective.beta"]) & (runs["fb"] == row["objective.free_bits"])]
        assert len(group) == 2
        md_cells = [c.strip().strip("*") for c in md_rows[i].strip("|").split("|")]
        for j, m in enumerate(METRICS):
            vals = group[f"metrics.{m}"].astype(float)
            mean, std = vals.mean(), vals.std(ddof=1)
            assert row[f"{m} mean"] == pytest.approx(mean, rel=1e-12, abs=1e-12)
            assert row[f"{m} std"] == pytest.approx(std, rel=1e-9, abs=1e-12)
            assert row[f"{m} n"] == 2
            # the Markdown cell: "mean ± std (n)" at the table's precision
            got = re.fullmatch(r"(-?[\d.]+) ± ([\d.]+) \((\d+)\)", md_cells[3 + j])
            assert got, md_cells[3 + j]
            decimals = len(got.group(1).split(".")[1])
            assert float(got.group(1)) == pytest.approx(mean, abs=0.5 * 10**-decimals + 1e-9)
            assert float(got.group(2)) == pytest.approx(std, abs=0.5 * 10**-decimals + 1e-9)
            assert int(got.group(3)) == 2
            checked += 1
    assert checked == 4 * len(METRICS)
    # best marks: the highest ELBO mean, only where it beats the runner-up beyond the noise (paired by seed:
    # both rows hold seeds 0 and 1; scipy's interval, computed here from the runs); KL never marked
    from scipy import stats

    md = (tiny_report / "ablation.md").read_text()
    order = csv["val/elbo mean"].sort_values(ascending=False).index

    def per_seed(i):
        r = csv.loc[i]
        g = runs[(runs["beta"] == r["objective.beta"]) & (runs["fb"] == r["objective.free_bits"])]
        return g.sort_values("params.seed")["metrics.val/elbo"].astype(float).to_numpy()

    a, b = per_seed(order[0]), per_seed(order[1])
    d = a - b
    if d.std(ddof=1) > 0:
        ci = stats.ttest_rel(a, b).confidence_interval(0.95)
        separated = ci.low > 0 or ci.high < 0
    else:
        separated = d.mean() != 0
    assert csv["val/elbo best"].tolist() == [i == order[0] and separated for i in csv.index]
    assert "val/kl best" not in csv
    assert (f"**{csv.loc[order[0], 'val/elbo mean']:.2f}" in md) == separated


def test_latex_table_is_booktabs_and_matches(store, tiny_report):
    tex = (tiny_report / "ablation.tex").read_text()
    for token in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{tabular}", r"\label{tab:tiny-ablation}"):
        assert token in tex
    assert "free\\_bits" in tex and "\\pm" in tex
    runs = search_runs(store["uri"], "tiny")
    elbo = runs.groupby(["params.objective.beta", "params.objective.free_bits"])["metrics.val/elbo"].mean()
    for v in elbo:
        assert f"{v:.2f}" in tex


def test_baseline_deltas(store):
    out = store["root"] / "reports" / "tiny-baseline"
    res = cli(
        "tiny",
        "--tracking-uri",
        store["uri"],
        "--out",
        str(out),
        "--group-by",
        "beta,free_bits",
        "--baseline",
        "free_bits=0",
        "--format",
        "csv,tex",
        "--no-log",
    )
    assert res.exit_code == 0, res.output
    csv = pd.read_csv(out / "ablation.csv")
    assert list(csv["baseline"]) == [True, False, True, False]
    for _beta, rows in csv.groupby("objective.beta"):
        base = rows[rows["baseline"]].iloc[0]
        for _, r in rows.iterrows():
            assert r["val/elbo delta"] == pytest.approx(r["val/elbo mean"] - base["val/elbo mean"])
    assert r"\Delta" in (out / "ablation.tex").read_text() and "(baseline)" in (out / "ablation.tex").read_text()
    assert not (out / "index.html").exists() and not list(out.glob("*.png"))  # figures only for md, html


# --------------------------------------------------------------------------- figures and html


def png_size(blob: bytes) -> tuple[int, int]:
    assert blob[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert blob[12:16] == b"IHDR"
    return struct.unpack(">II", blob[16:24])


def test_every_figure_is_a_sensible_png(tiny_report):
    for key in FIGURES:
        blob = (tiny_report / f"{key}.png").read_bytes()
        w, h = png_size(blob)
        assert 600 <= w <= 3000 and 200 <= h <= 3000, (key, w, h)
        assert 10_000 < len(blob) < 3_000_000, (key, len(blob))
        # a real image: decodes, and is not one flat colour
        from PIL import Image

        img = Image.open(io.BytesIO(blob)).convert("L")
        lo, hi = img.getextrema()
        assert hi - lo > 100, key
    md = (tiny_report / "report.md").read_text()
    for key in FIGURES:
        assert f"]({key}.png)" in md


def test_index_html_is_self_contained(tiny_report):
    page = (tiny_report / "index.html").read_text()
    refs = re.findall(r"""(?:src|href|srcset|action|data)\s*=\s*['"]([^'"]*)['"]""", page, flags=re.I)
    assert refs and all(r.startswith("data:image/png;base64,") or r.startswith("#") for r in refs), [
        r[:40] for r in refs if not r.startswith(("data:", "#"))
    ]
    for bad in ("<script", "<link", "@import", "url(", "<iframe", "<object", "<embed"):
        assert bad not in page.lower()
    assert page.count("data:image/png;base64,") == len(FIGURES)
    assert TINY["description"] in page
    assert re.search(r"<td>completed</td><td class='num'>8</td>", page)


def test_report_logged_to_parent_run(store, tiny_report):
    from vaebench.record.writer import Record

    rec = Record(store["uri"], "tiny")
    names = {Path(a.path).name for a in rec.client.list_artifacts(rec.parent_run().run_id, "report")}
    assert {"index.html", "report.md", "ablation.tex", "ablation.csv", "rate_distortion.png"} <= names


# --------------------------------------------------------------------------- failed and diverged


def test_failed_and_diverged_trials_render_and_count(store):
    out = store["root"] / "reports" / "broken"
    res = cli(str(store["files"]["broken"]), "--tracking-uri", store["uri"], "--out", str(out))
    assert res.exit_code == 0, res.output
    trials = trials_frame("broken", store["uri"])
    assert trials.attrs["state_counts"] == {"completed": 1, "diverged": 1, "failed": 2}
    page = (out / "index.html").read_text()
    md = (out / "report.md").read_text()
    for state, n in (("completed", 1), ("diverged", 1), ("failed", 2)):
        assert f"<td>{state}</td><td class='num'>{n}</td>" in page
        assert f"| {state} | {n} |" in md
    csv = pd.read_csv(out / "ablation.csv")
    assert set(csv["model"]) == {"mlp", "conv"}  # mapping levels shown by their kind
    assert csv["trials"].sum() == 4 and csv["completed"].sum() == 1
    assert "1 diverged" in set(csv["excluded"].fillna("")) and "1 failed" in set(csv["excluded"].fillna(""))
    assert (csv.loc[csv["completed"] == 0, "val/elbo n"] == 0).all()
    assert "(1 diverged)" in md and "(1 failed)" in md
    for key in ("rate_distortion", "kl_per_dim", "training_curves"):
        png_size((out / f"{key}.png").read_bytes())
    assert "does not vary objective.beta" in md  # the skipped figure says why


# --------------------------------------------------------------------------- the Python API


def test_trials_frame_types_and_final_metrics(store):
    t = trials_frame("tiny", store["uri"])
    runs = search_runs(store["uri"], "tiny").set_index("run_id")
    assert len(t) == 8 and t["run_id"].is_unique
    assert t["objective.beta"].dtype == float and t["seed"].dtype == "int64"
    assert t["model.latent_dim"].dtype == "int64" and t["data.binarize"].dtype == bool
    assert t["model.hidden"].map(lambda v: v == [32]).all()
    assert t["train.grad_clip"].isna().all()
    assert set(t["state"]) == {"completed"} and (t["epochs"] == 2).all()
    for _, r in t.iterrows():
        for m in METRICS + ["val/kl_dim/03", "train/loss"]:
            assert r[m] == runs.loc[r["run_id"], f"metrics.{m}"]
    assert t.attrs["factors"] == ["objective.beta", "objective.free_bits"] and t.attrs["search"] == "grid"
    assert t.attrs["description"] == TINY["description"] and t.attrs["seeds"] == [0, 1]


def test_histories_frame_long_form(store):
    from mlflow import MlflowClient

    t = trials_frame("tiny", store["uri"])
    h = histories_frame("tiny", store["uri"], metrics=["val/elbo", "train/loss"], trials=t)
    assert list(h.columns[:4]) == ["run_id", "epoch", "metric", "value"]
    assert {"state", "seed", "objective.beta", "objective.free_bits"} <= set(h.columns)
    assert len(h) == 8 * 2 * 2 and set(h["epoch"]) == {1, 2}
    rid = t["run_id"].iloc[0]
    ref = {m.step: m.value for m in MlflowClient(store["uri"]).get_metric_history(rid, "val/elbo")}
    got = h[(h["run_id"] == rid) & (h["metric"] == "val/elbo")].set_index("epoch")["value"].to_dict()
    assert got == ref
    every = histories_frame("tiny", store["uri"], trials=t)
    assert "val/kl_dim/00" in set(every["metric"])


def test_client_path_reads_the_same(store, monkeypatch):
    """A tracking server is read through MlflowClient instead of SQL: same frames."""
    import vaebench.record.results as results

    t_sql = trials_frame("broken", store["uri"])
    h_sql = histories_frame("broken", store["uri"], metrics=["val/elbo", "train/loss"], trials=t_sql)

    def no_sql(uri):
        raise ValueError("as for a tracking server")

    monkeypatch.setattr(results.SqlHistories, "open", no_sql)
    t_api = trials_frame("broken", store["uri"])
    h_api = histories_frame("broken", store["uri"], metrics=["val/elbo", "train/loss"], trials=t_api)
    pd.testing.assert_frame_equal(t_sql, t_api)
    pd.testing.assert_frame_equal(h_sql, h_api)


def test_parse_and_labels():
    assert parse_param("True") is True and parse_param("None") is None and parse_param("3") == 3
    assert parse_param("1e-05") == 1e-05 and parse_param("[32, 32]") == [32, 32] and parse_param("adam") == "adam"
    assert math.isnan(parse_param("nan"))
    assert short_names(["objective.beta", "model.kind", "data.kind"]) == {
        "objective.beta": "beta",
        "model.kind": "model.kind",
        "data.kind": "data.kind",
    }
    assert level_label({"kind": "cyclical", "cycles": 4, "ratio": 0.5}) == "cyclical(cycles=4, ratio=0.5)"
    assert level_label({"kind": "cyclical", "cycles": 4}, kind_unique=True) == "cyclical"


def test_mapping_levels_are_labelled_by_what_tells_them_apart():
    """A factor whose levels are mappings (model.args, objective) is labelled without the settings
    every level shares (said once, in the report's Factors section), so that labels fit a figure."""
    from vaebench.record.results import common_settings, mapping_labels

    base = {"cell": "gru", "embed": 32, "hidden": 64}
    args = [
        {**base, "decoder": "factorised"},
        {**base, "decoder": "rnn"},
        {**base, "decoder": "rnn", "word_dropout": 0.5},
    ]
    assert common_settings(args) == base
    assert list(mapping_labels(args).values()) == [
        "(decoder=factorised)",
        "(decoder=rnn)",
        "(decoder=rnn, word_dropout=0.5)",
    ]
    # a level that only lacks a setting the others add keeps the shared ones: never an empty label
    objective = [{"beta": 1.0}, {"beta": 1.0, "free_bits": 0.25}]
    assert list(mapping_labels(objective).values()) == ["(beta=1.0)", "(free_bits=0.25)"]
    # kinds stay; one level or levels that are not all mappings: nothing is left out
    anneal = [{"kind": "linear", "start": 0.3}, {"kind": "cyclical", "start": 0.3}]
    assert list(mapping_labels(anneal).values()) == ["linear", "cyclical"]
    assert common_settings([args[0]]) == {} and common_settings([args[0], "none"]) == {}
    assert list(mapping_labels([args[0]]).values()) == ["(cell=gru, decoder=factorised, embed=32, hidden=64)"]


def test_long_labels_wrap_after_commas_and_equals_signs():
    from vaebench.report.figures import wrap_label

    for text in ["(decoder=rnn, word_dropout=0.5)", "objective = (anneal=linear(warmup_steps=3500))", "0.25"]:
        wrapped = wrap_label(text, 22)
        assert wrapped.replace("\n", " ").replace("( ", "(") == text  # only line breaks added
        assert all(len(line) <= 22 for line in wrapped.split("\n"))
    assert wrap_label("(decoder=rnn, word_dropout=0.5)", 22) == "(decoder=rnn,\nword_dropout=0.5)"


# --------------------------------------------------------------------------- bad input: exit 2


def test_unknown_study_name(store):
    res = cli("no_such_study", "--tracking-uri", store["uri"], "--out", str(store["root"] / "x"))
    assert res.exit_code == 2
    assert "no_such_study" in res.output and "tiny" in res.output  # names what exists
    assert not (store["root"] / "x").exists()


def test_unknown_grouping_factor(store):
    res = cli("tiny", "--tracking-uri", store["uri"], "--out", str(store["root"] / "y"), "--group-by", "latent_dim")
    assert res.exit_code == 2
    assert "latent_dim" in res.output and "objective.beta" in res.output
    assert not (store["root"] / "y").exists()


@pytest.mark.parametrize(
    "args, words",
    [
        (["--baseline", "beta=7"], ["7", "0.5"]),
        (["--baseline", "beta"], ["dotted.path=value"]),
        (["--format", "pdf"], ["pdf"]),
    ],
)
def test_other_bad_options(store, args, words):
    res = cli("tiny", "--tracking-uri", store["uri"], "--out", str(store["root"] / "z"), *args)
    assert res.exit_code == 2, res.output
    for w in words:
        assert w in res.output


def test_empty_study(store, tmp_path):
    from vaebench.record.writer import Record

    uri = store["uri"]
    Record(uri, "empty").start_study("nothing ran", "name: empty\n", {"vaebench.factors": '["objective.beta"]'})
    res = cli("empty", "--tracking-uri", uri, "--out", str(tmp_path / "out"))
    assert res.exit_code == 2 and "no trial runs" in res.output
    with pytest.raises(ReportError, match="no trial runs"):
        trials_frame("empty", uri)


def test_missing_store_is_not_created(tmp_path):
    res = cli("tiny", "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}")
    assert res.exit_code == 2 and "no tracking store" in res.output
    assert not (tmp_path / "none.db").exists()


# --------------------------------------------------------------------------- records the sweep is slow to make


def test_search_study_with_optuna_figures(store, tmp_path):
    """An nsga2 record and its Optuna storage: importances, history and the Pareto front."""
    import optuna

    uri = store["uri"]
    d = grid_study(
        "search", epochs=3, seeds=(0,), objective__beta=[0.25, 0.5, 1.0, 2.0, 4.0], objective__free_bits=[0.0, 0.5]
    )
    d["search"] = {"kind": "nsga2", "budget": 10, "objectives": {"val/recon": "min", "val/kl": "min"}}
    rec = write_synthetic_study(uri, d, per_epoch_calls=False)
    trials = trials_frame("search", uri)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    st = optuna.create_study(
        storage=storage, study_name=trials.attrs["optuna_study"], directions=["minimize", "minimize"]
    )
    for _, r in trials.iterrows():
        st.add_trial(
            optuna.trial.create_trial(
                params={"objective.beta": r["objective.beta"], "objective.free_bits": r["objective.free_bits"]},
                distributions={
                    "objective.beta": optuna.distributions.CategoricalDistribution([0.25, 0.5, 1.0, 2.0, 4.0]),
                    "objective.free_bits": optuna.distributions.CategoricalDistribution([0.0, 0.5]),
                },
                values=[r["val/recon"], r["val/kl"]],
            )
        )
    out = tmp_path / "out"
    res = cli("search", "--tracking-uri", uri, "--out", str(out), "--storage", storage, "--no-log")
    assert res.exit_code == 0, res.output
    for key in FIGURES + ["optuna_importances", "optuna_history"]:
        png_size((out / f"{key}.png").read_bytes())
    md = (out / "report.md").read_text()
    assert "Pareto front" in md and "Not drawn" not in md
    # the objectives' names come from the study.yaml logged to the parent run
    assert rec.parent_run() is not None
    # the Optuna storage is read, never written
    assert optuna.load_study(study_name=trials.attrs["optuna_study"], storage=storage).metric_names is None


def test_list_levels_group_rows(store, tmp_path):
    """A factor with list levels (model.hidden) groups the table's rows by its levels."""
    uri = store["uri"]
    write_synthetic_study(
        uri,
        grid_study("lists", epochs=2, seeds=(0, 1), model__latent_dim=[2, 4], model__hidden=[[16], [32, 32]]),
        per_epoch_calls=False,
    )
    t = trials_frame("lists", uri)
    assert set(t["model.hidden"]) == {(16,), (32, 32)}
    out = tmp_path / "out"
    res = cli(
        "lists",
        "--tracking-uri",
        uri,
        "--out",
        str(out),
        "--format",
        "csv",
        "--no-log",
        "--baseline",
        "model.hidden=[16]",
    )
    assert res.exit_code == 0, res.output
    csv = pd.read_csv(out / "ablation.csv")
    assert list(csv["model.hidden"]) == ["[16]", "[32, 32]", "[16]", "[32, 32]"]
    assert list(csv["baseline"]) == [True, False, True, False] and (csv["completed"] == 2).all()
