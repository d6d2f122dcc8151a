"""Packed trials (issue 11): many trials of a study trained as one batched model.

A study is dozens to thousands of small VAEs; alone, each runs a sequence of tiny matrix
products dominated by per-op overhead. Trials that share everything that shapes the
computation (the ``pack_key``: architecture, likelihood, data, batch size, epochs,
optimiser kind, device, metric settings) are stacked along a leading member dimension M:

- every parameter becomes one tensor ``[M, *solo_shape]`` stacked from each member's own
  solo model (``torch.manual_seed(seed); build_model(...)``), so initial parameters are
  the solo trial's bit for bit, and a member's slice of the state dict is the solo layout;
- linear layers run as one ``torch.baddbmm`` over the members, convolutions as one grouped
  convolution (members are groups; benchmarks/PACK.md measures it against ``vmap``);
- each member draws its minibatch order and reparameterisation noise from its own
  generators, seeded as ``vaebench.core.train.train`` seeds them: packing changes speed, not
  the experiment;
- the per-trial numbers (beta, a_t, free bits lambda and mode, capacity C_t and gamma, lr,
  weight decay, grad clip) are per-member tensors; a_t and C_t come from the pure
  functions of ``vaebench.core.objectives``;
- one optimiser step updates every member (Adam, AdamW, SGD written on stacked tensors,
  matching ``torch.optim`` per member); gradients are clipped per member.

Members are independent slices everywhere (the loss is a sum of per-member losses), so a
member whose loss turns NaN harms no other. As in ``train``, divergence is judged at the
end of an epoch; a diverged, completed or stopped member is then dropped from the stacked
tensors, so it costs nothing afterwards. Validation metrics are batched over the members
too: ``vaebench.core.metrics`` runs its one code path on the pack (``SharedInput``: every member
sees the validation split and the noise a solo trial would), so a member's numbers are its
solo trial's up to float rounding, with the same names.

Pure compute: imports torch and vaebench's training modules only, never ray, mlflow or
optuna, so that it runs where only torch is installed (a GPU box).
"""

from __future__ import annotations

import json
import math
import os
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from vaebench.core.convergence import KEYS as CONVERGENCE_KEYS
from vaebench.core.convergence import convergence
from vaebench.core.metrics import evaluate_members, iw_due
from vaebench.core.models import VAE, build_model
from vaebench.core.models.vae import ConvDecoder, GaussianHead, LinearEncoder, MLPDecoder
from vaebench.core.objectives import capacity, kl_per_dim, kl_weight
from vaebench.core.train import TRAIN_TERMS, configure_torch, resolve_device
from vaebench.core.trial import artifacts
from vaebench.data import Dataset, load_data
from vaebench.study.config import (
    LOGVAR_MAX,
    LOGVAR_MIN,
    CapacityAnneal,
    ObjectiveConfig,
    TrialConfig,
)

# --------------------------------------------------------------------------------------- allow-list
#
# What PackTrainer supports, setting by setting. A trial with any other setting (a new key
# another module adds, a new objective or anneal kind) runs solo: plan_packs never guesses.
# "*" = any value; a tuple = the values supported.
SUPPORTED: dict[str, Any] = {
    "data": "*",
    "data_seed": "*",
    "seed": "*",
    "model.kind": ("mlp", "conv", "linear"),
    "model.latent_dim": "*",
    "model.hidden": "*",
    "model.channels": "*",
    "model.likelihood": ("bernoulli", "gaussian", "gaussian_learned"),
    "model.sigma": "*",
    "objective.kind": ("beta_vae",),
    "objective.alpha": "*",
    "objective.gamma": "*",
    "objective.tc_estimator": "*",
    "objective.beta": "*",
    "objective.free_bits": "*",
    "objective.free_bits_mode": ("per_dim", "total"),
    "objective.anneal.kind": ("none", "linear", "sigmoid", "cyclical", "capacity"),
    "objective.anneal.start": "*",
    "objective.anneal.warmup_steps": "*",
    "objective.anneal.k": "*",
    "objective.anneal.t0": "*",
    "objective.anneal.cycles": "*",
    "objective.anneal.ratio": "*",
    "objective.anneal.c_max": "*",
    "objective.anneal.gamma": "*",
    "objective.anneal.steps": "*",
    "train.epochs": "*",
    "train.batch_size": "*",
    "train.optimizer": ("adam", "adamw", "sgd"),
    "train.lr": "*",
    "train.weight_decay": "*",
    "train.grad_clip": "*",
    "train.device": "*",
    "train.threads": "*",
    # the metrics of vaebench.core.metrics (batched over the members: SharedInput)
    "metrics.active_threshold": "*",
    "metrics.mi_batch_size": "*",
    "metrics.iw_samples": "*",
    "metrics.iw_examples": "*",
    "metrics.collapse_epsilon": "*",
    "metrics.collapse_delta": "*",
    "metrics.eval_batch_size": "*",
    "metrics.every": "*",
    "metrics.iw_every": "*",
    # the ground-truth-factor metrics (vaebench.core.disentanglement) are not computed in packs: off only
    "metrics.disentanglement": ([],),
    "metrics.disentanglement_every": "*",
    "metrics.disentanglement_preset": "*",
    "metrics.disentanglement_seed": "*",
}
# settings that may differ between the members of one pack (per-member tensors or generators)
PER_MEMBER = ("seed", "objective.", "train.lr", "train.weight_decay", "train.grad_clip", "train.threads")


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and prefix + k != "data":  # data is compared whole
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def unsupported(config: dict[str, Any] | TrialConfig) -> list[str]:
    """The settings of a trial that PackTrainer does not support ([] = it can be packed)."""
    d = config.model_dump(mode="json") if isinstance(config, TrialConfig) else config
    bad = []
    for key, value in _flat(d).items():
        allowed = SUPPORTED.get(key)
        if allowed is None or (allowed != "*" and value not in allowed):
            bad.append(f"{key}={value!r}")
    return bad


def pack_key(config: dict[str, Any] | TrialConfig) -> str | None:
    """Trials with equal keys can share a pack; None: this trial runs solo (``unsupported``)."""
    d = config.model_dump(mode="json") if isinstance(config, TrialConfig) else config
    if unsupported(d):
        return None
    shared = {k: v for k, v in _flat(d).items() if not k.startswith(PER_MEMBER)}
    return json.dumps(shared, sort_keys=True, separators=(",", ":"))


# --------------------------------------------------------------------------------------- planning
#
# Pack size "auto": as many members as fit MEMORY_FRACTION of the device's memory (split over
# the packs that run at once), at most MAX_PACK[device type]; and when the members would not
# fill every slot at that size, as many packs as slots (n / slots members each), so that no
# CPU (or GPU) sits idle. On CPU the gain grows with M until the per-op overhead is amortised
# and then falls a little as the working set leaves the cache (collapse.yaml's MLP, 1 thread:
# 1,680 model-steps/s at M = 16, 1,470 at M = 64; benchmarks/PACK.md); packs of at most 32 also
# give the slots several packs to share, so that they end together (collapse.yaml at 40 epochs:
# 74 s in four packs of 27 against 82 s in two of 54).
MAX_PACK = {"cpu": 32, "cuda": 512}
# Grouped convolutions on a CPU ran at 0.35-0.6x the members' solo speed (benchmarks/PACK.md):
# "auto" keeps conv trials solo there (an explicit N still packs them); on a GPU they pack.
CPU_SOLO_KINDS = ("conv",)
MEMORY_FRACTION = 0.25
PackSetting = Literal["auto", "off"] | int


def _event_shape(cfg: TrialConfig) -> tuple[int, ...]:
    kind = cfg.data.kind
    if kind == "digits":
        return (1, 8, 8)
    if kind == "dsprites":
        return (1, 64, 64)
    if kind == "ppca":
        return (len(cfg.data.eigenvalues),)
    return load_data(cfg.data, cfg.data_seed).meta.shape  # files: read their shape


def member_bytes(cfg: TrialConfig) -> int:
    """Memory one member adds to a pack: parameters with their gradient, optimiser moments and the
    step's copy (5 x 4 bytes each), and the activations of one minibatch kept for the backward
    pass (3 x 4 bytes each: value, gradient, a temporary), counted on a meta-device forward."""
    shape = _event_shape(cfg)
    acts = 0

    def count(_m: nn.Module, _inp: Any, out: Any) -> None:
        nonlocal acts
        acts += sum(t.numel() for t in (out if isinstance(out, tuple) else (out,)))

    with torch.device("meta"):  # no memory, no random numbers drawn
        model = build_model(cfg.model, shape)
        hooks = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
        mu, _ = model.encode(torch.zeros(cfg.train.batch_size, *shape))
        model.decode(mu)
    for h in hooks:
        h.remove()
    params = sum(p.numel() for p in model.parameters())
    return 4 * (5 * params + 3 * (acts + cfg.train.batch_size * math.prod(shape)))


def _device_memory(device: str) -> tuple[str, int]:
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        if torch.cuda.is_available():
            return "cuda", torch.cuda.get_device_properties(0).total_memory
        return "cuda", 16 * 2**30  # planned on a machine without the GPU: assume a 16 GiB card
    return "cpu", os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def auto_pack_size(cfg: TrialConfig, n: int, slots: int) -> int:
    """The "auto" size for ``n`` members of ``cfg``'s shape with ``slots`` packs running at once."""
    kind, memory = _device_memory(cfg.train.device)
    if kind == "cpu" and cfg.model.kind in CPU_SOLO_KINDS:
        return 1
    by_memory = max(1, int(MEMORY_FRACTION * memory / max(slots, 1)) // member_bytes(cfg))
    size = min(MAX_PACK[kind], by_memory)
    if n < slots * size:  # too few members to fill every slot at that size: one pack per slot
        size = max(1, math.ceil(n / slots))
    return size


def plan_packs(
    configs: list[dict[str, Any] | TrialConfig], pack: PackSetting = "auto", device: str | None = None, slots: int = 1
) -> list[list[int]]:
    """Group trials into packs: lists of indices into ``configs``, solo trials as lists of one.

    Members share a pack only if their pack_key is equal (same model kind, widths/channels,
    latent_dim, likelihood and sigma, data and data_seed, batch size, epochs, optimiser, device,
    metric settings) and only if PackTrainer supports every setting (``unsupported``; anything
    else runs solo). ``pack``: "off" (all solo), N (at most N members per pack) or "auto"
    (``auto_pack_size``, each shape getting the share of ``slots`` its share of the trials fills).
    ``device`` overrides the configs' train.device for sizing; ``slots`` is how many packs run at
    once. Packs of one key are balanced (sizes differ by at most one)."""
    if pack == "off":
        return [[i] for i in range(len(configs))]
    groups: dict[str, list[int]] = {}
    solo: list[int] = []
    for i, c in enumerate(configs):  # keys from the plain dicts: a setting this module does not know means solo
        key = pack_key(c)
        (solo if key is None else groups.setdefault(key, [])).append(i)
    out: list[list[int]] = []
    packable = sum(map(len, groups.values()))
    for members in groups.values():
        c = configs[members[0]]
        first = c if isinstance(c, TrialConfig) else TrialConfig.model_validate(c)
        if device is not None:
            first = first.model_copy(update={"train": first.train.model_copy(update={"device": device})})
        key_slots = max(1, round(slots * len(members) / packable))  # the slots this shape's share of the trials fills
        try:
            size = auto_pack_size(first, len(members), key_slots)
        except Exception:  # noqa: BLE001  (the model cannot be built: each trial fails alone, with its traceback)
            out += [[i] for i in members]
            continue
        size = pack if isinstance(pack, int) else size
        n_packs = math.ceil(len(members) / size)
        base, extra = divmod(len(members), n_packs)
        start = 0
        for k in range(n_packs):
            end = start + base + (k < extra)
            out.append(members[start:end])
            start = end
    return out + [[i] for i in solo]


def describe_plan(configs: list[dict[str, Any] | TrialConfig], groups: list[list[int]]) -> str:
    """One line per kind of group, for `vaebench validate`."""
    packs = [g for g in groups if len(g) > 1]
    solo = [g[0] for g in groups if len(g) == 1]
    parts = []
    if packs:
        sizes = sorted({len(g) for g in packs}, reverse=True)
        parts.append(f"{sum(map(len, packs))} trials in {len(packs)} pack(s) of {'/'.join(map(str, sizes))} members")
    if solo:
        reasons = {r for i in solo for r in unsupported(configs[i])}
        why = f" (settings packs do not support: {', '.join(sorted(reasons))})" if reasons else ""
        parts.append(f"{len(solo)} trial(s) solo{why}")
    return "; ".join(parts) or "no trials"


# --------------------------------------------------------------------------------------- the model


class NotPackable(TypeError):
    """A module type the packed forward does not know (a new layer in vaebench.core.models)."""


def _grouped(h: torch.Tensor) -> torch.Tensor:
    """[M, B, C, H, W] -> [B, M*C, H, W]: members become the groups of a grouped convolution."""
    M, B, C, H, W = h.shape
    return h.transpose(0, 1).reshape(B, M * C, H, W)


def _ungrouped(h: torch.Tensor, M: int) -> torch.Tensor:
    """[B, M*C, H, W] -> [M, B, C, H, W]."""
    B, MC, H, W = h.shape
    return h.view(B, M, MC // M, H, W).transpose(0, 1)


class PackedVAE(nn.Module):
    """M VAEs of one architecture as stacked parameters ``[M, *shape]``, named as in the solo
    model. The forward walks the solo model's module tree (kept as a template) and runs each
    layer once for all members; activations are ``[M, B, ...]`` (``[B, M*C, H, W]`` inside a
    conv stack)."""

    def __init__(self, members: list[VAE]):
        super().__init__()
        template = members[0]
        self.names = [n for n, _ in template.named_parameters()]
        if list(template.state_dict()) != self.names:
            raise NotPackable("the model has buffers; PackedVAE stacks parameters only")
        # linear weights are kept transposed, [M, in, out]: baddbmm takes them as they are and their
        # gradients come out contiguous (the [M, out, in] layout cost a copy per weight per step)
        linears = {f"{n}.weight" for n, m in template.named_modules() if isinstance(m, nn.Linear)}
        self.transposed = [n in linears for n in self.names]
        self.stacked = nn.ParameterList(
            nn.Parameter(
                torch.stack(
                    [m.get_parameter(n).detach().T if t else m.get_parameter(n).detach() for m in members]
                ).contiguous()
            )
            for n, t in zip(self.names, self.transposed)
        )
        self._index = {n: i for i, n in enumerate(self.names)}
        self._template = (template,)  # a tuple: not registered as a submodule (its parameters are not ours)
        self.likelihood = template.likelihood
        self.latent_dim = template.latent_dim

    @property
    def members(self) -> int:
        return self.stacked[0].shape[0]

    def p(self, name: str) -> torch.Tensor:
        return self.stacked[self._index[name]]

    def member_state(self, i: int, grad: bool = False) -> dict[str, torch.Tensor]:
        """Member i's parameters (``grad``: their gradients) in the solo model's state_dict layout."""
        out = {}
        for n, p, t in zip(self.names, self.stacked, self.transposed):
            v = (p.grad if grad else p)[i].detach()
            out[n] = (v.T if t else v).contiguous().clone()
        return out

    def keep(self, positions: list[int]) -> None:
        """Keep only these members (in this order); the others' slices are freed."""
        idx = torch.tensor(positions, device=self.stacked[0].device)
        for p in self.stacked:
            p.data = p.data.index_select(0, idx)
            p.grad = None

    # -- forward

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [M, B, *event] -> (mu, logvar) [M, B, J], logvar clamped as in VAE.encode."""
        enc = self._template[0].encoder
        if isinstance(enc, GaussianHead):
            mu, logvar = self._linear("encoder.head.", self._run(enc.body, "encoder.body.", x)).chunk(2, dim=-1)
        elif isinstance(enc, LinearEncoder):
            mu = self._linear("encoder.proj.", x)
            logvar = self.p("encoder.logvar")[:, None, :].expand_as(mu)
        else:
            raise NotPackable(type(enc).__name__)
        return mu, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z [M, B, J] -> decoder output [M, B, *out_event]."""
        dec = self._template[0].decoder
        if isinstance(dec, nn.Linear):
            return self._linear("decoder.", z)
        if isinstance(dec, MLPDecoder):
            return self._linear("decoder.out.", self._run(dec.body, "decoder.body.", z)).unflatten(-1, dec.out_shape)
        if isinstance(dec, ConvDecoder):
            M, B, s = z.shape[0], z.shape[1], dec.sizes[-1]
            h = torch.relu(self._linear("decoder.fc.", z)).view(M, B, dec.c0, s, s)
            h = _grouped(h)
            targets = list(reversed(dec.sizes[:-1]))
            for i, up in enumerate(dec.ups):
                h = self._conv_transpose(up, f"decoder.ups.{i}.", h, targets[i])
                if i < len(dec.ups) - 1:
                    h = torch.relu(h)
            return _ungrouped(h, M)
        raise NotPackable(type(dec).__name__)

    def _run(self, mod: nn.Module, prefix: str, h: torch.Tensor) -> torch.Tensor:
        if isinstance(mod, nn.Sequential):
            for name, child in mod.named_children():
                h = self._run(child, f"{prefix}{name}.", h)
            return h
        if isinstance(mod, nn.Linear):
            return self._linear(prefix, h)
        if isinstance(mod, nn.ReLU):
            return torch.relu(h)
        if isinstance(mod, nn.Flatten):  # solo flattens from dim 1; here dims 0, 1 are members, batch
            return (_ungrouped(h, self.members) if h.dim() == 4 else h).flatten(2)
        if isinstance(mod, nn.Conv2d):
            M = self.members
            w, b = self.p(prefix + "weight"), self.p(prefix + "bias")
            h = _grouped(h) if h.dim() == 5 else h
            return F.conv2d(h, w.flatten(0, 1), b.flatten(), mod.stride, mod.padding, mod.dilation, groups=M)
        raise NotPackable(f"{type(mod).__name__} at {prefix or 'the root'}")

    def _linear(self, prefix: str, h: torch.Tensor) -> torch.Tensor:
        """y = x W^T + b per member: one baddbmm over [M, B, in] x [M, in, out] (W^T as stored)."""
        wt, b = self.p(prefix + "weight"), self.p(prefix + "bias")
        shape = h.shape
        out = torch.baddbmm(b.unsqueeze(1), h.reshape(shape[0], -1, shape[-1]), wt)
        return out.view(*shape[:-1], wt.shape[2])

    def _conv_transpose(self, mod: nn.ConvTranspose2d, prefix: str, h: torch.Tensor, target: int) -> torch.Tensor:
        w, b = self.p(prefix + "weight"), self.p(prefix + "bias")  # [M, in, out, k, k], [M, out]
        (k,), (s,), (pad,) = mod.kernel_size[:1], mod.stride[:1], mod.padding[:1]
        natural = (h.shape[-1] - 1) * s - 2 * pad + k  # output_size as nn.ConvTranspose2d computes it
        return F.conv_transpose2d(
            h, w.flatten(0, 1), b.flatten(), s, pad, output_padding=target - natural, groups=self.members
        )


class SharedInput:
    """A PackedVAE as ``vaebench.core.metrics`` takes a model: every member encodes the same x
    [B, *event] into [M, B, J], and z [..., M, B, J] (leading sample dims allowed) decodes to
    [..., M, B, *out_event]."""

    def __init__(self, model: PackedVAE):
        self.model = model

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.encode(x.expand(self.model.members, *x.shape))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        lead, (M, B, J) = z.shape[:-3], z.shape[-3:]
        out = self.model.decode(z.movedim(-3, 0).reshape(M, -1, J))  # [M, lead * B, *out_event]
        return out.reshape(M, *lead, B, *out.shape[2:]).movedim(0, len(lead))

    def log_likelihood(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return self.model.likelihood.log_prob(x, out)


# --------------------------------------------------------------------------------------- the objective


class PackedObjective:
    """Per-member objective settings as tensors; the schedules themselves come from
    vaebench.core.objectives (kl_weight, capacity), evaluated per member and step."""

    def __init__(self, objectives: list[ObjectiveConfig], T: int, device: torch.device):
        self.objectives, self.T, self.device = list(objectives), T, device

        def f(vals: list[float]) -> torch.Tensor:
            return torch.tensor(vals, dtype=torch.float32, device=device)

        self.is_capacity = torch.tensor([isinstance(o.anneal, CapacityAnneal) for o in objectives], device=device)
        self.gamma = f([o.anneal.gamma if isinstance(o.anneal, CapacityAnneal) else 0.0 for o in objectives])
        self.lam = f([o.free_bits for o in objectives])
        self.total = torch.tensor([o.free_bits_mode == "total" for o in objectives], device=device)
        self.any_capacity = bool(self.is_capacity.any())
        self.any_free_bits = bool((self.lam > 0).any())

    def keep(self, positions: list[int]) -> None:
        self.__init__([self.objectives[i] for i in positions], self.T, self.device)

    def tables(self, t0: int, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """w_t = beta a_t and C_t for steps t0 .. t0+steps-1: two [steps, M] tensors."""
        ts = range(t0, t0 + steps)
        w = [[kl_weight(o, t, self.T) for o in self.objectives] for t in ts]
        c = [
            [capacity(o.anneal, t, self.T) if isinstance(o.anneal, CapacityAnneal) else 0.0 for o in self.objectives]
            for t in ts
        ]
        return (
            torch.tensor(w, dtype=torch.float32, device=self.device),
            torch.tensor(c, dtype=torch.float32, device=self.device),
        )

    def regulariser(self, kl: torch.Tensor, c_t: torch.Tensor) -> torch.Tensor:
        """objectives.regulariser per member: kl [M, B, J] -> [M]. Free bits take the minibatch mean
        before the max (a dim below lambda gets no gradient); capacity is gamma |KL - C_t|."""
        kl_dims = kl.mean(1)  # [M, J]
        plain = kl_dims.sum(-1)
        reg = plain
        if self.any_free_bits:
            per_dim = kl_dims.clamp(min=self.lam[:, None]).sum(-1)
            total = plain.clamp(min=self.lam * kl.shape[-1])
            reg = torch.where(self.lam > 0, torch.where(self.total, total, per_dim), plain)
        if self.any_capacity:
            reg = torch.where(self.is_capacity, self.gamma * (plain - c_t).abs(), reg)
        return reg


# --------------------------------------------------------------------------------------- the optimiser


class PackedOptimizer:
    """One step for every member over the stacked parameters, with per-member lr, weight decay
    and grad clip, as torch.optim would take it for each member alone (Adam, AdamW; SGD with
    momentum 0.9 as vaebench.core.train.make_optimizer builds them).

    The update runs as torch.optim's fused kernel over the stacked tensors (one pass over
    memory; the same update written as ~10 elementwise ops was 60% of a packed MLP step) with
    lr 1, after weight decay has been applied per member as torch.optim applies it (L2 into
    the gradient for Adam and SGD, decoupled p *= 1 - lr wd for AdamW); then each member moves
    lr_m of the way: p_old + lr_m (p_fused - p_old). Both step rules are linear in lr, so this
    is each member's own update up to rounding (tests: within 1e-5 of torch.optim after six
    steps). The same path whatever the lrs: a member's numbers never depend on its pack mates."""

    MOMENTUM = 0.9

    def __init__(
        self,
        params: list[nn.Parameter],
        kind: Literal["adam", "adamw", "sgd"],
        lr: list[float],
        weight_decay: list[float],
        grad_clip: list[float | None],
    ):
        self.params, self.kind = params, kind
        dev = params[0].device
        self.lr = torch.tensor(lr, dtype=torch.float32, device=dev)
        self.wd = torch.tensor(weight_decay, dtype=torch.float32, device=dev)
        self.clip = torch.tensor([math.inf if c is None else c for c in grad_clip], dtype=torch.float32, device=dev)
        # lr 1 and no weight decay (AdamW's default is 0.01): both are applied per member in step()
        if kind == "sgd":
            self.torch_opt = torch.optim.SGD(params, lr=1.0, weight_decay=0.0, momentum=self.MOMENTUM, fused=True)
        else:
            opt = torch.optim.AdamW if kind == "adamw" else torch.optim.Adam
            self.torch_opt = opt(params, lr=1.0, weight_decay=0.0, fused=True)

    def keep(self, positions: list[int]) -> None:
        idx = torch.tensor(positions, device=self.lr.device)
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
        grads = [p.grad for p in self.params]
        norms = torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads]), dim=0
        )
        coef = torch.where(torch.isfinite(self.clip), (self.clip / (norms + 1e-6)).clamp(max=1.0), 1.0)
        for g in grads:
            g.mul_(self._per(coef, g))

    @torch.no_grad()
    def step(self) -> None:
        if bool((self.wd != 0).any()):
            for p in self.params:
                wd = self._per(self.wd, p)
                if self.kind == "adamw":
                    p.mul_(1 - self._per(self.lr, p) * wd)
                else:
                    p.grad.addcmul_(wd, p)
        old = [p.detach().clone() for p in self.params]
        self.torch_opt.step()
        for p, o in zip(self.params, old):
            p.data = o.lerp_(p.data, self._per(self.lr, p))


# --------------------------------------------------------------------------------------- the trainer


@dataclass
class Member:
    index: int  # position in the configs given to PackTrainer (the "member" of its messages)
    cfg: TrialConfig
    order: torch.Generator  # minibatch order, as train() seeds it
    noise: torch.Generator  # reparameterisation noise, as train() seeds it
    history: dict[str, list[tuple[int, float]]] = field(default_factory=lambda: {k: [] for k in CONVERGENCE_KEYS})
    seconds: float = 0.0  # its own training time: its share of each pack epoch (train/member_seconds)


def _failed(i: int, tb: str) -> dict[str, Any]:
    return {"kind": "end", "state": "failed", "traceback": tb, "member": i}


class PackTrainer:
    """Trains the trials ``configs`` (TrialConfig dicts with one pack_key) as one packed model.

    ``step()`` trains every live member one epoch and returns run_trial's messages, each with
    "member": its index in ``configs``: "start" for every member on the first call, "epoch" per
    live member, "end" for members that ended (completed with artifacts, diverged, or failed
    with a traceback). It never raises. ``stop(members)`` masks members (pruned, cancelled):
    they get no more messages and no more compute."""

    def __init__(self, configs: list[dict[str, Any]], threads: int):
        self.configs, self.threads = list(configs), threads
        self.live: list[Member] = []  # in stacked order
        self.ended: set[int] = set()
        self.epoch = 0
        self._started = False

    @property
    def done(self) -> bool:
        return self._started and not self.live

    def stop(self, members: list[int]) -> None:
        stopped = set(members)
        self.ended |= stopped
        if self._started and any(m.index in stopped for m in self.live):
            self._keep([k for k, m in enumerate(self.live) if m.index not in stopped])

    def step(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        try:
            if not self._started:
                out += self._start()
            if self.live:
                out += self._train_epoch()
        except Exception:  # noqa: BLE001  (a trial's failure is a message, never an exception)
            tb = traceback.format_exc()  # every member not yet ended fails, including one being set up
            pending = [i for i in range(len(self.configs)) if i not in self.ended]
            out += [_failed(i, tb) for i in pending]
            self.ended |= set(pending)
            self.live = []
        return out

    # -- set-up

    def _start(self) -> list[dict[str, Any]]:
        self._started = True
        configure_torch(self.threads)  # before loading data: its first parallel op starts the threads
        out: list[dict[str, Any]] = []
        cfgs: list[tuple[int, TrialConfig]] = []
        key = None
        for i, c in enumerate(self.configs):
            if i in self.ended:
                continue
            try:
                cfg = TrialConfig.model_validate(c)
                k = pack_key(cfg)
                if k is None:
                    raise ValueError(f"this trial cannot be packed: {', '.join(unsupported(cfg))}")
                if key is not None and k != key:
                    raise ValueError(
                        f"member {i} cannot share a pack with member {cfgs[0][0]}: they differ in "
                        "architecture, data, batch size, epochs, optimiser, device or metrics"
                    )
                key = k
                cfgs.append((i, cfg))
            except Exception:  # noqa: BLE001  (a trial's failure is a message, never an exception)
                out.append(_failed(i, traceback.format_exc()))
                self.ended.add(i)
        if not cfgs:
            return out
        first = cfgs[0][1]
        self.device = resolve_device(first.train.device)
        self.data: Dataset = load_data(first.data, first.data_seed)
        self.x_train, self.x_val = self.data.train.to(self.device), self.data.val.to(self.device)
        host, pid = os.uname().nodename, os.getpid()
        out += [{"kind": "start", "pid": pid, "host": host, "member": i} for i, _ in cfgs]

        solos = []
        for i, cfg in cfgs:
            torch.manual_seed(cfg.seed)  # parameter init draws from the global generator, as in train()
            solos.append(build_model(cfg.model, self.data.meta.shape).to(self.device))
            self.live.append(
                Member(
                    i,
                    cfg,
                    order=torch.Generator().manual_seed(cfg.seed),
                    noise=torch.Generator(self.device).manual_seed(cfg.seed),
                )
            )
        self.model = PackedVAE(solos)
        self.solo = solos[0]  # evaluation, checkpoints and images load one member's slice into it
        self.n, self.bs, self.epochs = self.x_train.shape[0], first.train.batch_size, first.train.epochs
        self.steps_per_epoch = math.ceil(self.n / self.bs)
        self.T = self.epochs * self.steps_per_epoch
        self.t = 0
        t = [m.cfg.train for m in self.live]
        self.optimizer = PackedOptimizer(
            list(self.model.stacked),
            first.train.optimizer,
            [c.lr for c in t],
            [c.weight_decay for c in t],
            [c.grad_clip for c in t],
        )
        self.objective = PackedObjective([m.cfg.objective for m in self.live], self.T, self.device)
        return out

    def _keep(self, positions: list[int]) -> None:
        """Drop every member not at ``positions`` from the stacked tensors."""
        self.live = [self.live[k] for k in positions]
        if self.live:
            self.model.keep(positions)
            self.optimizer.keep(positions)
            self.objective.keep(positions)

    # -- one epoch

    def losses(self, idx: torch.Tensor, w_t: torch.Tensor, c_t: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """train()'s objective for every member on its minibatch ``idx`` [M, B]: (loss, recon, kl,
        regulariser), each [M], with w_t = beta a_t and C_t [M] of this step."""
        x = self.x_train[idx.to(self.device)]  # [M, B, *event]: each member's own minibatch
        mu, logvar = self.model.encode(x)
        eps = torch.stack(
            [torch.randn(mu.shape[1:], generator=m.noise, device=self.device, dtype=mu.dtype) for m in self.live]
        )
        z = mu + torch.exp(0.5 * logvar) * eps  # vaebench.core.models.reparameterise, per member
        recon = -self.model.likelihood.log_prob(x, self.model.decode(z)).mean(1)
        kl = kl_per_dim(mu, logvar)  # [M, B, J]
        reg = self.objective.regulariser(kl, c_t)
        return recon + w_t * reg, recon, kl.sum(-1).mean(1), reg

    def _train_epoch(self) -> list[dict[str, Any]]:
        self.epoch += 1
        epoch, model, opt, dev = self.epoch, self.model, self.optimizer, self.device
        started = time.perf_counter()
        w, c = self.objective.tables(self.t, self.steps_per_epoch)
        perms = torch.stack([torch.randperm(self.n, generator=m.order) for m in self.live])  # [M, n]
        terms, sizes = [], []
        for s, idx in enumerate(perms.split(self.bs, dim=1)):
            loss, recon, kl, reg = self.losses(idx, w[s], c[s])
            opt.zero_grad()
            loss.sum().backward()  # members share no parameter: each gets its own loss's gradient
            opt.clip_grads()
            opt.step()
            terms.append(torch.stack([loss, recon, kl, reg]).detach())  # [terms, M]
            sizes.append(idx.shape[1])
            self.t += 1
        seconds = time.perf_counter() - started  # the pack's epoch: every member took this long

        per_step = torch.stack(terms)  # [steps, terms, M]
        weights = torch.tensor(sizes, dtype=per_step.dtype, device=dev)[:, None, None] / self.n
        means = (per_step * weights).sum(0).T.tolist()  # [M][terms]
        last = epoch == self.epochs
        val: list[dict[str, float]] = [{}] * len(self.live)
        mcfg = self.live[0].cfg.metrics  # metric settings are the pack's (pack_key)
        if epoch % mcfg.every == 0 or last:
            eval_noise = torch.Generator(dev).manual_seed(1_000_003 * epoch)  # as train(): the same for every trial
            val = evaluate_members(SharedInput(model), self.x_val, mcfg, eval_noise, iw_due(mcfg, epoch, last))
        out, keep = [], []
        for k, (m, vals) in enumerate(zip(self.live, means)):
            metrics = {f"train/{name}": v for name, v in zip(TRAIN_TERMS, vals)}
            metrics["train/kl_weight"] = kl_weight(m.cfg.objective, self.t - 1, self.T)
            metrics["train/epoch_seconds"] = seconds
            # the member's own training time: the pack's epoch split evenly over the members it trained (they
            # share every step, so each costs about 1/M of it); its MLflow duration is the whole pack's
            m.seconds += seconds / len(self.live)
            metrics["train/member_seconds"] = m.seconds
            metrics["train/steps"] = float(self.t)  # as train(): every member takes every step of its pack
            if not all(math.isfinite(v) for v in vals):
                out += [
                    {"kind": "epoch", "epoch": epoch, "metrics": metrics, "state": "diverged", "member": m.index},
                    {"kind": "end", "state": "diverged", "epoch": epoch, "member": m.index},
                ]
                continue
            if val[k]:
                metrics.update({f"val/{n}": v for n, v in val[k].items()})
                metrics["val/examples"] = float(self.x_val.shape[0])  # as train() records it
                for key in CONVERGENCE_KEYS:
                    m.history[key].append((epoch, metrics[key]))
            if last:  # still moving at the end? (vaebench.core.convergence, as train() records it)
                metrics.update(convergence(m.history, self.epochs))
            state = "completed" if last else "running"
            out.append({"kind": "epoch", "epoch": epoch, "metrics": metrics, "state": state, "member": m.index})
            if last:
                self.solo.load_state_dict(model.member_state(k))  # images and the checkpoint: the solo model's
                out.append(
                    {
                        "kind": "end",
                        "state": "completed",
                        "epoch": epoch,
                        "member": m.index,
                        "artifacts": artifacts(self.solo, self.data, m.cfg.metrics),
                    }
                )
            else:
                keep.append(k)
        self.ended |= {m.index for k, m in enumerate(self.live) if k not in keep}
        if len(keep) < len(self.live):
            self._keep(keep)
        return out


def local_slots(cpus_per_trial: float, gpus_per_trial: float = 0.0) -> int:
    """Packs (or solo trials) that run at once on this machine: its CPUs (GPUs) / a task's share."""
    slots = max(1, math.floor((os.cpu_count() or 1) / cpus_per_trial + 1e-9))
    if gpus_per_trial > 0:
        slots = min(slots, max(1, math.floor(torch.cuda.device_count() / gpus_per_trial + 1e-9)))
    return slots


def packing_summary(study: Any) -> str:
    """`vaebench validate`'s packing line for a vaebench.study.spec.Study (imported lazily: this module
    stays importable with torch alone)."""
    from vaebench.study.spec import effective_pack, expand

    res, pack = study.resources, effective_pack(study)
    slots = local_slots(res.cpus_per_trial, res.gpus_per_trial)
    head = f"packing (resources.pack: {res.pack}, {slots} slot(s) on this machine): "
    if pack == "off":
        why = " (auto with a pruner: a pack's members advance in lockstep)" if res.pack == "auto" else ""
        return head + f"off, every trial runs alone{why}"
    if study.search.kind != "grid":
        configs = [study.trial_config({}, s) for s in study.seeds]
        reasons = unsupported(configs[0])
        if reasons:
            return head + f"none, settings packs do not support: {', '.join(reasons)}"
        size = pack if isinstance(pack, int) else "auto-sized"
        return head + f"the trials of each round of asks, in packs of {size} members of one shape"
    if study.n_trials() > 20_000:  # not built here (a sweep plans each round of trials as it asks for them)
        return head + f"{study.n_trials():,} trials, planned round by round as the sweep runs"
    configs = [spec.config for spec in expand(study)]
    return head + describe_plan(configs, plan_packs(configs, pack, slots=slots))
