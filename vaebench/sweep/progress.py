"""Sweep progress: a rich live line on a terminal, plain periodic lines otherwise (CI, logs).

The driver calls ``start`` once, ``update`` after every change and ``stop`` at the end:

    progress.start(study.name, total, counts, max_trials=opts.max_trials)
    progress.update(counts, running, best_point(finals, "val/elbo", "max"))
    progress.stop(counts)

``best_point`` takes the driver's final results (point key, state, metrics) and returns the
best point's mean over its completed seeds with the metric's name, so the line reads
"best val/elbo -19.08 (mean of 3 seeds)".
"""

from __future__ import annotations

import math
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import BarColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress

DONE_STATES = ("completed", "diverged", "pruned", "failed")


@dataclass(frozen=True)
class Best:
    """The best point so far: ``metric``'s mean over its ``seeds`` completed seeds."""

    metric: str
    value: float
    seeds: int
    point: str = field(default="", compare=False)  # the point's key

    def __str__(self) -> str:
        return f"best {self.metric} {self.value:.4g} (mean of {self.seeds} seed{'s' if self.seeds != 1 else ''})"


def best_point(finals: Iterable[tuple[str, str, dict[str, float]]], metric: str, direction: str = "max") -> Best | None:
    """The best point among ``finals`` = (point key, state, final metrics) per trial: each point's
    value is the mean of ``metric`` over its completed trials (its seeds); ``direction`` is
    "max" or "min". None before any completed trial has the metric."""
    per_point: dict[str, list[float]] = {}
    for key, state, metrics in finals:
        v = metrics.get(metric)
        if state == "completed" and v is not None and math.isfinite(v):
            per_point.setdefault(key, []).append(float(v))
    if not per_point:
        return None
    means = {k: sum(v) / len(v) for k, v in per_point.items()}
    pick = (max if direction == "max" else min)(means, key=means.__getitem__)
    return Best(metric, means[pick], len(per_point[pick]), pick)


def planned(total: int, already_done: int, max_trials: int | None) -> int:
    """Trials this sweep will have ended when it stops: all of them, or those done before plus
    at most ``max_trials`` new ones (``--max-trials``)."""
    return total if max_trials is None else min(total, already_done + max_trials)


class Progress:
    """done/planned, running, failed, the best point, elapsed and ETA (for the planned trials)."""

    def __init__(self, enabled: bool = True, console: Console | None = None, every: float = 10.0):
        self.enabled, self.every = enabled, every
        self.console = console or Console(stderr=True)
        self.live: RichProgress | None = None
        self.task = None
        self.total, self.target, self.started, self.last_line, self.first_done = 0, 0, 0.0, 0.0, 0

    def start(self, name: str, total: int, counts: Counter, max_trials: int | None = None) -> None:
        self.total, self.started = total, time.monotonic()
        self.first_done = sum(counts[s] for s in DONE_STATES)
        self.target = planned(total, self.first_done, max_trials)
        if not self.enabled:
            return
        if self.console.is_terminal:
            self.live = RichProgress(
                TextColumn(f"[bold]{name}"),
                BarColumn(),
                # finished trials, whole: the bar also counts running trials' epochs, the counter never does
                TextColumn("{task.fields[finished]}/{task.total:.0f}"),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self.console,
            )
            self.live.start()
            self.task = self.live.add_task(
                name, total=self.target, completed=self.first_done, info="", finished=self.first_done
            )
        else:
            self._line(
                f"sweep {name}: {total} trials, {self.first_done} already done"
                + (f", at most {self.target - self.first_done} more (--max-trials)" if self.target < total else "")
            )

    def update(self, counts: Counter, running: int, best: Best | float | None = None, partial: float = 0.0) -> None:
        """``partial``: the running trials' share of their epochs done, summed (trials in packs end
        together, so without it a packed sweep would show 0 done and no ETA until its packs end)."""
        if not self.enabled:
            return
        done = sum(counts[s] for s in DONE_STATES)
        info = f"running {running}"
        if running and partial > 0:
            info += f" ({partial / running:.0%} of their epochs)"
        info += f"  failed {counts['failed']}  diverged {counts['diverged']}  pruned {counts['pruned']}"
        if isinstance(best, Best):
            info += f"  {best}"
        elif best is not None:  # a bare number (older callers): say what it is not
            info += f"  best {best:.4g}"
        if self.live is not None:
            self.live.update(self.task, completed=done + partial, info=info, finished=done)
        elif time.monotonic() - self.last_line >= self.every:
            self._line(f"{done}/{self.target} done{self._of()}  {info}  {self._eta(done + partial)}")

    def _of(self) -> str:
        return f" (of {self.total})" if self.target < self.total else ""

    def eta_seconds(self, done: float) -> float | None:
        """Seconds left for the planned trials at the rate of this sweep so far (None before any
        progress); ``done`` counts a running trial's epochs done as that fraction of a trial."""
        new = done - self.first_done
        if new <= 0:
            return None
        return (time.monotonic() - self.started) / new * max(self.target - done, 0)

    def _eta(self, done: float) -> str:
        elapsed = time.monotonic() - self.started
        eta = self.eta_seconds(done)
        return f"elapsed {elapsed:.0f}s" + (f"  eta {eta:.0f}s" if eta is not None else "")

    def _line(self, text: str) -> None:
        self.last_line = time.monotonic()
        print(text, file=sys.stderr, flush=True)

    def stop(self, counts: Counter) -> None:
        if self.live is not None:
            self.live.stop()
        elif self.enabled:
            done = sum(counts[s] for s in DONE_STATES)
            self._line(
                f"{done}/{self.target} done{self._of()}  " + "  ".join(f"{k} {v}" for k, v in sorted(counts.items()))
            )
