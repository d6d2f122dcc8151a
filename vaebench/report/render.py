"""Write a study's report folder: every figure as PNG, the ablation table as .md/.tex/.csv,
``report.md`` (for GitHub, figures beside it) and ``index.html`` (one self-contained page:
images embedded as base64, inline CSS, no script and no external resource).

The choices of what to draw from which factor live here; the drawing lives in
``figures`` and the table in ``tables``. A figure the study cannot make (no beta factor,
no completed trial, no Optuna storage) is replaced by a note saying why; it never stops
the report.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from vaebench.record.results import ReportError, histories_frame, level_label, resolve_factor
from vaebench.record.store import default_storage
from vaebench.report import disentanglement_figures as D
from vaebench.report import figures as F
from vaebench.report import tables as T

FORMATS = ("md", "html", "tex", "csv")
DPI = 150
BETA, FREE_BITS, LATENT = "objective.beta", "objective.free_bits", "model.latent_dim"
ANNEAL = "objective.anneal"


@dataclass
class Figure:
    key: str  # file stem
    title: str
    caption: str
    png: bytes | None = None
    note: str | None = None  # why it was not drawn
    plotted: Any = field(default=None, repr=False)  # figures.Plotted: what was drawn, for tests and readers


@dataclass
class Report:
    """What ``render_report`` made: the files written and the figures (drawn or noted)."""

    out: Path
    files: list[Path] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    table: pd.DataFrame | None = None


def _find(factors: Sequence[str], path: str) -> str | None:
    """The factor that sets ``path`` (itself, or a setting under it such as objective.anneal.kind)."""
    return next((f for f in factors if f == path or f.startswith(path + ".")), None)


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor="white")
    return buf.getvalue()


def _draw(key: str, title: str, caption: str, make: Callable[[], Any]) -> Figure:
    try:
        fig = make()
        return Figure(key, title, caption, png=_png(fig), plotted=getattr(fig, "vaebench", None))
    except F.FigureSkipped as e:
        return Figure(key, title, caption, note=f"Not drawn: {e}.")
    except Exception as e:  # a report never dies for one figure; the note says what broke
        last = traceback.format_exc().strip().splitlines()[-1]
        return Figure(key, title, caption, note=f"Not drawn: an error in vaebench ({type(e).__name__}: {last}).")


def _optuna_study(trials: pd.DataFrame, storage: str | None):
    name = trials.attrs.get("optuna_study")
    if not name:
        raise F.FigureSkipped("the study record names no Optuna study (tag vaebench.optuna_study)")
    storage = storage or default_storage(None, trials.attrs["study"])
    if storage.startswith("sqlite:///") and not Path(storage.removeprefix("sqlite:///")).is_file():
        raise F.FigureSkipped(f"no Optuna storage at {storage} (give --storage)")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except Exception as e:
        raise F.FigureSkipped(f"cannot load Optuna study {name!r} from {storage}: {e}") from None


def _setting(trials: pd.DataFrame, column: str, default: float) -> float:
    """A metrics setting of the study's trials (the same in every trial unless it is a factor)."""
    if column in trials and trials[column].notna().any():
        return float(trials[column].dropna().iloc[0])
    return default


def _moving_note(trials: pd.DataFrame) -> str:
    done = trials[trials["state"] == "completed"]
    if T.MOVING not in done:
        return ""
    n = int((done[T.MOVING] == 1).sum())
    return (
        f" {n} of {len(done)} completed trials were still moving at their last epoch (†, see the table)." if n else ""
    )


def make_figures(
    trials: pd.DataFrame,
    group_by: Sequence[str],
    *,
    curves_by: str | None = None,
    collapse_axes: Sequence[str] | None = None,
    histories: pd.DataFrame | None = None,
    optuna_storage: str | None = None,
    objective_names: Sequence[str] | None = None,
) -> list[Figure]:
    """Every figure of the report, drawn or with the note saying why not."""
    factors = list(trials.attrs.get("factors", []))
    beta, fb, latent, anneal = (_find(factors, p) for p in (BETA, FREE_BITS, LATENT, ANNEAL))
    done = int((trials["state"] == "completed").sum())
    excluded = len(trials) - done
    ex_note = f" {excluded} trials that did not complete are left out." if excluded else ""
    out = []

    style = anneal or (fb if fb else None)
    hue = beta or next((f for f in factors if f != style), None)
    if style is None:  # a second factor with few levels gets the markers rather than being pooled unseen
        style = next((f for f in factors if f != hue and f in trials and not F.many_levels(trials[f])), None)
    nsga2 = trials.attrs.get("search") == "nsga2"
    out.append(
        _draw(
            "rate_distortion",
            "Rate–distortion plane",
            "Each completed trial at its final epoch: rate R = val/kl against distortion D = val/recon (nats); "
            "dashed lines are equal −ELBO = D + R (Alemi et al. 2018), lower-left is better."
            + (f" Colour: {F.name_of(trials, hue)}." if hue else "")
            + (f" Marker: {F.name_of(trials, style)}." if style else "")
            + (
                " Circled and joined: the Pareto front of the trials shown (no other trial has both lower R and lower D)."
                if nsga2
                else ""
            )
            + ex_note,
            lambda: F.rate_distortion(trials, hue=hue, style=style, pareto=nsga2),
        )
    )

    varied = F.varied(trials)
    moving = _moving_note(trials)

    def au():
        if beta is None:
            raise F.FigureSkipped("the study does not vary objective.beta")
        return F.active_units(trials, beta, latent or (LATENT if LATENT in trials else None), style=anneal, col=fb)

    others = [f for f in varied if f not in (beta, latent, anneal, fb)]
    thr = _setting(trials, "metrics.active_threshold", 0.01)
    out.append(
        _draw(
            "active_units",
            "Active units against beta",
            f"Active units (Burda et al. 2015: dim j is active iff Var_x E[z_j|x] > {thr:g}) at the final epoch"
            + (", colour: latent size" if latent else "")
            + ("" if latent or LATENT not in trials else ", at the study's one latent size")
            + (f", line style: {F.name_of(trials, anneal)}" if anneal else "")
            + (f", one panel per {F.name_of(trials, fb)}" if fb else "")
            + ". Each line is one configuration: the mean over its seeds, with the seeds' min–max as a band (none for "
            "one seed)"
            + (f"; pooled over {', '.join(F.name_of(trials, f) for f in others)}" if others else "")
            + "."
            + ex_note
            + moving,
            au,
        )
    )

    eps = _setting(trials, "metrics.collapse_epsilon", 0.01)
    dlt = _setting(trials, "metrics.collapse_delta", 0.01)
    rule = (
        f"collapsed by the (ε, δ) rule of Lucas et al. 2019 (dim j collapsed iff KL_j(x) < ε = {eps:g} nats for "
        f"at least 1 − δ = {1 - dlt:g} of the validation examples), the rule of the table's collapsed column"
    )
    out.append(
        _draw(
            "kl_per_dim",
            "KL per latent dim",
            "Mean KL of each latent dim (val/kl_dim/NN, nats, log colour scale) for each configuration; within a "
            "trial the dims are sorted by KL, then averaged rank by rank over its seeds (n). Grey: the dims "
            f"{rule}, in every seed (a trial's val/collapsed_dims lowest-KL dims); hatched: in some of the seeds; "
            "white: the configuration has fewer dims." + ex_note,
            lambda: F.kl_per_dim(trials, varied, epsilon=eps, delta=dlt),
        )
    )

    if collapse_axes:
        cx, cy = collapse_axes[0], (collapse_axes[1] if len(collapse_axes) > 1 else None)
    else:
        pair = [f for f in (beta, fb) if f]
        pair += [f for f in group_by if f not in pair][: 2 - len(pair)]
        cx, cy = (pair + [None])[:2]
    # a factor the map would average over is a panel instead, the one that moves collapse most
    facet = F.largest(
        [f for f in varied if f not in (cx, cy) and (len(F.levels(trials[f])) <= 5 or F.many_levels(trials[f]))],
        lambda f: F.effect(trials, f, "val/collapsed_fraction"),
    )
    map_pooled = [f for f in varied if f not in (cx, cy, facet)]
    out.append(
        _draw(
            "collapse_map",
            "Collapse map",
            f"Fraction of latent dims {rule}, at the final epoch: mean over seeds"
            + (f" and over {', '.join(F.name_of(trials, f) for f in map_pooled)}" if map_pooled else "")
            + (
                f"; one panel per level of {F.name_of(trials, facet)}, the factor with the largest effect on the "
                "collapsed fraction among those the map would otherwise average over"
                if facet
                else ""
            )
            + "; blank: no completed trial."
            + ex_note,
            lambda: F.collapse_map(trials, cx, cy, epsilon=eps, delta=dlt, facet=facet),
        )
    )

    by = curves_by or (beta if beta in group_by else None) or (group_by[0] if group_by else None)
    curve_col = latent if latent and latent != by else next((f for f in varied if f != by), None)
    h_err: list[str] = []
    if histories is None:
        try:
            histories = histories_frame(
                trials.attrs["study"], metrics=list(F.CURVE_METRICS), trials=trials[trials["state"] == "completed"]
            )
        except Exception as e:  # the figure's note says it; the rest of the report stands
            h_err.append(f"{type(e).__name__}: {e}")
    # line style: the factor the curves would otherwise average over that moves them most (e.g. a
    # cyclical schedule's dips), else free bits or annealing as before
    rest = [f for f in varied if f not in (by, curve_col)]
    curve_style = (
        F.largest(
            [f for f in rest if len(F.levels(trials[f])) <= 4 or F.many_levels(trials[f])],
            lambda f: F.curve_effect(histories, f),
        )
        if histories is not None and rest
        else None
    ) or next((f for f in (fb, anneal) if f and f not in (by, curve_col)), None)

    def curves():
        if histories is None:
            raise F.FigureSkipped(f"the histories could not be read ({h_err[0] if h_err else 'unknown'})")
        return F.training_curves(histories, by, col=curve_col, style=curve_style)

    curve_pooled = [f for f in varied if f not in (by, curve_col, curve_style)]
    out.append(
        _draw(
            "training_curves",
            "Training curves",
            "Held-out ELBO, KL (nats) and active units after each epoch"
            + (f", one colour per level of {F.name_of(trials, by)}" if by else "")
            + (f", one line style per level of {F.name_of(trials, curve_style)}" if curve_style else "")
            + (f", one column per level of {F.name_of(trials, curve_col)}" if curve_col else "")
            + ": the mean over the completed trials of the line"
            + (
                f", pooled over {', '.join(F.name_of(trials, f) for f in curve_pooled)} (no band: it would mix those "
                "settings with the seeds)."
                if curve_pooled
                else ", band: the seeds' min–max (none for one seed)."
            )
            + moving,
            curves,
        )
    )

    out += [_draw(*spec) for spec in D.figure_specs(trials)]  # val/dis metrics, traversals (if recorded)
    if trials.attrs.get("search", "grid") != "grid":
        names = list(objective_names or [])

        out.append(
            _draw(
                "optuna_importances",
                "Optuna parameter importances",
                "Importance of each factor for each objective (Optuna's PED-ANOVA evaluator), over the "
                "complete Optuna trials (each is a point of the space; its value is the mean over seeds).",
                lambda: F.optuna_importances(_optuna_study(trials, optuna_storage), names),
            )
        )
        out.append(
            _draw(
                "optuna_history",
                "Optimisation history",
                "Objective value of each complete Optuna trial by trial number, with the best so far "
                "(one objective) or the Pareto-optimal trials (several). Pruned trials (×, grey) stand at the "
                "last value they reported to the pruner, at an earlier epoch than the complete trials' values; "
                "they are not in the best-so-far line.",
                lambda: F.optuna_history(_optuna_study(trials, optuna_storage), names),
            )
        )
    return out


# ------------------------------------------------------------------------- the folder

CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;max-width:1180px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
.meta{color:#555;font-size:.9em}.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.5em .8em}
figure{margin:1em 0}figure img{max-width:min(100%,980px);height:auto}figcaption{color:#444;font-size:.9em;margin-top:.3em}
table{border-collapse:collapse;font-size:.8em;margin:.6em 0}th,td{padding:.25em .5em;border-bottom:1px solid #e5e5e5;
text-align:left;white-space:nowrap;background:#fff}th{border-bottom:2px solid #999;white-space:normal}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}tr.baseline td{background:#f3f7ff}
.scroll{overflow-x:auto;max-width:100%}.scroll table{margin:0}
.scroll th:first-child,.scroll td:first-child{position:sticky;left:0;z-index:1;box-shadow:1px 0 0 #ccc}
tr.block td{border-top:2px solid #bbb}
pre{white-space:pre-wrap;background:#f7f7f7;padding:.6em}
"""

CONVENTIONS = [
    "Numbers are nats per example on the validation split, at each trial's final epoch "
    "(ELBO with beta = 1 and no free bits, whatever the training objective). Each column header says its "
    "split and sample count: (val, N) averages all N validation examples; IW-NLL (val first N, K) the first N "
    "of them with K importance samples, so it is not on exactly the same examples as the ELBO beside it; MI "
    "(val, N, B) is estimated over batches of B examples.",
    f"{T.CEILING_MARK}: a cell at its estimator's ceiling (MI within {T.CEILING_MARGIN} nats of log B): it bounds "
    "the true value from below and is never marked best.",
    "Cells: mean ± sample std (N−1) over the completed trials of the row, with their count n in "
    "parentheses; one trial has no std. Diverged, pruned, failed and killed trials are counted in "
    "completed/trials but never averaged.",
    "Bold: the best mean of the column, only where it beats the runner-up beyond the seed-to-seed noise (the 95% "
    "confidence interval of their difference excludes 0: paired by seed where both rows have the same seeds, "
    "Welch otherwise). Higher is better for ELBO, active units and MI (↑); lower for recon, IW-NLL and collapsed "
    "fraction (↓); KL (the rate) has no better direction and is not marked.",
    "collapsed: the fraction of latent dims collapsed by the (ε, δ) rule of Lucas et al. 2019 (KL_j(x) < ε for at "
    "least 1 − δ of the validation examples; ε and δ as in the figures' captions).",
    "†k: k of the row's completed trials were still moving at their last epoch (conv/still_moving: over the last "
    "20% of the epochs the held-out ELBO changed by more than 0.5% beyond its noise, or the active units by one or "
    "more). Their numbers compare training lengths as well as settings.",
]


def _levels_text(trials: pd.DataFrame) -> list[str]:
    lines = []
    for f in trials.attrs.get("factors", []):
        if f in trials:
            lv = F.levels(trials[f])
            if F.many_levels(trials[f]):  # a sampled range: its extent, not a list of 6-digit floats
                shown = f"{len(lv)} values from {F.short_level(float(lv[0]))} to {F.short_level(float(lv[-1]))}"
            else:
                shown = ", ".join(F.fmt_level(v) for v in lv[:12]) + (f", … ({len(lv)} values)" if len(lv) > 12 else "")
            common = trials.attrs.get("factor_common", {}).get(f)
            if common:  # left out of the labels: said once here
                shown += "; in every level: " + ", ".join(f"{k}={level_label(v)}" for k, v in sorted(common.items()))
            lines.append(f"{f}: {shown}")
    return lines


def render_report(
    trials: pd.DataFrame,
    out: Path,
    *,
    group_by: Sequence[str] | None = None,
    baseline: Sequence[str] | dict[str, Any] | None = None,
    formats: Sequence[str] = FORMATS,
    collapse_axes: Sequence[str] | None = None,
    curves_by: str | None = None,
    histories: pd.DataFrame | None = None,
    optuna_storage: str | None = None,
    objective_names: Sequence[str] | None = None,
) -> Report:
    """Write the report of ``trials`` (a ``trials_frame``) into folder ``out``.

    ``group_by``: factors (paths or short names) of the ablation table; default all. ``baseline``:
    ``["factor=level", ...]`` or {path: level}. ``formats``: any of md, html, tex, csv; the
    figures (PNG) are drawn for md and html. ``collapse_axes``: one or two factors of the collapse map
    (default beta and free bits). ``curves_by``: the factor of the training curves
    (default beta, else the first grouping factor). Raises ReportError for bad input.
    """
    factors = list(trials.attrs.get("factors", []))
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ReportError(f"--format: unknown {', '.join(bad)}; choose from {', '.join(FORMATS)}")

    def resolve(option: str, name: str) -> str:
        try:
            return resolve_factor(name, factors)
        except ReportError as e:
            raise ReportError(f"{option}: {e}") from None

    group_by = list(dict.fromkeys(resolve("--group-by", g) for g in (group_by or factors)))
    missing = [g for g in group_by if g not in trials]
    if missing:
        raise ReportError(f"factor {missing[0]} has no column in the record (no trial has it as a param or point)")
    collapse_axes = [resolve("--collapse-axes", a) for a in collapse_axes] if collapse_axes else None
    if collapse_axes and len(collapse_axes) > 2:
        raise ReportError("--collapse-axes: give one or two factors, e.g. beta,free_bits")
    curves_by = resolve("--curves-by", curves_by) if curves_by else None
    if isinstance(baseline, dict):
        base = {resolve("--baseline", k): v for k, v in baseline.items()}
        base = T.parse_baseline([f"{k}={F.fmt_level(v)}" for k, v in base.items()], trials, group_by)
    else:
        base = T.parse_baseline(list(baseline or []), trials, group_by)

    table = T.ablation_table(trials, group_by, base, metrics=T.split_metrics(trials) + D.table_metrics(trials))
    if trials.attrs.get("search", "grid") != "grid" and set(group_by) == set(F.varied(trials)):
        table = T.best_first(table, (list(objective_names or []) or ["val/elbo"])[0])
    # a sampled factor (a float per point) has no levels to average within: left out of the marginal table
    marginal_factors = [f for f in F.varied(trials) if not F.many_levels(trials[f])]
    marginal = T.marginal_table(trials, marginal_factors) if len(marginal_factors) > 1 else None
    if marginal is not None:
        marginal.attrs["left_out"] = [f for f in F.varied(trials) if F.many_levels(trials[f])]
    figs = (
        []
        if not {"md", "html"} & set(formats)
        else make_figures(
            trials,
            group_by,
            curves_by=curves_by,
            collapse_axes=collapse_axes,
            histories=histories,
            optuna_storage=optuna_storage,
            objective_names=objective_names,
        )
    )
    out.mkdir(parents=True, exist_ok=True)
    report = Report(out, figures=figs, table=table)

    def write(name: str, data: str | bytes) -> None:
        p = out / name
        p.write_bytes(data) if isinstance(data, bytes) else p.write_text(data, encoding="utf-8")
        report.files.append(p)

    for fig in figs:
        stale = out / f"{fig.key}.png"
        if fig.png is not None:
            write(f"{fig.key}.png", fig.png)
        elif stale.exists():
            stale.unlink()  # a figure of an earlier report that this one could not draw
    counts = T.state_counts(trials)
    repro = reproducibility(trials)
    write("environment.json", json.dumps(repro, indent=2, sort_keys=True) + "\n")
    if "csv" in formats:
        write("ablation.csv", T.to_csv(table))
        if marginal is not None:
            write(
                "marginal.csv",
                marginal.assign(level=marginal["level"].map(F.fmt_level)).to_csv(index=False, float_format="%.17g"),
            )
        write("trials.csv", _trials_csv(trials))
    if "tex" in formats:
        write("ablation.tex", T.to_latex(table))
        if marginal is not None:
            write("marginal.tex", T.marginal_latex(marginal))
    if "md" in formats:
        write("ablation.md", T.to_markdown(table))
        write("report.md", _markdown(trials, table, counts, figs, formats, marginal, repro))
    if "html" in formats:
        write("index.html", _html(trials, table, counts, figs, formats, marginal, repro))
    return report


BIT_FOR_BIT = (
    "Bit-for-bit: the same study run again on the same machine with the same library versions gives the same "
    "numbers, digit for digit (the seed fixes the initialisation, the minibatch order and every noise draw)."
)
WITHIN_NOISE = (
    "Within noise: on another CPU model (other floating-point kernels and vector widths) or with other library "
    "versions the trials take other rounding paths, so the numbers differ in their last digits and a long "
    "training can drift further; they stay within the seed-to-seed spread. Compare a rerun with the table's "
    "std, not digit by digit (a trial still moving at its last epoch, †, may also flip its convergence flag)."
)


def reproducibility(trials: pd.DataFrame) -> dict[str, Any]:
    """What the report states about reproducing it, and the machines behind it (environment.json)."""
    from vaebench.record.environment import environment

    return {
        "trained_on": list(trials.attrs.get("environments") or []),
        "rendered_on": environment(),
        "bit_for_bit": BIT_FOR_BIT,
        "within_noise": WITHIN_NOISE,
    }


def _reproducibility_lines(rep: dict[str, Any]) -> list[str]:
    from vaebench.record.environment import describe

    trained = rep["trained_on"]
    lines = [
        "Trials trained on: " + "; and ".join(describe(e) for e in trained)
        if trained
        else "Trials trained on: not recorded (the record predates vaebench keeping its machine)."
    ]
    lines.append("Report rendered on: " + describe(rep["rendered_on"]) + ".")
    return [rep["bit_for_bit"], rep["within_noise"], *lines, "The same facts as JSON: environment.json."]


def _trials_csv(trials: pd.DataFrame) -> str:
    t = trials.copy()
    for c in t.columns:
        if t[c].dtype == object:
            t[c] = t[c].map(
                lambda v: (
                    json.dumps(list(v) if isinstance(v, tuple) else v) if isinstance(v, (list, dict, tuple)) else v
                )
            )
    return t.to_csv(index=False, float_format="%.17g")


def _header_facts(trials: pd.DataFrame, table: pd.DataFrame) -> list[str]:
    a = trials.attrs
    facts = [
        f"record: parent run {a.get('parent_run_id')} in {a.get('tracking_uri')}",
        f"search: {a.get('search')}; seeds: {', '.join(map(str, a.get('seeds', [])))}; {len(trials)} trial runs",
        f"generated {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M UTC} by vaebench report",
    ]
    return facts


def _markdown(
    trials: pd.DataFrame,
    table: pd.DataFrame,
    counts: pd.DataFrame,
    figs: list[Figure],
    formats: Sequence[str],
    marginal: pd.DataFrame | None = None,
    repro: dict[str, Any] | None = None,
) -> str:
    a = trials.attrs
    lines = [f"# Study `{a.get('study')}`", ""]
    if a.get("description"):
        lines += [a["description"].strip(), ""]
    lines += [f"- {x}" for x in _header_facts(trials, table)] + [""]
    lines += ["## Factors", ""] + [f"- `{x.split(': ', 1)[0]}`: {x.split(': ', 1)[1]}" for x in _levels_text(trials)]
    lines += ["", "## Trials by state", "", "| state | trials |", "|:--|--:|"]
    lines += [f"| {r.state} | {r.trials} |" for r in counts.itertuples()] + [f"| **total** | **{len(trials)}** |", ""]
    for fig in figs:
        lines += [f"## {fig.title}", ""]
        if fig.png is not None:
            lines += [f"![{fig.title}]({fig.key}.png)", "", f"*{fig.caption}*", ""]
        else:
            lines += [f"> {fig.note}", ""]
    conv = _convergence_text(trials)
    if conv:
        lines += ["## Convergence", "", conv, ""]
    lines += ["## Ablation table", "", _table_intro(table), "", T.to_markdown(table)]
    if T.ceiling_text(table):
        lines += [f"**{T.ceiling_text(table)}**", ""]
    lines += [f"- {c}" for c in CONVENTIONS] + [""]
    if marginal is not None:
        lines += ["## Marginal table", "", T.marginal_caption(marginal), "", T.marginal_markdown(marginal)]
    files = [
        f
        for f, fmt in (
            ("ablation.tex", "tex"),
            ("marginal.tex", "tex"),
            ("ablation.csv", "csv"),
            ("marginal.csv", "csv"),
            ("trials.csv", "csv"),
        )
        if fmt in formats
    ]
    if files:
        lines += [
            "Also in this folder: "
            + ", ".join(f"`{f}`" for f in files)
            + " (the tables in LaTeX with booktabs and at full precision, and every trial).",
            "",
        ]
    if repro:
        lines += ["## Reproducibility", ""] + [f"- {x}" for x in _reproducibility_lines(repro)] + [""]
    return "\n".join(lines)


def _table_intro(table: pd.DataFrame) -> str:
    names = ", ".join(F.name_of(table, f) for f in table.attrs["group_by"])
    text = f"Rows: the levels of {names}. Cells: mean ± std ({T.n_meaning(table)})."
    if table.attrs.get("ranked_by"):  # a search: a row per sampled point
        seeds = table.attrs.get("seeds") or []
        text = (
            f"Rows: the {len(table)} points the {table.attrs.get('search')} search sampled, best first by "
            f"{table.attrs['ranked_by']}; a row's trials are that point's seeds ({len(seeds)} per point: "
            f"{', '.join(map(str, seeds))}). Cells: mean ± std ({T.n_meaning(table)})."
            + (
                " With one seed per point every cell is a single trial (n = 1): no std and no test of one point "
                "against another beyond the noise; rerun with more seeds (e.g. --set seeds=[0,1,2]) for a spread."
                if len(seeds) <= 1
                else ""
            )
            + " Levels are rounded to 3 significant digits; ablation.csv and trials.csv hold them in full."
        )
    base = table.attrs.get("baseline")
    if base:
        text += (
            " Δ: the difference of a cell's mean to the baseline row ("
            + ", ".join(f"{F.name_of(table, f)}={F.fmt_level(v)}" for f, v in base.items())
            + ") with the same levels of the other factors, and its 95% confidence interval over seeds [lo, hi]: "
            "paired by seed when both rows hold the same seeds (a seed fixes the initialisation and the minibatch "
            "order, and the evaluation noise is shared), Welch's unequal-variance interval otherwise; * where "
            "the interval excludes 0."
        )
    return text


def _convergence_text(trials: pd.DataFrame) -> str | None:
    """The report's paragraph on trials still moving at their last epoch (None: not recorded)."""
    done = trials[trials["state"] == "completed"]
    if T.MOVING not in done or done[T.MOVING].isna().all():
        return None
    moving = done[done[T.MOVING] == 1]
    text = (
        f"{len(moving)} of {len(done)} completed trials were still moving at their last epoch "
        "(conv/still_moving: over the last 20% of the epochs, val/elbo changed by more than 0.5% and by more "
        "than three standard errors of a fitted line, or val/active_units changed by one or more)."
    )
    if len(moving):
        factors = F.varied(trials)
        keys, order = F.point_keys(moving, factors)
        counts = keys.value_counts()
        text += " Their rows carry a † in the table: their numbers compare training lengths as much as settings. "
        if len(order) <= 6:
            text += (
                "Configurations: "
                + "; ".join(
                    f"{F.config_label(k, [F.name_of(trials, f) for f in factors])} ({counts[k]})" for k in order
                )
                + "."
            )
        else:  # many: by factor level, as a share of that level's completed trials
            text += (
                "Still moving, by level: "
                + "; ".join(
                    F.name_of(trials, f)
                    + " "
                    + ", ".join(
                        f"{F.fmt_level(v)}: {int((moving[f].map(F.hashable) == F.hashable(v)).sum())}/"
                        f"{int((done[f].map(F.hashable) == F.hashable(v)).sum())}"
                        for v in F.levels(done[f])
                    )
                    for f in factors
                )
                + "."
            )
    return text


def _html(
    trials: pd.DataFrame,
    table: pd.DataFrame,
    counts: pd.DataFrame,
    figs: list[Figure],
    formats: Sequence[str],
    marginal: pd.DataFrame | None = None,
    repro: dict[str, Any] | None = None,
) -> str:
    a = trials.attrs
    e = html.escape
    body = [f"<h1>Study <code>{e(str(a.get('study')))}</code></h1>"]
    if a.get("description"):
        body += [f"<p>{e(p.strip())}</p>" for p in a["description"].strip().split("\n\n")]
    body.append("<p class='meta'>" + "<br>".join(e(x) for x in _header_facts(trials, table)) + "</p>")
    body.append(
        "<h2>Factors</h2><ul>"
        + "".join(
            f"<li><code>{e(x.split(': ', 1)[0])}</code>: {e(x.split(': ', 1)[1])}</li>" for x in _levels_text(trials)
        )
        + "</ul>"
    )
    body.append(
        "<h2>Trials by state</h2><table class='counts'><thead><tr><th>state</th><th class='num'>trials"
        "</th></tr></thead><tbody>"
        + "".join(f"<tr><td>{e(r.state)}</td><td class='num'>{r.trials}</td></tr>" for r in counts.itertuples())
        + f"<tr><td><b>total</b></td><td class='num'><b>{len(trials)}</b></td></tr></tbody></table>"
    )
    body.append(
        "<h2>Contents</h2><ul>"
        + "".join(f"<li><a href='#{f.key}'>{e(f.title)}</a></li>" for f in figs)
        + "<li><a href='#ablation'>Ablation table</a>"
        "</li>"
        + ("<li><a href='#marginal'>Marginal table</a></li>" if marginal is not None else "")
        + ("<li><a href='#reproducibility'>Reproducibility</a></li>" if repro else "")
        + "</ul>"
    )
    for fig in figs:
        body.append(f"<h2 id='{fig.key}'>{e(fig.title)}</h2>")
        if fig.png is not None:
            b64 = base64.b64encode(fig.png).decode()
            body.append(
                f"<figure><img alt='{e(fig.title)}' src='data:image/png;base64,{b64}'>"
                f"<figcaption>{e(fig.caption)}</figcaption></figure>"
            )
        else:
            body.append(f"<p class='note'>{e(fig.note or '')}</p>")
    conv = _convergence_text(trials)
    if conv:
        body.append(f"<h2 id='convergence'>Convergence</h2><p>{e(conv)}</p>")
    body.append(f"<h2 id='ablation'>Ablation table</h2><p>{e(_table_intro(table))}</p>")
    body.append("<div class='scroll'>" + T.to_html(table) + "</div>")
    if T.ceiling_text(table):
        body.append(f"<p class='note'>{e(T.ceiling_text(table))}</p>")
    body.append("<ul>" + "".join(f"<li>{e(c)}</li>" for c in CONVENTIONS) + "</ul>")
    if marginal is not None:
        body.append(f"<h2 id='marginal'>Marginal table</h2><p>{e(T.marginal_caption(marginal))}</p>")
        body.append("<div class='scroll'>" + T.marginal_html(marginal) + "</div>")
    if "tex" in formats:
        body.append("<h3>LaTeX (booktabs)</h3><pre>" + e(T.to_latex(table)) + "</pre>")
    if repro:
        body.append(
            "<h2 id='reproducibility'>Reproducibility</h2><ul>"
            + "".join(f"<li>{e(x)}</li>" for x in _reproducibility_lines(repro))
            + "</ul>"
        )
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>vaebench report: {e(str(a.get('study')))}</title><style>{CSS}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
