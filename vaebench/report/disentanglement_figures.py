"""The report's disentanglement part: the ground-truth-factor metrics (val/dis/NAME) against beta, their
ablation-table columns, and the latent traversals of the best and worst trial by MIG.

Kept apart from figures/tables/render (one hook line each there): everything is drawn only when the
record holds val/dis metrics, so other studies' reports do not change.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from vaebench.report.figures import (
    WIDTH,
    FigureSkipped,
    completed,
    figure_style,
    levels,
    log_scale,
    name_of,
)
from vaebench.report.tables import DIS_LABELS as LABELS
from vaebench.report.tables import dis_present as present
from vaebench.report.tables import dis_table_metrics as table_metrics  # noqa: F401  (the report's columns)

BETA, KIND = "objective.beta", "objective.kind"


def _kinds(data: pd.DataFrame) -> pd.Series:
    """Each trial's objective kind; records made before beta-TCVAE have no such param: beta_vae."""
    return data[KIND].fillna("beta_vae").astype(str) if KIND in data else pd.Series("beta_vae", index=data.index)


def metrics_against_beta(trials: pd.DataFrame, beta: str = BETA) -> Figure:
    """One panel per val/dis metric against beta: one line per objective kind, the mean over the completed
    trials of each (beta, kind) (its seeds, pooled over any other factor) with a band of +-1 std, and
    every trial as a dot."""
    keys = present(trials)
    if not keys:
        raise FigureSkipped("no trial has a val/dis metric")
    if beta not in trials:
        raise FigureSkipped("the study does not vary objective.beta")
    data = completed(trials).copy()
    if data.empty:
        raise FigureSkipped("no completed trial")
    data["beta"] = data[beta].astype(float)
    data["objective"] = _kinds(data)
    kinds = list(dict.fromkeys(sorted(data["objective"])))
    ticks = levels(data["beta"])
    cols = min(3, len(keys))
    rows = -(-len(keys) // cols)
    with figure_style():
        fig = Figure(figsize=(WIDTH, 2.2 * rows + 0.6), layout="constrained")
        axes = fig.subplots(rows, cols, squeeze=False).ravel()
        palette = dict(zip(kinds, sns.color_palette("colorblind", len(kinds))))
        for i, (ax, key) in enumerate(zip(axes, keys)):
            d = data.dropna(subset=[key])
            sns.lineplot(
                data=d,
                x="beta",
                y=key,
                hue="objective",
                hue_order=kinds,
                palette=palette,
                ax=ax,
                marker="o",
                errorbar="sd",
                err_kws={"alpha": 0.2},
                legend=ax is axes[0],
            )
            for kind in kinds:
                k = d[d["objective"] == kind]
                ax.scatter(k["beta"], k[key], s=8, color=palette[kind], alpha=0.5, linewidths=0)
            if log_scale(ticks):
                ax.set_xscale("log")
            if len(ticks) <= 12:
                ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
                ax.minorticks_off()
            top = float(d[key].max()) if len(d) else 1.0  # small scores (MIG, SAP) stay readable; 0 stays in view
            ax.set_ylim(-0.03 * min(1.0, 1.25 * top + 0.02), min(1.03, 1.25 * top + 0.02))
            ax.set_title(LABELS[key], fontsize=9)
            ax.set_xlabel(name_of(trials, beta) if i + cols >= len(keys) else "")  # no panel below it
            ax.set_ylabel("")
        for ax in axes[len(keys) :]:
            ax.set_visible(False)
        if axes[0].get_legend() is not None:
            sns.move_legend(axes[0], "lower left", title=None, fontsize=7, frameon=False)
        fig.suptitle("Disentanglement against beta (mean ± 1 std over seeds; dots: trials)", fontsize=10)
    return fig


def best_and_worst(trials: pd.DataFrame, key: str = "val/dis/mig") -> tuple[pd.Series, pd.Series]:
    """The completed trials with the highest and the lowest ``key`` (ties: the first run name)."""
    data = completed(trials).dropna(subset=[key]) if key in trials else pd.DataFrame()
    if data.empty:
        raise FigureSkipped(f"no completed trial has {key}")
    data = data.sort_values([key, "run_name"], ascending=[False, True])
    return data.iloc[0], data.iloc[-1]


def traversal_figure(trials: pd.DataFrame, which: str, key: str = "val/dis/mig") -> Figure:
    """The traversals.png artifact of the best (``which='best'``) or worst trial by ``key``."""
    from matplotlib.image import imread
    from mlflow.tracking import MlflowClient

    best, worst = best_and_worst(trials, key)
    row = best if which == "best" else worst
    uri = trials.attrs.get("tracking_uri")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = MlflowClient(tracking_uri=uri).download_artifacts(row["run_id"], "traversals.png", tmp)
        except Exception as e:  # noqa: BLE001  (MlflowException or OSError, by store: a note, never a crash)
            raise FigureSkipped(f"run {row['run_name']} has no traversals.png artifact ({type(e).__name__})") from None
        with open(path, "rb") as f:
            img = imread(io.BytesIO(f.read()), format="png")
    h, w = img.shape[:2]
    fig = Figure(figsize=(WIDTH, WIDTH * h / w + 0.4), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(img, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(
        f"{which} by {LABELS.get(key, key)}: {row['run_name']} ({LABELS.get(key, key)} {row[key]:.3f})", fontsize=9
    )
    return fig


def figure_specs(trials: pd.DataFrame) -> list[tuple[str, str, str, Callable[[], Any]]]:
    """(key, title, caption, make) of each disentanglement figure; none for a record without val/dis metrics."""
    if not present(trials):
        return []
    factors = list(trials.attrs.get("factors", []))
    beta = next((f for f in factors if f == BETA), BETA)
    n_kinds = _kinds(trials).nunique()
    return [
        (
            "disentanglement",
            "Disentanglement against beta",
            "Ground-truth-factor metrics of the posterior mean at the final epoch (disentanglement_lib's definitions: "
            "BetaVAE score, Higgins et al. 2017; FactorVAE score, Kim & Mnih 2018; MIG, Chen et al. 2018; DCI, "
            "Eastwood & Williams 2018; SAP, Kumar et al. 2018; modularity, Ridgeway & Mozer 2018), each against beta"
            + (", one line per objective kind" if n_kinds > 1 else "")
            + ": mean over seeds with a ±1 std band, each trial a dot. Higher is more disentangled; compare the spread "
            "over seeds with the change over beta (Locatello et al. 2019).",
            lambda: metrics_against_beta(trials, beta),
        ),
        (
            "traversals_best",
            "Latent traversals: the best trial by MIG",
            (
                "Each row one latent dim (sorted by KL; grey: collapsed), decoded from −3 to +3 with the other dims at a "
                "validation example's posterior mean."
            ),
            lambda: traversal_figure(trials, "best"),
        ),
        (
            "traversals_worst",
            "Latent traversals: the worst trial by MIG",
            "As above, for the completed trial with the lowest MIG.",
            lambda: traversal_figure(trials, "worst"),
        ),
    ]


def summary(trials: pd.DataFrame) -> dict[str, float]:
    """Mean of each val/dis metric over the completed trials (for scripts and the reproduction)."""
    data = completed(trials)
    return {k: float(np.nanmean(data[k].astype(float))) for k in present(trials)}
