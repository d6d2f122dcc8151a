"""The training loop: one function, read top to bottom (in the spirit of nanoGPT).

``train(cfg)`` trains one VAE and yields an ``EpochReport`` after every epoch; the
caller (a test, a script, a sweep worker) decides what to do with it. It knows nothing
of Optuna, MLflow or Ray.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import torch

from vaebench.core.convergence import KEYS as CONVERGENCE_KEYS
from vaebench.core.convergence import convergence
from vaebench.core.disentanglement import evaluate_trial
from vaebench.core.metrics import evaluate, iw_due
from vaebench.core.models import VAE, build_model, reparameterise
from vaebench.core.objectives import kl_weight, objective
from vaebench.data import Dataset, load_data
from vaebench.study.config import TrialConfig

TRAIN_TERMS = ("loss", "recon", "kl", "regulariser")  # train/NAME; beta_tcvae adds mi, tc, dwkl


@dataclass
class EpochReport:
    """Metrics after epoch ``epoch`` (1-based). ``state`` is "running" until the last epoch,
    then "completed"; "diverged" when the loss became NaN or infinite during this epoch."""

    epoch: int
    metrics: dict[str, float]
    state: Literal["running", "completed", "diverged"]
    model: VAE = field(repr=False)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but torch sees no CUDA device")
    return torch.device(name)


def configure_torch(threads: int) -> None:
    """The process-wide torch settings of a trial: ``threads`` intra-op threads, and denormal
    floats (|x| < 1.2e-38) flushed to zero. Denormals fill Adam's moment estimates within an
    epoch or two (the gradients of dead units decay geometrically) and x86 arithmetic on them
    is slow: the optimiser step took 2x longer by the second epoch on the benchmark data, 5x on
    random data (benchmarks/). Flushing them changes no metric measurably. Call it before the
    first parallel op: OpenMP threads copy the setting once, when they are created."""
    torch.set_flush_denormal(True)
    torch.set_num_threads(threads)


def make_optimizer(cfg: TrialConfig, model: VAE) -> torch.optim.Optimizer:
    # fused: one kernel per parameter instead of ~10 elementwise ops each; the default
    # (for-loop) Adam step is ~30% of a CPU training step of the MLP VAE (benchmarks/)
    t = cfg.train
    if t.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=t.lr, weight_decay=t.weight_decay, momentum=0.9, fused=True)
    opt = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    return opt(model.parameters(), lr=t.lr, weight_decay=t.weight_decay, fused=True)


def train(cfg: TrialConfig, data: Dataset | None = None) -> Iterator[EpochReport]:
    """Train the VAE of ``cfg``; yield an EpochReport per epoch.

    The objective is REFERENCE.md's ``distortion + beta * a_t * regulariser`` with one
    reparameterised sample per example; validation metrics (``vaebench.core.metrics``) are
    computed every ``metrics.every`` epochs and at the last (iw_nll as ``metrics.iw_every`` says);
    the last epoch's metrics also hold ``conv/*``, whether the trial was still moving
    (``vaebench.core.convergence``). Same config on CPU, same numbers: model init, minibatch order and
    noise all derive from ``cfg.seed``.
    """
    configure_torch(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    data = data if data is not None else load_data(cfg.data, cfg.data_seed)
    x_train, x_val = data.train.to(device), data.val.to(device)

    torch.manual_seed(cfg.seed)  # parameter init draws from the global generator
    model = build_model(cfg.model, data.meta.shape).to(device)
    optimizer = make_optimizer(cfg, model)
    noise = torch.Generator(device).manual_seed(cfg.seed)  # reparameterisation noise
    order = torch.Generator().manual_seed(cfg.seed)  # minibatch order

    n, bs, epochs = x_train.shape[0], cfg.train.batch_size, cfg.train.epochs
    T = epochs * math.ceil(n / bs)  # total optimiser steps, for the schedules
    t = 0
    history: dict[str, list[tuple[int, float]]] = {k: [] for k in CONVERGENCE_KEYS}  # for convergence()
    own = 0.0
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        steps, sizes = [], []  # per-step values kept on device and reduced once: no per-step sync
        for idx in torch.randperm(n, generator=order).split(bs):
            x = x_train[idx.to(device)]
            mu, logvar = model.encode(x)
            z = reparameterise(mu, logvar, noise)
            terms = objective(model.log_likelihood(x, model.decode(z)), mu, logvar, z, cfg.objective, t, T, n)

            optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            if cfg.train.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            optimizer.step()
            steps.append(torch.stack([v.detach() for v in terms.values()]))
            sizes.append(len(idx))
            t += 1

        per_step = torch.stack(steps)  # [steps, terms], batch means
        weights = torch.tensor(sizes, dtype=per_step.dtype, device=device)[:, None] / n  # last batch may be short
        means = (per_step * weights).sum(0).tolist()
        metrics = {f"train/{k}": v for k, v in zip(terms, means)}
        # the weight of the last step taken, i.e. the one in force at the end of the epoch
        metrics["train/kl_weight"] = kl_weight(cfg.objective, t - 1, T)
        metrics["train/epoch_seconds"] = time.perf_counter() - started
        own += metrics["train/epoch_seconds"]
        metrics["train/member_seconds"] = own  # its training time so far (a packed member logs its share)
        metrics["train/steps"] = float(t)  # optimiser steps so far: the sweep's model-steps/s counts them
        if not all(math.isfinite(v) for v in means):
            yield EpochReport(epoch, metrics, "diverged", model)
            return
        if epoch % cfg.metrics.every == 0 or epoch == epochs:
            # the same evaluation noise for every trial (common random numbers across seeds)
            eval_noise = torch.Generator(device).manual_seed(1_000_003 * epoch)
            iw = iw_due(cfg.metrics, epoch, last=epoch == epochs)
            metrics.update({f"val/{k}": v for k, v in evaluate(model, x_val, cfg.metrics, eval_noise, iw).items()})
            metrics["val/examples"] = float(x_val.shape[0])  # the sample count of every val/ number (iw_nll: fewer)
            for k in CONVERGENCE_KEYS:
                history[k].append((epoch, metrics[k]))
        dis_every = cfg.metrics.disentanglement_every
        if cfg.metrics.disentanglement and (epoch == epochs or (dis_every and epoch % dis_every == 0)):
            metrics.update({f"val/dis/{k}": v for k, v in evaluate_trial(model, cfg).items()})
        if epoch == epochs:  # still moving at the end? (conv/* metrics, recorded with the last epoch's)
            metrics.update(convergence(history, epochs))
        yield EpochReport(epoch, metrics, "completed" if epoch == epochs else "running", model)
