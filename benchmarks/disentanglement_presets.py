"""Cost of each disentanglement metric and how far the default preset moves the scores from the publish
preset (disentanglement_lib's sample sizes), on one trained model. Results: benchmarks/DISENTANGLEMENT.md.

    python benchmarks/disentanglement_presets.py [--checkpoint PATH] [--presets default,publish] [--seeds 0,1,2]

Without --checkpoint it first trains the model measured there: beta-VAE (beta 4), MLP 256, 10 latents,
Bernoulli, 10,000 procedural dSprites images, 5 epochs (~40 s of CPU). Prints one JSON line per
(preset, seed, metric) with the values and the seconds taken (one thread). The publish preset takes
about 16 minutes on one core (BetaVAE 154 s, FactorVAE 115 s, DCI 700 s).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from vaebench.core import disentanglement as D
from vaebench.core.models import build_model
from vaebench.core.train import train
from vaebench.data import ground_truth
from vaebench.study.config import DSpritesData, TrialConfig

CONFIG = {
    "data": {"kind": "dsprites", "n_samples": 10000},
    "model": {"kind": "mlp", "latent_dim": 10, "hidden": [256]},
    "train": {"epochs": 5, "batch_size": 64, "device": "cpu"},
    "objective": {"beta": 4.0},
    "metrics": {"every": 5, "iw_samples": 1},
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint")
    ap.add_argument("--presets", default="default,publish")
    ap.add_argument("--seeds", default="0,1,2", help="seeds of the default preset (publish: the first only)")
    ap.add_argument("--metrics", default=",".join(D.METRICS))
    args = ap.parse_args()
    cfg = TrialConfig.model_validate(CONFIG)
    if args.checkpoint:
        model = build_model(cfg.model, (1, 64, 64))
        model.load_state_dict(torch.load(args.checkpoint))
    else:
        *_, last = train(cfg)
        model = last.model
    model.eval()
    torch.set_num_threads(1)
    data = ground_truth(DSpritesData())
    seeds = [int(s) for s in args.seeds.split(",")]
    for preset in args.presets.split(","):
        for seed in seeds if preset == "default" else seeds[:1]:
            codes = D.model_codes(model, data)  # a fresh cache: each metric's cost includes its encoding
            for m in args.metrics.split(","):
                started = time.perf_counter()
                values = D.METRICS[m](codes, D.PRESETS[preset], seed)
                print(
                    json.dumps(
                        {
                            "preset": preset,
                            "seed": seed,
                            "metric": m,
                            "values": values,
                            "seconds": round(time.perf_counter() - started, 2),
                        }
                    ),
                    flush=True,
                )


if __name__ == "__main__":
    main()
