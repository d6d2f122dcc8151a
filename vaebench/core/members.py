"""The member axis of the training core: one model's forward run for M >= 1 members.

The training loop (``vaebench.core.train``) sees every trial as M members of one architecture,
x [M, B, *event] -> posteriors [M, B, J] -> log p(x|z) [M, B]; a solo trial is M = 1. Three
ways to run a model over the members, behind one interface (``Members``):

- ``One``: M = 1, the solo model itself with the plain ``torch.nn`` ops: a solo trial is exactly
  the model alone;
- ``Fused``: the built-in families, stacked by their member-aware layers
  (``vaebench.core.models.layers``): one batched matmul or grouped convolution per layer;
- ``Vmapped``: any ``nn.Module`` meeting ``vaebench.core.protocol`` through ``torch.func``
  (``stack_module_state``, ``functional_call``, ``vmap`` over the member axis). Randomness is
  drawn outside (the loop draws each member's noise from its own generator).

Every member's parameters are stacked from its own solo model, built as a solo trial builds it,
so initial parameters are the solo trial's bit for bit, and ``member_state(i)`` gives member i
back in the solo model's state_dict layout. ``SharedInput`` shows a pack to
``vaebench.core.metrics`` (every member evaluated on the same data and noise).
``check_packable`` decides whether any model packs through the generic path.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Literal, Protocol

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from vaebench.core.models.layers import MemberAware, NotPackable, keep_members, member_state, stack_members
from vaebench.core.objectives import kl_per_dim
from vaebench.core.protocol import REQUIRED_METHODS

Path = Literal["auto", "fused", "generic"]


class Members(Protocol):
    """M models of one architecture run as one (see the module docstring)."""

    members: int

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [M, B, *event] -> (mu, logvar), each [M, B, J]."""
        ...

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """x [M, B, *event], z [M, B, J] -> log p(x|z) [M, B]."""
        ...

    def parameters(self) -> list[torch.Tensor]:
        """The trainable tensors, each [M, ...] (solo: the model's own parameters)."""
        ...

    def keep(self, positions: list[int]) -> None:
        """Keep only the members at ``positions``, in that order."""
        ...

    def member_state(self, i: int) -> dict[str, torch.Tensor]:
        """Member i's state in the solo model's state_dict layout."""
        ...

    def solo_model(self, i: int) -> nn.Module:
        """A solo model holding member i's weights (checkpoints, images, per-trial metrics)."""
        ...

    def for_metrics(self) -> Any:
        """What ``vaebench.core.metrics`` evaluates: the model (solo) or ``SharedInput`` (a pack)."""
        ...


class One:
    """A solo trial: the model itself, its plain ops, the member axis added around it."""

    def __init__(self, model: nn.Module):
        self.model, self.members = model, 1

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.model.encode(x[0])
        return mu[None], logvar[None]

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.model.log_likelihood(x[0], z[0])[None]

    def parameters(self) -> list[torch.Tensor]:
        return list(self.model.parameters())

    def keep(self, positions: list[int]) -> None:
        if positions not in ([], [0]):
            raise IndexError(f"a solo trial has member 0 only, not {positions}")
        self.members = len(positions)

    def member_state(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def solo_model(self, i: int) -> nn.Module:
        return self.model

    def for_metrics(self) -> Any:
        return self.model


class Fused:
    """The built-in families: one model whose member-aware layers hold every member stacked."""

    def __init__(self, models: list[nn.Module]):
        self.model = stack_members(models)  # raises NotPackable for a layer it does not know
        self.solo, self.members = models[0], len(models)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.encode(x)

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.model.log_likelihood(x, z)

    def parameters(self) -> list[torch.Tensor]:
        return list(self.model.parameters())

    def keep(self, positions: list[int]) -> None:
        keep_members(self.model, positions)
        self.members = len(positions)

    def member_state(self, i: int) -> dict[str, torch.Tensor]:
        return member_state(self.model, i)

    def solo_model(self, i: int) -> nn.Module:
        self.solo.load_state_dict(self.member_state(i))
        return self.solo

    def for_metrics(self) -> Any:
        return SharedInput(self)


class _Method(nn.Module):
    """Calls one method of ``model`` as its forward, for ``functional_call`` (which calls forward)."""

    def __init__(self, model: nn.Module, method: str):
        super().__init__()
        self.model, self.method = model, method

    def forward(self, *args: torch.Tensor) -> Any:
        return getattr(self.model, self.method)(*args)


class Vmapped:
    """Any model meeting vaebench.core.protocol, its members' states stacked (``stack_module_state``)
    and its methods run once per member by ``vmap`` over ``functional_call``."""

    def __init__(self, models: list[nn.Module]):
        missing = [m for m in REQUIRED_METHODS if not callable(getattr(models[0], m, None))]
        if missing:
            raise NotPackable(f"the model has no {', '.join(missing)} (vaebench.core.protocol)")
        params, buffers = stack_module_state(models)
        self.params = {f"model.{k}": v for k, v in params.items()}
        self.buffers = {f"model.{k}": v for k, v in buffers.items()}
        base = copy.deepcopy(models[0])  # its tensors are replaced by each member's in every call
        self._calls = {m: _Method(base, m) for m in REQUIRED_METHODS}
        self.solo, self.members = models[0], len(models)

    def _run(self, method: str, *args: torch.Tensor) -> Any:
        def one(params: dict, buffers: dict, *a: torch.Tensor) -> Any:
            return functional_call(self._calls[method], (params, buffers), a)

        return vmap(one, randomness="error")(self.params, self.buffers, *args)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._run("encode", x)

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self._run("log_likelihood", x, z)

    def parameters(self) -> list[torch.Tensor]:
        return list(self.params.values())

    def keep(self, positions: list[int]) -> None:
        for t in [*self.params.values(), *self.buffers.values()]:
            t.data = t.data.index_select(0, torch.tensor(positions, dtype=torch.long, device=t.device))
            t.grad = None
        self.members = len(positions)

    def member_state(self, i: int) -> dict[str, torch.Tensor]:
        state = {**self.params, **self.buffers}
        return {k: state[f"model.{k}"][i].detach().clone() for k in self.solo.state_dict()}

    def solo_model(self, i: int) -> nn.Module:
        self.solo.load_state_dict(self.member_state(i))
        return self.solo

    def for_metrics(self) -> Any:
        return SharedInput(self)


def run_members(models: list[nn.Module], path: Path = "auto") -> Members:
    """``models`` (each member's solo model, built as a solo trial builds it) run as one.

    "auto": one model runs alone (``One``), several fused when every layer is member-aware
    (``Fused``), else through torch.func (``Vmapped``); "fused" or "generic" force a path."""
    if path == "auto" and len(models) == 1:
        return One(models[0])
    if path == "generic":
        return Vmapped(models)
    try:
        return Fused(models)
    except NotPackable:
        if path == "fused":
            raise
        return Vmapped(models)


class SharedInput:
    """A pack as ``vaebench.core.metrics`` takes a model: every member encodes the same x
    [B, *event] into [M, B, J], and log p(x|z) takes z [..., M, B, J] (leading sample dims
    folded into the batch) -> [..., M, B]."""

    def __init__(self, members: Members):
        self.members = members

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.members.encode(x.expand(self.members.members, *x.shape))

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        lead, (M, b, J) = z.shape[:-3], z.shape[-3:]
        zf = z.movedim(-3, 0).reshape(M, -1, J)  # [M, lead * b, J]
        xf = x.expand(*lead, *x.shape).reshape(-1, *x.shape[1:])  # [lead * b, *event]
        ll = self.members.log_likelihood(xf.expand(M, *xf.shape), zf)  # [M, lead * b]
        return ll.view(M, *lead, b).movedim(0, len(lead))


# ----------------------------------------------------------------------- packability


def _dry_step(run: Members, x: torch.Tensor, eps: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """One ELBO step (beta 1) on x [M, B, *event] with noise eps [B, J]: outputs and gradients."""
    mu, logvar = run.encode(x)
    z = mu + torch.exp(0.5 * logvar) * eps
    ll = run.log_likelihood(x, z)
    loss = (kl_per_dim(mu, logvar).sum(-1) - ll).mean(-1)  # [M]
    params = run.parameters()
    grads = torch.autograd.grad(loss.sum(), params, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
    return [mu.detach(), logvar.detach(), ll.detach()], grads


def _solo_layouts(run: Members) -> list[Any]:
    """Per tensor of ``run.parameters()``: a function taking a member's slice to the solo layout
    (the fused path keeps some transposed, ``MemberAware.solo_layout``)."""
    if not isinstance(run, Fused):
        return [lambda t: t for _ in run.parameters()]
    owner = {
        id(p): (module, name)
        for _, module in run.model.named_modules()
        if isinstance(module, MemberAware)
        for name, p in module.named_parameters(recurse=False)
    }
    return [(lambda t, m=owner[id(p)][0], n=owner[id(p)][1]: m.solo_layout(n, t)) for p in run.parameters()]


def check_packable(models: list[nn.Module], x: torch.Tensor, rtol: float = 1e-4, path: Path = "generic") -> str | None:
    """Whether ``models`` (solo models of one architecture, two or more, e.g. built with two seeds)
    train correctly as a pack through ``path`` ("generic": ``Vmapped``; "auto": the path
    ``run_members`` picks, ``Fused`` when every layer is member-aware): a dry step on one batch
    ``x`` [B, *event] packed and through each model alone, with the same noise, comparing
    posteriors, log-likelihoods and gradients (each tensor's difference within ``rtol`` of its
    norm, or of its group's for a tensor near zero).
    None: it packs; else the reason, in words. The models are not changed."""
    M = len(models)
    copies = [copy.deepcopy(m) for m in models]
    fused_why = ""
    try:
        with torch.no_grad():
            mu, _ = models[0].encode(x)
        eps = torch.randn(mu.shape, generator=torch.Generator(mu.device).manual_seed(0), device=mu.device)
        run: Members | None = None
        if path == "auto":
            try:
                run = Fused(copies)
            except NotPackable as e:
                fused_why = f"the fused path refuses it ({e}), and "
        run = run or Vmapped(copies)
        packed_out, packed_grads = _dry_step(run, x.expand(M, *x.shape), eps)
        layouts = _solo_layouts(run)
    except Exception as e:  # noqa: BLE001  (any failure is the reason it does not pack)
        return f"{fused_why}the model does not run under torch.func.vmap: {type(e).__name__}: {e}"
    for i, model in enumerate(models):
        try:
            solo_out, solo_grads = _dry_step(One(copy.deepcopy(model)), x[None], eps)
        except Exception as e:  # noqa: BLE001
            return f"the model's dry step fails alone: {type(e).__name__}: {e}"
        names = ["mu", "logvar", "log_likelihood"] + [f"the gradient of {n}" for n, _ in model.named_parameters()]
        packed = [t[i] for t in packed_out] + [layout(g[i]) for layout, g in zip(layouts, packed_grads)]
        alone = [t[0] for t in solo_out] + solo_grads
        # a tensor is compared relative to its norm, or to its group's (outputs, gradients) when it is
        # near zero (a bias before a normalisation has a gradient of rounding errors only)
        scales = [max(t.norm().item() for t in alone[:3])] * 3 + [
            math.sqrt(sum(g.norm() ** 2 for g in solo_grads))
        ] * len(solo_grads)
        for name, p, s, scale in zip(names, packed, alone, scales):
            if p.shape != s.shape:
                return f"member {i}: {name} has shape {tuple(p.shape)} packed, {tuple(s.shape)} alone"
            err = (p - s).norm().item()
            bound = rtol * max(s.norm().item(), 1e-3 * float(scale))
            if not err <= bound:
                return f"member {i}: {name} differs packed from alone (|difference| {err:.3g} > {bound:.3g})"
    return None
