"""vaebench benchmarks: how much of the machine goes to training.

    python benchmarks/run.py            # full run (~15 min on 2 cores, plus a one-off record build)
    python benchmarks/run.py --quick    # small sizes, 1 repetition: for development

Measures, prints and writes benchmarks/RESULTS.md (``--quick`` writes
benchmarks/.cache/RESULTS-quick.md unless ``--out`` is given):

1. trial overhead: a bare PyTorch VAE loop against one vaebench trial (metrics every
   epoch, MLflow logging on), same data, model and threads; plus the full path, a
   1-trial ``run_sweep`` on Ray;
2. metric cost: one evaluation of every validation metric as a fraction of a training
   epoch, and which metric dominates;
3. sweep scaling: 8 identical short trials one at a time vs one 2-worker sweep;
4. record and report at scale: 1,000 trials x 50 epochs written through
   ``vaebench.record.vocab.Record``, then ``vaebench report`` timed;
5. peak memory of the driver, of one trial and of the report.

Every measurement runs in a fresh child process (``--child NAME``) so that peak memory is
per process and nothing leaks from one benchmark into the next. Benchmarks are not tests:
nothing here asserts a timing. README.md says what each figure means.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import synthetic  # noqa: E402  (benchmarks/ is not a package)

perf = time.perf_counter


# ============================================================================ sizes


@dataclass(frozen=True)
class Sizes:
    n_train: int  # examples of the benchmark data (MNIST-like: 60,000 x 784 + 10,000 val)
    n_val: int
    overhead_epochs: int  # epochs of each bare / vaebench run in benchmark 1
    overhead_reps: int
    fullpath_reps: int  # 1-trial run_sweep runs per thread count
    scale_trials: int  # benchmark 3
    scale_epochs: int
    scale_reps: int
    record_grid: tuple[int, int, int]  # benchmark 4: beta levels x free_bits levels x seeds = trials
    record_epochs: int
    log_sample: tuple[int, int]  # fresh-store logging sample per run: (reps, trials per rep)
    report_reps: int


FULL = Sizes(
    n_train=60_000,
    n_val=10_000,
    overhead_epochs=2,
    overhead_reps=3,
    fullpath_reps=1,
    scale_trials=8,
    scale_epochs=1,
    scale_reps=3,
    record_grid=(10, 10, 10),
    record_epochs=50,
    log_sample=(3, 4),
    report_reps=3,
)
QUICK = Sizes(
    n_train=6_000,
    n_val=1_000,
    overhead_epochs=2,
    overhead_reps=1,
    fullpath_reps=1,
    scale_trials=8,
    scale_epochs=1,
    scale_reps=1,
    record_grid=(5, 2, 2),
    record_epochs=10,
    log_sample=(1, 2),
    report_reps=1,
)

TARGETS = {
    "overhead": 0.95,  # vaebench steps/s over bare steps/s, at least
    "metric_fraction": 0.10,  # one evaluation over one training epoch, at most
    "scaling": 1.15,  # sweep wall over (sum of single trial times / workers), at most
    "report_s": 15.0,  # vaebench report on 1,000 x 50, under
}


def trial_config(data_path: str, epochs: int, threads: int, seed: int = 0) -> dict[str, Any]:
    """The benchmark trial: MLP VAE 784-400-20, Bernoulli, batch 128, Adam 1e-3, default metrics
    (every epoch), on the synthetic npz."""
    return {
        "data": {"kind": "npz", "path": data_path, "train_key": "x_train", "val_key": "x_val"},
        "model": {"kind": "mlp", "latent_dim": 20, "hidden": [400], "likelihood": "bernoulli"},
        "train": {
            "epochs": epochs,
            "batch_size": 128,
            "optimizer": "adam",
            "lr": 1e-3,
            "device": "cpu",
            "threads": threads,
        },
        "seed": seed,
    }


def study_dict(name: str, data_path: str, epochs: int, cpus: int, space: dict[str, list], seeds: list[int]) -> dict:
    base = trial_config(data_path, epochs, cpus)
    base.pop("seed")
    base["train"].pop("threads")  # a study sets threads from resources.cpus_per_trial
    return {
        "name": name,
        "description": "vaebench benchmark",
        **base,
        "resources": {"cpus_per_trial": cpus},
        "space": space,
        "seeds": seeds,
        "search": {"kind": "grid"},
    }


# ============================================================================ helpers


def loadavg() -> list[float]:
    return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]


def maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def rss_mib(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


def stats(values: list[float]) -> dict[str, float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return {"median": math.nan, "min": math.nan, "max": math.nan, "n": 0}
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def quiet() -> None:
    """Children: no MLflow/alembic INFO lines, no library warnings in the logs."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    for name in ("mlflow", "alembic", "ray", "optuna"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (through /proc/PID/task/TID/children)."""
    out, stack = [], [pid]
    while stack:
        p = stack.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                kids = [int(k) for k in Path(f"/proc/{p}/task/{t}/children").read_text().split()]
            except OSError:
                continue
            out += kids
            stack += kids
    return out


CLK_TCK = os.sysconf("SC_CLK_TCK")


class ProcSampler(threading.Thread):
    """Samples this process's descendants (Ray's raylet, GCS and workers) every ``interval`` s:
    the largest peak RSS (VmHWM) of a Ray worker (``ray::`` processes), the largest total RSS of
    all descendants together, and each descendant's CPU time (the last value seen; summed by
    ``cpu_s``)."""

    def __init__(self, interval: float = 2.0):
        super().__init__(daemon=True)
        self.interval, self.stop = interval, threading.Event()
        self.worker_peak_mib = 0.0
        self.descendants_peak_mib = 0.0
        self.cpu: dict[int, float] = {}
        self.own_cpu_s = 0.0  # this thread's CPU time, counted in the driver's: reported apart

    def run(self) -> None:
        me = os.getpid()
        while not self.stop.is_set():
            try:
                self._sample(me)
            except Exception:
                pass
            self.own_cpu_s = time.thread_time()
            self.stop.wait(self.interval)

    def cpu_s(self) -> float:
        return sum(self.cpu.values())

    def _sample(self, me: int) -> None:
        total = 0.0
        for pid in descendants(me):
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
                stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            self.cpu[pid] = (int(stat[11]) + int(stat[12])) / CLK_TCK  # utime + stime
            fields = {
                ln.split(":")[0]: ln.split()[1] for ln in status.splitlines() if ln.startswith(("VmRSS", "VmHWM"))
            }
            total += int(fields.get("VmRSS", 0)) / 1024
            if cmd.startswith(b"ray::"):
                self.worker_peak_mib = max(self.worker_peak_mib, int(fields.get("VmHWM", 0)) / 1024)
        self.descendants_peak_mib = max(self.descendants_peak_mib, total)


def cpu_self_children() -> tuple[float, float]:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


# ============================================================================ children
# Each child gets a JSON dict of arguments and returns a JSON dict; run in a fresh process.


# The four loops of benchmark 1. Each runs in its own process: torch's flush-denormal setting is
# per thread and OpenMP threads copy it once, when created, so loops with different settings
# cannot share a process (nor its thread pool).
LOOPS = {
    "bare": "the plainest loop: PyTorch defaults (for-loop Adam, denormals kept)",
    "bare_fused": "bare + Adam(fused=True)",
    "bare_tuned": "bare + Adam(fused=True) + torch.set_flush_denormal(True): vaebench's two CPU settings",
    "vaebench": "vaebench.core.train.train with metrics every epoch + Record.log_epoch to SQLite",
}


def loop_process(conn, kind: str, a: dict) -> None:
    """One loop of benchmark 1, driven over ``conn``: ("rep", r) starts repetition r, ("epoch",)
    runs one epoch and answers its timings, ("end",) answers the repetition's totals,
    ("metrics",) times benchmark 2 on the trained model (vaebench only), ("stop",) ends."""
    quiet()
    import torch

    import vaebench.core.train as vt

    threads, epochs = a["threads"], a["epochs"]
    if kind == "bare_tuned":
        torch.set_flush_denormal(True)  # before the first parallel op creates the thread pool
    if kind == "vaebench":
        vt.configure_torch(threads)  # as run_trial does in a sweep worker, before loading data
    torch.set_num_threads(threads)
    from bare_loop import bare_epochs

    from vaebench.data import Dataset, load_data
    from vaebench.record.writer import Record
    from vaebench.study.config import TrialConfig

    base = trial_config(a["data"], epochs, threads)
    cfg0 = TrialConfig.model_validate(base)
    t = perf()
    data = load_data(cfg0.data, cfg0.data_seed)
    load_s = perf() - t
    fused = {"fused": kind in ("bare_fused", "bare_tuned")}
    steps_per_epoch = math.ceil(data.train.shape[0] / 128)

    eval_s: list[float] = []
    eval_cpu: list[float] = []
    if kind == "vaebench":
        original_evaluate = vt.evaluate

        def timed_evaluate(*args, **kwargs):  # instrumentation only: the same call, timed
            t0, c0 = perf(), time.process_time()
            out = original_evaluate(*args, **kwargs)
            eval_s.append(perf() - t0)
            eval_cpu.append(time.process_time() - c0)
            return out

        vt.evaluate = timed_evaluate
        record = Record(a["uri"], "bench-overhead")
        parent_id = record.start_study("benchmark 1", "name: bench-overhead\n", {}).run_id
        small = Dataset(data.train[:2560], data.val[:1024], data.meta)  # warm-up: first-call costs
        for _ in vt.train(TrialConfig.model_validate({**base, "train": {**base["train"], "epochs": 1}}), small):
            pass
    else:
        for _ in bare_epochs(data.train, 1, max_steps=20, **fused):
            pass

    def vaebench_trial(r: int, cfg, log: dict):
        """The trial as the driver sees it: start_trial, per epoch train + evaluate (inside the
        generator) and log_epoch, end_trial after the last; yields after each epoch."""
        run_id = record.start_trial(
            parent_id, f"rep{r}", {**cfg.flat(), "seed": cfg.seed}, {"vaebench.config_hash": cfg.config_hash()}
        )
        gen = vt.train(cfg, data)
        for e in range(1, epochs + 1):
            c_prev, n_eval = time.process_time(), len(eval_cpu)
            rep = next(gen)
            # CPU of this epoch's training: the generator's step minus its evaluation
            log["epoch_cpu"].append(time.process_time() - c_prev - sum(eval_cpu[n_eval:]))
            t1 = perf()
            record.log_epoch(run_id, rep.epoch, rep.metrics)
            log["log_s"].append(perf() - t1)
            log["epoch_s"].append(rep.metrics["train/epoch_seconds"])
            if e == epochs:
                next(gen, None)  # let the generator finish
                record.end_trial(run_id, rep.state)
            log["model"], log["keys"] = rep.model, sorted(rep.metrics)
            yield steps_per_epoch

    def bare_trial(r: int):
        for steps, _ in bare_epochs(data.train, epochs, seed=r, **fused):
            yield steps

    conn.send({"ready": True, "data_load_s": load_s})
    run, acc, log = None, {}, {}
    while True:
        msg = conn.recv()
        if msg[0] == "rep":
            r = msg[1]
            acc = {"seconds": 0.0, "cpu_s": 0.0, "steps": 0}
            log = {"epoch_cpu": [], "log_s": [], "epoch_s": [], "model": None, "keys": []}
            eval_s.clear()
            eval_cpu.clear()
            run = (
                vaebench_trial(r, TrialConfig.model_validate({**base, "seed": r}), log)
                if kind == "vaebench"
                else bare_trial(r)
            )
        elif msg[0] == "epoch":
            t0, c0 = perf(), time.process_time()
            steps = next(run)
            acc["seconds"] += perf() - t0
            acc["cpu_s"] += time.process_time() - c0
            acc["steps"] += steps
            conn.send(True)
        elif msg[0] == "end":
            res = {**acc, "steps_per_s": acc["steps"] / acc["seconds"], "steps_per_cpu_s": acc["steps"] / acc["cpu_s"]}
            if kind == "vaebench":
                res.update(
                    {
                        "train_loop_s": sum(log["epoch_s"]),
                        "eval_s": sum(eval_s),
                        "log_s": sum(log["log_s"]),
                        # start/end trial, model and optimiser creation, generator overhead
                        "other_s": acc["seconds"] - sum(log["epoch_s"]) - sum(eval_s) - sum(log["log_s"]),
                        "epoch_seconds": log["epoch_s"],
                        "eval_seconds": list(eval_s),
                        "log_seconds": log["log_s"],
                        "metric_fraction": [e / s for e, s in zip(eval_s, log["epoch_s"])],
                        "epoch_cpu_seconds": log["epoch_cpu"],
                        "eval_cpu_seconds": list(eval_cpu),
                        "metric_fraction_cpu": [e / s for e, s in zip(eval_cpu, log["epoch_cpu"])],
                        "metric_keys": log["keys"],
                    }
                )
            conn.send(res)
        elif msg[0] == "metrics":
            conn.send(time_metrics(log["model"], data, cfg0.metrics, msg[1]))
        elif msg[0] == "stop":
            conn.send(
                {
                    "maxrss_mib": maxrss_mib(),
                    "torch_threads": torch.get_num_threads(),
                    "n_train": int(data.train.shape[0]),
                    "n_val": int(data.val.shape[0]),
                }
            )
            return


def time_metrics(model, data, mcfg, reps: int) -> dict:
    """Benchmark 2: each metric of vaebench.core.metrics.METRICS once on the trained model, and evaluate."""
    import torch

    from vaebench.core.metrics import METRICS, encode, evaluate

    model.eval()
    parts: dict[str, list[float]] = {"encode": [], **{k: [] for k in METRICS}, "evaluate (all)": []}
    with torch.no_grad():
        for i in range(reps):
            g = torch.Generator().manual_seed(1_000_003 + i)
            t = perf()
            enc = encode(model, data.val, mcfg.eval_batch_size)
            parts["encode"].append(perf() - t)
            for name, fn in METRICS.items():
                t = perf()
                fn(model, enc, mcfg, g)
                parts[name].append(perf() - t)
            t = perf()
            evaluate(model, data.val, mcfg, g)
            parts["evaluate (all)"].append(perf() - t)
    return {k: stats(v) for k, v in parts.items()}


def child_overhead(a: dict) -> dict:
    """Benchmarks 1 and 2 at ``threads``: the four LOOPS, each in its own process, advance one
    epoch at a time in turn (who goes first rotates), only one running at any moment, so that a
    change in machine load hits all alike; then every metric is timed on the trained model."""
    import multiprocessing as mp

    from vaebench.study.config import TrialConfig

    ctx = mp.get_context("spawn")
    procs, conns = {}, {}
    for kind in LOOPS:
        parent, child = ctx.Pipe()
        procs[kind] = ctx.Process(target=loop_process, args=(child, kind, a), daemon=True)
        procs[kind].start()
        child.close()  # ours: a process that dies then gives EOFError instead of a hang
        conns[kind] = parent
    try:
        hello = {k: c.recv() for k, c in conns.items()}  # each loaded its data and warmed up
        order = list(LOOPS)
        reps = []
        for r in range(a["reps"]):
            for c in conns.values():
                c.send(("rep", r))
            for e in range(a["epochs"]):
                k = (r * a["epochs"] + e) % len(order)
                for kind in order[k:] + order[:k]:
                    conns[kind].send(("epoch",))
                    conns[kind].recv()
            res: dict[str, Any] = {}
            for kind, c in conns.items():
                c.send(("end",))
                res[kind] = c.recv()
            vb = res["vaebench"]
            res["ratio"] = vb["steps_per_s"] / res["bare"]["steps_per_s"]
            res["cpu_ratio"] = vb["steps_per_cpu_s"] / res["bare"]["steps_per_cpu_s"]
            res["ratio_fused"] = vb["steps_per_s"] / res["bare_fused"]["steps_per_s"]
            res["ratio_tuned"] = vb["steps_per_s"] / res["bare_tuned"]["steps_per_s"]
            res["loadavg"] = loadavg()
            reps.append(res)
        conns["vaebench"].send(("metrics", a["metric_reps"]))
        parts = conns["vaebench"].recv()
        final = {}
        for kind, c in conns.items():
            c.send(("stop",))
            final[kind] = c.recv()
    finally:
        for p in procs.values():
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    epoch_all = [s for r in reps for s in r["vaebench"]["epoch_seconds"]]
    return {
        "threads": a["threads"],
        "data_load_s": hello["vaebench"]["data_load_s"],
        "n_train": final["vaebench"]["n_train"],
        "n_val": final["vaebench"]["n_val"],
        "reps": reps,
        "metrics_config": TrialConfig.model_validate(trial_config(a["data"], 1, 1)).metrics.model_dump(),
        "metric_parts_s": parts,
        "epoch_seconds": stats(epoch_all),
        "metric_keys": reps[-1]["vaebench"]["metric_keys"],
        "torch_threads": final["vaebench"]["torch_threads"],
        "maxrss_mib": final["vaebench"]["maxrss_mib"],
        "loops": LOOPS,
        "maxrss_by_loop_mib": {k: v["maxrss_mib"] for k, v in final.items()},
    }


def child_sweep(a: dict) -> dict:
    """A grid study through ``vaebench.sweep.driver.run_sweep`` (the full path: Ray, driver, MLflow).
    Ray start and shutdown are timed by wrapping them; the wall time includes both."""
    quiet()
    import ray
    import yaml

    import vaebench.sweep.driver as vs
    from vaebench.record.writer import Record
    from vaebench.study.spec import Study

    timing: dict[str, float] = {}
    connect, shutdown = vs.connect_ray, ray.shutdown

    def timed_connect(*args, **kwargs):
        t = perf()
        connect(*args, **kwargs)
        timing["ray_start_s"] = perf() - t

    def timed_shutdown(*args, **kwargs):
        t = perf()
        shutdown(*args, **kwargs)
        timing["ray_shutdown_s"] = perf() - t

    driver_init = vs.Driver.__init__

    def timed_driver_init(self, *args, **kwargs):  # the MLflow record (store creation) and Optuna set-up
        t = perf()
        driver_init(self, *args, **kwargs)
        timing["driver_init_s"] = perf() - t

    vs.connect_ray, ray.shutdown, vs.Driver.__init__ = timed_connect, timed_shutdown, timed_driver_init
    study = Study.model_validate(a["study"])
    sampler = ProcSampler()
    sampler.start()
    cpu0 = cpu_self_children()
    t0, epoch0 = perf(), time.time()
    summary = vs.run_sweep(
        study, yaml.safe_dump(a["study"], sort_keys=False), vs.SweepOptions(tracking_uri=a["uri"], workers=a["workers"])
    )
    wall = perf() - t0
    cpu1 = cpu_self_children()
    sampler.stop.set()
    sampler.join()
    rec = Record(a["uri"], study.name)
    runs = rec.trial_runs(rec.parent_run().run_id)
    trial_s = [(r.end_time - r.start_time) / 1000 for r in runs]
    starts = [r.start_time / 1000 - epoch0 for r in runs]
    ends = [r.end_time / 1000 - epoch0 for r in runs]
    timing.update(first_trial_start_s=min(starts), last_trial_end_s=max(ends), makespan_s=max(ends) - min(starts))
    epoch_s = [m.value for r in runs for m in rec.client.get_metric_history(r.run_id, "train/epoch_seconds")]
    return {
        "wall_s": wall,
        **timing,
        "counts": dict(summary.counts),
        "exit_code": summary.exit_code,
        "failed": summary.failed,
        "trial_run_s": trial_s,
        "epoch_seconds": epoch_s,
        "driver_cpu_s": cpu1[0] - cpu0[0] - sampler.own_cpu_s,
        "sampler_cpu_s": sampler.own_cpu_s,
        "reaped_children_cpu_s": cpu1[1] - cpu0[1],
        "ray_processes_cpu_s": sampler.cpu_s(),
        "driver_maxrss_mib": maxrss_mib(),
        "ray_worker_peak_mib": sampler.worker_peak_mib,
        "ray_processes_peak_mib": sampler.descendants_peak_mib,
        "loadavg": loadavg(),
    }


def run_trials(config: dict, seeds: list[int]) -> dict:
    """``vaebench.core.trial.run_trial`` for each seed, one after another (what a Ray worker runs);
    each timed from config to its end message (data load included). Raises unless all complete."""
    from vaebench.core.trial import run_trial

    times, cpu, states = [], [], []
    for seed in seeds:
        t, c = perf(), time.process_time()
        end = None
        for msg in run_trial({**config, "seed": seed}):
            end = msg
        times.append(perf() - t)
        cpu.append(time.process_time() - c)
        states.append(end["state"])
        if end["state"] != "completed":
            raise RuntimeError(f"trial seed {seed} ended {end['state']}: {end.get('traceback', '')}")
    return {"trial_s": times, "trial_cpu_s": cpu, "states": states}


def child_sequential(a: dict) -> dict:
    """Trials one at a time in one process, 1 thread (``run_trials``)."""
    quiet()
    import vaebench.core.trial  # noqa: F401  (imports before the memory reading, as in a worker)

    rss_imports = rss_mib()
    return {
        **run_trials(a["config"], a["seeds"]),
        "rss_after_imports_mib": rss_imports,
        "maxrss_mib": maxrss_mib(),
        "loadavg": loadavg(),
    }


def _trials_process(conn, a: dict, seeds: list[int]) -> None:
    """One of the control's processes: imports done, wait for the start, then ``run_trials``."""
    quiet()
    import vaebench.core.trial  # noqa: F401  (imports are not timed)

    conn.send("ready")
    conn.recv()
    t = perf()
    run_trials(a["config"], seeds)
    conn.send(perf() - t)


def child_concurrent(a: dict) -> dict:
    """The hardware control of benchmark 3: the same trials in ``workers`` plain processes at once
    (no Ray, no driver, no MLflow), each running its share one after another, started together
    once every process has imported. How well two trials share the cores by themselves."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    seeds, w = a["seeds"], a["workers"]
    pipes, procs = [], []
    for i in range(w):
        parent, child = ctx.Pipe()
        procs.append(ctx.Process(target=_trials_process, args=(child, a, seeds[i::w]), daemon=True))
        procs[-1].start()
        child.close()  # ours: a process that dies then gives EOFError instead of a hang
        pipes.append(parent)
    try:
        for p in pipes:
            p.recv()
        t = perf()
        for p in pipes:
            p.send("go")
        spans = [p.recv() for p in pipes]
        wall = perf() - t
    finally:
        for p in procs:
            p.join(timeout=30)
    return {"wall_s": wall, "process_s": spans, "loadavg": loadavg()}


def record_metrics(rng, beta: float, free_bits: float, epoch: int, epochs: int, latent: int = 20) -> dict[str, float]:
    """Plausible metrics of one epoch (the keys a real trial logs): fewer active dims at higher
    beta, free bits keep some open, curves that converge."""
    p = 1 - math.exp(-3 * epoch / epochs)
    active = max(0, min(latent, round(latent / (1 + beta) + 4 * free_bits)))
    kl_dims = [
        (2.5 * p * math.exp(-j / 6) + 0.05 * rng.random()) if j < active else 0.002 * rng.random()
        for j in range(latent)
    ]
    kl = sum(kl_dims)
    recon = 190 - 90 * p - 2.0 * kl + rng.normal(0, 0.5)
    m = {
        "train/loss": recon + beta * kl,
        "train/recon": recon,
        "train/kl": kl,
        "train/regulariser": kl,
        "train/kl_weight": beta,
        "train/epoch_seconds": 5 + rng.random(),
        "val/elbo": -(recon + kl + 1),
        "val/recon": recon + 0.5,
        "val/kl": kl,
    }
    m.update({f"val/kl_dim/{j:02d}": v for j, v in enumerate(kl_dims)})
    m.update(
        {
            "val/active_units": float(active),
            "val/mi": min(kl, math.log(256)),
            "val/iw_nll": recon + kl - 2.0,
            "val/collapsed_dims": float(latent - active),
            "val/collapsed_fraction": (latent - active) / latent,
            "val/posterior_collapse": float(active == 0),
        }
    )
    return m


def child_record(a: dict) -> dict:
    """Write a grid study into a fresh MLflow SQLite store exactly as the sweep driver does
    (``Driver._launch``/``_handle``/``_finish``): start_study, then per trial start_trial with the
    flattened config and the driver's tags, one ``log_epoch`` per epoch, end_trial. No artifacts."""
    quiet()
    import json as _json

    import numpy as np
    import yaml

    from vaebench.record.naming import run_name
    from vaebench.record.vocab import HASH, POINT
    from vaebench.record.writer import Record
    from vaebench.study.spec import Study, expand

    nb, nf, ns = a["grid"]
    betas = [round(0.25 * 2 ** (i / 2), 4) for i in range(nb)]
    free_bits = [round(0.1 * i, 2) for i in range(nf)]
    sd = study_dict(
        a["name"],
        a["data"],
        a["epochs"],
        1,
        {"objective.beta": betas, "objective.free_bits": free_bits},
        list(range(ns)),
    )
    study = Study.model_validate(sd)
    specs = expand(study)
    rec = Record(a["uri"], study.name)
    t0 = perf()
    parent = rec.start_study(
        study.description,
        yaml.safe_dump(sd, sort_keys=False),
        {
            "vaebench.factors": _json.dumps(list(study.space)),
            "vaebench.search": "grid",
            "vaebench.seeds": _json.dumps(study.seeds),
        },
    )
    start_study_s = perf() - t0
    start_s, log_s, end_s, log_cpu = [], [], [], 0.0
    for i, spec in enumerate(specs):
        rng = np.random.default_rng(i)
        tags = {
            HASH: spec.config_hash,
            POINT: _json.dumps(spec.point),
            "vaebench.point_key": spec.point_key,
            "vaebench.attempt": "0",
        }
        t = perf()
        run_id = rec.start_trial(
            parent.run_id, run_name(spec, study.space), {**spec.config.params(), "seed": spec.seed}, tags
        )
        start_s.append(perf() - t)
        beta, fb = spec.config.objective.beta, spec.config.objective.free_bits
        for epoch in range(1, a["epochs"] + 1):
            metrics = record_metrics(rng, beta, fb, epoch, a["epochs"])
            t, c = perf(), time.process_time()
            rec.log_epoch(run_id, epoch, metrics)
            log_s.append(perf() - t)
            log_cpu += time.process_time() - c
        t = perf()
        rec.end_trial(run_id, "completed")
        end_s.append(perf() - t)
        if a.get("progress") and (i + 1) % 50 == 0:
            print(f"    record: {i + 1}/{len(specs)} trials, {perf() - t0:.0f} s", file=sys.stderr, flush=True)
    rec.end_study(parent.run_id)
    wall = perf() - t0
    return {
        "trials": len(specs),
        "epochs": a["epochs"],
        "metrics_per_epoch": len(metrics),
        "wall_s": wall,
        "start_study_s": start_study_s,
        "start_trial_s": stats(start_s),
        "log_epoch_s": stats(log_s),
        "log_epoch_mean_s": sum(log_s) / len(log_s),
        "log_epoch_cpu_mean_s": log_cpu / len(log_s),
        "end_trial_s": stats(end_s),
        "per_trial_s": wall / len(specs),
        "maxrss_mib": maxrss_mib(),
        "loadavg": loadavg(),
        "db_mib": Path(a["uri"].removeprefix("sqlite:///")).stat().st_size / 2**20,
    }


def child_readback(a: dict) -> dict:
    """Reading the record back in Python: ``mlflow.search_runs`` (all runs, as pandas) and
    ``vaebench.record.results`` (trials_frame, histories_frame of every metric) when it exists."""
    quiet()
    import mlflow

    out: dict[str, Any] = {}
    mlflow.set_tracking_uri(a["uri"])
    t = [perf()]
    for _ in range(a["reps"]):
        s = perf()
        frame = mlflow.search_runs(experiment_names=[a["name"]], max_results=100_000)
        t.append(perf() - s)
    out["search_runs_s"] = stats(t[1:])
    out["search_runs_rows"] = len(frame)
    try:
        from vaebench.record.results import histories_frame, trials_frame
    except ImportError as e:
        out["results"] = f"not available ({e})"
        return out
    tf, hf = [], []
    for _ in range(a["reps"]):
        s = perf()
        trials = trials_frame(a["name"], a["uri"])
        tf.append(perf() - s)
        s = perf()
        hist = histories_frame(a["name"], a["uri"], trials=trials)
        hf.append(perf() - s)
    out.update(trials_frame_s=stats(tf), histories_frame_s=stats(hf), history_rows=len(hist), maxrss_mib=maxrss_mib())
    return out


CHILDREN = {
    "overhead": child_overhead,
    "sweep": child_sweep,
    "sequential": child_sequential,
    "concurrent": child_concurrent,
    "record": child_record,
    "readback": child_readback,
}


# ============================================================================ parent


class Runner:
    def __init__(self, work: Path, verbose: bool):
        self.work, self.verbose, self.n = work, verbose, 0

    def child(self, name: str, args: dict, timeout: float = 1800) -> dict:
        """Run CHILDREN[name](args) in a fresh interpreter; returns its result dict (with the
        child's wall time); raises with the log tail when it fails."""
        self.n += 1
        stem = self.work / f"{self.n:02d}-{name}"
        Path(f"{stem}.args.json").write_text(json.dumps(args))
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, str(stem)]
        t = perf()
        with open(f"{stem}.log", "w") as log:
            proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT if not args.get("progress") else None,
                start_new_session=True,
                cwd=self.work,
            )
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # our own child's process group only
                proc.wait()
                raise RuntimeError(f"child {name} timed out after {timeout:.0f} s; log: {stem}.log") from None
        if rc != 0 or not Path(f"{stem}.result.json").is_file():
            tail = Path(f"{stem}.log").read_text()[-3000:]
            raise RuntimeError(f"child {name} failed (exit {rc}):\n{tail}")
        res = json.loads(Path(f"{stem}.result.json").read_text())
        res["child_wall_s"] = perf() - t
        return res


def run_child_main(name: str, stem: str) -> None:
    args = json.loads(Path(f"{stem}.args.json").read_text())
    res = CHILDREN[name](args)
    Path(f"{stem}.result.json").write_text(json.dumps(res, default=str))


def git_info() -> dict[str, str]:
    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except Exception:
            return ""

    dirty = [ln for ln in git("status", "--porcelain", "--", "vaebench").splitlines() if ln.strip()]
    return {
        "commit": git("rev-parse", "--short=12", "HEAD"),
        "subject": git("log", "-1", "--format=%s")[:70],
        "vaebench_changes": f"{len(dirty)} modified/untracked path(s) under vaebench/" if dirty else "clean",
    }


def machine_info() -> dict[str, Any]:
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    mem = next(
        (int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal")), 0
    )
    return {
        "cpu": cpu,
        "nproc": os.cpu_count(),
        "memory_gib": round(mem / 2**20, 1),
        "kernel": platform.release(),
        "host": platform.node(),
    }


def versions() -> dict[str, str]:
    code = (
        "import json, importlib.metadata as m, platform, sys\n"
        "out = {'python': platform.python_version()}\n"
        "for p in ('torch', 'ray', 'mlflow', 'optuna', 'numpy', 'sqlalchemy', 'vaebench'):\n"
        "    try: out[p] = m.version(p)\n"
        "    except Exception: out[p] = 'missing'\n"
        "import vaebench; out['vaebench_path'] = vaebench.__path__[0]\n"
        "import hashlib, inspect\n"
        "from vaebench import tracking as t\n"
        "src = ''.join(inspect.getsource(getattr(t.Record, m)) for m in\n"
        "              ('__init__', 'start_study', 'start_trial', 'log_epoch', 'end_trial', 'end_study'))\n"
        "out['record_writer'] = hashlib.sha256(src.encode()).hexdigest()[:16]\n"
        "print(json.dumps(out))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    return json.loads(res.stdout)


def report_command(name: str, uri: str, out: Path) -> tuple[list[str] | None, str]:
    """``vaebench report`` when the CLI has it, else ``python -m vaebench.report.command``; None
    when neither exists (the step is then reported as not available)."""
    probe = (
        "import json, importlib.util\n"
        "cli = False\n"
        "try:\n"
        "    from vaebench.cli import app\n"
        "    cli = any((c.name or c.callback.__name__) == 'report' for c in app.registered_commands)\n"
        "except Exception: pass\n"
        "mod = importlib.util.find_spec('vaebench.report') is not None and "
        "importlib.util.find_spec('vaebench.report.command') is not None\n"
        "print(json.dumps([cli, mod]))"
    )
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    try:
        cli, mod = json.loads(res.stdout.strip().splitlines()[-1])
    except Exception:
        cli, mod = False, False
    args = [name, "--tracking-uri", uri, "--out", str(out), "--no-log"]
    if cli:
        return [sys.executable, "-m", "vaebench.cli", "report", *args], "vaebench report"
    if mod:
        return [sys.executable, "-m", "vaebench.report.command", *args], "python -m vaebench.report.command"
    return None, "not available (neither `vaebench report` nor vaebench.report.command exists)"


def timed_process(cmd: list[str], cwd: Path, timeout: float = 600) -> dict[str, Any]:
    """Wall time, exit code and peak RSS (wait4 rusage) of one command."""
    t = perf()
    with open(cwd / "report.log", "a") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True)
        deadline = time.time() + timeout
        while True:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.time() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                pid, status, ru = os.wait4(proc.pid, 0)
                break
            time.sleep(0.02)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {
        "wall_s": perf() - t,
        "rc": proc.returncode,
        "maxrss_mib": ru.ru_maxrss / 1024,
        "cpu_s": ru.ru_utime + ru.ru_stime,
        "loadavg": loadavg(),
    }


# ----------------------------------------------------------------------------- benchmarks


def bench_overhead(r: Runner, sz: Sizes, data: Path, threads_list: list[int]) -> dict:
    out = {}
    for threads in threads_list:
        print(
            f"  [1,2] bare loop vs vaebench trial, {threads} thread(s), {sz.overhead_reps} x {sz.overhead_epochs} epochs",
            flush=True,
        )
        res = r.child(
            "overhead",
            {
                "threads": threads,
                "epochs": sz.overhead_epochs,
                "reps": sz.overhead_reps,
                "metric_reps": max(3, sz.overhead_reps),
                "data": str(data),
                "uri": f"sqlite:///{r.work}/overhead-{threads}.db",
            },
        )
        for rep in res["reps"]:
            print(
                f"      bare {rep['bare']['steps_per_s']:.1f} steps/s, vaebench {rep['vaebench']['steps_per_s']:.1f} "
                f"steps/s, ratio {rep['ratio']:.3f}; bare fused {rep['bare_fused']['steps_per_s']:.1f}, bare tuned "
                f"{rep['bare_tuned']['steps_per_s']:.1f} steps/s, vaebench / bare tuned {rep['ratio_tuned']:.3f} "
                f"(load {rep['loadavg'][0]:.1f})",
                flush=True,
            )
        out[threads] = res
    return out


def bench_fullpath(r: Runner, sz: Sizes, data: Path, threads_list: list[int]) -> dict:
    out = {}
    for threads in threads_list:
        runs = []
        for i in range(sz.fullpath_reps):
            print(
                f"  [1] full path: 1-trial run_sweep on Ray, {threads} cpu(s) per trial, {sz.overhead_epochs} epochs",
                flush=True,
            )
            sd = study_dict(
                f"bench-fullpath-{threads}-{i}", str(data), sz.overhead_epochs, threads, {"objective.beta": [1.0]}, [0]
            )
            res = r.child("sweep", {"study": sd, "workers": 1, "uri": f"sqlite:///{r.work}/fullpath-{threads}-{i}.db"})
            steps = sz.overhead_epochs * math.ceil(sz.n_train / 128)
            res["steps"] = steps
            res["steps_per_s_wall"] = steps / res["wall_s"]
            res["steps_per_s_trial"] = steps / res["trial_run_s"][0]
            print(
                f"      wall {res['wall_s']:.1f} s (Ray start {res['ray_start_s']:.1f} s), trial run "
                f"{res['trial_run_s'][0]:.1f} s -> {res['steps_per_s_trial']:.1f} steps/s in the trial, "
                f"{res['steps_per_s_wall']:.1f} end to end",
                flush=True,
            )
            runs.append(res)
        out[threads] = runs
    return out


def bench_scaling(r: Runner, sz: Sizes, data: Path) -> dict:
    n, workers = sz.scale_trials, 2
    cfg = trial_config(str(data), sz.scale_epochs, 1)
    reps = []
    for i in range(sz.scale_reps):
        print(
            f"  [3] {n} trials one at a time (1 thread), then one sweep with {workers} workers "
            f"({i + 1}/{sz.scale_reps})",
            flush=True,
        )
        seq = r.child("sequential", {"config": cfg, "seeds": list(range(n))})
        sd = study_dict(f"bench-scaling-{i}", str(data), sz.scale_epochs, 1, {"objective.beta": [1.0]}, list(range(n)))
        sw = r.child("sweep", {"study": sd, "workers": workers, "uri": f"sqlite:///{r.work}/scaling-{i}.db"})
        ctl = r.child("concurrent", {"config": cfg, "seeds": list(range(n)), "workers": workers})
        total = sum(seq["trial_s"])
        ideal = total / workers
        rep = {
            "sequential": seq,
            "sweep": sw,
            "control": ctl,
            "sum_single_s": total,
            "ideal_s": ideal,
            "ratio": sw["wall_s"] / ideal,
            "ratio_without_ray_start": (sw["wall_s"] - sw["ray_start_s"]) / ideal,
            "control_ratio": ctl["wall_s"] / ideal,
        }
        print(
            f"      sum of single trials {total:.1f} s -> ideal {ideal:.1f} s; sweep {sw['wall_s']:.1f} s "
            f"(Ray start {sw['ray_start_s']:.1f} s); ratio {rep['ratio']:.3f}; control: the same trials in "
            f"{workers} plain processes at once {ctl['wall_s']:.1f} s, ratio {rep['control_ratio']:.3f}",
            flush=True,
        )
        reps.append(rep)
    return {"trials": n, "workers": workers, "epochs": sz.scale_epochs, "reps": reps}


def record_cache_key(sz: Sizes, vers: dict) -> str:
    """The cached record is reused while the sizes, MLflow, SQLAlchemy, the Record methods the
    driver writes with and this file's writer are unchanged."""
    import inspect

    writer = inspect.getsource(child_record) + inspect.getsource(record_metrics) + inspect.getsource(study_dict)
    blob = json.dumps(
        [
            sz.record_grid,
            sz.record_epochs,
            vers.get("mlflow"),
            vers.get("sqlalchemy"),
            vers.get("record_writer"),
            hashlib.sha256(writer.encode()).hexdigest(),
        ]
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def bench_record(r: Runner, sz: Sizes, data: Path, vers: dict, rebuild: bool) -> dict:
    nb, nf, ns = sz.record_grid
    trials = nb * nf * ns
    out: dict[str, Any] = {"trials": trials, "epochs": sz.record_epochs}
    # (a) logging cost on a fresh store, every run
    samples = []
    reps, per = sz.log_sample
    for i in range(reps):
        print(
            f"  [4] logging cost: {per} trials x {sz.record_epochs} epochs into a fresh store ({i + 1}/{reps})",
            flush=True,
        )
        res = r.child(
            "record",
            {
                "grid": (per, 1, 1),
                "epochs": sz.record_epochs,
                "data": str(data),
                "name": f"bench-logsample-{i}",
                "uri": f"sqlite:///{r.work}/logsample-{i}.db",
            },
        )
        samples.append(res)
        print(
            f"      {res['log_epoch_mean_s'] * 1000:.1f} ms per trial-epoch "
            f"({res['metrics_per_epoch']} metrics), start_trial {res['start_trial_s']['median'] * 1000:.0f} ms, "
            f"end_trial {res['end_trial_s']['median'] * 1000:.0f} ms",
            flush=True,
        )
    out["sample"] = samples
    # (b) the big record: built through Record once, cached by (sizes, mlflow, tracking.py)
    key = record_cache_key(sz, vers)
    cached = synthetic.CACHE / f"record-{trials}x{sz.record_epochs}-{key}.db"
    meta_path = cached.with_suffix(".json")
    if rebuild or not (cached.is_file() and meta_path.is_file()):
        est = statistics.median(s["log_epoch_mean_s"] for s in samples) * trials * sz.record_epochs
        print(
            f"  [4] writing the record: {trials} trials x {sz.record_epochs} epochs through Record "
            f"(estimated {est / 60:.1f} min; cached afterwards as {cached.name})",
            flush=True,
        )
        tmp = r.work / "record-build.db"
        res = r.child(
            "record",
            {
                "grid": sz.record_grid,
                "epochs": sz.record_epochs,
                "data": str(data),
                "name": "bench-record",
                "uri": f"sqlite:///{tmp}",
                "progress": True,
            },
            timeout=4 * 3600,
        )
        res["built"] = datetime.now(UTC).isoformat(timespec="seconds")
        synthetic.CACHE.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tmp, cached)
        meta_path.write_text(json.dumps(res))
        res["this_run"] = True
    else:
        res = json.loads(meta_path.read_text())
        res["this_run"] = False
        print(
            f"  [4] record: reusing {cached.name} (built {res['built']} through Record: "
            f"{res['log_epoch_mean_s'] * 1000:.1f} ms per trial-epoch); --rebuild-record writes it again",
            flush=True,
        )
    out["build"] = res
    store = r.work / "record.db"
    shutil.copyfile(cached, store)
    uri = f"sqlite:///{store}"
    # (c) vaebench report
    cmd, how = report_command("bench-record", uri, r.work / "report")
    out["report_how"] = how
    runs = []
    if cmd is not None:
        for _ in range(sz.report_reps):
            res = timed_process(cmd, r.work)
            runs.append(res)
            print(
                f"  [4] {how}: {res['wall_s']:.1f} s, {res['cpu_s']:.1f} s CPU (exit {res['rc']}), "
                f"peak RSS {res['maxrss_mib']:.0f} MiB",
                flush=True,
            )
            if res["rc"] != 0:
                print("      " + (r.work / "report.log").read_text()[-1500:].replace("\n", "\n      "), flush=True)
                break
    else:
        print(f"  [4] report: {how}", flush=True)
    out["report"] = runs
    # (d) reading back in Python
    print("  [4] reading the record back (mlflow.search_runs, vaebench.record.results)", flush=True)
    out["readback"] = r.child("readback", {"name": "bench-record", "uri": uri, "reps": min(3, sz.report_reps)})
    return out


# ----------------------------------------------------------------------------- RESULTS.md


def fmt(s: dict, unit: str = "", scale: float = 1.0, digits: int = 2) -> str:
    if not s or s.get("n", 0) == 0:
        return "n/a"
    m, lo, hi = (s[k] * scale for k in ("median", "min", "max"))
    if s["n"] == 1:
        return f"{m:.{digits}f}{unit} (n=1)"
    return f"{m:.{digits}f}{unit} [{lo:.{digits}f}–{hi:.{digits}f}] (n={s['n']})"


def verdict(value: float, target: float, higher_is_better: bool) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    ok = value >= target if higher_is_better else value <= target
    return "PASS" if ok else "MISS"


def render(res: dict) -> str:
    L: list[str] = []
    add = L.append
    m, v, g = res["machine"], res["versions"], res["git"]
    add("# vaebench benchmarks\n")
    add(
        f"Written by `python benchmarks/run.py{' --quick' if res['quick'] else ''}` on {res['date']} "
        f"({res['duration_s'] / 60:.1f} min). What each figure means: [README.md](README.md). "
        "Each figure is the median over repetitions, [min–max] and n; ratios are computed within a "
        "repetition (both sides measured in the same run) and then summarised.\n"
    )
    add("| machine | |\n|---|---|")
    add(f"| CPU | {m['cpu']}, {m['nproc']} logical cores |")
    add(f"| memory | {m['memory_gib']} GiB |")
    add(f"| kernel | {m['kernel']} |")
    la0, la1 = res["loadavg_start"], res["loadavg_end"]
    add(
        f"| load average (1/5/15 min) | start {la0[0]:.2f} / {la0[1]:.2f} / {la0[2]:.2f}, "
        f"end {la1[0]:.2f} / {la1[1]:.2f} / {la1[2]:.2f} |"
    )
    add(
        f"| versions | Python {v['python']}, torch {v['torch']}, ray {v['ray']}, mlflow {v['mlflow']}, "
        f"optuna {v['optuna']}, numpy {v['numpy']}, SQLAlchemy {v['sqlalchemy']} |"
    )
    add(
        f"| vaebench | commit {g['commit']} ({g['subject']}); working tree: {g['vaebench_changes']}; "
        f"imported from `{v.get('vaebench_path')}` |"
    )
    s = res["sizes"]
    add(
        f"| data | synthetic binary images ({synthetic.GENERATOR}, see synthetic.py): "
        f"{s['n_train']:,} x 784 train, {s['n_val']:,} val |\n"
    )
    add(
        "Load averages during the run include the benchmark's own processes (one busy process in benchmark 1, "
        "two workers plus Ray and the driver in the sweeps); the load at the start, before anything of ours runs, "
        "is the one that tells whether others were using the machine.\n"
    )
    if la0[0] > 0.5:
        add(
            f"**The machine was not quiet**: load average {la0[0]:.2f} at the start on {m['nproc']} cores. Other "
            "processes take CPU from the measurements, most of all from the 2-thread runs (an OpenMP thread that "
            "loses its core stalls its partner) and the 2-worker sweep; rerun on a quiet machine for reference "
            "numbers.\n"
        )

    summary: list[tuple[str, str, str, str, str]] = []
    sections: list[str] = []

    # ---- 1 and 2
    ov = res.get("overhead") or {}
    fp = res.get("fullpath") or {}
    if ov:
        sec = [
            "## 1. Trial overhead: bare PyTorch loop vs one vaebench trial\n",
            f"Same model (MLP 784-400-20, Bernoulli), data, batch 128, Adam, threads; {s['overhead_epochs']} epochs "
            "per run. Four loops, each in its own process (torch's flush-denormal setting is per thread, "
            "and OpenMP threads copy it when created), advance one epoch at a time in turn, rotating who goes "
            "first, one running at any moment, each timed only while it runs, so that changes in machine load "
            "hit all alike:\n",
            *[f"- *{k}*: {v}" for k, v in LOOPS.items()],
            "\nvaebench includes `start_trial`/`end_trial` and the default metrics every epoch: what a sweep "
            "worker and the driver do, minus Ray. The target compares it with *bare*; *vaebench / bare tuned* "
            "compares like for like (the same optimiser kernel and float settings), so it shows what "
            "vaebench's own machinery costs: per-epoch metrics, logging and the loop's bookkeeping.\n",
            "| threads | bare steps/s | vaebench steps/s | **vaebench / bare** | target | | per CPU-second | "
            "bare fused: steps/s | bare tuned: steps/s | vaebench / bare tuned |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        tuned_rows: list[tuple[str, str, str, str, str]] = []
        for t, o in ov.items():
            ratio = stats([rep["ratio"] for rep in o["reps"]])
            bare = stats([rep["bare"]["steps_per_s"] for rep in o["reps"]])
            vb = stats([rep["vaebench"]["steps_per_s"] for rep in o["reps"]])
            ver = verdict(ratio["median"], TARGETS["overhead"], True)
            cpu_ratio = stats([rep["cpu_ratio"] for rep in o["reps"]])
            bf = stats([rep["bare_fused"]["steps_per_s"] for rep in o["reps"]])
            bt = stats([rep["bare_tuned"]["steps_per_s"] for rep in o["reps"]] if "bare_tuned" in o["reps"][0] else [])
            rt = stats([rep["ratio_tuned"] for rep in o["reps"]] if "ratio_tuned" in o["reps"][0] else [])
            tuned_rows.append(
                (
                    f"1. vaebench / bare tuned (like for like), {t} thread(s)",
                    fmt(rt, digits=3),
                    "(reported)",
                    "",
                    "metrics every epoch included",
                )
            )
            sec.append(
                f"| {t} | {fmt(bare, digits=1)} | {fmt(vb, digits=1)} | **{fmt(ratio, digits=3)}** | ≥ 0.95 | "
                f"{ver} | {fmt(cpu_ratio, digits=3)} | {fmt(bf, digits=1)} | {fmt(bt, digits=1)} | "
                f"{fmt(rt, digits=3)} |"
            )
            spread = bare["max"] / bare["min"] if bare["n"] else 1.0
            note = (
                f"unstable: bare loop {bare['min']:.0f}–{bare['max']:.0f} steps/s across repetitions (machine load)"
                if spread > 1.3
                else ""
            )
            summary.append((f"1. vaebench / bare steps/s, {t} thread(s)", fmt(ratio, digits=3), "≥ 0.95", ver, note))
        summary += tuned_rows
        sec.append(
            "\n*Per CPU-second*: vaebench / bare in steps per CPU-second of each loop's process instead of "
            "wall time (a check on the wall-time ratio under load, not the target).\n"
        )
        sec.append(
            "Where a vaebench trial's time goes (seconds per epoch, median over repetitions), beside the "
            "bare loops' epochs:\n"
        )
        sec.append(
            "| threads | training loop | metrics (evaluate) | log_epoch | other (start/end trial, set-up) | "
            "bare epoch | bare fused epoch | bare tuned epoch |"
        )
        sec.append("|---|---|---|---|---|---|---|---|")
        E = s["overhead_epochs"]
        for t, o in ov.items():

            def med(key: str, who: str = "vaebench") -> float:
                vals = [rep[who].get(key, 0.0) for rep in o["reps"] if who in rep]  # noqa: B023 (called at once)
                return statistics.median(vals) / E if vals else math.nan

            sec.append(
                f"| {t} | {med('train_loop_s'):.3f} | {med('eval_s'):.3f} | {med('log_s'):.3f} | "
                f"{med('other_s'):.3f} | {med('seconds', 'bare'):.3f} | {med('seconds', 'bare_fused'):.3f} | "
                f"{med('seconds', 'bare_tuned'):.3f} |"
            )
        loads = ", ".join(
            f"{t} thread(s): " + ", ".join(f"{rep['loadavg'][0]:.1f}" for rep in o["reps"]) for t, o in ov.items()
        )
        sec.append(f"\nLoad average (1 min) after each repetition: {loads}.\n")
        if fp:
            sec.append(
                "**Full path**: a 1-trial grid study through `vaebench.sweep.driver.run_sweep` (local Ray, driver, "
                "MLflow, checkpoint artifact). *in trial* = steps / the MLflow trial run's span "
                "(worker start, data load, training, metrics, artifacts); *end to end* = steps / the "
                "run_sweep call (Ray start and shutdown included). Ratios against the bare loop of the same "
                "thread count above (different processes, so not the same run).\n"
            )
            sec.append(
                "| threads | run_sweep wall | Ray start | Ray shutdown | trial run | steps/s in trial | "
                "steps/s end to end | vs bare (in trial) | vs bare (end to end) |"
            )
            sec.append("|---|---|---|---|---|---|---|---|---|")
            for t, runs in fp.items():
                t_key = t if t in ov else str(t)
                bare = (
                    statistics.median(rep["bare"]["steps_per_s"] for rep in ov[t_key]["reps"])
                    if t_key in ov
                    else math.nan
                )
                st = lambda k: stats([x[k] for x in runs])  # noqa: E731, B023 (called at once)
                sec.append(
                    f"| {t} | {fmt(st('wall_s'), ' s', digits=1)} | {fmt(st('ray_start_s'), ' s', digits=1)} | "
                    f"{fmt(st('ray_shutdown_s'), ' s', digits=1)} | "
                    f"{fmt(stats([x['trial_run_s'][0] for x in runs]), ' s', digits=1)} | "
                    f"{fmt(st('steps_per_s_trial'), digits=1)} | {fmt(st('steps_per_s_wall'), digits=1)} | "
                    f"{statistics.median(x['steps_per_s_trial'] for x in runs) / bare:.3f} | "
                    f"{statistics.median(x['steps_per_s_wall'] for x in runs) / bare:.3f} |"
                )
            sec.append("")
        sections += sec

        sec = ["## 2. Metric cost: one evaluation of every validation metric vs one training epoch\n"]
        mc = next(iter(ov.values()))["metrics_config"]
        sec.append(
            f"Default MetricsConfig: iw_samples K={mc['iw_samples']}, iw_examples={mc['iw_examples']}, "
            f"eval_batch_size={mc['eval_batch_size']}, mi_batch_size={mc['mi_batch_size']}, every={mc['every']}; "
            f"validation split {s['n_val']:,} examples. *fraction* = evaluate seconds / training-loop seconds "
            "of the same epoch (`train/epoch_seconds`), over every epoch of benchmark 1.\n"
        )
        sec.append("| threads | training epoch | evaluate | fraction | target | | fraction of CPU time |")
        sec.append("|---|---|---|---|---|---|---|")
        for t, o in ov.items():
            frac = stats([f for rep in o["reps"] for f in rep["vaebench"]["metric_fraction"]])
            ev = stats([e for rep in o["reps"] for e in rep["vaebench"]["eval_seconds"]])
            ver = verdict(frac["median"], TARGETS["metric_fraction"], False)
            parts = {k: p["median"] for k, p in o["metric_parts_s"].items() if k != "evaluate (all)"}
            top = max(parts, key=parts.get)
            share = parts[top] / sum(parts.values())
            frac_cpu = stats([f for rep in o["reps"] for f in rep["vaebench"].get("metric_fraction_cpu", [])])
            sec.append(
                f"| {t} | {fmt(o['epoch_seconds'], ' s')} | {fmt(ev, ' s', digits=3)} | "
                f"{fmt(frac, scale=100, unit=' %', digits=1)} | ≤ 10 % | {ver} | "
                f"{fmt(frac_cpu, scale=100, unit=' %', digits=1)} |"
            )
            summary.append(
                (
                    f"2. metrics / training epoch, {t} thread(s)",
                    fmt(frac, scale=100, unit=" %", digits=1),
                    "≤ 10 %",
                    ver,
                    f"{top} is {share:.0%} of it",
                )
            )
        sec.append(
            "\nEach part timed separately on the trained model (median seconds; share of the sum of parts; "
            "share of a training epoch):\n"
        )
        threads_cols = list(ov)
        sec.append("| part | " + " | ".join(f"{t} thread(s)" for t in threads_cols) + " |")
        sec.append("|---|" + "---|" * len(threads_cols))
        for k in next(iter(ov.values()))["metric_parts_s"]:
            cells = []
            for t in threads_cols:
                o = ov[t]
                parts = {kk: p["median"] for kk, p in o["metric_parts_s"].items() if kk != "evaluate (all)"}
                val = o["metric_parts_s"][k]["median"]
                share = "" if k == "evaluate (all)" else f", {val / sum(parts.values()):.0%}"
                cells.append(f"{val:.3f} s{share}, {val / o['epoch_seconds']['median']:.1%} of epoch")
            sec.append(f"| {k} | " + " | ".join(cells) + " |")
        sec.append("")
        sections += sec

    # ---- 3
    sc = res.get("scaling")
    if sc:
        reps = sc["reps"]
        ratio = stats([x["ratio"] for x in reps])
        ver = verdict(ratio["median"], TARGETS["scaling"], False)
        ctl = stats([x["control_ratio"] for x in reps if "control_ratio" in x])
        summary.append(
            (
                "3. sweep wall / (sum of single trials / 2)",
                fmt(ratio, digits=3),
                "≤ 1.15",
                ver,
                f"Ray start {statistics.median(x['sweep']['ray_start_s'] for x in reps):.1f} s; the same trials "
                f"in 2 plain processes at once (no Ray): {ctl['median']:.3f} x ideal",
            )
        )
        fixed = [x["sweep"]["wall_s"] - x["sweep"].get("makespan_s", math.nan) for x in reps]
        share = [x["sweep"].get("makespan_s", math.nan) / x["ideal_s"] for x in reps]
        # fixed + share * ideal <= 1.15 * ideal  <=>  ideal >= fixed / (1.15 - share); trial = ideal * workers / n
        breakeven = [
            f / (TARGETS["scaling"] - m) * sc["workers"] / sc["trials"] if m < TARGETS["scaling"] else math.inf
            for f, m in zip(fixed, share)
        ]
        sec = [
            "## 3. Sweep scaling: 8 identical short trials\n",
            f"Each trial: the benchmark-1 model, {sc['epochs']} epoch(s) on the full data, default metrics, "
            "seeds 0-7. *Single*: `vaebench.core.trial.run_trial` one after another in one process, 1 thread, each "
            "timed from config to end message (data load and checkpoint included, imports excluded). *Sweep*: "
            f"one grid study through `run_sweep`, cpus_per_trial 1, {sc['workers']} workers, wall time of the "
            "call: Ray start, worker start-up and imports, driver logging and Ray shutdown included.\n",
            "| figure | value |",
            "|---|---|",
            f"| single trial | {fmt(stats([t for x in reps for t in x['sequential']['trial_s']]), ' s')} |",
            f"| sum of {sc['trials']} single trials | {fmt(stats([x['sum_single_s'] for x in reps]), ' s', digits=1)} |",
            f"| ideal 2-worker time (sum / 2) | {fmt(stats([x['ideal_s'] for x in reps]), ' s', digits=1)} |",
            f"| sweep wall | {fmt(stats([x['sweep']['wall_s'] for x in reps]), ' s', digits=1)} |",
            f"| of which Ray start (`ray.init`, connect_ray) | {fmt(stats([x['sweep']['ray_start_s'] for x in reps]), ' s')} |",
            f"| of which driver set-up (`Driver.__init__`: MLflow store and record) | "
            f"{fmt(stats([x['sweep'].get('driver_init_s', math.nan) for x in reps]), ' s')} |",
            f"| first trial run created, from the start of the call | "
            f"{fmt(stats([x['sweep'].get('first_trial_start_s', math.nan) for x in reps]), ' s')} |",
            f"| trials' makespan (first trial run created → last ended) | "
            f"{fmt(stats([x['sweep'].get('makespan_s', math.nan) for x in reps]), ' s', digits=1)} |",
            f"| after the last trial (end of study, Ray shutdown) | "
            f"{fmt(stats([x['sweep']['wall_s'] - x['sweep'].get('last_trial_end_s', math.nan) for x in reps]), ' s')} |",
            f"| of which Ray shutdown | {fmt(stats([x['sweep']['ray_shutdown_s'] for x in reps]), ' s')} |",
            f"| trial run span in the sweep (MLflow start→end) | {fmt(stats([t for x in reps for t in x['sweep']['trial_run_s']]), ' s')} |",
            f"| **sweep / ideal** (target ≤ 1.15) | **{fmt(ratio, digits=3)} {ver}** |",
            f"| sweep without Ray start / ideal | {fmt(stats([x['ratio_without_ray_start'] for x in reps]), digits=3)} |",
            f"| *control*: the same {sc['trials']} trials in {sc['workers']} plain processes at once (no Ray, "
            f"driver or MLflow; imports done before the clock starts) | "
            f"{fmt(stats([x['control']['wall_s'] for x in reps if 'control' in x]), ' s', digits=1)} |",
            f"| **control / ideal**: what sharing the cores costs two trials by themselves | "
            f"**{fmt(stats([x['control_ratio'] for x in reps if 'control_ratio' in x]), digits=3)}** |",
            f"| sweep / control: what vaebench and Ray add to that | "
            f"{fmt(stats([x['sweep']['wall_s'] / x['control']['wall_s'] for x in reps if 'control' in x]), digits=3)} |",
            f"| fixed cost: sweep wall − trials' makespan | {fmt(stats(fixed), ' s', digits=1)} |",
            f"| makespan / ideal (how well the trials themselves share the 2 cores) | {fmt(stats(share), digits=3)} |",
            f"| single-trial length above which the target holds, given that fixed cost and sharing | "
            f"{fmt(stats([b for b in breakeven if math.isfinite(b)]), ' s', digits=1) if any(map(math.isfinite, breakeven)) else 'none: the trials alone take over 1.15 x ideal'} (these trials: "
            f"{statistics.median(t for x in reps for t in x['sequential']['trial_s']):.1f} s) |",
            f"| CPU time of the single trials (sum) | {fmt(stats([sum(x['sequential']['trial_cpu_s']) for x in reps]), ' s', digits=1)} |",
            f"| CPU time of the sweep: driver + all Ray processes | "
            f"{fmt(stats([x['sweep']['driver_cpu_s'] + x['sweep']['ray_processes_cpu_s'] for x in reps]), ' s', digits=1)} |",
            f"| of which the driver process | {fmt(stats([x['sweep']['driver_cpu_s'] for x in reps]), ' s', digits=1)} |",
            "\nLoad average (1 min) after each sweep: "
            + ", ".join(f"{x['sweep']['loadavg'][0]:.1f}" for x in reps)
            + ".\n",
        ]
        sections += sec

    # ---- 4
    rc = res.get("record")
    if rc:
        b = rc["build"]
        sample_cost = stats([x["log_epoch_mean_s"] for x in rc["sample"]])
        sec = [
            "## 4. Record and report at scale\n",
            f"A grid study of {rc['trials']:,} trials ({' x '.join(map(str, s['record_grid']))} = beta levels x "
            f"free_bits levels x seeds) x {rc['epochs']} epochs x "
            f"{b['metrics_per_epoch']} metrics, written into a fresh SQLite MLflow store through "
            "`vaebench.record.vocab.Record` exactly as the sweep driver calls it (start_study; per trial start_trial "
            "with the flattened config and the driver's tags, one log_epoch per epoch, end_trial; no artifacts). "
            "The store is built once and cached in `benchmarks/.cache/` (keyed by the sizes, the MLflow and "
            "SQLAlchemy versions and the source of the `Record` methods the driver writes with); the logging "
            "cost is also measured on a fresh store every run.\n",
            "| figure | value |",
            "|---|---|",
            f"| logging cost per trial-epoch, fresh store, this run | {fmt(sample_cost, ' ms', 1000, 1)} "
            f"(CPU {fmt(stats([x.get('log_epoch_cpu_mean_s', math.nan) for x in rc['sample']]), ' ms', 1000, 1)}) |",
            f"| logging cost per trial-epoch over the whole {rc['trials']:,}-trial build | "
            f"{b['log_epoch_mean_s'] * 1000:.1f} ms mean, {b['log_epoch_s']['median'] * 1000:.1f} ms median "
            f"({'this run' if b['this_run'] else 'cached build of ' + b['built']}; load {b['loadavg'][0]:.1f}) |",
            f"| start_trial / end_trial per trial (build) | {b['start_trial_s']['median'] * 1000:.0f} ms / "
            f"{b['end_trial_s']['median'] * 1000:.0f} ms |",
            f"| whole build | {b['wall_s'] / 60:.1f} min, {b['per_trial_s']:.2f} s per trial; store "
            f"{b['db_mib']:.0f} MiB |",
        ]
        reports = rc["report"]
        if reports and all(x["rc"] == 0 for x in reports):
            rs = stats([x["wall_s"] for x in reports])
            ver = verdict(rs["median"], TARGETS["report_s"], False)
            sec.append(
                f"| **`{rc['report_how']}`** (whole process, `--no-log`), target < 15 s | "
                f"**{fmt(rs, ' s', digits=1)} {ver}** |"
            )
            sec.append(
                f"| its CPU time (user + system) | {fmt(stats([x['cpu_s'] for x in reports]), ' s', digits=1)}; "
                f"load {', '.join(str(x['loadavg'][0]) for x in reports)} |"
            )
            summary.append(
                (f"4. `vaebench report`, {rc['trials']:,} x {rc['epochs']}", fmt(rs, " s", digits=1), "< 15 s", ver, "")
            )
        elif reports:
            sec.append(f"| `{rc['report_how']}` | failed (exit {reports[-1]['rc']}); see the run's report.log |")
            summary.append(("4. `vaebench report`", "failed", "< 15 s", "n/a", ""))
        else:
            sec.append(f"| report | {rc['report_how']} |")
            summary.append(("4. `vaebench report`", "not available", "< 15 s", "n/a", ""))
        summary.append(
            (
                "4. logging cost per trial-epoch",
                fmt(sample_cost, " ms", 1000, 1),
                "(reported)",
                "",
                f"{b['metrics_per_epoch']} metrics in one log_batch",
            )
        )
        rb = rc["readback"]
        sec.append(f"| `mlflow.search_runs` (all {rb['search_runs_rows']:,} runs) | {fmt(rb['search_runs_s'], ' s')} |")
        if "trials_frame_s" in rb:
            sec.append(f"| `vaebench.record.results.trials_frame` | {fmt(rb['trials_frame_s'], ' s')} |")
            sec.append(
                f"| `vaebench.record.results.histories_frame`, every metric ({rb['history_rows']:,} rows) | "
                f"{fmt(rb['histories_frame_s'], ' s')} |"
            )
        else:
            sec.append(f"| vaebench.record.results | {rb.get('results')} |")
        sec.append("")
        sections += sec

    # ---- 5
    mem = []
    if ov:
        for t, o in ov.items():
            mem.append(
                (f"benchmark-1 vaebench loop process ({t} thread(s)): data + trial + SQLite logging", o["maxrss_mib"])
            )
    if sc:
        seq = sc["reps"][0]["sequential"]
        mem.append(
            (
                "**one trial**: `run_trial` process, 1 thread, full data (peak over 8 sequential trials)",
                max(x["sequential"]["maxrss_mib"] for x in sc["reps"]),
            )
        )
        mem.append(("  of which Python + torch + vaebench after imports", seq["rss_after_imports_mib"]))
        mem.append(
            (
                "one trial in a Ray worker (peak RSS of a `ray::` worker, sampled)",
                max(x["sweep"]["ray_worker_peak_mib"] for x in sc["reps"]),
            )
        )
        mem.append(
            (
                f"**driver**: `run_sweep` process, {sc['trials']} trials, 2 workers",
                max(x["sweep"]["driver_maxrss_mib"] for x in sc["reps"]),
            )
        )
        mem.append(
            (
                "all Ray processes of that sweep together (raylet, GCS, workers; peak of sampled sum)",
                max(x["sweep"]["ray_processes_peak_mib"] for x in sc["reps"]),
            )
        )
    if fp:
        for t, runs in fp.items():
            mem.append((f"driver: 1-trial `run_sweep` process, {t} cpu(s)", max(x["driver_maxrss_mib"] for x in runs)))
    if rc:
        mem.append(
            (f"driver logging path: process writing the {rc['trials']:,}-trial record", rc["build"]["maxrss_mib"])
        )
        if rc["report"]:
            mem.append((f"`{rc['report_how']}` process on that record", max(x["maxrss_mib"] for x in rc["report"])))
        if "maxrss_mib" in rc["readback"]:
            mem.append(("read-back process (search_runs, trials_frame, histories_frame)", rc["readback"]["maxrss_mib"]))
    if mem:
        sec = [
            "## 5. Peak memory\n",
            "Peak resident set size (`getrusage` ru_maxrss of the process; Ray workers from /proc VmHWM).\n",
            "| process | peak RSS |",
            "|---|---|",
        ]
        sec += [f"| {k} | {v:.0f} MiB |" for k, v in mem]
        sec.append("")
        sections += sec
        drv = [v for k, v in mem if k.startswith("**driver**")]
        tri = [v for k, v in mem if k.startswith("**one trial**")]
        if drv or tri:
            summary.append(
                (
                    "5. peak RSS: driver / one trial",
                    f"{drv[0] if drv else math.nan:.0f} MiB / {tri[0] if tri else math.nan:.0f} MiB",
                    "(reported)",
                    "",
                    "",
                )
            )

    add("## Summary\n")
    add("| benchmark | measured | target | | note |\n|---|---|---|---|---|")
    for row in summary:
        add("| " + " | ".join(row) + " |")
    add("")
    if res.get("notes"):
        add("## Notes\n")
        L += [f"- {n}" for n in res["notes"]]
        add("")
    L += sections
    return "\n".join(L)


# ----------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="small sizes, 1 repetition (development)")
    ap.add_argument(
        "--only",
        default="1,3,4",
        help="benchmarks to run, comma-separated from 1,3,4 "
        "(1 includes 2; 5 is collected from the others). Default: all",
    )
    ap.add_argument("--threads", default="1,2", help="thread counts of benchmark 1 (default 1,2)")
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results file (default benchmarks/RESULTS.md; --quick: benchmarks/.cache/RESULTS-quick.md)",
    )
    ap.add_argument(
        "--rebuild-record",
        action="store_true",
        help="write the 1,000-trial record again instead of reusing the cached one",
    )
    ap.add_argument("--keep", action="store_true", help="keep the work folder under /tmp")
    ap.add_argument(
        "--previous",
        default="",
        help="benchmarks (from 1,3,4) to take from the last full run "
        "(benchmarks/.cache/last-run.json) instead of measuring them; RESULTS.md says so",
    )
    ap.add_argument("--child", nargs=2, metavar=("NAME", "STEM"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        run_child_main(*args.child)
        return

    sz = QUICK if args.quick else FULL
    only = {x.strip() for x in args.only.split(",")}
    threads = [int(t) for t in args.threads.split(",")]
    out = args.out or (synthetic.CACHE / "RESULTS-quick.md" if args.quick else HERE / "RESULTS.md")
    work = Path(tempfile.mkdtemp(prefix="vaebench-bench-", dir="/tmp"))
    started, t0 = datetime.now(UTC), perf()
    res: dict[str, Any] = {
        "quick": args.quick,
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "sizes": asdict(sz),
        "loadavg_start": loadavg(),
        "machine": machine_info(),
        "git": git_info(),
        "notes": [],
    }
    print(
        f"vaebench benchmarks ({'quick' if args.quick else 'full'}); work folder {work}; "
        f"load average {res['loadavg_start']}",
        flush=True,
    )
    res["versions"] = versions()
    print(f"  data: synthetic {sz.n_train:,} + {sz.n_val:,} x 784 binary", flush=True)
    data = synthetic.dataset_path(sz.n_train, sz.n_val)
    r = Runner(work, verbose=True)
    previous = {x.strip() for x in args.previous.split(",") if x.strip()}
    if previous:
        last = json.loads((synthetic.CACHE / "last-run.json").read_text())
        for b in sorted(previous):
            for key in {"1": ("overhead", "fullpath"), "3": ("scaling",), "4": ("record",)}[b]:
                if key in last:
                    res[key] = last[key]
            res["notes"].append(
                f"Benchmark {b} was not measured in this run: its figures are from the run of "
                f"{last['date']} at commit {last['git']['commit']} ({last['git']['subject']})."
            )
        only -= previous
    try:
        if "1" in only:
            res["overhead"] = bench_overhead(r, sz, data, threads)
            res["fullpath"] = bench_fullpath(r, sz, data, threads)
        if "3" in only:
            res["scaling"] = bench_scaling(r, sz, data)
        if "4" in only:
            res["record"] = bench_record(r, sz, data, res["versions"], args.rebuild_record)
    finally:
        res["loadavg_end"] = loadavg()
        res["duration_s"] = perf() - t0
        synthetic.CACHE.mkdir(parents=True, exist_ok=True)
        raw = (
            out.with_suffix(".json")
            if args.out
            else synthetic.CACHE / ("last-run-quick.json" if args.quick else "last-run.json")
        )
        raw.write_text(json.dumps(res, indent=1, default=str))
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    text = render(json.loads(json.dumps(res, default=str)))
    out.write_text(text)
    print("\n" + text)
    print(f"\nwrote {out}", flush=True)


if __name__ == "__main__":
    main()
