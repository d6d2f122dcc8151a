"""The report's figures: one pure function per figure, DataFrame in, matplotlib Figure out.

Each function takes a ``trials_frame`` (or a ``histories_frame``) and the column names to
use; it draws on a fresh ``matplotlib.figure.Figure`` (no pyplot, no global state, any
backend) at paper size, with labelled axes in nats (REFERENCE.md). When the data cannot
make the figure (a factor missing, no completed trial), it raises ``FigureSkipped`` with
the reason, which the report prints in the figure's place.

Aggregates use completed trials only: a diverged, pruned or failed trial's last values
are not comparable with a finished one's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from vaebench.results import level_label, short_names

WIDTH = 6.5  # inches: a paper's text width
MAX_HEATMAP_ROWS = 40
CURVE_METRICS = {"val/elbo": "ELBO (nats)", "val/kl": "KL (nats)", "val/active_units": "active units"}


class FigureSkipped(Exception):
    """This figure cannot be drawn from this study; the message says why."""


def _style():
    """seaborn's look for one figure, without touching global state."""
    return sns.axes_style("whitegrid")


def completed(trials: pd.DataFrame) -> pd.DataFrame:
    return trials[trials["state"] == "completed"]


def name_of(trials: pd.DataFrame, column: str) -> str:
    """A factor's short name (beta for objective.beta), unambiguous among the study's factors."""
    factors = list(trials.attrs.get("factors", [])) or [column]
    return short_names(factors + ([column] if column not in factors else [])).get(column, column)


def levels(series: pd.Series) -> list[Any]:
    """A factor's levels in display order: numbers ascending, others in order of appearance
    (a grid's file order)."""
    vals = list({hashable(v): v for v in _unique(series) if not _missing(v)}.values())
    if vals and all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in vals):
        return sorted(vals)
    return vals


def _unique(series: pd.Series) -> list[Any]:
    """Distinct values in order of appearance (lists and mappings too)."""
    try:
        return list(pd.unique(series))
    except TypeError:  # unhashable values
        return list({repr(hashable(v)): v for v in series.tolist()}.values())


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def fmt_level(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(level_label(list(v) if isinstance(v, tuple) else v))


def _categorical(trials: pd.DataFrame, column: str) -> tuple[pd.Series, list[str]]:
    """The column as display strings, with the levels in display order."""
    order = levels(trials[column])
    labels = {hashable(v): fmt_level(v) for v in order}
    col = trials[column]
    try:
        codes, uniques = pd.factorize(col, use_na_sentinel=True)
        shown = np.array([labels.get(hashable(v)) for v in uniques] + [None], dtype=object)
        out = pd.Series(shown[codes], index=col.index, dtype=object)
    except TypeError:  # unhashable values
        out = col.map(lambda v: labels.get(hashable(v)))
    return out, list(dict.fromkeys(labels.values()))


def hashable(v: Any) -> Any:
    """A level as a dict key: lists as tuples, mappings as sorted item tuples, NaN as None."""
    if isinstance(v, list):
        return tuple(hashable(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, hashable(x)) for k, x in v.items()))
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def point_keys(trials: pd.DataFrame, factors: Sequence[str]) -> tuple[pd.Series, list[tuple]]:
    """Each trial's levels of ``factors`` as a tuple, and the distinct tuples in display
    order (the first factor slowest, each factor's levels in ``levels`` order)."""
    keys = pd.Series(list(zip(*(trials[f].map(hashable) for f in factors))) if factors and len(trials)
                     else [()] * len(trials), index=trials.index, dtype=object)
    orders = [{hashable(v): i for i, v in enumerate(levels(trials[f]))} for f in factors]
    distinct = sorted(dict.fromkeys(keys), key=lambda k: tuple(o.get(v, len(o)) for o, v in zip(orders, k)))
    return keys, distinct


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _log_scale(values: Sequence[float]) -> bool:
    v = [x for x in values if x > 0]
    return len(v) == len(values) and len(v) > 2 and max(v) / min(v) >= 8


# --------------------------------------------------------------------------- rate-distortion


def pareto_mask(rate: np.ndarray, distortion: np.ndarray) -> np.ndarray:
    """Points not dominated in (rate, distortion), both minimised."""
    order = np.lexsort((distortion, rate))
    mask = np.zeros(len(rate), dtype=bool)
    best = math.inf
    for i in order:
        if distortion[i] < best:
            mask[i] = True
            best = distortion[i]
    return mask


def _nice_levels(lo: float, hi: float, n: int = 6) -> np.ndarray:
    step = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(step)) if step > 0 else 1.0
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= step), default=step)
    return np.arange(math.ceil(lo / step) * step, hi + 1e-9, step)


def rate_distortion(trials: pd.DataFrame, hue: str | None = None, style: str | None = None,
                    pareto: bool = False) -> Figure:
    """KL (rate R) against reconstruction (distortion D) for every completed trial, with
    lines of equal -ELBO = D + R (Alemi et al. 2018); ``hue`` and ``style`` are factor
    columns (e.g. objective.beta, objective.anneal); ``pareto`` marks the trials no other
    trial beats on both R and D."""
    data = completed(trials).dropna(subset=["val/kl", "val/recon"])
    if data.empty:
        raise FigureSkipped("no completed trial has val/kl and val/recon")
    data = data.copy()
    kw: dict[str, Any] = {}
    continuous = None
    if hue:
        vals = levels(data[hue])
        hue_name = name_of(trials, hue)
        if len(vals) <= 10 or not all(isinstance(v, (int, float)) for v in vals):
            data[hue_name], order = _categorical(data, hue)
            kw.update(hue=hue_name, hue_order=order, palette=sns.color_palette("viridis", len(order)))
        else:  # a sampled range: a colour bar, not legend entries
            data[hue_name] = data[hue].astype(float)
            continuous = LogNorm(min(vals), max(vals)) if _log_scale(vals) else Normalize(min(vals), max(vals))
            kw.update(hue=hue_name, palette="viridis", hue_norm=continuous)
    if style:
        style_name = name_of(trials, style)
        data[style_name], order = _categorical(data, style)
        kw.update(style=style_name, style_order=order)
    with _style():
        fig = Figure(figsize=(WIDTH, 4.2), layout="constrained")
        ax = fig.add_subplot()
        sns.scatterplot(data=data, x="val/kl", y="val/recon", ax=ax, s=36, alpha=0.85,
                        edgecolor="white", linewidth=0.4, **kw)
        x0, x1 = ax.get_xlim()
        y0, y1 = ax.get_ylim()
        for c in _nice_levels(x0 + y0, x1 + y1):
            xs = np.array([max(x0, c - y1), min(x1, c - y0)])
            if xs[1] <= xs[0]:
                continue
            ax.plot(xs, c - xs, color="0.55", lw=0.7, ls="--", zorder=0)
            ax.annotate(f"{c:g}", (xs[1], c - xs[1]), fontsize=7, color="0.4",
                        xytext=(2, 2), textcoords="offset points")
        ax.set_xlim(x0, x1), ax.set_ylim(y0, y1)
        handles, labels = ax.get_legend_handles_labels()
        old = ax.get_legend()
        title = old.get_title().get_text() if old is not None else ""
        if continuous is not None:  # drop the hue's sampled legend entries; the colour bar says it
            hue_name = name_of(trials, hue)
            if style and hue_name in labels and name_of(trials, style) in labels:
                a, b = labels.index(hue_name), labels.index(name_of(trials, style))
                handles, labels = handles[:a] + handles[b:], labels[:a] + labels[b:]
            elif not style:
                handles, labels, title = [], [], ""
            from matplotlib.cm import ScalarMappable
            fig.colorbar(ScalarMappable(continuous, sns.color_palette("viridis", as_cmap=True)), ax=ax,
                         label=hue_name, pad=0.01)
        handles.append(Line2D([], [], color="0.55", lw=0.7, ls="--"))
        labels.append("−ELBO = D + R")
        if pareto:
            r, d = data["val/kl"].to_numpy(), data["val/recon"].to_numpy()
            m = pareto_mask(r, d)
            idx = np.argsort(r[m])
            ax.step(r[m][idx], d[m][idx], where="post", color="crimson", lw=1.2, zorder=3)
            ax.scatter(r[m], d[m], s=70, facecolors="none", edgecolors="crimson", lw=1.2, zorder=4)
            handles.append(Line2D([], [], color="crimson", marker="o", mfc="none", lw=1.2))
            labels.append(f"Pareto front ({int(m.sum())})")
        ax.legend(handles, labels, title=title or None, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
        ax.set_xlabel("rate R = KL(q(z|x) ‖ p(z)) (nats)")
        ax.set_ylabel("distortion D = −E[log p(x|z)] (nats)")
        ax.set_title(f"Rate–distortion plane ({_count(len(data), 'completed trial')})")
    return fig


# --------------------------------------------------------------------------- active units


def active_units(trials: pd.DataFrame, beta: str, lines: str | None = None) -> Figure:
    """Active units (Burda et al. 2015) against beta, one line per level of ``lines``
    (the latent size), mean over the trials of each point with a band of +-1 std."""
    data = completed(trials).dropna(subset=["val/active_units"]).copy()
    if data.empty:
        raise FigureSkipped("no completed trial has val/active_units")
    data["beta"] = data[beta].astype(float)
    kw: dict[str, Any] = {}
    if lines:
        lines_name = name_of(trials, lines)
        data[lines_name], order = _categorical(data, lines)
        kw.update(hue=lines_name, hue_order=order, palette=sns.color_palette("viridis", len(order)))
    with _style():
        fig = Figure(figsize=(WIDTH, 3.6), layout="constrained")
        ax = fig.add_subplot()
        ticks = levels(data["beta"])
        if len(ticks) <= 12:  # a grid of beta: mean line, band over seeds
            sns.lineplot(data=data, x="beta", y="val/active_units", ax=ax, marker="o", errorbar="sd",
                         err_kws={"alpha": 0.2}, **kw)
        else:  # sampled beta (a search): one point per trial
            sns.scatterplot(data=data, x="beta", y="val/active_units", ax=ax, s=22, alpha=0.8, **kw)
        if _log_scale(ticks):
            ax.set_xscale("log")
        if len(ticks) <= 12:
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
            ax.minorticks_off()
        top = float(data["model.latent_dim"].max()) if "model.latent_dim" in data else \
            float(data["val/active_units"].max())
        ax.set_ylim(-0.03 * max(top, 1), max(top, 1) * 1.05)  # a line at 0 stays visible
        ax.yaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel(f"{name_of(trials, beta)} (KL weight)")
        ax.set_ylabel("active units (Var$_x$ E[z|x] > threshold)")
        ax.set_title("Active units against beta (mean ± 1 std over seeds)")
        if ax.get_legend() is not None:
            sns.move_legend(ax, "upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    return fig


# --------------------------------------------------------------------------- KL per dim


def config_label(key: tuple, names: Sequence[str] | None = None) -> str:
    """'0.5, 0' (or 'beta=0.5, free_bits=0' with ``names``) for a point's levels."""
    return ", ".join(f"{n}={fmt_level(v)}" if n else fmt_level(v) for n, v in zip(names or [""] * len(key), key))


def kl_per_dim(trials: pd.DataFrame, factors: Sequence[str], epsilon: float = 0.01,
               max_rows: int = MAX_HEATMAP_ROWS) -> Figure:
    """Mean KL of each latent dim (val/kl_dim/NN), one row per configuration (a point of
    the ``factors``), dims sorted by KL within each trial and averaged rank by rank over
    its seeds; dims below ``epsilon`` nats (collapsed) are grey. With more configurations
    than ``max_rows``, the ones with the best mean val/elbo are shown."""
    dims = sorted(c for c in trials.columns if c.startswith("val/kl_dim/"))
    data = completed(trials).dropna(subset=dims[:1]) if dims else trials.iloc[0:0]
    if data.empty:
        raise FigureSkipped("no completed trial has per-dim KL (val/kl_dim/NN)")
    keys, order = point_keys(data, factors)
    labels = {k: config_label(k) if factors else "all trials" for k in order}
    sorted_kl = -np.sort(-data[dims].to_numpy(dtype=float), axis=1)  # NaN (absent dims) sort last
    ranked = pd.DataFrame(sorted_kl, index=data.index, columns=range(1, len(dims) + 1))
    config = keys.map(lambda k: labels[k])  # (a dict would be read as a mapping of tuples)
    mat = ranked.groupby(config, sort=False).mean().reindex([labels[k] for k in order])
    n_seeds = config.value_counts()
    note = ""
    if len(mat) > max_rows:
        best = data["val/elbo"].groupby(config).mean().nlargest(max_rows).index
        mat = mat.loc[[c for c in mat.index if c in set(best)]]
        note = f" — the {max_rows} configurations with the best ELBO"
    mat = mat.loc[:, mat.notna().any()]
    mat.index = [f"{c}  (n={n_seeds[c]})" for c in mat.index]
    vmax = max(float(np.nanmax(mat.to_numpy())), epsilon * 10)
    cmap = sns.color_palette("rocket_r", as_cmap=True).with_extremes(under="0.85", bad="white")
    rows, cols = mat.shape
    with _style():
        fig = Figure(figsize=(WIDTH, min(1.6 + 0.24 * rows, 14)), layout="constrained")
        ax = fig.add_subplot()
        sns.heatmap(mat, ax=ax, cmap=cmap, norm=LogNorm(vmin=epsilon, vmax=vmax),
                    linewidths=0.3 if rows * cols <= 600 else 0, linecolor="white",
                    annot=rows * cols <= 160, fmt=".2g", annot_kws={"fontsize": 6},
                    yticklabels=rows <= MAX_HEATMAP_ROWS,
                    cbar_kws={"label": "mean KL of the dim (nats)", "extend": "min", "shrink": 0.8})
        ax.grid(False)
        ax.set_xlabel(f"latent dim, sorted by KL (grey: < {epsilon:g} nats, collapsed)")
        ax.set_ylabel(", ".join(name_of(trials, f) for f in factors) + "  (n: seeds)" if factors else "")
        ax.set_title(f"KL per latent dim{note}")
        ax.tick_params(axis="y", labelsize=7 if rows <= 30 else 5)
    return fig


# --------------------------------------------------------------------------- collapse map


def _binned(series: pd.Series, bins: int = 6) -> pd.Series:
    """A factor with many numeric levels (a search range) as bins, so a map has cells."""
    vals = series.astype(float)
    if _log_scale(sorted(vals.unique())):
        edges = np.geomspace(vals.min(), vals.max(), bins + 1)
    else:
        edges = np.linspace(vals.min(), vals.max(), bins + 1)
    cut = pd.cut(vals, edges, include_lowest=True)
    return cut.map(lambda iv: f"{iv.left:.3g}–{iv.right:.3g}").astype(object)


def collapse_map(trials: pd.DataFrame, x: str, y: str | None = None) -> Figure:
    """Mean fraction of collapsed latent dims (Lucas et al. 2019) over factor ``x`` (columns)
    and ``y`` (rows), averaged over the seeds and every other factor."""
    data = completed(trials).dropna(subset=["val/collapsed_fraction"]).copy()
    if data.empty:
        raise FigureSkipped("no completed trial has val/collapsed_fraction")
    axes = {}  # every level of the record, so that a level with no completed trial shows as blank
    for f in [x] + ([y] if y else []):
        name = name_of(trials, f)
        if len(levels(trials[f])) > 10 and pd.api.types.is_numeric_dtype(trials[f]):
            data[name] = _binned(data[f])
            axes[name] = list(dict.fromkeys(sorted(data[name].unique(), key=lambda s: float(s.split("–")[0]))))
        else:
            data[name] = _categorical(data, f)[0]
            axes[name] = _categorical(trials, f)[1]
    xn = name_of(trials, x)
    yn = name_of(trials, y) if y else None
    mean = data.groupby([yn, xn] if yn else [xn])["val/collapsed_fraction"].mean()
    mat = mean.unstack(xn) if yn else mean.to_frame().T
    mat = mat.reindex(index=axes[yn] if yn else mat.index, columns=axes[xn])
    if yn is None:
        mat.index = ["all"]
    rows, cols = mat.shape
    with _style():
        size = (max(4.5, min(WIDTH, 2.2 + 0.75 * cols)), max(2.8, 1.6 + 0.45 * rows))
        fig = Figure(figsize=size, layout="constrained")
        ax = fig.add_subplot()
        sns.heatmap(mat, ax=ax, cmap="rocket_r", vmin=0, vmax=1, annot=rows * cols <= 120, fmt=".2f",
                    linewidths=0.5, linecolor="white", cbar_kws={"label": "fraction of dims collapsed"})
        ax.grid(False)
        if yn:
            ax.invert_yaxis()  # small values at the bottom, as on a plot's axis
        ax.set_xlabel(xn)
        ax.set_ylabel(yn or "")
        # two lines: the figure is only as wide as its cells, and a one-line title overflowed it
        ax.set_title("Posterior collapse\n(mean over seeds" + (" and other factors)" if len(trials.attrs.get(
            "factors", [])) > (2 if yn else 1) else ")"))
        long = max((len(str(c)) for c in mat.columns), default=0) > 7
        ax.tick_params(axis="x", rotation=45 if cols > 6 or long else 0)
        ax.tick_params(axis="y", rotation=0)
    return fig


# --------------------------------------------------------------------------- curves


def training_curves(histories: pd.DataFrame, by: str | None, metrics: dict[str, str] | None = None) -> Figure:
    """val/elbo, val/kl and active units against epoch, one line per level of factor ``by``
    (mean over its completed trials, band +-1 std); ``histories`` is a histories_frame."""
    metrics = metrics or CURVE_METRICS
    data = histories[(histories["state"] == "completed") & histories["metric"].isin(list(metrics))]
    present = [m for m in metrics if (data["metric"] == m).any()]
    if not present:
        raise FigureSkipped(f"no completed trial logged {', '.join(metrics)}")
    if by:
        by_name = name_of(histories, by)
        if len(levels(data[by])) > 10 and pd.api.types.is_numeric_dtype(data[by]):  # a search range: bins
            level = _binned(data[by])
            order = sorted(level.dropna().unique(), key=lambda s: float(s.split("–")[0]))
        else:
            level, order = _categorical(data, by)
    else:
        level, order = pd.Series("all", index=data.index), ["all"]
    # mean and std over the trials of each level at each epoch (as seaborn's errorbar="sd")
    agg = data["value"].groupby([data["metric"], level.rename("level"), data["epoch"]]).agg(["mean", "std"])
    colours = sns.color_palette("viridis", len(order)) if by else ["C0"]
    with _style():
        fig = Figure(figsize=(WIDTH, 3.1), layout="constrained")
        axes = fig.subplots(1, len(present), sharex=True, squeeze=False)[0]
        handles = []
        for ax, m in zip(axes, present):
            for lev, colour in zip(order, colours):
                if (m, lev) not in agg.index.droplevel(2):
                    continue
                a = agg.loc[(m, lev)]
                x, mean, std = a.index.to_numpy(), a["mean"].to_numpy(), a["std"].fillna(0).to_numpy()
                line, = ax.plot(x, mean, color=colour, lw=1.5, label=lev)
                ax.fill_between(x, mean - std, mean + std, color=colour, alpha=0.15, lw=0)
                if ax is axes[0]:
                    handles.append(line)
            if m == "val/active_units":  # a count: integer ticks from 0
                ax.set_ylim(0, max(1.0, float(agg.loc[m]["mean"].max() + agg.loc[m]["std"].fillna(0).max())) * 1.08)
                ax.yaxis.get_major_locator().set_params(integer=True)
            ax.set_ylabel(metrics[m])
            ax.set_xlabel("epoch")
            ax.set_title(m)
            ax.xaxis.get_major_locator().set_params(integer=True)
        if by:
            width = max((len(h.get_label()) for h in handles), default=1) + 6  # characters per entry
            fig.legend(handles, [h.get_label() for h in handles], title=by_name, loc="outside lower center",
                       ncol=max(1, min(len(handles), 72 // width)), frameon=False)
    return fig


# --------------------------------------------------------------------------- Optuna


def _objective_names(study: Any, names: Sequence[str] | None) -> list[str]:
    n = len(study.directions)
    if names and len(names) == n:
        return list(names)
    return list(study.metric_names or [f"objective {i}" for i in range(n)])


def optuna_importances(study: Any, names: Sequence[str] | None = None) -> Figure:
    """Parameter importances of an Optuna study (``optuna.importance.get_param_importances``
    with Optuna's default evaluator, PED-ANOVA), one bar per factor and objective. PED-ANOVA
    rates what matters for reaching good values, so maximised objectives are negated."""
    import warnings

    import optuna

    done = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    if len(done) < 2:
        raise FigureSkipped(f"parameter importances need 2 or more complete Optuna trials ({len(done)})")
    names = _objective_names(study, names)
    rows = []
    for i, (name, direction) in enumerate(zip(names, study.directions)):
        sign = -1.0 if direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the "low target values" reminder: handled by sign
                imp = optuna.importance.get_param_importances(study, target=lambda t, i=i, s=sign: s * t.values[i])
        except (RuntimeError, ValueError) as e:
            raise FigureSkipped(f"Optuna could not compute importances: {e}") from None
        rows += [{"param": p, "importance": v, "objective": name} for p, v in imp.items()]
    data = pd.DataFrame(rows)
    if data.empty:
        raise FigureSkipped("no parameter varied among the complete Optuna trials")
    params = list(dict.fromkeys(data.groupby("param")["importance"].sum().sort_values(ascending=False).index))
    short = short_names(params)
    data["param"] = data["param"].map(short)
    with _style():
        fig = Figure(figsize=(WIDTH, 1.4 + 0.32 * len(params) * max(1, len(names))), layout="constrained")
        ax = fig.add_subplot()
        sns.barplot(data=data, y="param", x="importance", hue="objective", ax=ax, order=[short[p] for p in params],
                    palette=sns.color_palette("deep", len(names)), legend=len(names) > 1)
        ax.set_xlabel("importance (PED-ANOVA, normalised to sum 1 per objective)")
        ax.set_ylabel("")
        ax.set_title(f"Optuna parameter importances ({len(done)} complete trials)")
        if len(names) > 1:
            sns.move_legend(ax, "lower right", frameon=False, title="objective")
    return fig


def optuna_history(study: Any, names: Sequence[str] | None = None) -> Figure:
    """Each objective's value by Optuna trial number (complete trials), with the best so far
    for one objective or the Pareto-optimal trials for several."""
    import optuna

    done = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        raise FigureSkipped("the Optuna study has no complete trial")
    names = _objective_names(study, names)
    best = {t.number for t in study.best_trials} if len(names) > 1 else set()
    with _style():
        fig = Figure(figsize=(WIDTH, 2.8), layout="constrained")
        axes = fig.subplots(1, len(names), squeeze=False)[0]
        for i, (ax, name) in enumerate(zip(axes, names)):
            n = np.array([t.number for t in done])
            v = np.array([t.values[i] for t in done])
            ax.scatter(n, v, s=14, color="C0", alpha=0.7, label="trial (mean over seeds)")
            if len(names) == 1:
                maximise = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
                run = np.maximum.accumulate(v) if maximise else np.minimum.accumulate(v)
                ax.step(n, run, where="post", color="crimson", lw=1.2, label="best so far")
            else:
                on = np.array([t.number in best for t in done])
                ax.scatter(n[on], v[on], s=40, facecolors="none", edgecolors="crimson", label="Pareto-optimal")
            ax.set_xlabel("Optuna trial")
            unit = " (nats)" if any(k in name for k in ("elbo", "recon", "kl", "nll", "mi")) else ""
            ax.set_ylabel(f"{name}{unit}")
            ax.xaxis.get_major_locator().set_params(integer=True)
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), frameon=False)
        fig.suptitle("Optimisation history")
    return fig
