"""Packed trials against solo trials: training throughput in model-steps/s (issue 11).

    python benchmarks/pack.py              # M = 1, 4, 16, 64; MLP and conv; 1 and 2 threads; 3 repetitions
    python benchmarks/pack.py --quick      # M = 1, 4, 16; 1 repetition; smaller conv data
    python benchmarks/pack.py --device cuda --threads 1 --members 1,16,64,256

Writes benchmarks/PACK.md (``--quick``: benchmarks/.cache/PACK-quick.md unless ``--out``).

1. Throughput. M trials that differ in seed, beta, annealing schedule and free bits, one
   training epoch each: *solo* = the M trials one after the other through
   ``vaebench.core.train.train`` (each its own model, optimiser and loop, what a sweep worker runs),
   *packed* = the same M trials as one ``vaebench.core.pack.PackTrainer``. Both sides report the
   same field, ``train/epoch_seconds`` (the training loop; model build, data load and
   evaluation excluded), so model-steps/s = M x steps per epoch / summed epoch seconds. Both
   sides run in the same process, interleaved (the side that goes first alternates between
   repetitions); the ratio packed / solo is computed within a repetition, then summarised.
   Workloads: ``studies/collapse.yaml``'s MLP (digits 8x8 binarised, 64-256-128-8,
   Bernoulli, batch 64, Adam, free bits on half the members) and a conv VAE on procedural
   dSprites (64x64, channels 32-32-64-64, 10 latents, batch 64).
2. Evaluation: the packed trainer evaluates every member in one batched pass
   (``vaebench.core.metrics.evaluate_members`` on ``vaebench.core.members.SharedInput``), against member
   by member with the solo ``vaebench.core.metrics.evaluate``; cost per member, against the packed
   training epoch per member, with collapse.yaml's metric settings (iw_samples 64).
3. Conv packing: forward + backward of the packed conv VAE as one grouped convolution per
   layer (vaebench.core.members.Fused) against ``torch.func.vmap`` over the solo model (Vmapped).

Imports torch and vaebench's training modules only (no ray, mlflow, optuna), so it runs on
a GPU machine where only torch (and pydantic, numpy, scikit-learn for vaebench's config
and data) is installed. Nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402  (after the sys.path line)

from vaebench.core.members import run_members  # noqa: E402  (after the sys.path line)
from vaebench.core.metrics import evaluate, evaluate_members  # noqa: E402  (after the sys.path line)
from vaebench.core.models import build_model  # noqa: E402  (after the sys.path line)
from vaebench.core.pack import PackTrainer  # noqa: E402  (after the sys.path line)
from vaebench.core.train import configure_torch, train  # noqa: E402  (after the sys.path line)
from vaebench.data import load_data  # noqa: E402  (after the sys.path line)
from vaebench.study.config import TrialConfig  # noqa: E402  (after the sys.path line)

BETAS, ANNEALS, FREE_BITS = (
    [0.5, 2.0, 8.0],
    ["none", "linear", {"kind": "cyclical", "cycles": 4, "ratio": 0.5}],
    [0.0, 0.25],
)


def workload(name: str, quick: bool, device: str) -> dict:
    """The base trial config of a workload (2 epochs, evaluation at the second only)."""
    train_ = {"epochs": 2, "batch_size": 64, "lr": 1e-3, "device": device}
    metrics = {"iw_samples": 64, "every": 2}
    if name == "mlp":
        return {
            "data": {"kind": "digits", "binarize": True},
            "model": {"kind": "mlp", "latent_dim": 8, "hidden": [256, 128], "likelihood": "bernoulli"},
            "train": train_,
            "metrics": metrics,
        }
    return {
        "data": {"kind": "dsprites", "n_samples": 640 if quick else 1280, "val_fraction": 0.1},
        "model": {"kind": "conv", "latent_dim": 10, "channels": [32, 32, 64, 64], "likelihood": "bernoulli"},
        "train": train_,
        "metrics": metrics,
    }


def members(base: dict, M: int) -> list[dict]:
    """M configs cycling over collapse.yaml's beta x anneal x free bits, seeds 0..M-1."""
    out = []
    for i in range(M):
        d = {
            **base,
            "seed": i,
            "objective": {"beta": BETAS[i % 3], "anneal": ANNEALS[(i // 3) % 3], "free_bits": FREE_BITS[(i // 9) % 2]},
        }
        out.append(TrialConfig.model_validate(d).model_dump(mode="json"))
    return out


def solo_seconds(configs: list[dict], data, threads: int) -> float:
    total = 0.0
    for c in configs:
        cfg = TrialConfig.model_validate({**c, "train": {**c["train"], "threads": threads}})
        total += next(train(cfg, data)).metrics["train/epoch_seconds"]  # epoch 1; the generator is dropped
    return total


def packed_seconds(configs: list[dict], threads: int) -> float:
    pt = PackTrainer(configs, threads)
    msgs = pt.step()
    failed = [m for m in msgs if m["kind"] == "end"]
    if failed:
        raise RuntimeError(f"pack ended members in epoch 1: {failed[0]}")
    return next(m["metrics"]["train/epoch_seconds"] for m in msgs if m["kind"] == "epoch")


def num(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def stats(xs: list[float]) -> str:
    if len(xs) == 1:
        return num(xs[0])
    return f"{num(statistics.median(xs))} [{num(min(xs))}–{num(max(xs))}]"


def bench_throughput(names, Ms, threads_list, reps, quick, device) -> list[dict]:
    rows = []
    for name in names:
        base = workload(name, quick, device)
        cfg0 = TrialConfig.model_validate(base)
        data = load_data(cfg0.data, cfg0.data_seed)
        steps = -(-data.train.shape[0] // cfg0.train.batch_size)
        for threads in threads_list:
            configure_torch(threads)
            packed_seconds(members(base, 2), threads)  # warm-up: threads, allocator, kernels
            for M in Ms:
                configs = members(base, M)
                solo, packed, ratio = [], [], []
                for r in range(reps):
                    order = ["solo", "packed"] if r % 2 == 0 else ["packed", "solo"]
                    secs = {}
                    for side in order:
                        secs[side] = (
                            solo_seconds(configs, data, threads) if side == "solo" else packed_seconds(configs, threads)
                        )
                    solo.append(M * steps / secs["solo"])
                    packed.append(M * steps / secs["packed"])
                    ratio.append(packed[-1] / solo[-1])
                row = {
                    "workload": name,
                    "threads": threads,
                    "M": M,
                    "steps": steps,
                    "solo": solo,
                    "packed": packed,
                    "ratio": ratio,
                    "load": os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan"),
                }
                rows.append(row)
                print(
                    f"{name:5s} threads {threads} M {M:3d}: solo {stats(solo)} model-steps/s, packed {stats(packed)}, "
                    f"packed/solo {stats(ratio)} (load {row['load']:.2f})",
                    flush=True,
                )
    return rows


def bench_evaluation(M: int, threads: int, device: str) -> dict:
    """Seconds of one member's evaluation against the packed epoch's training seconds per member."""
    configure_torch(threads)
    configs = members(workload("mlp", True, device), M)
    pt = PackTrainer(configs, threads)
    msgs = pt.step()
    train_s = next(m["metrics"]["train/epoch_seconds"] for m in msgs if m["kind"] == "epoch")
    cfg = TrialConfig.model_validate(configs[0])
    started = time.perf_counter()
    run, x_val, dev = pt.trainer.model, pt.trainer.x_val, pt.trainer.device
    for k in range(M):
        evaluate(run.solo_model(k), x_val, cfg.metrics, torch.Generator(dev).manual_seed(0))
    eval_s = (time.perf_counter() - started) / M
    started = time.perf_counter()
    evaluate_members(run.for_metrics(), x_val, cfg.metrics, torch.Generator(dev).manual_seed(0))
    batched_s = (time.perf_counter() - started) / M
    out = {
        "M": M,
        "threads": threads,
        "train_per_member": train_s / M,
        "eval_per_member": eval_s,
        "batched_per_member": batched_s,
    }
    print(
        f"evaluation (mlp, M {M}, threads {threads}): {batched_s * 1e3:.1f} ms per member batched, "
        f"{eval_s * 1e3:.1f} ms member by member, vs {train_s / M * 1e3:.1f} ms of packed training "
        "per member-epoch",
        flush=True,
    )
    return out


def bench_conv_choice(M: int, threads: int, reps: int, device: str) -> dict:
    """Forward + backward of M conv VAEs (dSprites shapes, batch 64): grouped convolutions vs vmap."""
    configure_torch(threads)
    dev = torch.device(device)
    cfg = TrialConfig.model_validate(workload("conv", True, device))
    solos = []
    for i in range(M):
        torch.manual_seed(i)
        solos.append(build_model(cfg.model, (1, 64, 64)).to(dev))
    fused, generic = run_members(solos, "fused"), run_members(solos, "generic")
    x = (torch.rand(M, 64, 1, 64, 64, device=dev) > 0.5).float()

    def step(run):
        def one() -> None:
            mu, _ = run.encode(x)
            run.log_likelihood(x, mu).sum().backward()

        return one

    grouped_step, vmap_step = step(fused), step(generic)

    def timed(fn):
        fn()  # warm-up
        if dev.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(reps):
            fn()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - started) / reps

    g, v = timed(grouped_step), timed(vmap_step)
    print(
        f"conv packing (M {M}, threads {threads}): grouped {g * 1e3:.1f} ms, vmap {v * 1e3:.1f} ms per "
        f"forward+backward; vmap / grouped {v / g:.2f}",
        flush=True,
    )
    return {"M": M, "threads": threads, "grouped_ms": g * 1e3, "vmap_ms": v * 1e3}


def bench_agreement(epochs: int | None, threads: int, device: str) -> dict:
    """studies/collapse.yaml packed (as plan_packs groups it on one slot) and unpacked: per
    configuration, the mean over seeds of the final val/elbo against the seed-to-seed std."""
    from vaebench.core.pack import plan_packs
    from vaebench.study.spec import expand, load_study

    configure_torch(threads)
    study = load_study(HERE.parent / "studies" / "collapse.yaml")
    specs = expand(study)
    configs = []
    for spec in specs:
        c = spec.config.model_dump(mode="json")
        c["train"].update(device=device, threads=threads, **({"epochs": epochs} if epochs else {}))
        configs.append(c)
    final: dict[str, dict[int, float]] = {"packed": {}, "solo": {}}
    started = time.perf_counter()
    for group in plan_packs(configs, "auto", slots=1):
        pt = PackTrainer([configs[i] for i in group], threads)
        while not pt.done:
            for m in pt.step():
                if m["kind"] == "epoch" and "val/elbo" in m["metrics"]:
                    final["packed"][group[m["member"]]] = m["metrics"]["val/elbo"]
    packed_s = time.perf_counter() - started
    started = time.perf_counter()
    data = load_data(TrialConfig.model_validate(configs[0]).data, configs[0]["data_seed"])
    for i, c in enumerate(configs):
        final["solo"][i] = [r for r in train(TrialConfig.model_validate(c), data)][-1].metrics["val/elbo"]
    solo_s = time.perf_counter() - started
    points: dict[str, list[int]] = {}
    for i, spec in enumerate(specs):
        points.setdefault(spec.point_key, []).append(i)
    rows = []
    for idx in points.values():
        p = [final["packed"][i] for i in idx]
        q = [final["solo"][i] for i in idx]
        rows.append({"diff": abs(statistics.mean(p) - statistics.mean(q)), "std": statistics.stdev(q)})
    within = sum(r["diff"] < r["std"] for r in rows)
    worst = max(r["diff"] / r["std"] for r in rows)
    print(
        f"agreement (collapse.yaml, {configs[0]['train']['epochs']} epochs): {within}/{len(rows)} configurations "
        f"with |mean packed - mean solo| < seed std; worst ratio {worst:.2f}; wall packed {packed_s:.0f} s, "
        f"solo {solo_s:.0f} s",
        flush=True,
    )
    return {
        "epochs": configs[0]["train"]["epochs"],
        "within": within,
        "points": len(rows),
        "worst": worst,
        "median_ratio": statistics.median(r["diff"] / r["std"] for r in rows),
        "packed_s": packed_s,
        "solo_s": solo_s,
        "threads": threads,
    }


def bench_sweep(epochs: int | None) -> dict:
    """`vaebench sweep studies/collapse.yaml` end to end (local Ray, SQLite MLflow, evaluation, artifacts),
    --pack off then --pack auto, each into a fresh store in a temporary folder. Runs the CLI in a
    subprocess: needs ray and mlflow (the only part of this script that does)."""
    import subprocess
    import tempfile

    out = {"epochs": epochs or 200}
    for pack in ("off", "auto"):
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [
                sys.executable,
                "-m",
                "vaebench.cli",
                "sweep",
                str(HERE.parent / "studies" / "collapse.yaml"),
                "--tracking-uri",
                f"sqlite:///{tmp}/m.db",
                "--pack",
                pack,
            ]
            if epochs:
                cmd += ["--set", f"train.epochs={epochs}"]
            env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
            started = time.perf_counter()
            proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, check=False)
            out[pack] = time.perf_counter() - started
            if proc.returncode != 0:
                raise RuntimeError(f"sweep --pack {pack} failed: {proc.stderr[-2000:]}")
        steps = 108 * out["epochs"] * 23
        print(
            f"sweep collapse.yaml ({out['epochs']} epochs) --pack {pack}: {out[pack]:.0f} s, "
            f"{steps / out[pack]:,.0f} model-steps/s",
            flush=True,
        )
    return out


def render(args, rows, evals, convs, started: float, agreement: dict | None = None, sweep: dict | None = None) -> str:
    lines = [
        "# Packed trials: benchmark",
        "",
        (
            f"Written by `python benchmarks/pack.py{' --quick' if args.quick else ''}` on "
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC ({(time.perf_counter() - started) / 60:.1f} min); "
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical cores, torch {torch.__version__}, "
            f"device {args.device}, load average at the start {args.load0:.2f}."
        ),
        "",
        (
            "Model-steps/s = M x steps per epoch / the training seconds of one epoch (`train/epoch_seconds`: "
            "model build, data load and evaluation excluded), solo = the M trials one after the other through "
            "`vaebench.core.train.train`, packed = one `vaebench.core.pack.PackTrainer`. Both in the same process, interleaved; "
            "the ratio is taken within each repetition: median [min–max] over repetitions."
        ),
        "",
        "## 1. Throughput",
        "",
        "| workload | threads | M | steps/epoch | solo model-steps/s | packed model-steps/s | **packed / solo** | load (1 min) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['workload']} | {r['threads']} | {r['M']} | {r['steps']} | {stats(r['solo'])} | "
            f"{stats(r['packed'])} | **{stats(r['ratio'])}** | {r['load']:.2f} |"
        )
    if evals:
        lines += [
            "",
            "## 2. Evaluation per member: batched over the pack (what PackTrainer runs) and member by member",
            "",
            "| M | threads | packed training per member-epoch | batched evaluation | member by member | "
            "**by member / batched** | batched evaluation / training |",
            "|---|---|---|---|---|---|---|",
        ]
        for e in evals:
            lines.append(
                f"| {e['M']} | {e['threads']} | {e['train_per_member'] * 1e3:.1f} ms | "
                f"{e['batched_per_member'] * 1e3:.1f} ms | {e['eval_per_member'] * 1e3:.1f} ms | "
                f"**{e['eval_per_member'] / e['batched_per_member']:.2f}** | "
                f"{e['batched_per_member'] / e['train_per_member']:.2f} |"
            )
    if convs:
        lines += [
            "",
            "## 3. Conv packing: grouped convolutions vs torch.func.vmap (forward + backward)",
            "",
            "| M | threads | grouped | vmap | vmap / grouped |",
            "|---|---|---|---|---|",
        ]
        for c in convs:
            lines.append(
                f"| {c['M']} | {c['threads']} | {c['grouped_ms']:.1f} ms | {c['vmap_ms']:.1f} ms | "
                f"{c['vmap_ms'] / c['grouped_ms']:.2f} |"
            )
    if agreement:
        a = agreement
        lines += [
            "",
            "## 4. Agreement: studies/collapse.yaml packed and unpacked",
            "",
            (
                f"All 108 trials, {a['epochs']} epochs, {a['threads']} thread(s), packed as `plan_packs` groups them on "
                f"one slot and unpacked through `vaebench.core.train.train`. Per configuration (36), the mean over the 3 "
                f"seeds of the final val/elbo: |packed - unpacked| is below the seed-to-seed standard deviation "
                f"(unpacked) for **{a['within']}/{a['points']}** configurations; |difference| / std: median "
                f"{a['median_ratio']:.3f}, worst {a['worst']:.3f}. Wall time, evaluation included: packed "
                f"{a['packed_s']:.0f} s, unpacked {a['solo_s']:.0f} s ({a['solo_s'] / a['packed_s']:.1f}x)."
            ),
        ]
    if sweep:
        steps = 108 * sweep["epochs"] * 23
        lines += [
            "",
            "## 5. End to end: `vaebench sweep studies/collapse.yaml`",
            "",
            f"{sweep['epochs']} epochs per trial (108 trials x 23 steps per epoch = {steps:,} model-steps), "
            "local Ray, a fresh SQLite store, evaluation and artifacts included; wall time of the command.",
            "",
            "| --pack | wall | model-steps/s |",
            "|---|---|---|",
            f"| off | {sweep['off']:.0f} s | {steps / sweep['off']:,.0f} |",
            f"| auto | {sweep['auto']:.0f} s | {steps / sweep['auto']:,.0f} |",
            "",
            f"off / auto: **{sweep['off'] / sweep['auto']:.2f}x**.",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="M = 1, 4, 16, 1 repetition, smaller conv data")
    ap.add_argument("--members", default=None, help="pack sizes M, comma-separated (default 1,4,16,64)")
    ap.add_argument("--threads", default="1,2", help="thread counts (default 1,2)")
    ap.add_argument("--workloads", default="mlp,conv", help="mlp, conv or both")
    ap.add_argument("--reps", type=int, default=None, help="repetitions (default 3, --quick 1)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument(
        "--agreement",
        type=int,
        nargs="?",
        const=0,
        default=None,
        metavar="EPOCHS",
        help="also train studies/collapse.yaml packed and unpacked and compare final val/elbo per "
        "configuration (EPOCHS overrides its 40; needs pyyaml)",
    )
    ap.add_argument(
        "--sweep",
        type=int,
        nargs="?",
        const=0,
        default=None,
        metavar="EPOCHS",
        help="also time `vaebench sweep studies/collapse.yaml` with --pack off and auto (EPOCHS overrides "
        "its 200; needs ray and mlflow)",
    )
    ap.add_argument("--skip-throughput", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    started = time.perf_counter()
    args.load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    Ms = [int(m) for m in (args.members or ("1,4,16" if args.quick else "1,4,16,64")).split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    reps = args.reps or (1 if args.quick else 3)
    rows, evals, convs = [], [], []
    if not args.skip_throughput:
        rows = bench_throughput(args.workloads.split(","), Ms, threads, reps, args.quick, args.device)
        evals = [bench_evaluation(max(Ms), t, args.device) for t in threads]
        convs = (
            [bench_conv_choice(min(16, max(Ms)), t, 2 if args.quick else 5, args.device) for t in threads]
            if "conv" in args.workloads
            else []
        )
    agreement = bench_agreement(args.agreement or None, threads[0], args.device) if args.agreement is not None else None
    out = args.out or (HERE / ".cache" / "PACK-quick.md" if args.quick else HERE / "PACK.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    sweep = bench_sweep(args.sweep or None) if args.sweep is not None else None
    out.write_text(render(args, rows, evals, convs, started, agreement, sweep))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
