"""Is a trial still moving at its last epoch? A pure function of its per-epoch history.

A study compares settings by their final metrics; a trial whose held-out ELBO is still
climbing, or whose latent dims are still switching on or off, compares training lengths as
much as settings. ``convergence`` looks at the last ``WINDOW`` (20%) of the epochs and
returns three metrics, recorded beside the final epoch's others:

- ``conv/elbo_rel_change``: the change of ``val/elbo`` across the window, from a
  least-squares line through the window's evaluations (so one noisy evaluation does not
  decide it), divided by |mean val/elbo in the window|. Positive: still improving;
  negative: getting worse (e.g. overfitting).
- ``conv/active_units_change``: ``val/active_units`` at the last evaluation minus at the
  first of the window (dims switching on: positive; collapsing: negative).
- ``conv/still_moving``: 1 when the ELBO moved (|elbo_rel_change| > ``ELBO_TOL`` and, with
  three or more evaluations in the window, the fitted change exceeds ``NOISE_Z`` times its
  standard error from the line's residuals, so that evaluation noise alone never sets it)
  or when |active_units_change| >= ``UNITS_TOL``; else 0.

The window holds the evaluations at epochs >= epochs - round(WINDOW * epochs) (at least the
last epoch and the one before it); when validation ran too rarely (``metrics.every``) for two
evaluations to fall in it, the window reaches back to the latest evaluation before it. With
fewer than two evaluations in all, nothing is returned: the question has no answer.

Thresholds (documented in the README): ``ELBO_TOL`` = 0.5% is about 0.1 nats on digits,
above the epoch-to-epoch evaluation noise of a trained model (0.02-0.05 nats measured on
collapse.yaml's trials) and below the ELBO gained between epoch 40 and 200 by a trial that
was still learning (collapse.yaml, latent 32, beta 2: see studies/collapse.yaml).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

WINDOW = 0.2
ELBO_TOL = 0.005
NOISE_Z = 3.0  # pure noise sets the flag in ~2% of trials (t with 7 dof: 9 evaluations)
UNITS_TOL = 1.0
KEYS = ("val/elbo", "val/active_units")  # the history a trainer must keep for this


def window_start(epochs: int) -> int:
    """The first epoch of the window: the last 20% of ``epochs`` (never fewer than 2 epochs)."""
    return max(1, epochs - max(1, round(WINDOW * epochs)))


def _window(points: Sequence[tuple[int, float]], epochs: int) -> list[tuple[int, float]]:
    pts = sorted((int(e), float(v)) for e, v in points if v is not None and math.isfinite(float(v)))
    start = window_start(epochs)
    inside = [p for p in pts if p[0] >= start]
    before = [p for p in pts if p[0] < start]
    if len(inside) < 2 and before:
        inside = before[-1:] + inside
    return inside if len(inside) >= 2 else []


def convergence(history: Mapping[str, Sequence[tuple[int, float]]], epochs: int) -> dict[str, float]:
    """``history``: {metric key: [(epoch, value), ...]} of a trial's evaluations (at least
    ``val/elbo``; ``val/active_units`` when logged); ``epochs``: the trial's planned epochs.
    Returns the ``conv/*`` metrics above, or {} when there are fewer than two evaluations."""
    elbo = _window(history.get("val/elbo", ()), epochs)
    if not elbo:
        return {}
    e = np.array([p[0] for p in elbo], dtype=float)
    v = np.array([p[1] for p in elbo], dtype=float)
    span = e[-1] - e[0]
    if len(e) > 2:  # least squares, and the standard error of its slope from the residuals
        slope, icept = np.polyfit(e, v, 1)
        resid = v - (slope * e + icept)
        se_change = math.sqrt(float((resid**2).sum()) / (len(e) - 2) / float(((e - e.mean()) ** 2).sum())) * span
    else:
        slope, se_change = (v[-1] - v[0]) / span, 0.0
    change = slope * span
    rel = float(change / max(abs(v.mean()), 1e-12))
    out = {"conv/elbo_rel_change": rel}
    moving = abs(rel) > ELBO_TOL and abs(change) > NOISE_Z * se_change
    units = _window(history.get("val/active_units", ()), epochs)
    if units:
        du = units[-1][1] - units[0][1]
        out["conv/active_units_change"] = float(du)
        moving = moving or abs(du) >= UNITS_TOL
    out["conv/still_moving"] = float(moving)
    return out
