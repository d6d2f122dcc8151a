"""The report's figures: one pure function per figure, DataFrame in, matplotlib Figure out.

Each function takes a ``trials_frame`` (or a ``histories_frame``) and the column names to
use; it draws on a fresh ``matplotlib.figure.Figure`` (no pyplot, no global state, any
backend) at paper size, with labelled axes in nats (docs/reference.md). When the data cannot
make the figure (a factor missing, no completed trial), it raises ``FigureSkipped`` with
the reason, which the report prints in the figure's place.

Aggregates use completed trials only: a diverged, pruned or failed trial's last values
are not comparable with a finished one's.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

from vaebench.record.results import level_label, short_names

WIDTH = 6.5  # inches: a paper's text width
CHAR_WIDTH = 0.1  # inches per character of a tick label (DejaVu Sans at the figures' font size, a little over)


def wrap_label(text: Any, width: int = 22) -> str:
    """A long level label ('(decoder=rnn, word_dropout=0.5)', 'objective = (free_bits=0.25)') on
    several lines of at most ``width`` characters where it can, broken after a comma or an ' = ' (a
    longer piece after an inner '('),
    so that cells and panels, not their labels, set a figure's size."""
    lines: list[str] = []
    parts = []
    for part in re.split(r"(?<=,) |(?<= =) ", str(text)):  # a long part breaks after an inner "("
        parts += [part] if len(part) <= width else [p for p in re.split(r"(?<=\w\()", part) if p]
    for part in parts:
        if lines and len(lines[-1]) + 1 + len(part) <= width:
            lines[-1] += " " + part
        else:
            lines.append(part)
    return "\n".join(lines)


def _label_extent(labels: Sequence[Any]) -> tuple[int, int]:
    """(longest line in characters, most lines) of wrapped tick labels."""
    lines = [str(label).split("\n") for label in labels] or [[""]]
    return max(len(x) for ls in lines for x in ls), max(len(ls) for ls in lines)


MAX_HEATMAP_ROWS = 40
CURVE_METRICS = {"val/elbo": "ELBO (nats)", "val/kl": "KL (nats)", "val/active_units": "active units"}


class FigureSkipped(Exception):
    """This figure cannot be drawn from this study; the message says why."""


def figure_style():
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


def short_level(v: Any) -> str:
    """A level for a legend, a title or a tick: floats to 3 significant digits (a search samples
    0.00123457; the legend says 0.00123), everything else as ``fmt_level``."""
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.3g}"
    return fmt_level(v)


def level_labels(order: Sequence[Any]) -> dict[Any, str]:
    """{hashable level: label}: the short labels where they stay distinct, else the full ones."""
    short = {hashable(v): short_level(v) for v in order}
    if len(set(short.values())) == len(short):
        return short
    return {hashable(v): fmt_level(v) for v in order}


#: a numeric factor with more levels than this is drawn on a numeric axis or in bins, never
#: as one panel, line style or legend entry per level (a search samples a new float per trial)
MANY_LEVELS = 6


def many_levels(series: pd.Series) -> bool:
    """A numeric factor (not bool) with more than MANY_LEVELS distinct levels: a search range or
    a long grid, to be binned or put on an axis."""
    if not pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
        return False
    return series.dropna().nunique() > MANY_LEVELS


def _categorical(trials: pd.DataFrame, column: str, bins: int = 4) -> tuple[pd.Series, list[str]]:
    """The column as display strings, with the levels in display order; a many-level numeric
    column (``many_levels``) as at most ``bins`` ranges ('0.25–0.63'), log-spaced where its
    range asks."""
    if many_levels(trials[column]):
        out = _binned(trials[column], bins)
        return out, _bin_order(out)
    order = levels(trials[column])
    labels = level_labels(order)
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
    keys = pd.Series(
        list(zip(*(trials[f].map(hashable) for f in factors))) if factors and len(trials) else [()] * len(trials),
        index=trials.index,
        dtype=object,
    )
    orders = [{hashable(v): i for i, v in enumerate(levels(trials[f]))} for f in factors]
    distinct = sorted(dict.fromkeys(keys), key=lambda k: tuple(o.get(v, len(o)) for o, v in zip(orders, k)))
    return keys, distinct


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


#: a positive range at least this wide (max / min) is drawn on a log axis and binned log-spaced
#: (a KL weight from 0.5 to 4, a learning rate from 1e-4 to 1e-2)
LOG_RATIO = 8


def log_scale(values: Sequence[float]) -> bool:
    v = [x for x in values if x > 0]
    return len(v) == len(values) and len(v) > 2 and max(v) / min(v) >= LOG_RATIO


def plain_log_ticks(axis: Any) -> None:
    """A log axis labelled 0.3, 0.5, 1, 2, 5 rather than 3×10⁻¹ on every minor tick (which
    overlap on a range under a decade or two)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


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


def rate_distortion(
    trials: pd.DataFrame, hue: str | None = None, style: str | None = None, pareto: bool = False
) -> Figure:
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
        if not many_levels(data[hue]):
            data[hue_name], order = _categorical(data, hue)
            kw.update(hue=hue_name, hue_order=order, palette=sns.color_palette("viridis", len(order)))
        else:  # a sampled range: a colour bar, not legend entries
            data[hue_name] = data[hue].astype(float)
            continuous = LogNorm(min(vals), max(vals)) if log_scale(vals) else Normalize(min(vals), max(vals))
            kw.update(hue=hue_name, palette="viridis", hue_norm=continuous)
    if style:
        style_name = name_of(trials, style)
        data[style_name], order = _categorical(data, style)
        kw.update(style=style_name, style_order=order)
    with figure_style():
        fig = Figure(figsize=(WIDTH, 4.2), layout="constrained")
        ax = fig.add_subplot()
        sns.scatterplot(
            data=data, x="val/kl", y="val/recon", ax=ax, s=36, alpha=0.85, edgecolor="white", linewidth=0.4, **kw
        )
        x0, x1 = ax.get_xlim()
        y0, y1 = ax.get_ylim()
        for c in _nice_levels(x0 + y0, x1 + y1):
            xs = np.array([max(x0, c - y1), min(x1, c - y0)])
            if xs[1] <= xs[0]:
                continue
            ax.plot(xs, c - xs, color="0.55", lw=0.7, ls="--", zorder=0)
            ax.annotate(
                f"{c:g}", (xs[1], c - xs[1]), fontsize=7, color="0.4", xytext=(2, 2), textcoords="offset points"
            )
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

            bar = fig.colorbar(
                ScalarMappable(continuous, sns.color_palette("viridis", as_cmap=True)), ax=ax, label=hue_name, pad=0.01
            )
            if isinstance(continuous, LogNorm):
                plain_log_ticks(bar.ax.yaxis)
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
        hidden = [f for f in varied(trials) if f not in (hue, style)]
        title = f"Rate–distortion plane ({_count(len(data), 'completed trial')})" + (
            f"\none point per trial; not told apart: {', '.join(name_of(trials, f) for f in hidden)}" if hidden else ""
        )
        ax.set_title(title, fontsize=9)
    plotted = data.assign(run_ids=data["run_id"].map(lambda r: (r,)), n=1)
    return attach(fig, plotted, [f for f in (hue, style) if f], hidden, title)


# --------------------------------------------------------------------------- what a figure shows


@dataclass
class Plotted:
    """What a figure drew, for tests and readers: ``data`` has one row per plotted mark (a
    line's point, a cell), with ``run_ids`` (the trials behind it), ``n`` and, for bands, ``lo``
    and ``hi``; ``shown`` are the factors the figure distinguishes (axis, hue, style, facet,
    row); ``pooled`` the factors with several levels that it averages over or does not tell
    apart, named in ``title``."""

    data: pd.DataFrame
    shown: list[str]
    pooled: list[str]
    title: str


def attach(fig: Figure, data: pd.DataFrame, shown: Sequence[str], pooled: Sequence[str], title: str) -> Figure:
    fig.vaebench = Plotted(data, list(shown), list(pooled), title)
    return fig


def varied(trials: pd.DataFrame, factors: Sequence[str] | None = None) -> list[str]:
    """The study's factors with more than one level in ``trials``."""
    factors = list(trials.attrs.get("factors", [])) if factors is None else list(factors)
    return [f for f in factors if f in trials and len(levels(trials[f])) > 1]


def pooled_phrase(trials: pd.DataFrame, pooled: Sequence[str], verb: str = "pooled over") -> str:
    return f"{verb} {', '.join(name_of(trials, f) for f in pooled)}" if pooled else ""


def seed_summary(data: pd.DataFrame, by: Sequence[str], value: str) -> pd.DataFrame:
    """Mean of ``value`` per combination of the ``by`` columns, with the band: the min and max
    over the group's trials (its seeds), NaN for a single trial. A min-max band stays inside
    the metric's range (no negative KL or active-unit count) and makes no normality claim."""
    keys, order = point_keys(data, list(by))
    g = data.groupby(keys.map({k: i for i, k in enumerate(order)}))
    out = pd.DataFrame(
        {
            "key": [order[i] for i in g.groups],
            "mean": g[value].mean().to_numpy(),
            "lo": g[value].min().to_numpy(),
            "hi": g[value].max().to_numpy(),
            "n": g[value].count().to_numpy(),
            "run_ids": g["run_id"].agg(tuple).to_numpy() if "run_id" in data else [()] * len(g.groups),
        }
    )
    for i, f in enumerate(by):
        out[f] = [k[i] for k in out["key"]]
    single = out["n"] < 2
    out.loc[single, ["lo", "hi"]] = math.nan
    return out.drop(columns="key")


LINESTYLES = ["-", "--", ":", "-."]
MARKERS = ["o", "s", "^", "D", "v", "P"]


# --------------------------------------------------------------------------- active units


def active_units(
    trials: pd.DataFrame, beta: str, lines: str | None = None, style: str | None = None, col: str | None = None
) -> Figure:
    """Active units (Burda et al. 2015) against beta at the final epoch: colour = ``lines``
    (the latent size), line style = ``style`` (annealing), one panel per level of ``col``
    (free bits). Each line is the mean over the seeds of one configuration, its band the
    seeds' min-max; any other factor with several levels is pooled and named in the title."""
    data = completed(trials).dropna(subset=["val/active_units"]).copy()
    if data.empty:
        raise FigureSkipped("no completed trial has val/active_units")
    shown = [f for f in (beta, lines, style, col) if f]
    pooled = [f for f in varied(trials) if f not in shown]
    data[beta] = data[beta].astype(float)
    ticks = levels(data[beta])
    # a search over beta (or a long grid): one point per trial on a numeric axis, not a line per level
    sampled = many_levels(data[beta])
    top = float(data["model.latent_dim"].max()) if "model.latent_dim" in data else float(data["val/active_units"].max())
    binned = []  # factors drawn as ranges of values (many levels): a panel or colour per range
    for f in (col, lines, style):
        if f and many_levels(data[f]):
            data[f] = _binned(data[f], 3 if f == col else 4)
            binned.append(f)
    summary = (
        seed_summary(data, [f for f in (col, lines, style) if f] + [beta], "val/active_units")
        if not sampled
        else data.assign(
            mean=data["val/active_units"], lo=math.nan, hi=math.nan, n=1, run_ids=data["run_id"].map(lambda r: (r,))
        )
    )
    pooled += [f for f in binned if f not in pooled]  # a range holds several levels
    order = {f: (_bin_order(data[f]) if f in binned else levels(data[f])) for f in (col, lines, style) if f}
    cols = order[col] if col else [None]
    hues = order[lines] if lines else [None]
    styles = order[style] if style else [None]
    colours = dict(zip(map(hashable, hues), sns.color_palette("viridis", len(hues)) if lines else ["C0"]))
    if sampled:  # a point per trial: nothing is averaged, factors in ranges are shown coarsely
        told = [f for f in pooled if f not in binned]
        title = (
            "Active units against beta\none point per trial"
            + (f"; {', '.join(name_of(trials, f) for f in binned)} in ranges" if binned else "")
            + (f"; {pooled_phrase(trials, told, 'not told apart:')}" if told else "")
        )
    else:
        title = "Active units against beta" + (
            f"\n{pooled_phrase(trials, pooled, 'mean over seeds, pooled over')}" if pooled else ""
        )
    trended = False
    with figure_style():
        fig = Figure(figsize=(WIDTH, 3.4), layout="constrained")
        axes = fig.subplots(1, len(cols), sharey=True, squeeze=False)[0]
        for ax, c in zip(axes, cols):
            part = summary if col is None else summary[summary[col].map(hashable) == hashable(c)]
            for h in hues:
                for k, st in enumerate(styles):
                    line = part
                    if lines:
                        line = line[line[lines].map(hashable) == hashable(h)]
                    if style:
                        line = line[line[style].map(hashable) == hashable(st)]
                    line = line.sort_values(beta)
                    if line.empty:
                        continue
                    kw = dict(color=colours[hashable(h)], ls=LINESTYLES[k % 4], marker=MARKERS[k % 6], ms=4, lw=1.4)
                    if sampled:
                        ax.scatter(line[beta], line["mean"], s=16, color=kw["color"], marker=kw["marker"], alpha=0.8)
                        if len(line) >= 5:  # the trend: a running median over the sorted values
                            trended = True
                            trend = line["mean"].rolling(5, center=True, min_periods=3).median()
                            ax.plot(line[beta], trend, color=kw["color"], ls=kw["ls"], lw=1.2, alpha=0.9)
                    else:
                        ax.plot(line[beta], line["mean"], **kw)
                        band = line.dropna(subset=["lo"])
                        if not band.empty:
                            ax.fill_between(band[beta], band["lo"], band["hi"], color=kw["color"], alpha=0.12, lw=0)
            if log_scale(ticks):
                ax.set_xscale("log")
                if sampled:
                    plain_log_ticks(ax.xaxis)
            if not sampled:
                ax.set_xticks(ticks, [short_level(float(t)) for t in ticks])
                ax.minorticks_off()
            ax.set_ylim(-0.03 * max(top, 1), max(top, 1) * 1.05)  # a line at 0 stays visible
            ax.yaxis.get_major_locator().set_params(integer=True)
            ax.set_xlabel(f"{name_of(trials, beta)} (KL weight)")
            if col:
                ax.set_title(wrap_label(f"{name_of(trials, col)} = {_shown(c)}", 28), fontsize=9)
        thr = data["metrics.active_threshold"].iloc[0] if "metrics.active_threshold" in data else 0.01
        axes[0].set_ylabel(f"active units (Var$_x$ E[z|x] > {thr:g})")
        handles, labels = [], []
        if lines:
            handles += [Line2D([], [], color=colours[hashable(h)], lw=1.6) for h in hues]
            labels += [f"{name_of(trials, lines)} = {_shown(h)}" for h in hues]
        if style:
            handles += [
                Line2D([], [], color="0.3", ls=LINESTYLES[k % 4], marker=MARKERS[k % 6], ms=4)
                for k in range(len(styles))
            ]
            labels += [f"{name_of(trials, style)} = {_shown(st)}" for st in styles]
        if trended:
            handles.append(Line2D([], [], color="0.3", lw=1.2))
            labels.append("running median of 5")
        if not sampled and summary["n"].max() >= 2:
            handles.append(Patch(color="0.5", alpha=0.25))
            labels.append("seeds' min–max")
        if handles:
            if len(labels) > 5:  # beside the plot it would run into the title
                fig.legend(handles, labels, loc="outside lower center", ncol=3, frameon=False, fontsize=8)
            else:
                fig.legend(handles, labels, loc="outside right upper", frameon=False, fontsize=8)
        fig.suptitle(title, fontsize=10)
    return attach(fig, summary, shown, pooled, title)


# --------------------------------------------------------------------------- KL per dim


def _shown(v: Any) -> str:
    """A level or a bin label ('0.25–0.63') as a legend or a title shows it."""
    return v if isinstance(v, str) else short_level(v)


def config_label(key: tuple, names: Sequence[str] | None = None) -> str:
    """'0.5, 0' (or 'beta=0.5, free_bits=0' with ``names``) for a point's levels, floats to 3
    significant digits."""
    return ", ".join(f"{n}={short_level(v)}" if n else short_level(v) for n, v in zip(names or [""] * len(key), key))


def collapsed_ranks(trials: pd.DataFrame, dims: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Each trial's per-dim KL sorted in decreasing order (NaN for dims it lacks, last) and a
    matching 0/1 matrix of collapsed dims: its ``val/collapsed_dims`` lowest-KL dims. The count
    is the (epsilon, delta) rule's (Lucas et al. 2019, as in the table); the heatmap shows
    ranks, not dim identities, so the count says which cells are collapsed."""
    kl = -np.sort(-trials[list(dims)].to_numpy(dtype=float), axis=1)  # NaN sort last
    present = (~np.isnan(kl)).sum(1)
    count = trials["val/collapsed_dims"].to_numpy(dtype=float)
    ranks = np.arange(kl.shape[1])[None, :]
    collapsed = ((ranks >= (present - count)[:, None]) & (ranks < present[:, None])).astype(float)
    collapsed[np.isnan(kl)] = np.nan
    return kl, collapsed


def kl_per_dim(
    trials: pd.DataFrame,
    factors: Sequence[str],
    epsilon: float = 0.01,
    delta: float = 0.01,
    max_rows: int = MAX_HEATMAP_ROWS,
) -> Figure:
    """Mean KL of each latent dim (val/kl_dim/NN), one row per configuration (a point of
    the ``factors``), dims sorted by KL within each trial and averaged rank by rank over its
    seeds. Collapsed dims, by the table's (epsilon, delta) rule, are grey where every seed's
    dim of that rank is collapsed and hatched where only some seeds' are. With more
    configurations than ``max_rows``, the ones with the best mean val/elbo are shown."""
    dims = sorted(c for c in trials.columns if c.startswith("val/kl_dim/"))
    data = (
        completed(trials).dropna(subset=dims[:1] + ["val/collapsed_dims"])
        if dims and "val/collapsed_dims" in trials
        else trials.iloc[0:0]
    )
    if data.empty:
        raise FigureSkipped("no completed trial has per-dim KL (val/kl_dim/NN) and val/collapsed_dims")
    factors = list(factors)
    keys, order = point_keys(data, factors)
    labels = {k: config_label(k) if factors else "all trials" for k in order}
    kl, coll = collapsed_ranks(data, dims)
    config = keys.map(lambda k: labels[k])  # (a dict would be read as a mapping of tuples)
    ranks = range(1, len(dims) + 1)
    mat = pd.DataFrame(kl, index=data.index, columns=ranks).groupby(config, sort=False).mean()
    frac = pd.DataFrame(coll, index=data.index, columns=ranks).groupby(config, sort=False).mean()
    mat, frac = (m.reindex([labels[k] for k in order]) for m in (mat, frac))
    n_seeds = config.value_counts()
    note = ""
    if len(mat) > max_rows:
        best = data["val/elbo"].groupby(config).mean().nlargest(max_rows).index
        keep = [c for c in mat.index if c in set(best)]
        mat, frac = mat.loc[keep], frac.loc[keep]
        note = f" — the {max_rows} configurations with the best ELBO"
    keep_cols = mat.notna().any()
    mat, frac = mat.loc[:, keep_cols], frac.loc[:, keep_cols]
    shown_rows = list(mat.index)
    mat.index = frac.index = [f"{c}  (n={n_seeds[c]})" for c in mat.index]
    positive = mat.to_numpy()[np.isfinite(mat.to_numpy()) & (mat.to_numpy() > 0) & (frac.to_numpy() < 1)]
    vmin = max(float(positive.min()) if positive.size else epsilon, 1e-4)
    vmax = max(float(np.nanmax(mat.to_numpy())), vmin * 10)
    cmap = sns.color_palette("rocket_r", as_cmap=True).with_extremes(bad="white")
    rows, cols = mat.shape
    title = f"KL per latent dim{note}"
    with figure_style():
        # a text width leaves ~2 in for the row labels; longer labels (7 pt: ~0.055 in a character,
        # 5 pt past 30 rows: ~0.04) widen the figure by what they need beyond that
        ychars = max((len(str(c)) for c in mat.index), default=0) if rows <= MAX_HEATMAP_ROWS else 0
        width = min(max(WIDTH, WIDTH - 2.0 + (0.055 if rows <= 30 else 0.04) * ychars), 2 * WIDTH)
        fig = Figure(figsize=(width, min(1.8 + 0.24 * rows, 14)), layout="constrained")
        ax = fig.add_subplot()
        sns.heatmap(
            mat.where(frac < 1),
            ax=ax,
            cmap=cmap,
            norm=LogNorm(vmin=vmin, vmax=vmax, clip=True),
            linewidths=0.3 if rows * cols <= 600 else 0,
            linecolor="white",
            annot=mat.where(frac < 1) if rows * cols <= 160 else False,
            fmt=".2g",
            annot_kws={"fontsize": 6},
            yticklabels=rows <= MAX_HEATMAP_ROWS,
            cbar_kws={"label": "mean KL of the dim (nats)", "shrink": 0.8},
        )
        for i in range(rows):  # collapsed in every seed: grey; in some seeds: hatched
            for j in range(cols):
                f = frac.iat[i, j]
                if f >= 1:
                    ax.add_patch(Rectangle((j, i), 1, 1, facecolor="0.82", edgecolor="white", lw=0.3))
                elif f > 0:
                    ax.add_patch(Rectangle((j, i), 1, 1, fill=False, hatch="////", edgecolor="0.45", lw=0))
        ax.grid(False)
        ax.set_xlabel(
            f"latent dim, sorted by KL\ngrey: collapsed in every seed, hatched: in some "
            f"((ε, δ) = ({epsilon:g}, {delta:g}))",
            fontsize=8,
        )
        ax.set_ylabel(", ".join(name_of(trials, f) for f in factors) + "  (n: seeds)" if factors else "")
        ax.set_title(title)
        ax.tick_params(axis="y", labelsize=7 if rows <= 30 else 5)
    plotted = pd.DataFrame(
        {
            "config": [config.loc[i] for i in data.index],
            "run_id": data["run_id"].to_numpy(),
            "collapsed_cells": np.nansum(coll, axis=1),
            "val/collapsed_dims": data["val/collapsed_dims"].to_numpy(),
            "shown": [config.loc[i] in set(shown_rows) for i in data.index],
        }
    )
    plotted["run_ids"] = plotted["run_id"].map(lambda r: (r,))
    plotted["n"] = 1
    return attach(fig, plotted, factors, [f for f in varied(trials) if f not in factors], title)


# --------------------------------------------------------------------------- collapse map


def _binned(series: pd.Series, bins: int = 6) -> pd.Series:
    """A factor with many numeric levels (a search range) as ``bins`` ranges labelled to 3
    significant digits ('0.25–0.63'), log-spaced when the range spans more than LOG_RATIO;
    a bin no value falls in is dropped later (``_bin_order`` lists those present)."""
    vals = series.astype(float)
    lo, hi = vals.min(), vals.max()
    if log_scale(sorted(vals.dropna().unique())):
        edges = np.geomspace(lo, hi, bins + 1)
    else:
        edges = np.linspace(lo, hi, bins + 1)
    edges[0], edges[-1] = lo, hi  # exactly the data's ends (geomspace rounds)
    cut = pd.cut(vals, np.unique(edges), include_lowest=True)
    return cut.map(lambda iv: f"{max(iv.left, lo):.3g}–{iv.right:.3g}").astype(object)


def _bin_order(binned: pd.Series) -> list[str]:
    """The bins present, low to high."""
    return sorted(binned.dropna().unique(), key=lambda s: float(s.split("–")[0]))


def effect(trials: pd.DataFrame, factor: str, metric: str) -> float:
    """How much ``factor`` moves ``metric``: the range (max - min) of its levels' means over the
    completed trials (0 when the metric is missing)."""
    data = completed(trials).dropna(subset=[metric]) if metric in trials else trials.iloc[:0]
    if data.empty or factor not in data:
        return 0.0
    key = _categorical(data, factor)[0]
    means = data[metric].astype(float).groupby(key).mean()
    return float(means.max() - means.min()) if len(means) > 1 else 0.0


def curve_effect(histories: pd.DataFrame, factor: str, metric: str = "val/elbo") -> float:
    """How much ``factor`` moves a training curve: the largest gap, over the epochs, between its
    levels' mean curves (a cyclical schedule's dips count, though its last value may not)."""
    h = histories[(histories["metric"] == metric) & (histories["state"] == "completed")]
    if h.empty or factor not in h:
        return 0.0
    key = _categorical(h, factor)[0]
    curves = h["value"].astype(float).groupby([key, h["epoch"]]).mean().unstack(0)
    if curves.shape[1] < 2:
        return 0.0
    return float((curves.max(axis=1) - curves.min(axis=1)).max())


def largest(candidates: Sequence[str], size: Any) -> str | None:
    """The candidate with the largest ``size(candidate)``, None when none moves anything."""
    scored = [(size(f), f) for f in candidates]
    scored = [(v, f) for v, f in scored if v > 0 and math.isfinite(v)]
    return max(scored, key=lambda t: t[0])[1] if scored else None


def collapse_map(
    trials: pd.DataFrame,
    x: str,
    y: str | None = None,
    epsilon: float = 0.01,
    delta: float = 0.01,
    facet: str | None = None,
) -> Figure:
    """Mean fraction of collapsed latent dims (Lucas et al. 2019, (epsilon, delta)) over factor
    ``x`` (columns) and ``y`` (rows), one panel per level of ``facet`` (a factor that would
    otherwise be averaged over: the latent size, whose small models collapse differently),
    averaged over the seeds and every other factor, which the title names."""
    data = completed(trials).dropna(subset=["val/collapsed_fraction"]).copy()
    if data.empty:
        raise FigureSkipped("no completed trial has val/collapsed_fraction")
    facet = facet if facet not in (x, y) else None
    axes = {}  # every level of the record, so that a level with no completed trial shows as blank
    for f in [x] + ([y] if y else []) + ([facet] if facet else []):
        name = name_of(trials, f)
        if many_levels(trials[f]):
            data[name] = _binned(data[f], 3 if f == facet else 6)
            axes[name] = _bin_order(data[name])
        else:
            data[name] = _categorical(data, f)[0]
            axes[name] = _categorical(trials, f)[1]
    xn = name_of(trials, x)
    yn = name_of(trials, y) if y else None
    fn = name_of(trials, facet) if facet else None
    panels = [p for p in axes[fn] if (data[fn] == p).any()] if fn else [None]
    mats = []
    for p in panels:
        part = data if p is None else data[data[fn] == p]
        mean = part.groupby([yn, xn] if yn else [xn])["val/collapsed_fraction"].mean()
        mat = mean.unstack(xn) if yn else mean.to_frame().T
        mat = mat.reindex(index=axes[yn] if yn else mat.index, columns=axes[xn])
        if yn is None:
            mat.index = ["all"]
        mats.append(mat)
    rows, cols = mats[0].shape
    pooled = [f for f in varied(trials) if f not in (x, y, facet)]
    title = f"Collapsed dims, (ε, δ) = ({epsilon:g}, {delta:g})\nmean over seeds" + (
        f"\n{pooled_phrase(trials, pooled)}" if pooled else ""
    )
    for mat in mats:  # long labels (a factor of mappings) on several lines, and the figure sized for them
        mat.index = [wrap_label(v) for v in mat.index]
        mat.columns = [wrap_label(v) for v in mat.columns]
    ychars, _ = _label_extent(mats[0].index)
    xchars, xlines = _label_extent(mats[0].columns)
    # column labels side by side while they fit a text width, else slanted under narrow cells
    rotate = cols > 6 or 1.2 + max(0.75, CHAR_WIDTH * xchars + 0.15) * cols + CHAR_WIDTH * ychars > WIDTH
    cell_w = 0.75 if rotate else max(0.75, CHAR_WIDTH * xchars + 0.15)
    label_h = CHAR_WIDTH * xchars * 0.7 if rotate else 0.2 * xlines
    with figure_style():
        one = (
            max(2.2, min(WIDTH, 1.2 + cell_w * cols + CHAR_WIDTH * ychars)),
            max(2.8, 1.6 + 0.45 * rows + label_h),
        )
        width = min(WIDTH * 1.6, one[0] * len(panels) + 1.2) if fn else max(4.5, one[0] + 1.0)
        fig = Figure(figsize=(width, one[1] + (0.3 if fn else 0)), layout="constrained")
        grid = fig.subplots(1, len(panels), squeeze=False, sharey=True)[0]
        for i, (ax, p, mat) in enumerate(zip(grid, panels, mats)):
            last = i == len(panels) - 1
            sns.heatmap(
                mat,
                ax=ax,
                cmap="rocket_r",
                vmin=0,
                vmax=1,
                annot=rows * cols <= 120,
                fmt=".2f",
                linewidths=0.5,
                linecolor="white",
                cbar=last,
                cbar_kws={"label": "fraction of dims collapsed"} if last else None,
            )
            ax.grid(False)
            if yn:
                ax.invert_yaxis()  # small values at the bottom, as on a plot's axis
            ax.set_xlabel(xn)
            ax.set_ylabel((yn or "") if i == 0 else "")
            if p is not None:
                ax.set_title(wrap_label(f"{fn} = {p}", 28), fontsize=9)
            if rotate:
                ax.set_xticks(ax.get_xticks(), ax.get_xticklabels(), rotation=40, ha="right", rotation_mode="anchor")
            else:
                ax.tick_params(axis="x", rotation=0)
            ax.tick_params(axis="y", rotation=0)
        # several lines: the figure is only as wide as its cells, and a one-line title overflowed it
        if fn:
            fig.suptitle(title.replace("\n", ", ", 1), fontsize=9)
        else:
            grid[0].set_title(title, fontsize=9)
    keys = [k for k in (fn, yn, xn) if k]
    cells = data.groupby(keys)["run_id"].agg(tuple).rename("run_ids").reset_index()
    cells["n"] = cells["run_ids"].map(len)
    return attach(fig, cells, [f for f in (x, y, facet) if f], pooled, title)


# --------------------------------------------------------------------------- curves


def training_curves(
    histories: pd.DataFrame,
    by: str | None,
    col: str | None = None,
    metrics: dict[str, str] | None = None,
    style: str | None = None,
) -> Figure:
    """val/elbo, val/kl and active units (rows) against epoch, one column per level of factor
    ``col`` (the latent size), one colour per level of factor ``by`` (beta) and one line style
    per level of ``style`` (free bits); each line is the mean over the
    completed trials of the line. When each line is one configuration, its band is the seeds'
    min-max; when the line pools other factors (named in the title) it has no band, since
    its spread would mix settings with seeds. ``histories`` is a histories_frame."""
    metrics = metrics or CURVE_METRICS
    data = histories[(histories["state"] == "completed") & histories["metric"].isin(list(metrics))].copy()
    present = [m for m in metrics if (data["metric"] == m).any()]
    if not present:
        raise FigureSkipped(f"no completed trial logged {', '.join(metrics)}")
    col = col if col and col != by else None
    style = style if style and style not in (by, col) else None
    shown = [f for f in (by, col, style) if f]
    pooled = [f for f in varied(histories) if f not in shown]
    if by and many_levels(data[by]):  # a search range: bins
        data["_line"] = _binned(data[by])
        order = _bin_order(data["_line"])
        pooled = pooled + [by]  # a bin holds several levels
    elif by:
        data["_line"], order = _categorical(data, by)
    else:
        data["_line"], order = "all", ["all"]
    if col:
        data["_col"], col_order = _categorical(data, col, bins=3)
    else:
        data["_col"], col_order = "", [""]
    if style:
        data["_style"], style_order = _categorical(data, style, bins=3)
    else:
        data["_style"], style_order = "", [""]
    pooled += [f for f in (col, style) if f and many_levels(data[f]) and f not in pooled]
    data["value"] = data["value"].astype(float)
    summary = seed_summary(data.rename(columns={"value": "_v"}), ["metric", "_col", "_line", "_style", "epoch"], "_v")
    if pooled:
        summary[["lo", "hi"]] = math.nan
    colours = dict(zip(order, sns.color_palette("viridis", len(order)) if by else ["C0"]))
    title = (
        "Training curves"
        + (f": colour {name_of(histories, by)}" if by else "")
        + (f", line style {name_of(histories, style)}" if style else "")
        + (f", columns {name_of(histories, col)}" if col else "")
        + (
            "\nmean over seeds"
            + (f", {pooled_phrase(histories, pooled)} (no band)" if pooled else ", band: seeds' min–max")
        )
    )
    with figure_style():
        fig = Figure(figsize=(WIDTH, 1.2 + 1.75 * len(present)), layout="constrained")
        axes = fig.subplots(len(present), len(col_order), sharex=True, sharey="row", squeeze=False)
        for r, m in enumerate(present):
            for c, cv in enumerate(col_order):
                ax = axes[r, c]
                part = summary[(summary["metric"] == m) & (summary["_col"] == cv)]
                for lev in order:
                    for k, sv in enumerate(style_order):
                        a = part[(part["_line"] == lev) & (part["_style"] == sv)].sort_values("epoch")
                        if a.empty:
                            continue
                        ax.plot(a["epoch"], a["mean"], color=colours[lev], lw=1.4, ls=LINESTYLES[k % 4])
                        b = a.dropna(subset=["lo"])
                        if not b.empty:
                            ax.fill_between(b["epoch"], b["lo"], b["hi"], color=colours[lev], alpha=0.15, lw=0)
                if m == "val/active_units":  # a count: integer ticks from 0 (the row shares its y axis)
                    top = summary.loc[summary["metric"] == m, ["mean", "hi"]].max().max()
                    ax.set_ylim(0, max(1.0, float(top)) * 1.08)
                    ax.yaxis.get_major_locator().set_params(integer=True)
                if c == 0:
                    ax.set_ylabel(metrics[m], fontsize=8)
                if r == 0 and col:
                    ax.set_title(wrap_label(f"{name_of(histories, col)} = {cv}", 28), fontsize=9)
                if r == len(present) - 1:
                    ax.set_xlabel("epoch")
                ax.xaxis.get_major_locator().set_params(integer=True)
                ax.tick_params(labelsize=7)
        handles, labels = [], []
        if by:
            handles += [Line2D([], [], color=colours[lev], lw=1.6) for lev in order]
            labels += [f"{name_of(histories, by)} = {lev}" for lev in order]
        if style:
            handles += [Line2D([], [], color="0.3", lw=1.4, ls=LINESTYLES[k % 4]) for k in range(len(style_order))]
            labels += [f"{name_of(histories, style)} = {sv}" for sv in style_order]
        if handles:
            width = max(len(lab) for lab in labels) + 6  # characters per entry
            fig.legend(
                handles,
                labels,
                loc="outside lower center",
                ncol=max(1, min(len(labels), 90 // width)),
                frameon=False,
                fontsize=8,
            )
        fig.suptitle(title, fontsize=9)
    summary = summary.rename(columns={"_line": by or "line", "_col": col or "column", "_style": style or "style"})
    return attach(fig, summary, shown, pooled, title)


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
    with figure_style():
        fig = Figure(figsize=(WIDTH, 1.4 + 0.32 * len(params) * max(1, len(names))), layout="constrained")
        ax = fig.add_subplot()
        sns.barplot(
            data=data,
            y="param",
            x="importance",
            hue="objective",
            ax=ax,
            order=[short[p] for p in params],
            palette=sns.color_palette("deep", len(names)),
            legend=len(names) > 1,
        )
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

    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        raise FigureSkipped("the Optuna study has no complete trial")
    # a pruned trial at the last value it reported (a pruner watches one objective)
    pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED and t.intermediate_values]
    names = _objective_names(study, names)
    best = {t.number for t in study.best_trials} if len(names) > 1 else set()
    rows = [{"number": t.number, "state": "complete", "value": t.values[0]} for t in done]
    rows += [
        {
            "number": t.number,
            "state": "pruned",
            "value": t.intermediate_values[max(t.intermediate_values)],
            "step": max(t.intermediate_values),
        }
        for t in pruned
    ]
    with figure_style():
        fig = Figure(figsize=(WIDTH, 2.8), layout="constrained")
        axes = fig.subplots(1, len(names), squeeze=False)[0]
        for i, (ax, name) in enumerate(zip(axes, names)):
            n = np.array([t.number for t in done])
            v = np.array([t.values[i] for t in done])
            ax.scatter(n, v, s=14, color="C0", alpha=0.7, label="trial (mean over seeds)")
            if pruned and len(names) == 1:
                ax.scatter(
                    [t.number for t in pruned],
                    [t.intermediate_values[max(t.intermediate_values)] for t in pruned],
                    s=22,
                    marker="x",
                    color="0.45",
                    label="pruned (its last reported value)",
                )
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
        fig.suptitle(
            "Optimisation history"
            + (f" ({len(done)} complete, {len(pruned)} pruned trials)" if pruned else f" ({len(done)} complete trials)")
        )
    return attach(fig, pd.DataFrame(rows), [], [], "Optimisation history")
