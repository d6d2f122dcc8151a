"""Trial run names: short enough for the MLflow UI's run column, which shows about 20
characters, and distinct within those 20 for the studies shipped.

``run_name(spec, study.space)`` -> ``"s0 l32 b.5 cyc f.25"``: the seed first (the seeds of a point
otherwise share every other character), then each factor's level, numbers behind the
shortest abbreviation of the factor's name that is unique among the point's factors
(``l`` for model.latent_dim, ``b`` for objective.beta, ``f`` for objective.free_bits),
words without one (``none``, ``lin`` for linear, ``cyc`` for the one cyclical level, ``cyc4,.5``
when another cyclical level differs in its settings).
A name still longer than 20 characters (many factors) starts with ``#`` and 4 hex digits of
the point's key instead, so that its first 20 characters stay distinct; the full levels are
always in the run's params and its ``vaebench.point`` tag.
"""

from __future__ import annotations

from typing import Any

MAX_LEN = 20


def _num(v: float) -> str:
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return str(v)
    s = f"{v:.3g}"
    return s.replace("0.", ".", 1) if s.startswith(("0.", "-0.")) else s


def level_text(v: Any, kinds: dict[str, int] | None = None) -> str:
    """A level in a few characters: numbers compact (.25), words cut to 3 letters when longer
    than 4 (longer where another level of the factor starts alike), a mapping as its kind's 3 letters (and its other values when ``kinds``, the count
    of the factor's levels per kind, says another level has the same kind), a list joined by '-'."""
    if isinstance(v, dict):
        kind = str(v.get("kind", ""))
        if kinds is not None and kinds.get(kind, 0) <= 1:
            return _word(kind, kinds)
        rest = [level_text(x) for k, x in sorted(v.items()) if k != "kind"]
        return _word(kind, kinds) + ",".join(rest)
    if isinstance(v, (list, tuple)):
        return "-".join(level_text(x) for x in v)
    if isinstance(v, (int, float)):
        return _num(v)
    return _word(str(v), kinds)


def _word(s: str, kinds: dict[str, int] | None) -> str:
    """A word cut to 3 letters, or to the shortest prefix no other word level of the factor
    shares (beta_v and beta_t for beta_vae and beta_tcvae)."""
    if len(s) <= 4:
        return s
    others = [k for k in (kinds or {}) if k != s]
    n = 3
    while n < len(s) and any(o.startswith(s[:n]) for o in others):
        n += 1
    return s[:n]


def abbreviations(paths: list[str]) -> dict[str, str]:
    """Each factor path -> the shortest of (first letter, initials, last part, path) of its last
    part that no other factor of the point shares."""

    def candidates(p: str) -> list[str]:
        last = p.rsplit(".", 1)[-1]
        return [last[:1], "".join(w[:1] for w in last.split("_") if w), last, p]

    out = {}
    for p in paths:
        taken = {c for q in paths if q != p for c in candidates(q)}
        out[p] = next((c for c in candidates(p) if c not in taken), p)
    return out


def _kinds(levels: Any) -> dict[str, int] | None:
    if not isinstance(levels, list):
        return None  # a range: numbers only
    out: dict[str, int] = {}
    for v in levels:
        k = v.get("kind", "") if isinstance(v, dict) else v if isinstance(v, str) else None
        if k is not None:
            out[str(k)] = out.get(str(k), 0) + 1
    return out


def run_name(spec: Any, space: dict[str, Any] | None = None) -> str:
    """The run name of a trial spec (``point``, ``seed``, ``point_key``): e.g. 's0 l32 b.5 none f.25'.
    ``space`` (the study's, {path: levels}) lets a mapping level show just its kind when no other
    level of the factor has that kind (cyc rather than cyc4,.5)."""
    point: dict[str, Any] = spec.point
    abbr = abbreviations(list(point))
    parts = [f"s{spec.seed}"]
    for path, v in point.items():
        text = level_text(v, _kinds((space or {}).get(path)) if space is not None else None)
        numeric = isinstance(v, (int, float)) or (isinstance(v, (list, tuple)) and v and isinstance(v[0], (int, float)))
        parts.append(abbr[path] + text if numeric else text)
    name = " ".join(parts)
    if len(name) > MAX_LEN:
        name = f"#{spec.point_key[:4]} {name}"
    return name
