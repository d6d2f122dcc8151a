"""Training throughput of the decoder families through the training core, solo and packed, in one run.

    python benchmarks/strong_decoders.py                      # 4 rounds, about 2 minutes on an idle core
    python benchmarks/strong_decoders.py --rounds 2 --out benchmarks/STRONG_DECODERS.md
    python benchmarks/strong_decoders.py --sections solo,pack  # without section 3 (the sequence VAE packed)

Every figure is an epoch of ``vaebench.core.train.Trainer``, the loop a sweep runs (minibatch
order, encode, reparameterise, log p(x|z), objective, backward, optimiser step, the epoch's
means), batch 64, 1 thread, no evaluation in the timed epochs. Model-steps/s counts each
member's optimiser step: M x steps per epoch / epoch seconds. Clock: the thread's CPU seconds
(``time.thread_time``; on 1 thread all the work is on it), which other processes on a shared
machine disturb far less than wall time.

1. Solo (M = 1): the factorised MLP VAE and the gated PixelCNN on binarised 8x8 digits, the
   sequence VAE (GRU decoder, and factorised decoder) on the grammar corpus.
2. Packed: the PixelCNN at M = 4 and 8 through the path ``run_members`` picks ("auto"; the
   PixelCNN's masked convolutions are not member-aware layers, so torch.func's ``Vmapped``),
   against the same M trials solo one after the other (same total model-steps).
3. The sequence VAE packed at M = 9 against 9 solo trials, GRU decoder (studies/strong_decoder.yaml's
   model: embed 32, hidden 64, z_feed init, latent 4) and factorised decoder: through the path
   run_members picks (fused: its Embedding, GRU and Linear layers are member-aware, the GRU's
   equations written out over the time steps with one ``torch.baddbmm`` per step, since
   ``torch.func.vmap`` has no batching rule for aten::gru). Beside it the alternative not taken:
   ``LoopGRU`` (below), the GRU's equations as an ``nn.GRU`` subclass, packed through
   ``torch.func`` (Vmapped). And the GRU's solo speed: nn.GRU (what a solo trial runs), the
   member-aware code at M = 1 (path "fused"), LoopGRU alone.

Every Trainer lives through the whole run: each takes one warm-up epoch, then one epoch per
round; the cases advance in turn, the order rotated each round. A packed/solo ratio is taken
within a round, then the median [min-max] over rounds is printed. At the end each packed member
is compared with the solo trial of its seed after the same epochs (largest relative parameter
difference ||packed - solo|| / ||solo||). Prints Markdown; nothing asserts a timing.
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
import torch.nn.functional as F  # noqa: E402  (after the sys.path line)
from torch import nn  # noqa: E402  (after the sys.path line)

from vaebench.core.models import sequence  # noqa: E402  (after the sys.path line)
from vaebench.core.train import Trainer, configure_torch  # noqa: E402  (after the sys.path line)
from vaebench.data import load_data  # noqa: E402  (after the sys.path line)
from vaebench.study.config import TrialConfig  # noqa: E402  (after the sys.path line)

DIGITS = {"kind": "digits", "binarize": True}
GRAMMAR = {"kind": "grammar", "n_samples": 2000}
GRU_ARGS = {"cell": "gru", "embed": 32, "hidden": 64, "z_feed": "init"}  # studies/strong_decoder.yaml's
FAMILIES = {
    "mlp": (DIGITS, {"kind": "mlp", "latent_dim": 8}),
    "pixelcnn": (DIGITS, {"kind": "pixelcnn", "latent_dim": 8, "args": {"layers": 3, "channels": 32}}),
    "seq_gru": (GRAMMAR, {"kind": "seq_vae", "latent_dim": 4, "args": GRU_ARGS}),
    "seq_fact": (GRAMMAR, {"kind": "seq_vae", "latent_dim": 4, "args": {**GRU_ARGS, "decoder": "factorised"}}),
}
LABELS = {
    "mlp": "mlp 256-128, digits (factorised)",
    "pixelcnn": "pixelcnn 3 x 32, digits",
    "seq_gru": "seq_vae GRU, grammar",
    "seq_fact": "seq_vae factorised decoder, grammar",
}
PIXELCNN_PACKS = (4, 8)
SEQ_PACK = 9


def config(family: str, seed: int) -> TrialConfig:
    data, model = FAMILIES[family]
    return TrialConfig.model_validate(
        {
            "data": data,
            "model": model,
            "seed": seed,
            # epochs far beyond the run: the last epoch (which evaluates) is never reached
            "train": {"epochs": 1000, "batch_size": 64, "lr": 3e-3, "device": "cpu", "threads": 1},
            "metrics": {"every": 1000},
        }
    )


# ------------------------------------------------------------------- the alternative not taken


class LoopGRU(nn.GRU):
    """nn.GRU (one layer, batch_first) with its equations written out over the time steps, so that it
    runs under torch.func.vmap (aten::gru has no batching rule). Same parameters, same init. The
    alternative to the fused path that vaebench does not use: it packs slower (the table printed)."""

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        h = x.new_zeros(x.shape[0], self.hidden_size) if h0 is None else h0[0]
        return _gru_steps(
            F.linear(x, self.weight_ih_l0, self.bias_ih_l0),
            h,
            lambda h: F.linear(h, self.weight_hh_l0, self.bias_hh_l0),
        )


def _gru_steps(gi: torch.Tensor, h: torch.Tensor, hidden) -> tuple[torch.Tensor, torch.Tensor]:
    """The GRU's recurrence (gates r, z, n in torch's order) from input projections gi [..., T, 3H]
    and state h [..., H]; ``hidden(h)`` is W_hh h + b_hh. Returns (outputs [..., T, H], h [1, ..., H])."""
    H, outs = h.shape[-1], []
    # unbind and split, not indexing (as vaebench.core.models.layers.GRU): an index's backward fills a
    # zero tensor of the whole input per step
    for g in gi.unbind(-2):
        g_rz, g_n = g.split([2 * H, H], -1)
        h_rz, h_n = hidden(h).split([2 * H, H], -1)
        r, z = torch.sigmoid(g_rz + h_rz).chunk(2, -1)
        n = torch.tanh(g_n + r * h_n)
        h = n + z * (h - n)
        outs.append(h)
    return torch.stack(outs, -2), h[None]


def build_trainer(family: str, seeds: list[int], data, path: str = "auto", loop: bool = False) -> Trainer:
    """A Trainer of ``seeds`` on ``path`` (run_members's); ``loop``: LoopGRU in place of nn.GRU."""
    cfgs = [config(family, s) for s in seeds]
    saved = dict(sequence.CELLS)
    try:
        if loop:
            sequence.CELLS["gru"] = LoopGRU
        return Trainer(cfgs, data, path)
    finally:
        sequence.CELLS.clear()
        sequence.CELLS.update(saved)


# ------------------------------------------------------------------- the run


class Case:
    """One Trainer, its epochs timed: model-steps/s of each timed epoch."""

    def __init__(self, key: str, trainer: Trainer):
        self.key, self.trainer, self.rates = key, trainer, []
        self.M = len(trainer.live)
        self.steps = math.ceil(trainer.n / trainer.bs)
        self.path = type(trainer.model).__name__
        self.seconds: list[float] = []

    def epoch(self, timed: bool = True) -> None:
        started = time.thread_time()
        self.trainer.run_epoch()
        if timed:
            self.seconds.append(time.thread_time() - started)


def rel_diff(packed: Trainer, solo: dict[int, Trainer]) -> float:
    """The largest ||packed - solo|| / ||solo|| over the parameters of the members with a solo trial."""
    worst = 0.0
    for k, m in enumerate(packed.live):
        if m.cfg.seed not in solo:
            continue
        want = solo[m.cfg.seed].model.member_state(0)
        got = packed.model.member_state(k)
        for n, v in want.items():
            worst = max(worst, ((got[n] - v).norm() / v.norm().clamp(min=1e-30)).item())
    return worst


def stats(xs: list[float], fmt: str = ".3g") -> str:
    if len(xs) == 1:
        return format(xs[0], fmt)
    return f"{format(statistics.median(xs), fmt)} [{format(min(xs), fmt)}-{format(max(xs), fmt)}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--sections", default="solo,pack,seq", help="which of solo, pack, seq (default all)")
    ap.add_argument("--out", type=Path, default=None, help="write the Markdown here as well")
    args = ap.parse_args()
    sections = set(args.sections.split(","))
    configure_torch(1)
    t0, load0 = time.perf_counter(), os.getloadavg()
    data = {"digits": load_data(config("mlp", 0).data, 0), "grammar": load_data(config("seq_gru", 0).data, 0)}
    dig, gram = data["digits"], data["grammar"]

    cases: dict[str, Case] = {}
    # per packed case: (the solo cases of its seeds, the solo baseline's label)
    packs: dict[str, list[str]] = {}
    if "solo" in sections:
        for fam in FAMILIES:
            cases[fam] = Case(fam, build_trainer(fam, [0], dig if fam in ("mlp", "pixelcnn") else gram))
    if "pack" in sections:
        for s in range(max(PIXELCNN_PACKS)):  # the seed-0 solo trial is section 1's when it runs
            reuse = cases.get("pixelcnn") if s == 0 else None
            cases[f"pixelcnn/solo{s}"] = reuse or Case("pixelcnn", build_trainer("pixelcnn", [s], dig))
        for M in PIXELCNN_PACKS:
            cases[f"pixelcnn/M{M}"] = Case("pixelcnn", build_trainer("pixelcnn", list(range(M)), dig))
            packs[f"pixelcnn/M{M}"] = [f"pixelcnn/solo{s}" for s in range(M)]
    if "seq" in sections:
        for s in range(SEQ_PACK):
            reuse = cases.get("seq_gru") if s == 0 else None
            cases[f"seq_gru/solo{s}"] = reuse or Case("seq_gru", build_trainer("seq_gru", [s], gram))
        cases["seq_gru/loop1"] = Case("seq_gru", build_trainer("seq_gru", [0], gram, loop=True))
        cases["seq_gru/fused1"] = Case("seq_gru", build_trainer("seq_gru", [0], gram, "fused"))
        seeds = list(range(SEQ_PACK))
        for s in seeds:
            reuse = cases.get("seq_fact") if s == 0 else None
            cases[f"seq_fact/solo{s}"] = reuse or Case("seq_fact", build_trainer("seq_fact", [s], gram))
        for fam in ("seq_gru", "seq_fact"):
            cases[f"{fam}/M{SEQ_PACK}"] = Case(fam, build_trainer(fam, seeds, gram))
            packs[f"{fam}/M{SEQ_PACK}"] = [f"{fam}/solo{s}" for s in seeds]
        cases[f"seq_gru/loop{SEQ_PACK}"] = Case("seq_gru", build_trainer("seq_gru", seeds, gram, "generic", True))
        packs[f"seq_gru/loop{SEQ_PACK}"] = [f"seq_gru/solo{s}" for s in seeds]
    unique = list(dict.fromkeys(cases.values()))  # each trainer once
    print(f"{len(unique)} trainers; warm-up epoch", flush=True)
    for c in unique:
        c.epoch(timed=False)
    for r in range(args.rounds):
        k = r % len(unique)
        for c in unique[k:] + unique[:k]:
            c.epoch()
        print(f"round {r + 1}/{args.rounds} done ({time.perf_counter() - t0:.0f} s)", flush=True)

    def rates(c: Case) -> list[float]:
        return [c.M * c.steps / s for s in c.seconds]

    def solo_rates(keys: list[str]) -> list[float]:  # the trials one after the other, per round
        return [sum(cases[k].steps for k in keys) / sum(s) for s in zip(*(cases[k].seconds for k in keys), strict=True)]

    minutes, load1 = (time.perf_counter() - t0) / 60, os.getloadavg()
    lines = [
        "# Strong decoders: model-steps/s solo and packed",
        "",
        f"Written by `python benchmarks/strong_decoders.py --rounds {args.rounds}` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} ({minutes:.1f} min); {platform.machine()}, "
        f"{os.cpu_count()} logical cores, torch {torch.__version__}, 1 thread; load average "
        f"{load0[0]:.2f} at the start, {load1[0]:.2f} at the end (the machine is shared with other jobs: read "
        "the ratios, which are taken within a round, not the absolute rates). Each figure: the Trainer's "
        f"training epochs (CPU seconds of its thread), median [min-max] over {args.rounds} rounds.",
        "",
    ]
    if "solo" in sections:
        base = rates(cases["mlp"])
        lines += [
            "## Solo (M = 1)",
            "",
            "| family | steps/epoch | model-steps/s | x mlp, same round |",
            "|---|---|---|---|",
        ]
        for fam in FAMILIES:
            c = cases[fam]
            ratio = [a / b for a, b in zip(rates(c), base, strict=True)]
            lines.append(f"| {LABELS[fam]} | {c.steps} | {stats(rates(c), '.1f')} | {stats(ratio)} |")
        lines.append("")
    if packs:
        lines += [
            "## Packed against the same trials solo (same total model-steps)",
            "",
            "| family | M | path | solo model-steps/s | packed model-steps/s | **packed / solo** | "
            "max rel. param. difference to the solo trial |",
            "|---|---|---|---|---|---|---|",
        ]
        for key, solo_keys in packs.items():
            c = cases[key]
            solo, packed = solo_rates(solo_keys), rates(c)
            ratio = [p / s for p, s in zip(packed, solo, strict=True)]
            name = {
                "pixelcnn/M": "pixelcnn 3 x 32, digits",
                "seq_gru/M": "seq_vae GRU, grammar",
                "seq_fact/M": "seq_vae factorised decoder, grammar",
                "seq_gru/loop": "seq_vae GRU, grammar: LoopGRU through torch.func (not used)",
            }[key.rstrip("0123456789")]
            solo_of = {cases[k].trainer.live[0].cfg.seed: cases[k].trainer for k in solo_keys}
            diff = rel_diff(c.trainer, solo_of)
            lines.append(
                f"| {name} | {c.M} | {c.path} | {stats(solo, '.1f')} | {stats(packed, '.1f')} | "
                f"**{stats(ratio)}** | {diff:.1e} |"
            )
        lines += [
            "",
            f"Parameter differences after {args.rounds + 1} epochs (the warm-up and the rounds), packed member "
            "against the solo trial of its seed (for LoopGRU: the nn.GRU solo trial). Path: what "
            "`run_members` picks for these models (Vmapped: torch.func; Fused: member-aware layers).",
            "",
        ]
    if "seq" in sections:
        ngru = rates(cases["seq_gru/solo0"])
        lines += [
            "## seq_vae GRU solo: the packed cell code run alone, against nn.GRU",
            "",
            "| solo trial (seed 0) | path | model-steps/s | x nn.GRU solo, same round |",
            "|---|---|---|---|",
        ]
        for key, name in (
            ("seq_gru/solo0", "nn.GRU (what a solo trial runs)"),
            ("seq_gru/fused1", "the member-aware GRU's stacked code at M = 1 (path fused)"),
            ("seq_gru/loop1", "LoopGRU (not used)"),
        ):
            c = cases[key]
            ratio = [a / b for a, b in zip(rates(c), ngru, strict=True)]
            lines.append(f"| {name} | {c.path} | {stats(rates(c), '.1f')} | {stats(ratio)} |")
        lines.append("")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
