"""The ablation table: one row per combination of the grouping factors' levels, one column
group per held-out metric, each cell mean ± std over the row's completed trials (its seeds),
with the count; renderers to Markdown, LaTeX (booktabs) and CSV.

Conventions (documented in the report itself):

- only completed trials enter a cell; the ``trials`` column counts every trial of the row
  and names the others (diverged, pruned, failed, killed);
- std is the sample standard deviation (N-1); with one trial it is undefined and not shown;
- the best mean of a column is marked (bold) in the direction of ``METRICS``: ELBO, active
  units and MI higher, reconstruction, IW-NLL and collapsed fraction lower; KL has no better
  direction (it is the rate, traded against distortion) and is never marked; the mark needs
  the best row to differ from the runner-up beyond the seed-to-seed noise (its 95% interval,
  ``significance.difference``, excludes zero), so ties and noise get no mark;
- with a baseline, each cell also shows the difference of its mean to the mean of the
  baseline row that has the same levels of the other grouping factors, with its 95%
  confidence interval over seeds (paired by seed where the seeds pair up, Welch otherwise)
  and a * when the interval excludes zero;
- a row that pools trials over factors not in ``group_by`` says so (``attrs["pooled"]``): its
  n counts trials, not seeds;
- a † counts the row's completed trials still moving at their last epoch (``conv/still_moving``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import pandas as pd
import yaml

from vaebench.record.results import STATE_ORDER, ReportError, resolve_factor
from vaebench.report.figures import fmt_level, hashable, levels, many_levels, name_of, point_keys, short_level
from vaebench.report.significance import difference


@dataclass(frozen=True)
class TableMetric:
    key: str
    label: str
    better: str | None  # "max", "min" or None (never marked)
    decimals: int
    unit: str = ""


MOVING = "conv/still_moving"

METRICS = [
    TableMetric("val/elbo", "ELBO", "max", 2, "nats"),
    TableMetric("val/recon", "recon", "min", 2, "nats"),
    TableMetric("val/kl", "KL", None, 2, "nats"),
    TableMetric("val/active_units", "active units", "max", 1),
    TableMetric("val/mi", "MI", "max", 2, "nats"),
    TableMetric("val/iw_nll", "IW-NLL", "min", 2, "nats"),
    TableMetric("val/collapsed_fraction", "collapsed", "min", 2, "fraction"),
]


#: the disentanglement scores' names in figures (vaebench.report.disentanglement_figures)
DIS_LABELS = {
    "val/dis/beta_vae": "BetaVAE score",
    "val/dis/factor_vae": "FactorVAE score",
    "val/dis/mig": "MIG",
    "val/dis/dci_disentanglement": "DCI disentanglement",
    "val/dis/dci_completeness": "DCI completeness",
    "val/dis/dci_informativeness": "DCI informativeness",
    "val/dis/sap": "SAP",
    "val/dis/modularity": "modularity",
}
#: ablation-table columns (higher is better for every one)
DIS_TABLE_METRICS = [
    TableMetric(
        k,
        {
            "val/dis/dci_disentanglement": "DCI-D",
            "val/dis/dci_completeness": "DCI-C",
            "val/dis/dci_informativeness": "DCI-I",
            "val/dis/beta_vae": "BetaVAE",
            "val/dis/factor_vae": "FactorVAE",
        }.get(k, v),
        "max",
        3,
    )
    for k, v in DIS_LABELS.items()
]


def dis_present(trials: pd.DataFrame) -> list[str]:
    """The val/dis metrics the record holds a value of, in DIS_LABELS order."""
    return [k for k in DIS_LABELS if k in trials and trials[k].notna().any()]


def dis_table_metrics(trials: pd.DataFrame) -> list[TableMetric]:
    """The disentanglement columns of the ablation table: those the record has."""
    keys = dis_present(trials)
    return [m for m in DIS_TABLE_METRICS if m.key in keys]


def split_metrics(trials: pd.DataFrame) -> list[TableMetric]:
    """The table's columns with the split they are on: ``METRICS`` (validation) as they are when the
    record has no test split; with one (data.kind mnist, fashion_mnist, a data plugin's test), each
    labelled "(val)" and followed by the same metric on the test split, "(test)", the final numbers
    nothing was tuned on (docs/data.md)."""
    tests = [
        replace(m, key="test/" + m.key.removeprefix("val/"), label=f"{m.label} (test)")
        for m in METRICS
        if ("test/" + m.key.removeprefix("val/")) in trials
        and trials["test/" + m.key.removeprefix("val/")].notna().any()
    ]
    if not tests:
        return list(METRICS)
    return [replace(m, label=f"{m.label} (val)") for m in METRICS] + tests


def parse_baseline(items: Sequence[str], trials: pd.DataFrame, group_by: Sequence[str]) -> dict[str, Any]:
    """``["objective.beta=1", "anneal=none"]`` -> {factor path: level}. Each factor must be a
    grouping factor and each value one of its levels (as a number, as its label, or as
    written in the study). Raises ReportError naming the problem."""
    factors = trials.attrs.get("factors", list(group_by))
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ReportError(f"--baseline {item!r}: expected dotted.path=value, e.g. objective.beta=1")
        try:
            f = resolve_factor(key.strip(), factors)
        except ReportError as e:
            raise ReportError(f"--baseline {item!r}: {e}") from None
        if f not in group_by:
            raise ReportError(
                f"--baseline {item!r}: {f} is not a grouping factor of the table "
                f"(grouping by {', '.join(group_by)}); add --group-by {f}"
            )
        text = text.strip()
        try:
            parsed = yaml.safe_load(text)
        except yaml.YAMLError:
            parsed = text
        lv = levels(trials[f])
        match = [v for v in lv if _same(v, parsed) or fmt_level(v) == text or str(v) == text]
        if not match:
            raise ReportError(
                f"--baseline {item!r}: {text!r} is not a level of {f}; its levels are: "
                + ", ".join(fmt_level(v) for v in lv)
            )
        out[f] = match[0]
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, tuple) and isinstance(b, list):
        b = tuple(b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(b, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=0)
    try:
        return bool(a == b)
    except Exception:
        return False


def ablation_table(
    trials: pd.DataFrame,
    group_by: Sequence[str],
    baseline: dict[str, Any] | None = None,
    metrics: Sequence[TableMetric] = METRICS,
) -> pd.DataFrame:
    """The ablation table as a DataFrame, one row per combination of ``group_by`` levels
    present in the record (in display order), with columns:

    - one per grouping factor (its path), holding the level;
    - ``trials`` (all trials of the row), ``completed``, ``excluded`` ("1 diverged, 2 failed");
    - per metric key ``m``: ``m mean``, ``m std`` (N-1), ``m n`` (completed trials with a
      value), ``m best`` (bool, metrics with a direction), and with ``baseline``
      ``m delta`` (mean minus the matching baseline row's mean);
    - with ``baseline``: ``baseline`` (bool, the row is a baseline row).

    ``baseline`` is {factor: level} as from ``parse_baseline``.
    """
    group_by = list(group_by)
    if not group_by:
        raise ReportError("the ablation table needs at least one grouping factor")
    keys_col, keys = point_keys(trials, group_by)
    code = keys_col.map({k: i for i, k in enumerate(keys)}).astype(int)  # tuples would become a MultiIndex
    counts = trials["state"].groupby(code).value_counts().unstack(fill_value=0)
    done = trials["state"] == "completed"
    present = [m.key for m in metrics if m.key in trials]
    agg = trials.loc[done, present].astype(float).groupby(code[done]).agg(["mean", "std", "count"])
    states = STATE_ORDER + sorted(set(counts.columns) - set(STATE_ORDER))
    rows = []
    for i, key in enumerate(keys):
        row: dict[str, Any] = dict(zip(group_by, key))
        c = counts.loc[i] if i in counts.index else pd.Series(dtype=int)
        row["trials"] = int(c.sum())
        row["completed"] = int(c.get("completed", 0))
        row["excluded"] = ", ".join(f"{int(c[s])} {s}" for s in states if s != "completed" and c.get(s, 0))
        for m in metrics:
            have = m.key in present and i in agg.index
            n = int(agg.at[i, (m.key, "count")]) if have else 0
            row[f"{m.key} mean"] = float(agg.at[i, (m.key, "mean")]) if n else math.nan
            row[f"{m.key} std"] = float(agg.at[i, (m.key, "std")]) if n > 1 else math.nan
            row[f"{m.key} n"] = n
        rows.append(row)
    table = pd.DataFrame(rows)
    values = _cell_values(trials, code, done, present)  # {(row, metric): {seed: value} or [values]}
    moving = trials[MOVING].where(done).eq(1) if MOVING in trials else pd.Series(False, index=trials.index)
    table["still_moving"] = [int(moving[code == i].sum()) for i in range(len(keys))]
    for m in metrics:
        if m.better is None:
            continue
        col = table[f"{m.key} mean"]
        table[f"{m.key} best"] = False
        ranked = col.dropna().sort_values(ascending=m.better == "min")
        if len(ranked) >= 2:  # the best, if it beats the runner-up beyond the noise
            first, second = ranked.index[0], ranked.index[1]
            d = difference(values.get((first, m.key), []), values.get((second, m.key), []))
            table.loc[first, f"{m.key} best"] = d.significant
    if baseline:
        others = [f for f in group_by if f not in baseline]
        is_base = pd.Series(True, index=table.index)
        for f, v in baseline.items():
            is_base &= table[f].map(lambda x, v=v: _same(x, hashable(v)))
        if not is_base.any():
            raise ReportError(
                "--baseline: no row of the table has "
                + ", ".join(f"{name_of(trials, f)}={fmt_level(v)}" for f, v in baseline.items())
            )
        table["baseline"] = is_base
        other_key = list(zip(*(table[f] for f in others))) if others else [()] * len(table)
        base_rows = {k: i for i, (k, b) in enumerate(zip(other_key, is_base)) if b}
        base_of = [base_rows.get(k) for k in other_key]
        for m in metrics:
            diffs = [
                difference(values.get((i, m.key), []), values.get((b, m.key), [])) if b is not None and i != b else None
                for i, b in enumerate(base_of)
            ]
            table[f"{m.key} delta"] = [
                d.delta if d else 0.0 if i == b else math.nan  # a baseline row: 0
                for d, i, b in zip(diffs, range(len(diffs)), base_of)
            ]
            table[f"{m.key} delta_lo"] = [d.lo if d else math.nan for d in diffs]
            table[f"{m.key} delta_hi"] = [d.hi if d else math.nan for d in diffs]
            table[f"{m.key} delta_test"] = [d.test if d else "" for d in diffs]
            table[f"{m.key} delta_sig"] = [bool(d and d.significant) for d in diffs]
    ordered = group_by + ["trials", "completed", "excluded", "still_moving"] + (["baseline"] if baseline else [])
    for m in metrics:
        ordered += [
            c
            for c in (
                f"{m.key} mean",
                f"{m.key} std",
                f"{m.key} n",
                f"{m.key} delta",
                f"{m.key} delta_lo",
                f"{m.key} delta_hi",
                f"{m.key} delta_test",
                f"{m.key} delta_sig",
                f"{m.key} best",
            )
            if c in table
        ]
    ceilings = mi_ceiling(trials)
    if ceilings is not None and "val/mi mean" in table:
        # a cell at the estimator's ceiling: log B of the row's batch size (B may be a factor)
        b = trials["metrics.mi_batch_size"] if "metrics.mi_batch_size" in trials else None
        row_b = [float(b[code == i].max()) if b is not None else ceilings[0] for i in range(len(keys))]
        table["val/mi ceiling"] = [
            bool(not pd.isna(v) and v >= math.log(bb) - CEILING_MARGIN) for v, bb in zip(table["val/mi mean"], row_b)
        ]
        ordered.append("val/mi ceiling")
        if "val/mi best" in table:  # a value at the ceiling beats nothing
            table.loc[table["val/mi ceiling"], "val/mi best"] = False
    table = table[ordered]
    table.attrs.update(trials.attrs)
    table.attrs["samples"] = sample_notes(trials)
    if ceilings is not None:
        table.attrs["mi_ceiling"] = {"batch": ceilings[0], "nats": math.log(ceilings[0])}
    factors = trials.attrs.get("factors", group_by)
    pooled = [f for f in factors if f not in group_by and f in trials and len(levels(trials[f])) > 1]
    table.attrs.update(
        group_by=group_by,
        baseline=dict(baseline or {}),
        metrics=[m.key for m in metrics],
        table_metrics=list(metrics),  # with their labels (a split's "(val)" / "(test)")
        pooled=pooled,
        convergence=MOVING in trials,
    )
    return table


#: a metric within this many nats of its estimator's ceiling is flagged: it cannot rank rows
CEILING_MARGIN = 0.05
CEILING_MARK = "⚑"


def mi_ceiling(trials: pd.DataFrame) -> tuple[float] | None:
    """(B,): the MI estimator's batch size (He et al. 2019: MI <= log B), the largest in the record;
    None when the record has no val/mi."""
    if "val/mi" not in trials:
        return None
    b = trials["metrics.mi_batch_size"].dropna() if "metrics.mi_batch_size" in trials else pd.Series(dtype=float)
    return (float(b.max()) if len(b) else 256.0,)  # 256: MetricsConfig's default


def _one(trials: pd.DataFrame, column: str) -> float | None:
    """A setting's value when the record's trials agree on it, else None."""
    if column not in trials:
        return None
    v = trials[column].dropna().unique()
    return float(v[0]) if len(v) == 1 else None


def sample_notes(trials: pd.DataFrame) -> dict[str, str]:
    """Each table metric's split and sample count, as its header shows it: 'val, 360' (all the
    validation examples), 'val first 360, K=16' (iw_nll: the first metrics.iw_examples of them,
    K importance samples), 'val 360, B=256' (MI's batch). The count comes from val/examples,
    which the trials record; records older than that show the split alone."""
    n = _one(trials, "val/examples")
    all_ = "val" + (f", {n:.0f}" if n else "")
    out = {m.key: all_ for m in METRICS}
    iw, k = _one(trials, "metrics.iw_examples"), _one(trials, "metrics.iw_samples")
    if "metrics.iw_examples" in trials and trials["metrics.iw_examples"].isna().all():
        iw_text = all_  # iw_examples: None, every example
    elif iw and n and iw >= n:
        iw_text = all_  # the first iw_examples are all of them
    else:
        iw_text = "val first " + (f"{iw:.0f}" if iw else "N")
    out["val/iw_nll"] = iw_text + (f", K={k:.0f}" if k else "")
    b = _one(trials, "metrics.mi_batch_size")
    out["val/mi"] = all_ + (f", B={b:.0f}" if b else "")
    return out


def ceiling_text(table: pd.DataFrame) -> str | None:
    """The report's sentence on cells at their estimator's ceiling (None: none)."""
    if "val/mi ceiling" not in table or not table["val/mi ceiling"].any():
        return None
    c = table.attrs["mi_ceiling"]
    k, n = int(table["val/mi ceiling"].sum()), len(table)
    return (
        f"{CEILING_MARK} MI at its ceiling in {k} of {n} rows: the estimator (He et al. 2019) averages over batches "
        f"of B = {c['batch']:.0f} examples and cannot exceed log B = {c['nats']:.2f} nats; a cell within "
        f"{CEILING_MARGIN} nats of it says only that I(x; z) is at least that large, so those rows are not "
        "told apart by MI (raise metrics.mi_batch_size to see beyond it)."
    )


def _cell_values(trials: pd.DataFrame, code: pd.Series, done: pd.Series, present: Sequence[str]) -> dict:
    """Each cell's values for the tests: {seed: value} when the row's trials have distinct
    seeds (they pair with another row's), else a plain list (a row pooled over other factors)."""
    out: dict = {}
    seeds = trials["seed"] if "seed" in trials else pd.Series(range(len(trials)), index=trials.index)
    for i, idx in trials.index[done].groupby(code[done]).items():
        s = seeds.loc[idx]
        for key in present:
            v = trials.loc[idx, key].astype(float)
            out[(i, key)] = dict(zip(s, v)) if s.is_unique and s.notna().all() else v.tolist()
    return out


def state_counts(trials: pd.DataFrame) -> pd.DataFrame:
    """Trials of the record by state (every state, zero counts included)."""
    counts = trials["state"].value_counts()
    states = STATE_ORDER[:5] + [s for s in counts.index if s not in STATE_ORDER[:5]]
    return pd.DataFrame({"state": states, "trials": [int(counts.get(s, 0)) for s in states]})


# ------------------------------------------------------------------------- rendering


def _metrics_of(table: pd.DataFrame) -> list[TableMetric]:

    keys = table.attrs.get("metrics") or [m.key for m in METRICS]
    known = {m.key: m for m in METRICS + DIS_TABLE_METRICS}
    known.update({m.key: m for m in table.attrs.get("table_metrics", [])})  # split-labelled columns
    return [known[k] for k in keys if k in known]


def _num(x: float, d: int, signed: bool = False) -> str:
    s = f"{x:+.{d}f}" if signed else f"{x:.{d}f}"
    return s.replace("-0." + "0" * d, "0." + "0" * d) if d else s


def cell(
    row: dict[str, Any], m: TableMetric, *, count: bool = True, tex: bool = False, br: str = " ", star: str = "*"
) -> str:
    """'-88.12 ± 0.31 (3)', '-88.12 (1)', '–' (no value); with a delta
    '<br>Δ +1.20 [+0.50, +1.90]*' (its 95% interval; ``star`` when it excludes zero)."""
    mean, std, n = row[f"{m.key} mean"], row[f"{m.key} std"], int(row[f"{m.key} n"])
    if n == 0 or pd.isna(mean):
        return "--" if tex else "–"
    pm = r" \pm " if tex else " ± "
    text = _num(mean, m.decimals) + (pm + _num(std, m.decimals) if not pd.isna(std) else "")
    if tex:
        text = f"${text}$"
    if count:
        text += f" ({n})"
    if row.get(f"{m.key} ceiling", False):
        text += r"$^{\top}$" if tex else f" {CEILING_MARK}"
    if f"{m.key} delta" in row and not pd.isna(row[f"{m.key} delta"]) and not row.get("baseline", False):
        d = _num(row[f"{m.key} delta"], m.decimals, signed=True)
        lo, hi = row.get(f"{m.key} delta_lo", math.nan), row.get(f"{m.key} delta_hi", math.nan)
        ci = "" if pd.isna(lo) else f" [{_num(lo, m.decimals, signed=True)}, {_num(hi, m.decimals, signed=True)}]"
        mark = star if row.get(f"{m.key} delta_sig", False) else ""
        text += br + (f"$\\Delta\\,{d}${ci}{'$^{*}$' if mark else ''}" if tex else f"Δ {d}{ci}{mark}")
    return text


def _header(m: TableMetric, tex: bool = False, table: pd.DataFrame | None = None) -> str:
    """'ELBO ↑ (val, 360)': the label, the better direction and, with ``table``, the split and
    sample count of its numbers (``sample_notes``)."""
    arrow = {"max": " ↑", "min": " ↓"}.get(m.better or "", "")
    if tex:
        arrow = {"max": r" $\uparrow$", "min": r" $\downarrow$"}.get(m.better or "", "")
    note = ((table.attrs.get("samples") or {}) if table is not None else {}).get(m.key)
    if note and not tex:  # the note names the split: a "(val)" label would say it twice
        return f"{m.label.removesuffix(' (val)')}{arrow} ({note})"
    return f"{m.label}{arrow}"


def best_first(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The table's rows ordered by ``metric``'s mean, best first (its METRICS direction; higher
    for a metric without one), rows without a value last: a search's points, ranked."""
    if f"{metric} mean" not in table:
        return table
    better = next((m.better for m in METRICS if m.key == metric), None) or "max"
    out = table.sort_values(f"{metric} mean", ascending=better == "min", na_position="last", kind="stable")
    out = out.reset_index(drop=True)
    out.attrs.update(table.attrs)
    out.attrs["ranked_by"] = metric
    return out


def _level_cells(table: pd.DataFrame, row: dict[str, Any]) -> list[str]:
    # a many-level factor (a search range) to 3 significant digits; the csv keeps every digit
    cells = [short_level(row[f]) if many_levels(table[f]) else fmt_level(row[f]) for f in table.attrs["group_by"]]
    if row.get("baseline", False):
        cells[0] += " (baseline)"
    return cells


def _trials_cell(row: dict[str, Any]) -> str:
    return (
        f"{row['completed']}/{row['trials']}"
        + (f" ({row['excluded']})" if row["excluded"] else "")
        + (f" †{row['still_moving']}" if row.get("still_moving") else "")
    )


def n_meaning(table: pd.DataFrame) -> str:
    """What a cell's (n) counts: its seeds, or its trials when the row pools other factors."""
    pooled = table.attrs.get("pooled") or []
    if not pooled:
        return "n: the row's completed seeds"
    return (
        "n: the row's completed trials, pooled over its seeds and every level of "
        + ", ".join(name_of(table, f) for f in pooled)
        + " (not a seed-only spread)"
    )


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub Markdown table; best cells in bold."""
    ms = _metrics_of(table)
    head = (
        [name_of(table, f) for f in table.attrs["group_by"]]
        + ["completed/trials"]
        + [_header(m, table=table) for m in ms]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join([":--"] * (len(head) - len(ms)) + ["--:"] * len(ms)) + "|"]
    for row in table.to_dict("records"):
        cells = _level_cells(table, row) + [_trials_cell(row)]
        for m in ms:
            c = cell(row, m, br="<br>", star="\\*")
            cells.append(f"**{c}**" if row.get(f"{m.key} best", False) else c)
        lines.append("| " + " | ".join(x.replace("|", "\\|") for x in cells) + " |")
    return "\n".join(lines) + "\n"


def to_html(table: pd.DataFrame) -> str:
    """An HTML <table> (no styling of its own; the report page styles it)."""
    from html import escape

    ms = _metrics_of(table)
    head = [name_of(table, f) for f in table.attrs["group_by"]] + ["completed/trials"]
    out = [
        "<table class='ablation'>",
        "<thead><tr>"
        + "".join(f"<th>{escape(h)}</th>" for h in head)
        + "".join(f"<th class='num'>{escape(_header(m, table=table))}</th>" for m in ms)
        + "</tr></thead><tbody>",
    ]
    for row in table.to_dict("records"):
        cells = [f"<td>{escape(c)}</td>" for c in _level_cells(table, row) + [_trials_cell(row)]]
        for m in ms:
            c = escape(cell(row, m, br="\n")).replace("\n", "<br>")
            cells.append(
                f"<td class='num best'><b>{c}</b></td>"
                if row.get(f"{m.key} best", False)
                else f"<td class='num'>{c}</td>"
            )
        out.append("<tr" + (" class='baseline'" if row.get("baseline", False) else "") + ">" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


_TEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def tex_escape(s: str) -> str:
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in s).replace("–", "--").replace("Δ", r"$\Delta$")


def to_latex(table: pd.DataFrame, caption: str | None = None, label: str | None = None) -> str:
    """A booktabs ``table`` float ready to paste (needs \\usepackage{booktabs}). The
    completed trials of each row are its $n$ column; a cell shows its own count in
    parentheses only where it differs from $n$ (a metric some trials lack)."""
    ms = _metrics_of(table)
    group_by = table.attrs["group_by"]
    study = table.attrs.get("study", "study")
    head = [tex_escape(name_of(table, f)) for f in group_by] + ["$n$"] + [_header(m, tex=True) for m in ms]
    lines = [
        f"% vaebench ablation table of study {tex_escape(study)}; needs \\usepackage{{booktabs}}",
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        r"\begin{tabular}{" + "l" * len(group_by) + "r" + "r" * len(ms) + "}",
        r"\toprule",
        " & ".join(head) + r" \\",
        r"\midrule",
    ]
    for row in table.to_dict("records"):
        cells = [tex_escape(c) for c in _level_cells(table, row)]
        cells.append(
            str(row["completed"])
            + (r"$^\ddagger$" if row["excluded"] else "")
            + (f"\\,($^\\dagger${row['still_moving']})" if row.get("still_moving") else "")
        )
        for m in ms:
            c = cell(row, m, count=int(row[f"{m.key} n"]) != int(row["completed"]), tex=True)
            cells.append(r"{\boldmath " + c + "}" if row.get(f"{m.key} best", False) else c)
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    excluded = table["excluded"].astype(bool).any()
    pooled = table.attrs.get("pooled") or []
    over = (
        "the $n$ completed seeds of each row"
        if not pooled
        else "the $n$ completed trials of each row (its seeds "
        "and every level of " + ", ".join(tex_escape(name_of(table, f)) for f in pooled) + ", pooled)"
    )
    cap = caption or (
        f"Ablation of {tex_escape(study)}: mean $\\pm$ std (N$-$1) over {over}; "
        "a column's best mean in bold where it beats the runner-up beyond the seed-to-seed noise (95\\% interval "
        "of the difference excludes 0; KL: no better direction)."
        + (r" $^\ddagger$Some trials of the row did not complete and are excluded." if excluded else "")
        + (r" ($^\dagger k$): $k$ trials still moving at their last epoch." if table["still_moving"].any() else "")
        + (
            " $^{\\top}$: MI at its estimator's ceiling ($\\log B$ = "
            + f"{table.attrs['mi_ceiling']['nats']:.2f}"
            + " nats), not ranked."
            if "val/mi ceiling" in table and table["val/mi ceiling"].any()
            else ""
        )
        + (
            " Samples: "
            + "; ".join(
                f"{m.label} {tex_escape(table.attrs['samples'][m.key])}"
                for m in ms
                if m.key in (table.attrs.get("samples") or {})
            )
            + "."
            if table.attrs.get("samples")
            else ""
        )
        + (
            " $\\Delta$: difference to the baseline row with its 95\\% confidence interval over seeds (paired by "
            "seed where the seeds pair up, else Welch); $^{*}$: the interval excludes 0."
            if table.attrs.get("baseline")
            else ""
        )
    )
    lines += [r"\caption{" + cap + "}", r"\label{" + (label or f"tab:{study}-ablation") + "}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def to_csv(table: pd.DataFrame) -> str:
    """Every column of the table at full precision; factor levels as their labels."""
    out = table.copy()
    for f in table.attrs["group_by"]:
        out[f] = out[f].map(fmt_level)
    return out.to_csv(index=False, float_format="%.17g")


# ------------------------------------------------------------------------- marginal table


def marginal_table(
    trials: pd.DataFrame, factors: Sequence[str] | None = None, metrics: Sequence[TableMetric] = METRICS
) -> pd.DataFrame:
    """One block of rows per factor: that factor's levels, every other factor and the seeds
    pooled (a paper's compact main-text table; the full ablation table is the appendix).
    Columns as ``ablation_table``'s plus ``factor``; no best marks (a pooled spread mixes
    settings with seeds, so no test applies)."""
    factors = list(factors or trials.attrs.get("factors", []))
    parts = []
    for f in factors:
        t = ablation_table(trials, [f], metrics=metrics).rename(columns={f: "level"})
        t.insert(0, "factor", f)
        parts.append(t)
    if not parts:
        raise ReportError("the marginal table needs at least one factor")
    out = pd.concat(parts, ignore_index=True)
    out = out[[c for c in out.columns if not c.endswith(" best")]]
    out.attrs.update(trials.attrs)
    out.attrs.update(metrics=[m.key for m in metrics], marginal=factors, samples=sample_notes(trials))
    return out


def marginal_caption(table: pd.DataFrame) -> str:
    left_out = table.attrs.get("left_out") or []
    return (
        "Marginal means: each row is one level of one factor, mean ± std (N−1) (n) over every completed trial "
        "with that level, pooled over the seeds and all levels of the other factors (a spread of settings as much "
        "as of seeds: compare rows within a block, and see the ablation table for the cells)."
        + (
            " Left out: "
            + ", ".join(name_of(table, f) for f in left_out)
            + " (sampled over a range: a value per point, so no level to average; the figures plot them on an axis)."
            if left_out
            else ""
        )
    )


def marginal_markdown(table: pd.DataFrame) -> str:
    ms = _metrics_of(table)
    head = ["factor", "level", "completed/trials"] + [_header(m, table=table) for m in ms]
    lines = ["| " + " | ".join(head) + " |", "|:--|:--|:--|" + "|".join(["--:"] * len(ms)) + "|"]
    last = None
    for row in table.to_dict("records"):
        name = name_of(table, row["factor"]) if row["factor"] != last else ""
        last = row["factor"]
        cells = [name, fmt_level(row["level"]), _trials_cell(row)] + [cell(row, m) for m in ms]
        lines.append("| " + " | ".join(x.replace("|", "\\|") for x in cells) + " |")
    return "\n".join(lines) + "\n"


def marginal_html(table: pd.DataFrame) -> str:
    from html import escape

    ms = _metrics_of(table)
    out = [
        "<table class='ablation marginal'><thead><tr><th>factor</th><th>level</th><th>completed/trials</th>"
        + "".join(f"<th class='num'>{escape(_header(m, table=table))}</th>" for m in ms)
        + "</tr></thead><tbody>"
    ]
    last = None
    for row in table.to_dict("records"):
        first = row["factor"] != last
        last = row["factor"]
        cells = [name_of(table, row["factor"]) if first else "", fmt_level(row["level"]), _trials_cell(row)]
        out.append(
            ("<tr class='block'>" if first else "<tr>")
            + "".join(f"<td>{escape(c)}</td>" for c in cells)
            + "".join(f"<td class='num'>{escape(cell(row, m))}</td>" for m in ms)
            + "</tr>"
        )
    out.append("</tbody></table>")
    return "\n".join(out)


def marginal_latex(table: pd.DataFrame) -> str:
    ms = _metrics_of(table)
    study = table.attrs.get("study", "study")
    lines = [
        f"% vaebench marginal table of study {tex_escape(study)}; needs \\usepackage{{booktabs}}",
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        r"\begin{tabular}{llr" + "r" * len(ms) + "}",
        r"\toprule",
        " & ".join(["factor", "level", "$n$"] + [_header(m, tex=True) for m in ms]) + r" \\",
    ]
    last = None
    for row in table.to_dict("records"):
        if row["factor"] != last:
            lines.append(r"\midrule")
        cells = [
            tex_escape(name_of(table, row["factor"])) if row["factor"] != last else "",
            tex_escape(str(fmt_level(row["level"]))),
            str(row["completed"]),
        ]
        last = row["factor"]
        cells += [cell(row, m, count=int(row[f"{m.key} n"]) != int(row["completed"]), tex=True) for m in ms]
        lines.append(" & ".join(cells) + r" \\")
    cap = (
        "Marginal means of " + tex_escape(study) + r": mean $\pm$ std (N$-$1) over the $n$ completed trials of each "
        "level, pooled over the seeds and every level of the other factors."
    )
    lines += [
        r"\bottomrule",
        r"\end{tabular}",
        r"\caption{" + cap + "}",
        r"\label{tab:" + study + "-marginal}",
        r"\end{table}",
    ]
    return "\n".join(lines) + "\n"
