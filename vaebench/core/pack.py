"""Packed trials (issue 11): many trials of a study trained as one batched model.

A study is dozens to thousands of small VAEs; alone, each runs a sequence of tiny matrix
products dominated by per-op overhead. Trials that share everything that shapes the
computation (the ``pack_key``: architecture, likelihood, data, batch size, epochs,
optimiser kind, objective kind, device, metric settings) train as the members of one pack,
through the one training loop (``vaebench.core.train.Trainer``) with M members: the models
stacked along a leading member dimension (``vaebench.core.members``), per-member objective
settings (``vaebench.core.objectives.MemberSettings``) and one optimiser step over the
stacked parameters (``vaebench.core.optim.PackedOptimizer``). Packing changes speed, not the
experiment: each member's init, minibatch order and noise are its solo trial's.

This module keeps what is about packs only: which settings pack (the allow-list,
``pack_key``), how trials are grouped (``plan_packs``) and ``PackTrainer``, the loop's
messages for a pack (what a sweep worker runs). Validation metrics are batched over the
members (``vaebench.core.metrics`` on ``SharedInput``), a member's numbers its solo trial's
up to float rounding, with the same names.

Pure compute: imports torch and vaebench's training modules only, never ray, mlflow or
optuna, so that it runs where only torch is installed (a GPU box).
"""

from __future__ import annotations

import json
import math
import os
import traceback
from typing import Any, Literal

import torch
from torch import nn

from vaebench.core.members import Path, check_packable
from vaebench.core.models import build_model
from vaebench.core.train import Trainer, configure_torch, resolve_device
from vaebench.core.trial import artifacts
from vaebench.data import Dataset, load_data
from vaebench.study.config import BUILTIN_MODELS, TrialConfig

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
    "objective.kind": ("beta_vae", "beta_tcvae"),
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
    "train.lr_schedule": ("constant", "cosine"),
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
# settings that may differ between the members of one pack (per-member tensors or generators);
# objective.kind and tc_estimator choose the objective's code path: shared
PER_MEMBER = (
    "seed",
    "objective.",
    "train.lr",
    "train.lr_schedule",
    "train.weight_decay",
    "train.grad_clip",
    "train.threads",
)
SHARED_OBJECTIVE = ("objective.kind", "objective.tc_estimator")


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and prefix + k != "data":  # data is compared whole
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def unsupported(config: dict[str, Any] | TrialConfig) -> list[str]:
    """The settings of a trial that PackTrainer does not support ([] = it can be packed). A plugin
    model packs (with any model.args) when its dry step packed equals solo (``plugin_packs``)."""
    d = config.model_dump(mode="json") if isinstance(config, TrialConfig) else config
    plugin_ok = None
    kind = d.get("model", {}).get("kind", "mlp")
    bad = []
    if kind not in BUILTIN_MODELS:
        why = plugin_packs(TrialConfig.model_validate(d) if not isinstance(config, TrialConfig) else config)
        plugin_ok = why is None
        if not plugin_ok:
            bad.append(f"model.kind={kind!r} ({why})")
    for key, value in _flat(d).items():
        if plugin_ok is not None and (key == "model.kind" or key.startswith("model.args.")):
            continue  # judged by plugin_packs above
        if plugin_ok and key in ("model.hidden", "model.channels", "model.likelihood", "model.sigma"):
            continue  # the built-in families' fields, unused by a plugin
        allowed = SUPPORTED.get(key)
        if allowed is None or (allowed != "*" and value not in allowed):
            bad.append(f"{key}={value!r}")
    return bad


#: (model settings, data settings) -> None when the plugin model packs, else why not (one dry step each)
_PLUGIN_PACKS: dict[str, str | None] = {}


def plugin_packs(cfg: TrialConfig) -> str | None:
    """Whether a plugin model trains correctly packed: ``check_packable`` (vaebench.core.members) on
    two members (seeds 0 and 1) and 8 real training examples; None when it does, else the reason.
    Memoised per model and data settings (a grid asks for every trial)."""
    key = json.dumps([cfg.model.model_dump(mode="json"), cfg.data.model_dump(mode="json")], sort_keys=True)
    if key not in _PLUGIN_PACKS:
        try:
            data = load_data(cfg.data, cfg.data_seed)
            models = []
            for seed in (0, 1):
                torch.manual_seed(seed)
                models.append(build_model(cfg.model, data.meta.shape, len(data.meta.vocab) or None))
            _PLUGIN_PACKS[key] = check_packable(models, data.train[:8], path="auto")  # the path the pack runs
        except Exception as e:  # noqa: BLE001  (any failure is a reason to run solo)
            _PLUGIN_PACKS[key] = f"the dry step failed: {type(e).__name__}: {e}"
    return _PLUGIN_PACKS[key]


def pack_key(config: dict[str, Any] | TrialConfig) -> str | None:
    """Trials with equal keys can share a pack; None: this trial runs solo (``unsupported``)."""
    d = config.model_dump(mode="json") if isinstance(config, TrialConfig) else config
    if unsupported(d):
        return None
    shared = {k: v for k, v in _flat(d).items() if k in SHARED_OBJECTIVE or not k.startswith(PER_MEMBER)}
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
# Grouped convolutions on a CPU ran at 0.35-0.6x the members' solo speed (benchmarks/PACK.md), and
# the PixelCNN through torch.func at 1.0-1.1x (M 4-8, benchmarks/STRONG_DECODERS.md: its masked
# convolutions do the same work packed): "auto" keeps those trials solo there (an explicit N still
# packs them); on a GPU they pack.
CPU_SOLO_KINDS = ("conv", "pixelcnn")
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
    if kind in ("mnist", "fashion_mnist"):
        return (1, 28, 28)
    return load_data(cfg.data, cfg.data_seed).meta.shape  # files: read their shape


def _vocab_size(cfg: TrialConfig) -> int | None:
    """The vocabulary size of token data (vaebench.data.text), None for other data."""
    from vaebench.study.config import TOKEN_KINDS

    if cfg.data.kind not in TOKEN_KINDS:
        return None
    return len(load_data(cfg.data, cfg.data_seed).meta.vocab)


def member_bytes(cfg: TrialConfig) -> int:
    """Memory one member adds to a pack: parameters with their gradient, optimiser moments and the
    step's copy (5 x 4 bytes each), and the activations of one minibatch kept for the backward
    pass (3 x 4 bytes each: value, gradient, a temporary), counted on a meta-device forward."""
    shape = _event_shape(cfg)
    vocab = _vocab_size(cfg)  # token data: the model needs the vocabulary, x holds int64 ids
    dtype = torch.long if vocab else torch.float32
    acts = 0

    def count(_m: nn.Module, _inp: Any, out: Any) -> None:
        nonlocal acts
        acts += sum(t.numel() for t in (out if isinstance(out, tuple) else (out,)))

    try:
        with torch.device("meta"):  # no memory, no random numbers drawn
            model = build_model(cfg.model, shape, vocab)
            hooks = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
            x = torch.zeros(cfg.train.batch_size, *shape, dtype=dtype)
            model.log_likelihood(x, model.encode(x)[0])
        for h in hooks:
            h.remove()
    except Exception:  # noqa: BLE001  (a plugin that cannot run on the meta device: counted on the CPU)
        torch.manual_seed(0)
        model, acts = build_model(cfg.model, shape, vocab), 0
        x = torch.zeros(cfg.train.batch_size, *shape, dtype=dtype)
        hooks = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
        with torch.no_grad():
            model.log_likelihood(x, model.encode(x)[0])
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
    latent_dim, likelihood and sigma, data and data_seed, batch size, epochs, optimiser, objective
    kind and tc_estimator, device, metric settings) and only if PackTrainer supports every setting (``unsupported``; anything
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


# --------------------------------------------------------------------------------------- the trainer


def _failed(i: int, tb: str) -> dict[str, Any]:
    return {"kind": "end", "state": "failed", "traceback": tb, "member": i}


class PackTrainer:
    """Trains the trials ``configs`` (TrialConfig dicts with one pack_key) as one pack: the training
    loop of ``vaebench.core.train.Trainer`` at M = len(configs), as run_trial's messages.

    ``step()`` trains every live member one epoch and returns run_trial's messages, each with
    "member": its index in ``configs``: "start" for every member on the first call, "epoch" per
    live member, "end" for members that ended (completed with artifacts, diverged, or failed
    with a traceback). It never raises. ``stop(members)`` masks members (pruned, cancelled):
    they get no more messages and no more compute. As in ``train``, divergence is judged at the
    end of an epoch; a diverged, completed or stopped member is then dropped from the stacked
    tensors, so it costs nothing afterwards. ``path``: how the members run
    (``vaebench.core.members.run_members``)."""

    def __init__(self, configs: list[dict[str, Any]], threads: int, path: Path = "auto"):
        self.configs, self.threads, self.path = list(configs), threads, path
        self.trainer: Trainer | None = None
        self.ended: set[int] = set()
        self.index: list[int] = []  # the configs' index of each of the trainer's members
        self._started = False

    @property
    def live(self) -> list[int]:
        """The indices (into ``configs``) of the members still training, in stacked order."""
        return [self.index[m.index] for m in self.trainer.live] if self.trainer else []

    @property
    def done(self) -> bool:
        return self._started and not self.live

    def stop(self, members: list[int]) -> None:
        stopped = set(members)
        self.ended |= stopped
        if self.trainer is not None and stopped & set(self.live):
            self.trainer.keep([k for k, i in enumerate(self.live) if i not in stopped])

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
            self.trainer = None
        return out

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
        resolve_device(first.train.device)  # a device this machine lacks fails before the data are read
        self.data: Dataset = load_data(first.data, first.data_seed)
        host, pid = os.uname().nodename, os.getpid()
        out += [{"kind": "start", "pid": pid, "host": host, "member": i} for i, _ in cfgs]
        self.index = [i for i, _ in cfgs]
        self.trainer = Trainer([c for _, c in cfgs], self.data, self.path)
        return out

    def _train_epoch(self) -> list[dict[str, Any]]:
        trainer = self.trainer
        assert trainer is not None
        out, keep = [], []
        for k, report in enumerate(trainer.run_epoch()):
            i = self.index[report.member]
            out.append(
                {"kind": "epoch", "epoch": report.epoch, "metrics": report.metrics, "state": report.state, "member": i}
            )
            if report.state == "running":
                keep.append(k)
                continue
            end: dict[str, Any] = {"kind": "end", "state": report.state, "epoch": report.epoch, "member": i}
            if report.state == "completed":  # images and the checkpoint: the solo model's, as run_trial's
                end["artifacts"] = artifacts(trainer.model.solo_model(k), self.data, trainer.live[k].cfg.metrics)
            out.append(end)
            self.ended.add(i)
        if len(keep) < len(trainer.live):
            trainer.keep(keep)
        return out


def local_slots(cpus_per_trial: float, gpus_per_trial: float = 0.0) -> int:
    """Packs (or solo trials) that run at once on this machine: its CPUs (GPUs) / a task's share."""
    slots = max(1, math.floor((os.cpu_count() or 1) / cpus_per_trial + 1e-9))
    if gpus_per_trial > 0:
        slots = min(slots, max(1, math.floor(torch.cuda.device_count() / gpus_per_trial + 1e-9)))
    return slots


# `vaebench validate` plans the packs of a grid up to this many trials (~1 s); a larger grid is
# described, not built: building 20,000 trial configs took 25 s and 460 MB
PLAN_SHOWN = 1_000


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
    if study.n_trials() > PLAN_SHOWN:  # not built here (a sweep plans each round of trials as it asks for them)
        return head + f"{study.n_trials():,} trials, planned round by round as the sweep runs"
    configs = [spec.config for spec in expand(study)]
    return head + describe_plan(configs, plan_packs(configs, pack, slots=slots))
