"""Sweep progress: a rich live line on a terminal, plain periodic lines otherwise (CI, logs)."""

from __future__ import annotations

import sys
import time
from collections import Counter

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress

DONE_STATES = ("completed", "diverged", "pruned", "failed")


class Progress:
    """done/total, running, failed, best value, elapsed and ETA."""

    def __init__(self, enabled: bool = True, console: Console | None = None, every: float = 10.0):
        self.enabled, self.every = enabled, every
        self.console = console or Console(stderr=True)
        self.live: RichProgress | None = None
        self.task = None
        self.total, self.started, self.last_line, self.first_done = 0, 0.0, 0.0, 0

    def start(self, name: str, total: int, counts: Counter) -> None:
        self.total, self.started = total, time.monotonic()
        self.first_done = sum(counts[s] for s in DONE_STATES)
        if not self.enabled:
            return
        if self.console.is_terminal:
            self.live = RichProgress(
                TextColumn(f"[bold]{name}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                console=self.console)
            self.live.start()
            self.task = self.live.add_task(name, total=total, completed=self.first_done, info="")
        else:
            self._line(f"sweep {name}: {total} trials, {self.first_done} already done")

    def update(self, counts: Counter, running: int, best: float | None) -> None:
        if not self.enabled:
            return
        done = sum(counts[s] for s in DONE_STATES)
        info = f"running {running}  failed {counts['failed']}  diverged {counts['diverged']}  pruned {counts['pruned']}"
        if best is not None:
            info += f"  best {best:.4g}"
        if self.live is not None:
            self.live.update(self.task, completed=done, info=info)
        elif time.monotonic() - self.last_line >= self.every:
            self._line(f"{done}/{self.total} done  {info}  {self._eta(done)}")

    def _eta(self, done: int) -> str:
        elapsed = time.monotonic() - self.started
        new = done - self.first_done
        if new <= 0:
            return f"elapsed {elapsed:.0f}s"
        return f"elapsed {elapsed:.0f}s  eta {elapsed / new * max(self.total - done, 0):.0f}s"

    def _line(self, text: str) -> None:
        self.last_line = time.monotonic()
        print(text, file=sys.stderr, flush=True)

    def stop(self, counts: Counter) -> None:
        if self.live is not None:
            self.live.stop()
        elif self.enabled:
            done = sum(counts[s] for s in DONE_STATES)
            self._line(f"{done}/{self.total} done  " + "  ".join(f"{k} {v}" for k, v in sorted(counts.items())))
