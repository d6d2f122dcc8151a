"""The driver's cost of logging one trial-epoch to a SQLite MLflow store: one log_batch per
epoch (the driver before buffering, the baseline) against vaebench.record.writer's buffer (one
log_batch per run every FLUSH_SECONDS and at the trial's end, several steps per batch).

A sweep is simulated as the driver sees it: TRIALS trials in flight, each sending an epoch of
METRICS metrics every EPOCH_S seconds (the compute happens elsewhere: here a sleep, which
costs the driver nothing). Only the time inside the logging calls is counted. Baseline and
candidate alternate within one run (each repetition measures both, in fresh stores, the order
rotating), and the ratio is taken per repetition, so machine load drift cancels.

    python benchmarks/record_logging.py [--reps 3] [--out benchmarks/RECORD_LOGGING.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mlflow.entities import Metric  # noqa: E402

from vaebench.record.writer import FLUSH_SECONDS, Record  # noqa: E402

TRIALS, EPOCHS, METRICS, EPOCH_S = 4, 24, 40, 0.5


def metrics(epoch: int) -> dict[str, float]:
    return {f"val/kl_dim/{i:02d}" if i < 20 else f"val/m{i}": 1.0 / (epoch + i) for i in range(METRICS)}


def one_run(kind: str, folder: Path) -> tuple[float, float]:
    """(wall s, cpu s) spent in logging calls per trial-epoch."""
    rec = Record(f"sqlite:///{folder}/{kind}.db", "bench")
    parent = rec.start_study("logging benchmark", "name: bench\n", {}).run_id
    runs = [rec.start_trial(parent, f"t{i}", {"seed": i}, {}) for i in range(TRIALS)]
    wall = cpu = 0.0
    for epoch in range(1, EPOCHS + 1):
        time.sleep(EPOCH_S)  # the trials compute
        w0, c0 = time.perf_counter(), time.process_time()
        for run_id in runs:
            if kind == "per-epoch":  # the driver before buffering: one call per epoch and run
                now = int(time.time() * 1000)
                rec.client.log_batch(run_id, metrics=[Metric(k, v, now, epoch) for k, v in metrics(epoch).items()])
            else:
                rec.log_epoch(run_id, epoch, metrics(epoch))
        if kind == "buffered":
            rec.flush_due()
            if epoch == EPOCHS:
                for run_id in runs:
                    rec.flush(run_id)  # the trial ends
        wall += time.perf_counter() - w0
        cpu += time.process_time() - c0
    for run_id in runs:  # the histories are whole either way
        assert [m.step for m in rec.client.get_metric_history(run_id, "val/m30")] == list(range(1, EPOCHS + 1))
    n = TRIALS * EPOCHS
    return wall / n, cpu / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).with_name("RECORD_LOGGING.md")))
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        Record(f"sqlite:///{tmp}/warm.db", "warm")  # the cached empty store is built before timing
        for r in range(args.reps):
            order = ["per-epoch", "buffered"] if r % 2 == 0 else ["buffered", "per-epoch"]
            got = {}
            for kind in order:
                folder = Path(tmp) / f"r{r}"
                folder.mkdir(exist_ok=True)
                got[kind] = one_run(kind, folder)
            rows.append(got)
            print(
                f"rep {r}: per-epoch {got['per-epoch'][0] * 1e3:.2f} ms, buffered {got['buffered'][0] * 1e3:.3f} ms "
                f"per trial-epoch (wall); ratio {got['per-epoch'][0] / got['buffered'][0]:.1f}x",
                flush=True,
            )
    med = lambda xs: statistics.median(xs)  # noqa: E731
    base_w, cand_w = med([g["per-epoch"][0] for g in rows]), med([g["buffered"][0] for g in rows])
    base_c, cand_c = med([g["per-epoch"][1] for g in rows]), med([g["buffered"][1] for g in rows])
    ratio_w = med([g["per-epoch"][0] / g["buffered"][0] for g in rows])
    ratio_c = med([g["per-epoch"][1] / g["buffered"][1] for g in rows])
    text = f"""# Logging cost per trial-epoch (benchmarks/record_logging.py)

{TRIALS} trials in flight, {EPOCHS} epochs each, {METRICS} metrics per epoch, an epoch every {EPOCH_S} s,
FLUSH_SECONDS = {FLUSH_SECONDS}; SQLite store; medians over {args.reps} repetitions, baseline and
candidate measured in the same repetition (order alternating).

| | wall per trial-epoch | CPU per trial-epoch |
|---|---|---|
| one log_batch per epoch (before) | {base_w * 1e3:.2f} ms | {base_c * 1e3:.2f} ms |
| buffered (vaebench.record.writer) | {cand_w * 1e3:.3f} ms | {cand_c * 1e3:.3f} ms |
| ratio (median of per-repetition ratios) | {ratio_w:.1f}x | {ratio_c:.1f}x |

Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, shared with other work while
measured (load average at the end: {os.getloadavg()[0]:.1f}); Python {platform.python_version()}.
"""
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
