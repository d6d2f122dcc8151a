"""Soak: many tiny packed trials through the PostgreSQL-backed MLflow server of scripts/cluster.sh
(benchmarks/SOAK.md has the figures).

    scripts/cluster.sh up && . $VAEBENCH_CLUSTER/env      # VAEBENCH_CLUSTER defaults to /tmp/vaebench-cluster
    python benchmarks/soak.py --trials 2000

Runs `vaebench sweep` on a grid of ``--trials`` trials (pPCA, MLP 8 wide, 2 latents, ``--epochs``
epochs, packs of 32) against the cluster, sampling the driver's resident memory twice a second.
Prints the wall time, the driver's peak RSS over the first and the last 10% of the trials, and
the metric values in the store against the values expected. The expected count is computed
independently: one trial of the same shape run in this process (vaebench.core.trial.run_trial)
gives the metrics of each epoch; every trial of the grid logs that many. The store's count is
MLflow's metrics table of the study's live runs (one SQL count: a REST call per run and metric
would take longer than the soak), spot-checked for 20 runs through MLflow's public API.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

STUDY = """\
name: {name}
data: {{kind: ppca, n_samples: 200}}
model: {{kind: mlp, latent_dim: 2, hidden: [8], likelihood: gaussian}}
train: {{epochs: {epochs}, batch_size: 100}}
metrics: {{iw_samples: 2, iw_examples: 20}}
resources: {{cpus_per_trial: 1, pack: 32}}
space:
  objective.beta: [{levels}]
seeds: [0, 1]
search: {{kind: grid}}
"""


def rss_mb(pid: int) -> float:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    m = re.search(r"VmRSS:\s+(\d+) kB", text)
    return int(m.group(1)) / 1024 if m else 0.0


def expected_per_trial(study_path: Path) -> int:
    """Metric values one trial logs: the epochs' metrics of a trial run here (the driver logs every
    epoch's metrics but a diverged epoch's, and nothing at the end)."""
    from vaebench.core.trial import run_trial
    from vaebench.study.spec import load_study

    st = load_study(study_path)
    cfg = st.trial_config(next(st.iter_grid()), st.seeds[0]).model_dump(mode="json")
    return sum(len(m["metrics"]) for m in run_trial(cfg) if m["kind"] == "epoch" and m["state"] != "diverged")


def stored_values(name: str) -> tuple[int, int]:
    """(metric values, live trial runs) of study ``name`` in the cluster's MLflow database."""
    import psycopg2

    con = psycopg2.connect(host=os.environ["PG_SOCKET"], port=os.environ["PG_PORT"], user="vaebench", dbname="mlflow")
    with con, con.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM metrics m JOIN runs r ON m.run_uuid = r.run_uuid JOIN experiments e "
            "ON r.experiment_id = e.experiment_id JOIN tags t ON t.run_uuid = r.run_uuid "
            "WHERE e.name = %s AND r.lifecycle_stage = 'active' AND t.key = 'vaebench.role' AND t.value = 'trial'",
            (name,),
        )
        values = cur.fetchone()[0]
        cur.execute(
            "SELECT count(*) FROM runs r JOIN experiments e ON r.experiment_id = e.experiment_id JOIN tags t "
            "ON t.run_uuid = r.run_uuid WHERE e.name = %s AND r.lifecycle_stage = 'active' "
            "AND t.key = 'vaebench.role' AND t.value = 'trial'",
            (name,),
        )
        runs = cur.fetchone()[0]
    con.close()
    return values, runs


def spot_check(name: str, per_trial: int, n: int = 20) -> bool:
    """``n`` runs read through MLflow's API: each holds ``per_trial`` values, every epoch present."""
    from mlflow import MlflowClient

    client = MlflowClient()
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], "tags.`vaebench.role` = 'trial'", max_results=n)
    counts = [sum(len(client.get_metric_history(r.info.run_id, k)) for k in r.data.metrics) for r in runs]
    return len(runs) == n and all(c == per_trial for c in counts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=2000, help="trials of the grid (even: 2 seeds)")
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    for var in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "PG_SOCKET"):
        if var not in os.environ:
            sys.exit(f"{var} is not set: run scripts/cluster.sh up, then source $VAEBENCH_CLUSTER/env")
    name = f"soak-{int(time.time())}"
    levels = ", ".join(f"{0.001 * (i + 1):.3f}" for i in range(args.trials // 2))
    with tempfile.TemporaryDirectory() as tmp:
        study = Path(tmp) / f"{name}.yaml"
        study.write_text(STUDY.format(name=name, epochs=args.epochs, levels=levels))
        per_trial = expected_per_trial(study)
        cmd = [sys.executable, "-m", "vaebench.cli", "sweep", str(study), "--address", os.environ["RAY_ADDRESS"]]
        cmd += ["--tracking-uri", os.environ["MLFLOW_TRACKING_URI"]]
        started = time.monotonic()
        log = Path(tmp) / "sweep.log"
        with open(log, "w") as out:
            proc = subprocess.Popen(cmd, cwd=tmp, stdout=out, stderr=subprocess.STDOUT, text=True)
            samples: list[tuple[float, float, int]] = []  # (seconds, RSS MB, trials done)
            done = 0
            while proc.poll() is None:
                found = re.findall(r"(\d+)/\d+ done", log.read_text()[-5000:])
                done = int(found[-1]) if found else done
                samples.append((time.monotonic() - started, rss_mb(proc.pid), done))
                time.sleep(0.5)
        wall = time.monotonic() - started
        tail = log.read_text()[-5000:]
    if proc.returncode != 0:
        sys.exit(f"the sweep failed ({proc.returncode}):\n{tail[-3000:]}")
    n = args.trials
    first = max((r for _, r, d in samples if d <= 0.1 * n), default=0.0)
    last = max((r for _, r, d in samples if d >= 0.9 * n), default=samples[-1][1] if samples else 0.0)
    values, runs = stored_values(name)
    expected = per_trial * n
    ok = spot_check(name, per_trial)
    print(f"soak {name}: {n} trials x {args.epochs} epochs, packed (32), through {os.environ['MLFLOW_TRACKING_URI']}")
    print(f"  date {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; machine {platform.node()}, {os.cpu_count()} cores")
    print(f"  wall {wall:.0f} s ({n / wall:.1f} trials/s)")
    print(f"  driver peak RSS: first 10% of trials {first:.0f} MB, last 10% {last:.0f} MB")
    print(f"  trial runs in the store {runs} (expected {n})")
    print(f"  metric values in the store {values:,} (expected {expected:,} = {per_trial} per trial x {n})")
    print(f"  20 runs read through MLflow's API hold {per_trial} values each: {ok}")
    if values != expected or runs != n or not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
