"""Training throughput of the decoder families, solo: model-steps/s of the factorised MLP VAE and the
PixelCNN on binarised 8x8 digits, and of the sequence VAE (GRU decoder, and factorised decoder) on
the grammar corpus, in one run.

    python benchmarks/strong_decoders.py            # 5 rounds x 20 steps per family, ~1 minute
    python benchmarks/strong_decoders.py --rounds 2 --steps 5

A step is what the training loop does per minibatch (encode, reparameterise, log p(x|z), KL, backward,
Adam step), batch 64, 1 thread. The families advance one round at a time in turn, the order rotated
each round, and every figure is also given as a ratio to the MLP's steps/s in the same round (median
over rounds), so load on a shared machine mostly cancels. These families are not packed
(vaebench.core.pack packs mlp, conv and linear only), so there is no packed figure: each trial of
them runs solo. Nothing here asserts.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from vaebench.core.models import reparameterise
from vaebench.core.models.plugin import build
from vaebench.core.objectives import kl_per_dim
from vaebench.data import load_data
from vaebench.study.config import TrialConfig

FAMILIES = {
    "mlp (digits, factorised)": {
        "data": {"kind": "digits", "binarize": True},
        "model": {"kind": "mlp", "latent_dim": 8},
    },
    "pixelcnn (digits, 3 layers x 32)": {
        "data": {"kind": "digits", "binarize": True},
        "model": {"kind": "pixelcnn", "latent_dim": 8, "args": {"layers": 3, "channels": 32}},
    },
    "seq_vae GRU (grammar)": {
        "data": {"kind": "grammar", "n_samples": 2000},
        "model": {"kind": "seq_vae", "latent_dim": 4, "args": {"cell": "gru", "z_feed": "init"}},
    },
    "seq_vae factorised (grammar)": {
        "data": {"kind": "grammar", "n_samples": 2000},
        "model": {"kind": "seq_vae", "latent_dim": 4, "args": {"decoder": "factorised"}},
    },
}


class Runner:
    """One family's model, optimiser and data, stepping ``n`` minibatches at a time."""

    def __init__(self, cfg: dict, batch: int = 64):
        c = TrialConfig.model_validate(cfg)
        data = load_data(c.data, 0)
        torch.manual_seed(0)
        self.model = build(c.model, data.meta.shape, len(data.meta.vocab) or None)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.x, self.batch, self.g = data.train, batch, torch.Generator().manual_seed(0)

    def steps(self, n: int) -> None:
        for _ in range(n):
            idx = torch.randint(0, self.x.shape[0], (self.batch,), generator=self.g)
            x = self.x[idx]
            mu, logvar = self.model.encode(x)
            z = reparameterise(mu, logvar, self.g)
            loss = -self.model.log_likelihood(x, z).mean() + kl_per_dim(mu, logvar).sum(-1).mean()
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)
    runners = {name: Runner(cfg) for name, cfg in FAMILIES.items()}
    for r in runners.values():
        r.steps(2)  # warm-up
    names = list(runners)
    rates: dict[str, list[float]] = {n: [] for n in names}
    cpu_rates: dict[str, list[float]] = {n: [] for n in names}
    for k in range(args.rounds):
        order = names[k % len(names) :] + names[: k % len(names)]
        for n in order:
            w, c = time.perf_counter(), time.process_time()
            runners[n].steps(args.steps)
            rates[n].append(args.steps / (time.perf_counter() - w))
            cpu_rates[n].append(args.steps / max(time.process_time() - c, 1e-9))
    base = names[0]
    print(f"{'family':36s} {'steps/s (wall)':>16s} {'steps/s (CPU)':>14s} {'x mlp (wall)':>13s}")
    for n in names:
        ratio = statistics.median(a / b for a, b in zip(rates[n], rates[base]))
        print(
            f"{n:36s} {statistics.median(rates[n]):10.1f} [{min(rates[n]):.0f}-{max(rates[n]):.0f}]"
            f" {statistics.median(cpu_rates[n]):14.1f} {ratio:13.3f}"
        )
    print(f"batch 64, 1 thread, {args.rounds} rounds x {args.steps} steps; median [min-max] over rounds")


if __name__ == "__main__":
    main()
