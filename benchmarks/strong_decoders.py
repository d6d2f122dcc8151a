"""Training throughput of the decoder families through the training core, solo and packed, in one run.

    python benchmarks/strong_decoders.py                      # 4 rounds, about 2 minutes on an idle core
    python benchmarks/strong_decoders.py --rounds 2 --out benchmarks/STRONG_DECODERS.md
    python benchmarks/strong_decoders.py --sections solo,pack  # without the seq_vae packing prototype

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
3. seq_vae GRU packing prototype (studies/strong_decoder.yaml's model: embed 32, hidden 64,
   z_feed init, latent 4), M = 9 against 9 solo trials. ``nn.GRU`` has no vmap batching rule
   (aten::gru), so two member-aware GRUs are measured: ``LoopGRU``, the GRU's equations written out
   over the time steps (one matmul for the inputs, one per step for the state) as an ``nn.GRU``
   subclass, run solo and through ``Vmapped``; and ``StackedSeqGRU``, the whole model with a
   leading member axis (``torch.baddbmm`` per layer and per time step, as the fused path's
   layers). Neither is used by vaebench (see docs/strong_decoders.md, "Speed").

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

from vaebench.core import train as train_module  # noqa: E402  (after the sys.path line)
from vaebench.core.members import SharedInput  # noqa: E402  (after the sys.path line)
from vaebench.core.models import sequence  # noqa: E402  (after the sys.path line)
from vaebench.core.train import Trainer, configure_torch  # noqa: E402  (after the sys.path line)
from vaebench.data import load_data  # noqa: E402  (after the sys.path line)
from vaebench.study.config import LOGVAR_MAX, LOGVAR_MIN, TrialConfig  # noqa: E402  (after the sys.path line)

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
    "seq_gru": "seq_vae GRU (nn.GRU), grammar",
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


# ------------------------------------------------------------------- the seq_vae packing prototype


class LoopGRU(nn.GRU):
    """nn.GRU (one layer, batch_first) with its equations written out over the time steps, so that it
    runs under torch.func.vmap (aten::gru has no batching rule). Same parameters, same init."""

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
    # unbind and split, not indexing: an index's backward fills a zero tensor of the whole input per
    # step (40% of the stacked step's time), theirs is one stack / cat
    for g in gi.unbind(-2):
        g_rz, g_n = g.split([2 * H, H], -1)
        h_rz, h_n = hidden(h).split([2 * H, H], -1)
        r, z = torch.sigmoid(g_rz + h_rz).chunk(2, -1)
        n = torch.tanh(g_n + r * h_n)
        h = n + z * (h - n)
        outs.append(h)
    return torch.stack(outs, -2), h[None]


def _lin(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Each member's linear layer: h [M, ..., in], w [M, out, in], b [M, out] -> [M, ..., out]."""
    out = torch.baddbmm(b[:, None], h.reshape(h.shape[0], -1, h.shape[-1]), w.transpose(1, 2))
    return out.view(*h.shape[:-1], w.shape[1])


class StackedSeqGRU:
    """M seq_vae GRU models (z_feed init, RNN decoder, no word dropout) as one, every parameter
    stacked [M, *solo shape]: the model's forward written with a leading member axis (a Members of
    vaebench.core.members; training only, no evaluation)."""

    def __init__(self, models: list[nn.Module]):
        m0 = models[0].inner  # the SequenceVAE inside the plugin wrapper (vaebench.core.models.plugin)
        assert m0.cell == "gru" and m0.z_feed == "init" and m0.decoder_kind == "rnn" and m0.word_dropout == 0
        self.solo, self.hidden, self.members = models[0], m0.hidden, len(models)
        self.p = {  # the solo model's names ("inner.encoder.weight_ih_l0", ...)
            n: torch.stack([m.get_parameter(n).detach() for m in models]).contiguous().requires_grad_()
            for n, _ in models[0].named_parameters()
        }

    def _w(self, name: str) -> torch.Tensor:
        return self.p[f"inner.{name}"]

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        W = self._w("embedding.weight")  # [M, V, E]; row PAD is 0 and gets no gradient (padding_idx)
        M, V = W.shape[:2]
        offsets = torch.arange(M, device=x.device).view(M, *[1] * (x.dim() - 1)) * V
        return F.embedding(x + offsets, W.flatten(0, 1)) * (x != sequence.PAD)[..., None]

    def _gru(self, name: str, e: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        w = self._w
        gi = _lin(e, w(f"{name}.weight_ih_l0"), w(f"{name}.bias_ih_l0"))
        wh, bh = w(f"{name}.weight_hh_l0").transpose(1, 2), w(f"{name}.bias_hh_l0")[:, None]
        return _gru_steps(gi, h, lambda h: torch.baddbmm(bh, h, wh))[0]

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = self._embed(x)
        out = self._gru("encoder", e, e.new_zeros(*x.shape[:2], self.hidden))
        last = (x != sequence.PAD).sum(-1).clamp(min=1) - 1
        h = torch.gather(out, 2, last[..., None, None].expand(*last.shape, 1, out.shape[-1])).squeeze(2)
        mu, logvar = _lin(h, self._w("to_posterior.weight"), self._w("to_posterior.bias")).chunk(2, -1)
        return mu, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        inp = torch.cat([torch.full_like(x[..., :1], sequence.BOS), x[..., :-1]], -1)
        h0 = torch.tanh(_lin(z, self._w("z_to_state.weight"), self._w("z_to_state.bias")))
        logits = _lin(self._gru("decoder", self._embed(inp), h0), self._w("out.weight"), self._w("out.bias"))
        lp = torch.gather(F.log_softmax(logits, -1), -1, x[..., None]).squeeze(-1)
        return lp.masked_fill(x == sequence.PAD, 0.0).sum(-1)

    def parameters(self) -> list[torch.Tensor]:
        return list(self.p.values())

    def keep(self, positions: list[int]) -> None:
        index = torch.tensor(positions, dtype=torch.long)
        self.p = {n: v.detach().index_select(0, index).requires_grad_() for n, v in self.p.items()}
        self.members = len(positions)

    def member_state(self, i: int) -> dict[str, torch.Tensor]:
        return {n: v[i].detach().clone() for n, v in self.p.items()}

    def solo_model(self, i: int) -> nn.Module:
        self.solo.load_state_dict(self.member_state(i))
        return self.solo

    def for_metrics(self) -> SharedInput:
        return SharedInput(self)


def build_trainer(family: str, seeds: list[int], variant: str, data) -> Trainer:
    """A Trainer of ``seeds``: variant "auto" (run_members's choice), "loop" (LoopGRU in place of
    nn.GRU, members through run_members) or "stacked" (StackedSeqGRU)."""
    cfgs = [config(family, s) for s in seeds]
    saved_cells, saved_run = dict(sequence.CELLS), train_module.run_members
    try:
        if variant == "loop":
            sequence.CELLS["gru"] = LoopGRU
        if variant == "stacked":
            train_module.run_members = lambda models, path="auto": StackedSeqGRU(models)
        return Trainer(cfgs, data)
    finally:
        sequence.CELLS.clear()
        sequence.CELLS.update(saved_cells)
        train_module.run_members = saved_run


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
            cases[fam] = Case(fam, build_trainer(fam, [0], "auto", dig if fam in ("mlp", "pixelcnn") else gram))
    if "pack" in sections:
        for s in range(max(PIXELCNN_PACKS)):  # the seed-0 solo trial is section 1's when it runs
            reuse = cases.get("pixelcnn") if s == 0 else None
            cases[f"pixelcnn/solo{s}"] = reuse or Case("pixelcnn", build_trainer("pixelcnn", [s], "auto", dig))
        for M in PIXELCNN_PACKS:
            cases[f"pixelcnn/M{M}"] = Case("pixelcnn", build_trainer("pixelcnn", list(range(M)), "auto", dig))
            packs[f"pixelcnn/M{M}"] = [f"pixelcnn/solo{s}" for s in range(M)]
    if "seq" in sections:
        for s in range(SEQ_PACK):
            reuse = cases.get("seq_gru") if s == 0 else None
            cases[f"seq_gru/solo{s}"] = reuse or Case("seq_gru", build_trainer("seq_gru", [s], "auto", gram))
        cases["seq_gru/loop1"] = Case("seq_gru", build_trainer("seq_gru", [0], "loop", gram))
        cases["seq_gru/stacked1"] = Case("seq_gru", build_trainer("seq_gru", [0], "stacked", gram))
        for v in ("loop", "stacked"):
            cases[f"seq_gru/{v}{SEQ_PACK}"] = Case("seq_gru", build_trainer("seq_gru", list(range(SEQ_PACK)), v, gram))
            packs[f"seq_gru/{v}{SEQ_PACK}"] = [f"seq_gru/solo{s}" for s in range(SEQ_PACK)]
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
        solo_trainers = {
            cases[k].trainer.live[0].cfg.seed: cases[k].trainer for k in cases if k.startswith("seq_gru/solo")
        }
        pix_trainers = {
            cases[k].trainer.live[0].cfg.seed: cases[k].trainer for k in cases if k.startswith("pixelcnn/solo")
        }
        for key, solo_keys in packs.items():
            c = cases[key]
            solo, packed = solo_rates(solo_keys), rates(c)
            ratio = [p / s for p, s in zip(packed, solo, strict=True)]
            name = {
                "pixelcnn": "pixelcnn 3 x 32 (the path run_members picks)",
                "seq_gru/loop": "seq_vae GRU, LoopGRU (prototype)",
                "seq_gru/stacked": "seq_vae GRU, StackedSeqGRU (prototype)",
            }[key.split("/")[0] if key.startswith("pixelcnn") else key.rstrip("0123456789")]
            diff = rel_diff(c.trainer, pix_trainers if key.startswith("pixelcnn") else solo_trainers)
            lines.append(
                f"| {name} | {c.M} | {c.path} | {stats(solo, '.1f')} | {stats(packed, '.1f')} | "
                f"**{stats(ratio)}** | {diff:.1e} |"
            )
        lines += [
            "",
            f"Parameter differences after {args.rounds + 1} epochs (the warm-up and the rounds), packed member "
            "against the solo trial of its seed"
            + (" (the nn.GRU solo trial for the seq_vae prototypes)." if "seq" in sections else "."),
            "",
        ]
    if "seq" in sections:
        ngru = rates(cases["seq_gru/solo0"])
        lines += [
            "## seq_vae GRU solo: the prototypes' cell code against nn.GRU",
            "",
            "| solo trial (seed 0) | path | model-steps/s | x nn.GRU solo, same round |",
            "|---|---|---|---|",
        ]
        for key, name in (
            ("seq_gru/solo0", "nn.GRU (vaebench's seq_vae)"),
            ("seq_gru/loop1", "LoopGRU"),
            ("seq_gru/stacked1", "StackedSeqGRU at M = 1"),
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
