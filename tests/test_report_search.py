"""Reports of a search record (continuous factors sampled by the search, written in the test by
``tests/report_fixtures.py``): figures put a sampled factor on a numeric axis or in a few
ranges, never a panel or a line style per float; legends round to 3 significant digits; the
table has a row per point with its seeds and says what n counts; pruned Optuna trials are
drawn (marked) in the optimisation history."""

import math
import random
import re
import sys
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")
sys.path.insert(0, str(Path(__file__).parent))
from report_fixtures import write_synthetic_study  # noqa: E402

from vaebench.record.results import trials_frame  # noqa: E402
from vaebench.report import figures as F  # noqa: E402
from vaebench.report import tables as T  # noqa: E402
from vaebench.report.render import make_figures, render_report  # noqa: E402

N_POINTS, SEEDS = 14, (0, 1)
SEARCH = {
    "name": "srch",
    "description": "A TPE search over continuous beta, lr and latent size.",
    "data": {"kind": "digits"},
    "model": {"kind": "mlp", "latent_dim": 4, "hidden": [32]},
    "train": {"epochs": 4, "batch_size": 256},
    "metrics": {"iw_samples": 4},
    "space": {
        "objective.beta": {"low": 0.25, "high": 4.0, "log": True},
        "train.lr": {"low": 1.0e-4, "high": 1.0e-2, "log": True},
        "model.latent_dim": {"low": 2, "high": 16},
        "objective.anneal": ["none", "linear"],
    },
    "seeds": list(SEEDS),
    "search": {"kind": "tpe", "budget": N_POINTS, "objectives": {"val/elbo": "max"}, "pruner": "median"},
}


def sampled_points(n: int) -> list[dict]:
    rng = random.Random(7)
    return [
        {
            "objective.beta": math.exp(rng.uniform(math.log(0.25), math.log(4.0))),
            "train.lr": math.exp(rng.uniform(math.log(1e-4), math.log(1e-2))),
            "model.latent_dim": rng.randint(2, 16),
            "objective.anneal": rng.choice(["none", "linear"]),
        }
        for _ in range(n)
    ]


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('search') / 'mlflow.db'}"
    pruned = {2: "pruned", 3: "pruned"}  # both seeds of point 1
    write_synthetic_study(uri, SEARCH, points=sampled_points(N_POINTS), states=pruned, per_epoch_calls=False)
    return uri, trials_frame("srch", uri)


def legend_texts(fig) -> list[str]:
    out = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    return out + [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]


def significant_digits(label: str) -> int:
    """The most significant digits of any number in a label ('beta = 0.123' -> 3)."""
    nums = re.findall(r"\d+(?:\.\d+)?(?:e[-+]?\d+)?", label)
    return max((len(re.sub(r"e.*", "", n).replace(".", "").lstrip("0")) for n in nums), default=0)


def test_continuous_factors_are_sampled_not_categories(search):
    _, trials = search
    assert all(F.many_levels(trials[f]) for f in ("objective.beta", "train.lr"))
    assert not F.many_levels(trials["objective.anneal"])
    fig = F.active_units(trials, "objective.beta", "model.latent_dim", style="objective.anneal", col="train.lr")
    panels = [ax for ax in fig.axes if ax.get_xlabel()]
    assert 1 <= len(panels) <= 3  # lr in at most 3 ranges, not a panel per sampled lr
    assert all(ax.get_xscale() == "log" for ax in panels)  # beta spans 16x: a log axis
    labels = legend_texts(fig)
    latent = [x for x in labels if x.startswith("latent_dim")]
    assert 1 <= len(latent) <= 4  # latent size in at most 4 colour ranges
    assert all(significant_digits(x) <= 3 for x in labels), labels
    titles = [ax.get_title() for ax in panels]
    assert all(re.fullmatch(r"lr = [\d.e-]+–[\d.e-]+", t) for t in titles), titles
    p = fig.vaebench
    assert {"train.lr", "model.latent_dim"} <= set(p.pooled)  # a range pools its levels, and says so
    assert "lr" in p.title and "latent_dim" in p.title
    assert p.data["n"].max() == 1  # one mark per trial on the numeric beta axis


def test_every_default_figure_bins_or_axes(search):
    _, trials = search
    figs = {f.key: f for f in make_figures(trials, trials.attrs["factors"])}
    for key in ("rate_distortion", "active_units", "collapse_map", "training_curves", "kl_per_dim"):
        assert figs[key].png is not None, (key, figs[key].note)
    cm = figs["collapse_map"].plotted.data
    beta_name = F.name_of(trials, "objective.beta")
    assert cm[beta_name].nunique() <= 6  # bins of the sampled beta, not one column per float


def test_training_curves_columns_are_ranges(search):
    _, trials = search
    from vaebench.record.results import histories_frame

    h = histories_frame("srch", metrics=list(F.CURVE_METRICS), trials=trials[trials["state"] == "completed"])
    fig = F.training_curves(h, "objective.beta", col="train.lr", style="objective.anneal")
    columns = {ax.get_title() for ax in fig.axes if ax.get_title()}
    assert 1 <= len(columns) <= 3, columns
    labels = legend_texts(fig)
    assert all(significant_digits(x) <= 3 for x in labels), labels


def test_search_table_rows_are_points_with_their_seeds(search, tmp_path):
    _, trials = search
    rep = render_report(trials, tmp_path / "out", formats=["md", "csv"], objective_names=["val/elbo"])
    table = rep.table
    assert len(table) == N_POINTS and (table["trials"] == len(SEEDS)).all()
    done = table[table["completed"] == len(SEEDS)]
    assert (done["val/elbo n"] == len(SEEDS)).all()
    means = table["val/elbo mean"].dropna().tolist()
    assert means == sorted(means, reverse=True)  # best first
    # the full-precision level is in the csv; the markdown rounds it to 3 significant digits
    md = (tmp_path / "out" / "report.md").read_text()
    assert f"the {N_POINTS} points the tpe search sampled" in md and "2 per point" in md
    first = table.iloc[0]
    assert f"| {F.short_level(first['objective.beta'])} |" in (tmp_path / "out" / "ablation.md").read_text()
    assert "n: the row's completed seeds" in md
    assert "2 pruned" in T.to_markdown(table)  # the pruned point's row names its state
    # sampled factors have no levels to average within: no marginal block of 14 one-trial rows
    assert not (tmp_path / "out" / "marginal.csv").exists()
    assert "objective.beta`: 14 values from" in md


def test_optuna_history_shows_pruned_trials():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    st = optuna.create_study(direction="maximize")
    dist = {"x": optuna.distributions.FloatDistribution(0.0, 1.0)}
    for i in range(6):
        st.add_trial(optuna.trial.create_trial(params={"x": i / 10}, distributions=dist, value=-90.0 + i))
    for i, (step, v) in enumerate([(3, -120.0), (5, -110.0)]):
        st.add_trial(
            optuna.trial.create_trial(
                params={"x": 0.9 - i / 10},
                distributions=dist,
                state=optuna.trial.TrialState.PRUNED,
                intermediate_values={1: -150.0, step: v},
            )
        )
    fig = F.optuna_history(st, ["val/elbo"])
    data = fig.vaebench.data
    pruned = data[data["state"] == "pruned"]
    assert list(pruned["number"]) == [6, 7] and list(pruned["value"]) == [-120.0, -110.0]
    assert "2 pruned" in fig._suptitle.get_text()
    assert any("pruned" in t for t in legend_texts(fig))
