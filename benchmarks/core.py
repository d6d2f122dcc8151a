"""The one training core against what it replaced (issue 16), in one run, as ratios.

1. Solo trial: the Trainer at M = 1 (what ``vaebench.core.train.train`` runs) against a frozen copy of the
   solo loop it replaced (``old_solo_epochs`` below, the loop of vaebench.core.train before the
   change, kept here only as the baseline); training seconds per epoch, evaluation excluded. Both
   start from the same config; the parameters after the same epochs are compared (equal bit for bit).
2. Packed MLP: M = 16 trials as one Trainer against the same 16 trials one after the other
   as Trainers of one, 2 threads (benchmarks/PACK.md measured 3.43x before the change).
3. Generic against fused: the Trainer's ``path="generic"`` (torch.func: stack_module_state,
   functional_call, vmap) against ``path="fused"`` (member-aware layers: baddbmm, grouped
   convolutions) for the MLP and the conv families.

Timings are training epochs 2-3 (epoch 1 warms up; no evaluation falls in them), median over
interleaved repetitions, the ratio taken within each repetition. On 1 thread (sections 1 and 3)
they are the thread's CPU seconds (``time.thread_time``), which other processes on a shared
machine disturb far less than wall time; section 2 needs 2 threads and takes wall time. Prints
Markdown; nothing asserts a timing.

    python benchmarks/core.py [--reps 3] [--device cpu] [--out benchmarks/CORE.md]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402  (after the sys.path line)

from vaebench.core.models import build_model, reparameterise  # noqa: E402  (after the sys.path line)
from vaebench.core.objectives import capacity, kl_per_dim, kl_weight  # noqa: E402  (after the sys.path line)
from vaebench.core.train import Trainer, configure_torch  # noqa: E402  (after the sys.path line)
from vaebench.data import load_data  # noqa: E402  (after the sys.path line)
from vaebench.study.config import CapacityAnneal, TrialConfig  # noqa: E402  (after the sys.path line)

EPOCHS = 10  # the configs' epochs (the schedules' T); the last is never run (it would evaluate)
RUN = 3  # epochs run per measurement; epoch 1 warms up, the median of the others is the measurement
RUN_SOLO = 9  # a solo epoch is short (~50 ms of CPU): more of them


def config(kind: str, device: str, threads: int, seed: int = 0, **objective) -> TrialConfig:
    """collapse.yaml's MLP on digits (benchmarks/pack.py's workload), or a conv VAE on digits."""
    model = (
        {"kind": "mlp", "latent_dim": 8, "hidden": [256, 128]}
        if kind == "mlp"
        else {"kind": "conv", "latent_dim": 8, "channels": [32, 64]}
    )
    return TrialConfig.model_validate(
        {
            "data": {"kind": "digits", "binarize": True},
            "model": model,
            "seed": seed,
            "objective": objective,
            "train": {"epochs": EPOCHS, "batch_size": 64, "lr": 1e-3, "device": device, "threads": threads},
            "metrics": {"every": 1000, "iw_samples": 8, "iw_examples": 50},
        }
    )


def members(kind: str, M: int, device: str, threads: int) -> list[TrialConfig]:
    """M configs over collapse.yaml's beta x anneal x free bits, seeds 0..M-1 (as benchmarks/pack.py)."""
    betas, anneals, fbs = (
        [0.5, 2.0, 8.0],
        ["none", "linear", {"kind": "cyclical", "cycles": 4, "ratio": 0.5}],
        [0.0, 0.25],
    )
    return [
        config(kind, device, threads, i, beta=betas[i % 3], anneal=anneals[(i // 3) % 3], free_bits=fbs[(i // 9) % 2])
        for i in range(M)
    ]


# ------------------------------------------------------------------- the baseline: the loop as it was


def _old_regulariser(kl: torch.Tensor, cfg, t: int, T: int) -> torch.Tensor:
    kl_dims = kl.mean(0)
    if isinstance(cfg.anneal, CapacityAnneal):
        return cfg.anneal.gamma * (kl_dims.sum() - capacity(cfg.anneal, t, T)).abs()
    if cfg.free_bits == 0:
        return kl_dims.sum()
    if cfg.free_bits_mode == "per_dim":
        return kl_dims.clamp(min=cfg.free_bits).sum()
    return kl_dims.sum().clamp(min=cfg.free_bits * kl.shape[-1])


def old_solo_epochs(
    cfg: TrialConfig, data, clock=time.thread_time, run: int = RUN_SOLO
) -> tuple[list[float], torch.nn.Module]:
    """The solo training loop before the change (beta_vae), frozen: training seconds per epoch
    (``clock``) of its first ``run`` epochs."""
    configure_torch(cfg.train.threads)
    device = torch.device(cfg.train.device)
    x_train = data.train.to(device)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, data.meta.shape).to(device)
    t_ = cfg.train
    if t_.optimizer == "sgd":
        optimizer = torch.optim.SGD(
            model.parameters(), lr=t_.lr, weight_decay=t_.weight_decay, momentum=0.9, fused=True
        )
    else:
        opt = torch.optim.AdamW if t_.optimizer == "adamw" else torch.optim.Adam
        optimizer = opt(model.parameters(), lr=t_.lr, weight_decay=t_.weight_decay, fused=True)
    noise = torch.Generator(device).manual_seed(cfg.seed)
    order = torch.Generator().manual_seed(cfg.seed)
    n, bs, epochs = x_train.shape[0], t_.batch_size, t_.epochs
    T = epochs * math.ceil(n / bs)
    t, seconds = 0, []
    for _epoch in range(run):
        started = clock()
        steps, sizes = [], []
        for idx in torch.randperm(n, generator=order).split(bs):
            x = x_train[idx.to(device)]
            mu, logvar = model.encode(x)
            z = reparameterise(mu, logvar, noise)
            recon = -model.likelihood.log_prob(x, model.decode(z)).mean()
            kl = kl_per_dim(mu, logvar)
            terms = {"recon": recon, "kl": kl.sum(1).mean(), "regulariser": _old_regulariser(kl, cfg.objective, t, T)}
            terms = {"loss": recon + kl_weight(cfg.objective, t, T) * terms["regulariser"], **terms}
            optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            if t_.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), t_.grad_clip)
            optimizer.step()
            steps.append(torch.stack([v.detach() for v in terms.values()]))
            sizes.append(len(idx))
            t += 1
        per_step = torch.stack(steps)
        weights = torch.tensor(sizes, dtype=per_step.dtype, device=device)[:, None] / n
        (per_step * weights).sum(0).tolist()  # the epoch means, as the loop computed them (one sync)
        seconds.append(clock() - started)
    return seconds, model


# ------------------------------------------------------------------- the measurements


def trainer_epochs(
    cfgs: list[TrialConfig], data, path: str = "auto", clock=time.thread_time, run: int = RUN
) -> tuple[list[float], Trainer]:
    """Seconds (``clock``) of each of the first ``run`` epochs of ``cfgs`` as one Trainer."""
    configure_torch(cfgs[0].train.threads)
    trainer = Trainer(cfgs, data, path)
    seconds = []
    for _ in range(run):
        started = clock()
        trainer.run_epoch()
        seconds.append(clock() - started)
    return seconds, trainer


def warm(seconds: list[float]) -> float:
    """The median epoch after the first."""
    return statistics.median(seconds[1:])


def stats(xs: list[float]) -> str:
    if len(xs) == 1:
        return f"{xs[0]:.3g}"
    return f"{statistics.median(xs):.3g} [{min(xs):.3g}–{max(xs):.3g}]"


def bench_solo(reps: int, device: str) -> list[dict]:
    rows = []
    for kind in ("mlp", "conv"):
        cfg = config(kind, device, 1, beta=2.0, anneal="linear", free_bits=0.25)
        data = load_data(cfg.data, cfg.data_seed)
        ratios, old_s, new_s, same = [], [], [], True
        for _ in range(reps):
            old, old_model = old_solo_epochs(cfg, data)
            new, trainer = trainer_epochs([cfg], data, run=RUN_SOLO)
            ratios.append(warm(old) / warm(new))
            old_s.append(warm(old))
            new_s.append(warm(new))
            new_state = trainer.model.solo_model(0).state_dict()
            same &= all(torch.equal(v, new_state[k]) for k, v in old_model.state_dict().items())
        rows.append({"kind": kind, "ratios": ratios, "old": old_s, "new": new_s, "same": same})
        print(f"solo {kind}: core / old loop speed {stats(ratios)}; parameters equal: {same}", flush=True)
    return rows


def bench_packed(reps: int, device: str, M: int = 16, threads: int = 2) -> dict:
    cfgs = members("mlp", M, device, threads)
    data = load_data(cfgs[0].data, cfgs[0].data_seed)
    clock = time.thread_time if threads == 1 else time.perf_counter  # CPU seconds where one thread does all
    ratios = []
    for _ in range(reps):
        solo = sum(warm(trainer_epochs([c], data, clock=clock)[0]) for c in cfgs)
        packed = warm(trainer_epochs(cfgs, data, clock=clock)[0])
        ratios.append(solo / packed)
    print(f"packed mlp M {M}, {threads} threads: packed / solo speed {stats(ratios)}", flush=True)
    return {"M": M, "threads": threads, "ratios": ratios}


def bench_generic(reps: int, device: str, threads: int = 1) -> list[dict]:
    rows = []
    for kind, M in (("mlp", 16), ("conv", 4)):
        cfgs = members(kind, M, device, threads)
        data = load_data(cfgs[0].data, cfgs[0].data_seed)
        ratios = []
        for _ in range(reps):
            fused = warm(trainer_epochs(cfgs, data, "fused")[0])
            generic = warm(trainer_epochs(cfgs, data, "generic")[0])
            ratios.append(generic / fused)
        print(f"{kind} M {M}, {threads} threads: generic / fused seconds {stats(ratios)}", flush=True)
        rows.append({"kind": kind, "M": M, "threads": threads, "ratios": ratios})
    return rows


def render(
    solo: list[dict], packed: dict | None, generic: list[dict], reps: int, device: str, minutes: float, load: float
) -> str:
    lines = [
        "# The one training core: speed against what it replaced",
        "",
        f"Written by `python benchmarks/core.py` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} "
        f"({minutes:.1f} min); {platform.machine()}, {os.cpu_count()} logical cores, torch {torch.__version__}, "
        f"device {device}, load average at the start {load:.2f}. The machine was shared with other sessions "
        "(noisy): each ratio is taken within one repetition, both sides interleaved; median [min–max] over "
        f"{reps} repetitions of the median training epoch (epoch 1 warms up and is left out; no evaluation in them); on 1 thread "
        "the thread's CPU seconds (less disturbed by the other sessions than wall time), on 2 threads wall seconds.",
        "",
    ]
    if solo:
        lines += [
            "## 1. A solo trial: the core (Trainer at M = 1) against the loop it replaced",
            "",
            "| workload | threads | old loop CPU s/epoch | core CPU s/epoch | **core speed / old** | parameters bit for bit |",
            "|---|---|---|---|---|---|",
        ]
    for r in solo:
        lines.append(
            f"| {r['kind']} (digits, beta 2, linear anneal, free bits 0.25) | 1 | {stats(r['old'])} | "
            f"{stats(r['new'])} | **{stats(r['ratios'])}** | {'yes' if r['same'] else 'NO'} |"
        )
    if packed:
        lines += [
            "",
            "## 2. Packed MLP against its members one after the other",
            "",
            "| workload | threads | M | **packed / solo speed** | before the change (benchmarks/PACK.md, idle machine) |",
            "|---|---|---|---|---|",
            f"| mlp 256-128, latent 8, digits | {packed['threads']} | {packed['M']} | **{stats(packed['ratios'])}** | "
            f"{'2.17' if packed['threads'] == 1 else '3.43'} |",
        ]
    if generic:
        lines += [
            "",
            "## 3. The generic path (torch.func) against the fused one (member-aware layers)",
            "",
            "| workload | threads | M | **generic / fused CPU seconds** | before the change (benchmarks/PACK.md) |",
            "|---|---|---|---|---|",
        ]
    before = {"mlp": "(not measured)", "conv": "1.45 on 1 thread, 1.39 on 2 (forward + backward only, dSprites, M 16)"}
    for r in generic:
        lines.append(
            f"| {r['kind']} (digits) | {r['threads']} | {r['M']} | **{stats(r['ratios'])}** | {before[r['kind']]} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--sections", default="solo,packed,generic", help="which of solo, packed, generic (default all)")
    ap.add_argument("--packed-threads", type=int, default=2, help="threads of section 2 (default 2)")
    ap.add_argument("--out", type=Path, default=None, help="write the Markdown here as well")
    args = ap.parse_args()
    sections = set(args.sections.split(","))
    started, load = time.perf_counter(), os.getloadavg()[0]
    solo = bench_solo(args.reps, args.device) if "solo" in sections else []
    packed = bench_packed(args.reps, args.device, threads=args.packed_threads) if "packed" in sections else None
    generic = bench_generic(args.reps, args.device) if "generic" in sections else []
    text = render(solo, packed, generic, args.reps, args.device, (time.perf_counter() - started) / 60, load)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
