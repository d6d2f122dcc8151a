"""The MLP VAE on real Fashion-MNIST (60,000 training images, 28x28): solo against packed training
throughput in model-steps/s, and the peak memory of a pack of 16, in one run.

    python benchmarks/fashion_mnist.py                 # 2 threads, M = 16, one epoch (215 steps of 256)
    python benchmarks/fashion_mnist.py --members 8 --threads 1

Each side runs in its own child process (so its peak resident memory is its own): *solo* trains
``--solo`` trials one after the other through ``vaebench.core.train.Trainer`` at M = 1 (what a sweep
worker runs for an unpacked trial); *packed* trains M trials that differ in seed and beta as one
Trainer (``vaebench.core.pack``'s path). Model-steps/s = trials x steps / summed
``train/epoch_seconds`` (the training loop only: data load, model build and evaluation excluded).
One epoch is timed (the first of ten, so no evaluation runs in it). Peak memory is the child's ru_maxrss; the data are held once per worker (55,000 training images as
float32 are 172 MB; 16 copies would be 2.8 GB), which the packed child's peak shows.
Data: Debian's dataset-fashion-mnist (``data.kind: fashion_mnist``). Writes benchmarks/FASHION_MNIST.md.
Nothing here asserts a timing: the machine is shared, so the ratio within one run is the figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def config(seed: int, beta: float, threads: int) -> dict:
    return {
        "data": {"kind": "fashion_mnist", "binarize": "static"},
        "model": {"kind": "mlp", "latent_dim": 16, "hidden": [256], "likelihood": "bernoulli"},
        "objective": {"beta": beta},
        # epochs 10 with metrics every 10: the one epoch timed here is not evaluated (training only)
        "train": {"epochs": 10, "batch_size": 256, "optimizer": "adam", "lr": 1e-3, "threads": threads},
        "metrics": {"every": 10, "iw_samples": 2, "iw_examples": 100},
        "seed": seed,
    }


def child(side: str, members: int, threads: int) -> dict:
    """Runs in a child process: one side of the comparison; returns its figures."""
    import torch

    from vaebench.core.train import Trainer, configure_torch
    from vaebench.data import load_data
    from vaebench.study.config import TrialConfig

    configure_torch(threads)
    cfgs = [TrialConfig.model_validate(config(s, [0.5, 1.0, 2.0, 4.0][s % 4], threads)) for s in range(members)]
    started = time.perf_counter()
    data = load_data(cfgs[0].data, 0)
    load_s = time.perf_counter() - started
    rss_data = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    seconds, steps = 0.0, 0
    groups = [cfgs] if side == "packed" else [[c] for c in cfgs]
    for group in groups:
        trainer = Trainer(group, data)
        [r, *_] = trainer.run_epoch()
        seconds += r.metrics["train/epoch_seconds"]
        steps += trainer.t * len(group)
    return {
        "side": side,
        "members": members,
        "model_steps": steps,
        "seconds": seconds,
        "steps_per_s": steps / seconds,
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "rss_after_data": rss_data,
        "data_bytes": data.train.numel() * 4 + data.val.numel() * 4 + data.test.numel() * 4,
        "n_train": data.train.shape[0],
        "load_s": load_s,
        "torch": torch.__version__,
    }


def run_child(side: str, members: int, threads: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", side, "--members", str(members), "--threads", str(threads)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--members", type=int, default=16)
    ap.add_argument("--solo", type=int, default=2, help="solo trials timed (their mean rate is the baseline)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", choices=["solo", "packed"])
    ap.add_argument("--out", type=Path, default=HERE / "FASHION_MNIST.md")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.members, args.threads)))
        return
    load_before = os.getloadavg()[0]
    solo = run_child("solo", args.solo, args.threads)
    packed = run_child("packed", args.members, args.threads)
    load_after = os.getloadavg()[0]
    mib = 2**20
    ratio = packed["steps_per_s"] / solo["steps_per_s"]
    lines = [
        "# The MLP VAE on Fashion-MNIST: solo vs packed (benchmarks/fashion_mnist.py)",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs (shared), torch {solo['torch']}, {args.threads} thread(s); load average "
        f"{load_before:.1f} at the start, {load_after:.1f} at the end (other sessions' work).",
        f"Data: {solo['n_train']:,} training images (Fashion-MNIST's 60,000 less 5,000 for validation), "
        f"statically binarised; MLP 784-256-16, Bernoulli, batch 256, Adam; one epoch "
        f"({solo['model_steps'] // args.solo} steps) per trial.",
        "",
        "| side | trials | model-steps | training s | model-steps/s | peak RSS (MiB) |",
        "|---|---|---|---|---|---|",
        f"| solo (one after the other) | {args.solo} | {solo['model_steps']:,} | {solo['seconds']:.1f} | "
        f"{solo['steps_per_s']:.0f} | {solo['peak_rss'] / mib:.0f} |",
        f"| packed (one Trainer) | {args.members} | {packed['model_steps']:,} | {packed['seconds']:.1f} | "
        f"{packed['steps_per_s']:.0f} | {packed['peak_rss'] / mib:.0f} |",
        "",
        f"Packed / solo throughput: **{ratio:.2f}x** (same run, same machine).",
        "",
        f"Memory: the data (train + val + test, float32) are {packed['data_bytes'] / mib:.0f} MiB, held once "
        f"per worker: the pack of {args.members}'s peak is {packed['peak_rss'] / mib:.0f} MiB "
        f"({(packed['peak_rss'] - solo['peak_rss']) / mib:+.0f} MiB against a solo trial's "
        f"{solo['peak_rss'] / mib:.0f} MiB), where {args.members} copies of the training images alone would be "
        f"{args.members * solo['n_train'] * 784 * 4 / mib:,.0f} MiB.",
        "",
    ]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
