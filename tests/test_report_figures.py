"""What each report figure plots, read from the data it drew (``figures.Plotted``): no
silent pooling, bands over seeds only and inside the metric's range, and the heatmap's
collapsed dims equal to the table's, trial by trial. Records are written by
``tests/report_fixtures.py`` (no training: the layout is under test, not the model)."""

import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")
sys.path.insert(0, str(Path(__file__).parent))
from report_fixtures import grid_study, write_synthetic_study  # noqa: E402

from vaebench.record.results import trials_frame  # noqa: E402
from vaebench.report import figures as F  # noqa: E402
from vaebench.report.render import make_figures  # noqa: E402
from vaebench.report.tables import ablation_table  # noqa: E402

DRAWN = ["rate_distortion", "active_units", "kl_per_dim", "collapse_map", "training_curves"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('figs') / 'mlflow.db'}"
    four = grid_study(
        "four",
        epochs=4,
        seeds=(0, 1),
        model__latent_dim=[4, 8],
        objective__beta=[0.5, 8.0],
        objective__anneal=["none", "linear"],
        objective__free_bits=[0.0, 0.5],
    )
    write_synthetic_study(uri, four, per_epoch_calls=False, states={1: "failed"})
    one = grid_study("one", epochs=3, seeds=(0,), objective__beta=[0.5, 4.0], objective__free_bits=[0.0, 0.5])
    write_synthetic_study(uri, one, per_epoch_calls=False)
    return uri


def figures(uri, name):
    trials = trials_frame(name, uri)
    figs = {f.key: f for f in make_figures(trials, trials.attrs["factors"])}
    assert all(figs[k].png is not None for k in DRAWN), {k: figs[k].note for k in DRAWN}
    return trials, figs


@pytest.mark.parametrize("name", ["four", "one"])
def test_no_group_mixes_levels_of_an_unnamed_factor(store, name):
    trials, figs = figures(store, name)
    by_id = trials.set_index("run_id")
    for key in DRAWN:
        p = figs[key].plotted
        assert set(F.varied(trials)) <= set(p.shown) | set(p.pooled), key  # every varied factor shown or named
        for f in p.pooled:
            assert F.name_of(trials, f) in p.title, (key, f, p.title)
        checked = 0
        for ids in p.data["run_ids"]:
            rows = by_id.loc[list(ids)]
            assert (rows["state"] == "completed").all()
            for f in p.shown:
                assert rows[f].map(F.hashable).nunique() == 1, (key, f)  # a shown factor: one level per mark
            checked += 1
        assert checked > 0


def test_one_seed_gives_no_band(store):
    _, figs = figures(store, "one")
    for key in ("active_units", "training_curves"):
        data = figs[key].plotted.data
        assert (data["n"] == 1).all() and data["lo"].isna().all() and data["hi"].isna().all(), key


def test_bands_are_over_seeds_and_never_below_zero(store):
    trials, figs = figures(store, "four")
    au = figs["active_units"].plotted.data
    banded = au.dropna(subset=["lo"])
    assert len(banded) and (banded["n"] == 2).all() and (banded["lo"] >= 0).all()
    assert ((banded["lo"] <= banded["mean"]) & (banded["mean"] <= banded["hi"])).all()
    cur = figs["training_curves"].plotted
    assert cur.pooled == ["objective.anneal"] and cur.data["lo"].isna().all()  # pooled: no band
    # with nothing pooled (curves by beta over a study of beta x latent only) the band is the seeds' min-max
    sub = trials[(trials["objective.anneal"] == "none") & (trials["objective.free_bits"] == 0)]
    from vaebench.record.results import histories_frame

    h = histories_frame("four", store, metrics=list(F.CURVE_METRICS), trials=sub[sub["state"] == "completed"])
    h.attrs["factors"] = ["model.latent_dim", "objective.beta"]
    fig = F.training_curves(h, "objective.beta", col="model.latent_dim")
    d = fig.vaebench.data
    assert fig.vaebench.pooled == [] and d["lo"].notna().any()
    for m in ("val/kl", "val/active_units"):
        assert (d.loc[d["metric"] == m, "lo"].dropna() >= 0).all()
    h_kl = h[h["metric"] == "val/kl"]
    for _, r in d[d["metric"] == "val/kl"].dropna(subset=["lo"]).iterrows():
        vals = h_kl[(h_kl["epoch"] == r["epoch"]) & h_kl["run_id"].isin(r["run_ids"])]["value"]
        assert len(vals) == 2 and r["lo"] == vals.min() and r["hi"] == vals.max()


def test_heatmap_collapsed_dims_are_the_tables(store):
    trials, figs = figures(store, "four")
    heat = figs["kl_per_dim"].plotted.data.set_index("run_id")
    done = trials[trials["state"] == "completed"].set_index("run_id")
    assert set(heat.index) == set(done.index)
    assert (heat["collapsed_cells"] == done.loc[heat.index, "val/collapsed_dims"]).all()  # trial by trial
    assert done["val/collapsed_dims"].gt(0).any() and done["val/collapsed_dims"].eq(0).any()
    # and the table's collapsed fraction of each row is the mean of its trials' heatmap cells / J
    table = ablation_table(trials, trials.attrs["factors"])
    for _, row in table.iterrows():
        match = np.ones(len(done), dtype=bool)
        for f in trials.attrs["factors"]:
            match &= done[f].map(F.hashable).to_numpy() == F.hashable(row[f])
        ids = done.index[match]
        if len(ids):
            frac = (heat.loc[ids, "collapsed_cells"] / done.loc[ids, "model.latent_dim"]).mean()
            assert row["val/collapsed_fraction mean"] == pytest.approx(frac)


def test_defaults_facet_by_the_factor_with_the_largest_effect(tmp_path):
    """Curves that would average a cyclical schedule's dips with a flat one draw the schedule as
    line styles; the collapse map, whose latent sizes collapse differently (a 4-dim model keeps
    its dims, a 16-dim one loses most), draws a panel per latent size instead of their mean."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    d = grid_study(
        "effects",
        epochs=6,
        seeds=(0, 1),
        objective__beta=[0.5, 4.0],
        objective__free_bits=[0.0, 0.5],
        objective__anneal=["none", {"kind": "cyclical", "cycles": 3, "ratio": 0.5}],
        model__latent_dim=[4, 16],
    )
    write_synthetic_study(uri, d, per_epoch_calls=False)
    trials = trials_frame("effects", uri)
    # beta as colour, latent as columns, then free bits and annealing compete for the line style
    figs = {f.key: f for f in make_figures(trials, ["objective.beta", "objective.free_bits"])}
    curves = figs["training_curves"]
    assert "objective.anneal" in curves.plotted.shown, curves.plotted.shown
    assert "line style" in curves.caption and "anneal" in curves.caption.split("line style")[1][:40]
    cmap = figs["collapse_map"]
    assert "model.latent_dim" in cmap.plotted.shown and "model.latent_dim" not in cmap.plotted.pooled
    assert "one panel per level of latent_dim" in cmap.caption
    sizes = set(cmap.plotted.data["latent_dim"])
    assert sizes == {"4", "16"}
    # the effect the choice rests on is real: the collapsed fraction differs between the sizes
    by_size = trials.groupby("model.latent_dim")["val/collapsed_fraction"].mean()
    assert F.effect(trials, "model.latent_dim", "val/collapsed_fraction") == pytest.approx(
        by_size.max() - by_size.min()
    )
    assert by_size.max() - by_size.min() > 0.2
