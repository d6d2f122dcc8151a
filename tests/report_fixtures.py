"""Synthetic study records for the report tests and the report benchmark.

``write_synthetic_study`` writes a study record through ``vaebench.record.vocab.Record``,
the same code path the sweep driver uses (parent run, tags, flattened params of the real
validated trial configs, one metric batch per epoch), with made-up but plausible numbers
instead of training: the report is tested on the layout, not on the model.
"""

from __future__ import annotations

import json
import math
import random
import time
from typing import Any

import yaml
from mlflow.entities import Metric

from vaebench.core.convergence import KEYS as CONVERGENCE_KEYS
from vaebench.core.convergence import convergence
from vaebench.record.definition import definition, fixed_hash
from vaebench.record.vocab import DEFINITION_TAG, HASH, OPTUNA_STUDY, OPTUNA_TRIAL, POINT
from vaebench.record.writer import Record
from vaebench.study.spec import Study, TrialSpec, expand


def fake_epoch(spec_point: dict[str, Any], cfg, seed: int, epoch: int, epochs: int) -> dict[str, float]:
    """Plausible metrics of one epoch: KL falls with beta and free bits, recon rises."""
    rng = random.Random(hash((json.dumps(spec_point, sort_keys=True), seed, epoch)) & 0xFFFFFFFF)
    beta, fb, J = cfg.objective.beta, cfg.objective.free_bits, cfg.model.latent_dim
    progress = 1 - math.exp(-3 * epoch / epochs)
    kl_dims = []
    for j in range(J):
        k = max(0.0, (2.5 - 0.4 * j) / (0.5 + beta)) + 0.7 * fb * (j < 3) + rng.uniform(0, 0.004)
        kl_dims.append(k * progress if k > 0.02 else rng.uniform(0, 0.004))
    kl = sum(kl_dims)
    recon = 60 - 6 * kl * progress + rng.gauss(0, 0.5) + 5 * (1 - progress)
    if cfg.objective.anneal.kind == "cyclical" and epoch < epochs and epoch % 2 == 0:
        recon += 8.0  # a cyclical schedule's dips: the weight restarts mid-training, the ELBO drops
    active = float(sum(k > 0.05 for k in kl_dims))
    collapsed = float(sum(k < 0.01 for k in kl_dims))
    m = {
        "train/loss": recon + beta * kl,
        "train/recon": recon,
        "train/kl": kl,
        "train/regulariser": kl,
        "train/kl_weight": beta,
        "train/epoch_seconds": 0.1 + rng.uniform(0, 0.01),
        "val/elbo": -(recon + kl),
        "val/recon": recon,
        "val/kl": kl,
        "val/active_units": active,
        "val/mi": min(kl * 0.9, math.log(cfg.metrics.mi_batch_size)),  # the estimator's ceiling: log B
        "val/examples": 359.0,
        "val/iw_nll": recon + kl - 0.3 - rng.uniform(0, 0.1),
        "val/collapsed_dims": collapsed,
        "val/collapsed_fraction": collapsed / J,
        "val/posterior_collapse": float(collapsed == J),
    }
    m.update({f"val/kl_dim/{j:02d}": v for j, v in enumerate(kl_dims)})
    return m


def write_synthetic_study(
    uri: str,
    study: dict[str, Any],
    *,
    states: dict[int, str] | None = None,
    per_epoch_calls: bool = True,
    points: list[dict[str, Any]] | None = None,
    parent: Any = None,
) -> Record:
    """Write a finished record of ``study`` (a study mapping, as in a YAML file) to ``uri``,
    with its definition on the parent run as the sweep driver keeps it.

    ``states`` maps a trial's index (expansion order) to a final state other than completed:
    'failed' (no metrics, traceback), 'diverged' (metrics up to half the epochs), 'pruned'
    (likewise) or 'killed'. ``per_epoch_calls=False`` logs several epochs per call (fast
    generation of big records; the stored data are the same). ``points``: the points a search
    sampled (a search study's space has ranges, which do not expand); each runs once per seed.
    ``parent`` (a parent run of ``uri``) extends that record as the sweep does for an extended
    definition (``--set seeds=[0,1]``): the study's definition replaces the record's, and only
    the trials the record lacks (by config hash) are written."""
    st = Study.model_validate(study)
    states = states or {}
    rec = Record(uri, st.name)
    tags = {
        "vaebench.factors": json.dumps(list(st.space)),
        "vaebench.search": st.search.kind,
        "vaebench.seeds": json.dumps(st.seeds),
        DEFINITION_TAG: fixed_hash(definition(st)),
    }
    have = set()
    if parent is not None:
        have = {r.config_hash for r in rec.trial_runs(parent.run_id)}
    if parent is None:
        parent = rec.start_study(st.description, yaml.safe_dump(study, sort_keys=False), tags, definition(st))
    else:
        rec.set_definition(parent.run_id, definition(st), yaml.safe_dump(study, sort_keys=False), tags)
    if st.search.kind != "grid" and OPTUNA_STUDY not in parent.tags:
        rec.client.set_tag(parent.run_id, OPTUNA_STUDY, f"{st.name}-{parent.run_id[:8]}")
    epochs = st.train.epochs
    specs = (
        expand(st)
        if points is None
        else [TrialSpec(p, seed, st.trial_config(p, seed)) for p in points for seed in st.seeds]
    )
    for i, spec in enumerate(specs):
        if spec.config_hash in have:
            continue
        state = states.get(i, "completed")
        tags = {
            HASH: spec.config_hash,
            POINT: json.dumps(spec.point),
            "vaebench.point_key": spec.point_key,
            "vaebench.attempt": "0",
            DEFINITION_TAG: tags[DEFINITION_TAG],
        }
        if st.search.kind != "grid":
            tags[OPTUNA_TRIAL] = str(i // len(st.seeds))
        name = " ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in spec.point.items()) + f" s{spec.seed}"
        run_id = rec.start_trial(parent.run_id, name, {**spec.config.params(), "seed": spec.seed}, tags)
        last = {"completed": epochs, "failed": 0, "killed": 1}.get(state, max(1, epochs // 2))
        batch: list[Metric] = []
        history: dict[str, list] = {k: [] for k in CONVERGENCE_KEYS}
        for e in range(1, last + 1):
            m = fake_epoch(spec.point, spec.config, spec.seed, e, epochs)
            for k in CONVERGENCE_KEYS:
                history[k].append((e, m[k]))
            if e == epochs:  # as train() does: the conv/* metrics with the final epoch's
                m.update(convergence(history, epochs))
            if per_epoch_calls:
                rec.log_epoch(run_id, e, m)
            else:
                now = int(time.time() * 1000)
                batch += [Metric(k, float(v), now, e) for k, v in m.items()]
        for j in range(0, len(batch), 1000):
            rec.client.log_batch(run_id, metrics=batch[j : j + 1000])
        extra = {"vaebench.diverged_epoch": str(last + 1)} if state == "diverged" else {}
        rec.end_trial(run_id, state, extra)
    rec.end_study(parent.run_id)
    return rec


def grid_study(name: str = "synth", *, epochs: int = 4, seeds=(0, 1, 2), **space: Any) -> dict[str, Any]:
    """A small grid study mapping; ``space`` as keyword args with '__' for '.'."""
    return {
        "name": name,
        "description": f"Synthetic study {name} for the report tests.",
        "data": {"kind": "digits"},
        "model": {"kind": "mlp", "latent_dim": 4, "hidden": [32]},
        "train": {"epochs": epochs, "batch_size": 256},
        "metrics": {"iw_samples": 4},
        "space": {k.replace("__", "."): v for k, v in space.items()}
        or {"objective.beta": [0.5, 2.0], "objective.free_bits": [0.0, 0.5]},
        "seeds": list(seeds),
    }


if __name__ == "__main__":  # a big record for the report benchmark
    import sys

    uri = sys.argv[1] if len(sys.argv) > 1 else "sqlite:////tmp/vaebench-bench/mlflow.db"
    big = grid_study(
        "bench",
        epochs=50,
        seeds=range(5),
        objective__beta=[0.25, 0.5, 1.0, 2.0, 4.0],
        objective__free_bits=[0.0, 0.25, 0.5, 1.0],
        objective__anneal=["none", {"kind": "cyclical", "cycles": 4, "ratio": 0.5}],
        model__latent_dim=[2, 4, 8, 16, 32],
    )
    t = time.perf_counter()
    write_synthetic_study(uri, big, per_epoch_calls=False, states={3: "failed", 10: "diverged"})
    print(f"wrote 1000 trials x 50 epochs to {uri} in {time.perf_counter() - t:.0f} s")
