"""The training loop: one epoch loop, read top to bottom (in the spirit of nanoGPT), for M >= 1 trials.

``Trainer(configs, data)`` sets up M trials of one shape (a pack; a solo trial is M = 1) and
``run_epoch()`` trains each one epoch and reports per trial. ``train(cfg)`` is that loop at M = 1:
it trains one VAE and yields an ``EpochReport`` after every epoch; the caller (a test, a script, a
sweep worker) decides what to do with it. ``vaebench.core.pack.PackTrainer`` drives the same loop
for a pack. Neither knows anything of Optuna, MLflow or Ray.

Each trial keeps its own model init (``torch.manual_seed(seed)`` before building its model),
minibatch order and reparameterisation noise (generators seeded with its seed), whatever the M:
packing changes speed, not the experiment. At M = 1 the model runs its plain ``torch.nn`` ops and
``torch.optim`` steps it (``vaebench.core.members.One``, ``vaebench.core.optim.SoloOptimizer``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from vaebench.core.constants import EVAL_SEED
from vaebench.core.convergence import KEYS as CONVERGENCE_KEYS
from vaebench.core.convergence import convergence
from vaebench.core.disentanglement import evaluate_trial
from vaebench.core.members import One, Path, run_members
from vaebench.core.metrics import evaluate_members, iw_due
from vaebench.core.models import build_model
from vaebench.core.objectives import MemberSettings, ObjectiveBatch, kl_weight, objective
from vaebench.core.optim import PackedOptimizer, SoloOptimizer
from vaebench.data import Dataset, load_data
from vaebench.data.mnist import binarize_generator, dynamic_binarize
from vaebench.study.config import TrialConfig


@dataclass
class EpochReport:
    """Metrics of one trial after epoch ``epoch`` (1-based). ``state`` is "running" until the last
    epoch, then "completed"; "diverged" when the loss became NaN or infinite during this epoch.
    ``member``: the trial's index among the Trainer's configs; ``model``: the trial's model (set by
    ``train``)."""

    epoch: int
    metrics: dict[str, float]
    state: Literal["running", "completed", "diverged"]
    model: Any = field(default=None, repr=False)
    member: int = 0


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


@dataclass
class Member:
    """One trial of a Trainer: its config and its own generators, seeded as a solo trial seeds them."""

    index: int  # position in the Trainer's configs
    cfg: TrialConfig
    order: torch.Generator  # minibatch order
    noise: torch.Generator  # reparameterisation noise
    history: dict[str, list[tuple[int, float]]] = field(default_factory=lambda: {k: [] for k in CONVERGENCE_KEYS})
    seconds: float = 0.0  # its own training time so far: its share of each epoch (train/member_seconds)


class Trainer:
    """M >= 1 trials sharing everything that shapes the computation (``vaebench.core.pack.pack_key``:
    model, data, batch size, epochs, optimiser kind, device, metric settings), trained as one.

    The objective (docs/metrics.md) is ``distortion + beta * a_t * regulariser`` with one
    reparameterised sample per example, per trial (``vaebench.core.objectives``); validation metrics
    (``vaebench.core.metrics``) every ``metrics.every`` epochs and at the last (iw_nll as
    ``metrics.iw_every`` says); the last epoch's metrics also hold ``conv/*``, whether the trial was
    still moving (``vaebench.core.convergence``). Same config on CPU, same numbers. Members are
    independent slices everywhere (the loss is a sum of per-member losses), so a member whose loss
    turns NaN harms no other; ``keep`` drops ended members from the stacked tensors.
    ``path``: how the members run (``vaebench.core.members.run_members``)."""

    def __init__(self, configs: list[TrialConfig], data: Dataset, path: Path = "auto"):
        first = configs[0]
        self.device = dev = resolve_device(first.train.device)
        self.data, self.x_train, self.x_val = data, data.train.to(dev), data.val.to(dev)
        # the test split, kept apart: evaluated once, at the last epoch (the final numbers, test/NAME)
        self.x_test = data.test.to(dev) if data.test is not None else None
        self.dynamic = data.meta.dynamic_binarize  # x_train holds grey levels, drawn binary per batch
        models = []
        for cfg in configs:
            torch.manual_seed(cfg.seed)  # parameter init draws from the global generator
            models.append(build_model(cfg.model, data.meta.shape, len(data.meta.vocab) or None).to(dev))
        self.model = run_members(models, path)
        params = self.model.parameters()
        self.optimizer: SoloOptimizer | PackedOptimizer = (
            SoloOptimizer(params, first.train)
            if isinstance(self.model, One)
            else PackedOptimizer.of(params, [c.train for c in configs])
        )
        self.hp = MemberSettings([c.objective for c in configs], dev)
        self.live = [
            Member(i, c, order=torch.Generator().manual_seed(c.seed), noise=torch.Generator(dev).manual_seed(c.seed))
            for i, c in enumerate(configs)
        ]
        self.n, self.bs, self.epochs = self.x_train.shape[0], first.train.batch_size, first.train.epochs
        self.T = self.epochs * math.ceil(self.n / self.bs)  # total optimiser steps, for the schedules
        self.t = self.epoch = 0

    def keep(self, positions: list[int]) -> None:
        """Train only the members at ``positions`` (indices into ``live``) from now on."""
        self.live = [self.live[k] for k in positions]
        self.model.keep(positions)
        if self.live:
            self.optimizer.keep(positions)
            self.hp = self.hp.keep(positions)

    def run_epoch(self) -> list[EpochReport]:
        """Train every live member one epoch; a report per member, in ``live`` order."""
        self.epoch += 1
        epoch, last, dev, live = self.epoch, self.epoch == self.epochs, self.device, self.live
        started = time.perf_counter()
        steps, sizes = [], []  # per-step values kept on device and reduced once: no per-step sync
        perms = torch.stack([torch.randperm(self.n, generator=m.order) for m in live])  # [M, n]
        # dynamic binarisation: each member's own draws this epoch, from its seed (vaebench.data.mnist)
        draws = [binarize_generator(m.cfg.seed, epoch, dev) for m in live] if self.dynamic else []
        for idx in perms.split(self.bs, dim=1):
            x = self.x_train[idx.to(dev)]  # [M, B, *event]: each member's own minibatch
            if draws:
                x = torch.stack([dynamic_binarize(x[k], g) for k, g in enumerate(draws)])
            mu, logvar = self.model.encode(x)
            eps = torch.stack([torch.randn(mu.shape[1:], generator=m.noise, device=dev, dtype=mu.dtype) for m in live])
            z = mu + torch.exp(0.5 * logvar) * eps  # reparameterised, each member with its own noise
            batch = ObjectiveBatch(x, mu, logvar, z, self.model.log_likelihood(x, z), self.t, self.T, self.n)
            terms = objective(batch, self.hp)  # each [M]

            self.optimizer.zero_grad()
            terms["loss"].sum().backward()  # members share no parameter: each gets its own loss's gradient
            self.optimizer.clip_grads()
            self.optimizer.step(self.t, self.T)
            steps.append(torch.stack([v.detach() for v in terms.values()]))  # [terms, M]
            sizes.append(idx.shape[1])
            self.t += 1
        seconds = time.perf_counter() - started  # every member of a pack took this long

        per_step = torch.stack(steps)  # [steps, terms, M], batch means
        weights = (
            torch.tensor(sizes, dtype=per_step.dtype, device=dev)[:, None, None] / self.n
        )  # last batch may be short
        means = (per_step * weights).sum(0).T.tolist()  # [M][terms]
        finite = [all(math.isfinite(v) for v in vals) for vals in means]
        val: list[dict[str, float]] = [{}] * len(live)
        mcfg = live[0].cfg.metrics  # metric settings are the pack's
        if any(finite) and (epoch % mcfg.every == 0 or last):
            # the same evaluation noise for every trial (common random numbers across seeds)
            eval_noise = torch.Generator(dev).manual_seed(EVAL_SEED * epoch)
            val = evaluate_members(self.model.for_metrics(), self.x_val, mcfg, eval_noise, iw_due(mcfg, epoch, last))
        test: list[dict[str, float]] = [{}] * len(live)
        if any(finite) and last and self.x_test is not None:  # nothing was tuned on it: the table's numbers
            test_noise = torch.Generator(dev).manual_seed(EVAL_SEED * epoch)
            test = evaluate_members(self.model.for_metrics(), self.x_test, mcfg, test_noise, True)

        reports = []
        for k, m in enumerate(live):
            metrics = {f"train/{name}": v for name, v in zip(terms, means[k])}
            # the weight of the last step taken, i.e. the one in force at the end of the epoch
            metrics["train/kl_weight"] = kl_weight(m.cfg.objective, self.t - 1, self.T)
            metrics["train/epoch_seconds"] = seconds
            # the trial's own training time: the epoch split evenly over the members it trained (they share
            # every step); a packed member's MLflow duration is its whole pack's
            m.seconds += seconds / len(live)
            metrics["train/member_seconds"] = m.seconds
            metrics["train/steps"] = float(self.t)  # optimiser steps so far: the sweep's model-steps/s counts them
            if not finite[k]:
                reports.append(EpochReport(epoch, metrics, "diverged", member=m.index))
                continue
            if val[k]:
                metrics.update({f"val/{name}": v for name, v in val[k].items()})
                metrics["val/examples"] = float(self.x_val.shape[0])  # the sample count of every val/ number
                if self.data.meta.entropy is not None:  # H(x) known exactly (the grammar corpus): beside mi_ceiling
                    metrics["val/data_entropy"] = self.data.meta.entropy
                for key in CONVERGENCE_KEYS:
                    m.history[key].append((epoch, metrics[key]))
            metrics.update({f"test/{name}": v for name, v in test[k].items()})
            dis_every = mcfg.disentanglement_every
            if mcfg.disentanglement and (last or (dis_every and epoch % dis_every == 0)):
                scores = evaluate_trial(self.model.solo_model(k), m.cfg)
                metrics.update({f"val/dis/{name}": v for name, v in scores.items()})
            if last:  # still moving at the end? (conv/* metrics, recorded with the last epoch's)
                metrics.update(convergence(m.history, self.epochs))
            reports.append(EpochReport(epoch, metrics, "completed" if last else "running", member=m.index))
        return reports


def train(cfg: TrialConfig, data: Dataset | None = None) -> Iterator[EpochReport]:
    """Train the VAE of ``cfg`` alone (the Trainer at M = 1); yield an EpochReport per epoch, its
    ``model`` the trained VAE. Model init, minibatch order and noise all derive from ``cfg.seed``."""
    configure_torch(cfg.train.threads)
    resolve_device(cfg.train.device)  # a device this machine lacks fails before the data are read
    data = data if data is not None else load_data(cfg.data, cfg.data_seed)
    trainer = Trainer([cfg], data)
    for _ in range(cfg.train.epochs):
        [report] = trainer.run_epoch()
        report.model = trainer.model.solo_model(0)
        yield report
        if report.state != "running":
            return
