"""The optimiser step of M >= 1 members: torch.optim itself for a solo trial, the same update
over stacked parameters for a pack (per-member lr, weight decay and grad clip)."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from vaebench.core.constants import SGD_MOMENTUM
from vaebench.study.config import TrainConfig

Optimizer = Literal["adam", "adamw", "sgd"]
LrSchedule = Literal["constant", "cosine"]


def lr_factor(schedule: LrSchedule, t: int, T: int) -> float:
    """The learning rate of step t (0-based) of T, as a fraction of train.lr: 1 when constant;
    cosine: 0.5 (1 + cos(pi t / T)), 1 at the first step and falling to ~0 at the last. A constant
    step size leaves Adam's parameters jittering by ~lr around their optimum, which keeps a
    collapsed dim's KL at ~0.01 nats instead of 0; the decay lets them settle."""
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(t, T) / max(T, 1)))
    raise ValueError(f"unknown lr schedule {schedule!r}")


def make_optimizer(
    kind: Optimizer, params: list[torch.Tensor], lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    """torch.optim's optimiser for train.optimizer ``kind`` (fused: one kernel per parameter instead
    of ~10 elementwise ops each; the default for-loop Adam step is ~30% of a CPU step of the MLP VAE)."""
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=SGD_MOMENTUM, fused=True)
    opt = torch.optim.AdamW if kind == "adamw" else torch.optim.Adam
    return opt(params, lr=lr, weight_decay=weight_decay, fused=True)


class SoloOptimizer:
    """One trial's step: ``make_optimizer`` on its parameters, the gradient norm clipped first."""

    def __init__(self, params: list[torch.Tensor], cfg: TrainConfig):
        self.params, self.clip, self.lr, self.schedule = params, cfg.grad_clip, cfg.lr, cfg.lr_schedule
        self.torch_opt = make_optimizer(cfg.optimizer, params, cfg.lr, cfg.weight_decay)

    def zero_grad(self) -> None:
        self.torch_opt.zero_grad(set_to_none=True)

    def clip_grads(self) -> None:
        if self.clip is not None:
            nn.utils.clip_grad_norm_(self.params, self.clip)

    def step(self, t: int = 0, T: int = 1) -> None:
        """The update of step t of T (the lr schedule's position)."""
        if self.schedule != "constant":
            for group in self.torch_opt.param_groups:
                group["lr"] = self.lr * lr_factor(self.schedule, t, T)
        self.torch_opt.step()

    def keep(self, positions: list[int]) -> None:
        """A solo trial keeps its one member or ends."""


class PackedOptimizer:
    """One step for every member over the stacked parameters, with per-member lr, weight decay
    and grad clip, as torch.optim would take it for each member alone (Adam, AdamW; SGD with
    momentum as ``make_optimizer`` builds them).

    The update runs as torch.optim's fused kernel over the stacked tensors (one pass over
    memory; the same update written as ~10 elementwise ops was 60% of a packed MLP step) with
    lr 1, after weight decay has been applied per member as torch.optim applies it (L2 into
    the gradient for Adam and SGD, decoupled p *= 1 - lr wd for AdamW); then each member moves
    lr_m of the way: p_old + lr_m (p_fused - p_old). Both step rules are linear in lr, so this
    is each member's own update up to rounding (tests: within 1e-5 of torch.optim after six
    steps). The same path whatever the lrs: a member's numbers never depend on its pack mates."""

    def __init__(
        self,
        params: list[torch.Tensor],
        kind: Optimizer,
        lr: list[float],
        weight_decay: list[float],
        grad_clip: list[float | None],
        schedule: list[LrSchedule] | None = None,
    ):
        self.params, self.kind = params, kind
        self.schedule = list(schedule or ["constant"] * len(lr))
        dev = params[0].device
        self.lr = torch.tensor(lr, dtype=torch.float32, device=dev)
        self.wd = torch.tensor(weight_decay, dtype=torch.float32, device=dev)
        self.clip = torch.tensor([math.inf if c is None else c for c in grad_clip], dtype=torch.float32, device=dev)
        # lr 1 and no weight decay (AdamW's default is 0.01): both are applied per member in step()
        self.torch_opt = make_optimizer(kind, params, lr=1.0, weight_decay=0.0)

    @classmethod
    def of(cls, params: list[torch.Tensor], cfgs: list[TrainConfig]) -> PackedOptimizer:
        return cls(
            params,
            cfgs[0].optimizer,
            [c.lr for c in cfgs],
            [c.weight_decay for c in cfgs],
            [c.grad_clip for c in cfgs],
            [c.lr_schedule for c in cfgs],
        )

    def keep(self, positions: list[int]) -> None:
        idx = torch.tensor(positions, dtype=torch.long, device=self.lr.device)
        self.schedule = [self.schedule[k] for k in positions]
        self.lr, self.wd, self.clip = (t.index_select(0, idx) for t in (self.lr, self.wd, self.clip))
        for state in self.torch_opt.state.values():  # per-parameter moments: exp_avg, exp_avg_sq, momentum_buffer
            for k, v in state.items():
                if torch.is_tensor(v) and v.dim() > 0:
                    state[k] = v.index_select(0, idx)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @staticmethod
    def _per(v: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return v.view(-1, *([1] * (p.dim() - 1)))

    @torch.no_grad()
    def clip_grads(self) -> None:
        """torch.nn.utils.clip_grad_norm_ per member: the norm over all of a member's gradients."""
        if not torch.isfinite(self.clip).any():
            return
        grads = [p.grad for p in self.params if p.grad is not None]  # a parameter the loss does not use has none
        norms = torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads]), dim=0
        )
        coef = torch.where(torch.isfinite(self.clip), (self.clip / (norms + 1e-6)).clamp(max=1.0), 1.0)
        for g in grads:
            g.mul_(self._per(coef, g))

    def lr_now(self, t: int, T: int) -> torch.Tensor:
        """Each member's learning rate at step t of T: train.lr times its schedule's factor."""
        if all(s == "constant" for s in self.schedule):
            return self.lr
        factors = [lr_factor(s, t, T) for s in self.schedule]
        return self.lr * torch.tensor(factors, dtype=self.lr.dtype, device=self.lr.device)

    @torch.no_grad()
    def step(self, t: int = 0, T: int = 1) -> None:
        """The update of step t of T (the lr schedule's position)."""
        lr = self.lr_now(t, T)
        if bool((self.wd != 0).any()):
            for p in self.params:
                if p.grad is None:  # as torch.optim: a parameter without a gradient is not stepped, nor decayed
                    continue
                wd = self._per(self.wd, p)
                if self.kind == "adamw":
                    p.mul_(1 - self._per(lr, p) * wd)
                else:
                    p.grad.addcmul_(wd, p)
        old = [p.detach().clone() for p in self.params]
        self.torch_opt.step()
        for p, o in zip(self.params, old):
            p.data = o.lerp_(p.data, self._per(lr, p))
