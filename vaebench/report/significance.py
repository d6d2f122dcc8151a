"""Is a difference between two cells of a table larger than the seed-to-seed noise?

Pure functions on per-seed values. The random seed often matters as much as a
hyperparameter (Locatello et al. 2019), so a table shows a difference as a 95% confidence
interval over seeds and marks it only when the interval excludes zero:

- **paired** (by seed) when both cells hold the same seeds, two or more: a seed fixes the
  initialisation and the minibatch order, and the evaluation noise is shared by all trials
  (common random numbers), so pairing removes what the two cells share; the interval is the
  t interval of the per-seed differences (n - 1 degrees of freedom);
- **Welch** otherwise (different seeds, or a cell pooled over other factors): the unequal
  variance t interval with Welch-Satterthwaite degrees of freedom.

With fewer than two values on a side there is no interval and no mark. With no spread at all
(counts such as active units are often identical across seeds) the interval is the difference itself.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

LEVEL = 0.95


@dataclass(frozen=True)
class Difference:
    delta: float  # mean(a) - mean(b)
    lo: float  # the confidence interval of delta (NaN when there is none)
    hi: float
    test: str  # "paired", "welch" or "" (no interval)

    @property
    def significant(self) -> bool:
        """The interval excludes zero."""
        return self.test != "" and (self.lo > 0 or self.hi < 0)


def _t(q: float, dof: float) -> float:
    from scipy.stats import t

    return float(t.ppf(q, dof))


def difference(
    a: Mapping[int, float] | Sequence[float], b: Mapping[int, float] | Sequence[float], level: float = LEVEL
) -> Difference:
    """mean(a) - mean(b) with its ``level`` confidence interval. Mappings {seed: value} are
    paired when their seeds are the same; sequences (or different seeds) use Welch's test.
    NaN values are dropped first."""
    pairable = isinstance(a, Mapping) and isinstance(b, Mapping)
    if pairable:
        a = {k: float(v) for k, v in a.items() if not math.isnan(float(v))}
        b = {k: float(v) for k, v in b.items() if not math.isnan(float(v))}
    xa = np.array(list(a.values()) if isinstance(a, Mapping) else [v for v in a if not math.isnan(v)], dtype=float)
    xb = np.array(list(b.values()) if isinstance(b, Mapping) else [v for v in b if not math.isnan(v)], dtype=float)
    if not len(xa) or not len(xb):
        return Difference(math.nan, math.nan, math.nan, "")
    delta = float(xa.mean() - xb.mean())
    q = 0.5 + level / 2
    if pairable and set(a) == set(b) and len(a) >= 2:
        d = np.array([a[k] - b[k] for k in sorted(a)])
        sd = float(d.std(ddof=1))  # 0: the same difference in every seed (counts often do): an exact interval
        half = _t(q, len(d) - 1) * sd / math.sqrt(len(d))
        return Difference(delta, delta - half, delta + half, "paired")
    if len(xa) < 2 or len(xb) < 2:
        return Difference(delta, math.nan, math.nan, "")
    va, vb = xa.var(ddof=1) / len(xa), xb.var(ddof=1) / len(xb)
    se = math.sqrt(va + vb)
    if se == 0:  # no spread on either side: the difference is exact
        return Difference(delta, delta, delta, "welch")
    dof = (va + vb) ** 2 / (va**2 / (len(xa) - 1) + vb**2 / (len(xb) - 1))
    half = _t(q, dof) * se
    return Difference(delta, delta - half, delta + half, "welch")
