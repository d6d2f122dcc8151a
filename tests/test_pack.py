"""Packed trials (vaebench.core.pack, vaebench.core.members): packing changes speed, not the experiment.

Each check compares a member of a pack with the same trial run alone through ``train()`` (the
same loop at M = 1, its plain torch ops). "Within 1e-5 relative" for a tensor means ||packed -
solo|| <= 1e-5 ||solo|| (an elementwise relative bound is meaningless for entries near zero).
"""

import io
import math
import subprocess
import sys

import pytest
import torch

from vaebench.core.members import One, check_packable, run_members
from vaebench.core.models import build_model
from vaebench.core.objectives import MemberSettings, kl_weight, regulariser
from vaebench.core.optim import PackedOptimizer, lr_factor, make_optimizer
from vaebench.core.pack import PackTrainer, pack_key, unsupported
from vaebench.core.train import Trainer, train
from vaebench.data import load_data
from vaebench.study.config import TrialConfig

DATA = {
    "mlp": {"kind": "digits", "binarize": True},
    "conv": {"kind": "digits", "binarize": True},
    "linear": {"kind": "ppca", "n_samples": 1000},
    "mlp_vectors": {"kind": "ppca", "n_samples": 1000},  # an MLP on vectors [M, B, n]: no image axes to flatten
}
MODEL = {
    "mlp": {"kind": "mlp", "latent_dim": 4, "hidden": [32, 16]},
    "conv": {"kind": "conv", "latent_dim": 4, "channels": [4, 8]},
    "linear": {"kind": "linear", "latent_dim": 3, "likelihood": "gaussian", "sigma": 0.7},
    "mlp_vectors": {"kind": "mlp", "latent_dim": 2, "hidden": [16, 16], "likelihood": "gaussian"},
}
# members differing in seed, beta, annealing schedule, free bits (lambda and mode), capacity, lr (and its
# schedule), grad clip
MEMBERS = [
    {"seed": 0},
    {"seed": 1, "objective": {"beta": 4.0, "anneal": {"kind": "linear", "start": 0.3}, "free_bits": 0.1}},
    {
        "seed": 2,
        "objective": {"beta": 2.0, "anneal": "sigmoid", "free_bits": 0.5, "free_bits_mode": "total"},
        "train": {"lr": 1e-2, "grad_clip": 0.5},
    },
    {
        "seed": 3,
        "objective": {"anneal": {"kind": "capacity", "c_max": 5.0, "gamma": 10.0}},
        "train": {"lr": 3e-3, "lr_schedule": "cosine"},
    },
    {"seed": 4, "objective": {"beta": 0.5, "anneal": {"kind": "cyclical", "cycles": 2, "ratio": 0.5}}},
]
# A member of a pack runs other kernels than its solo trial (batched matmuls, grouped convolutions, the
# optimiser's update over stacked tensors): equal up to float rounding, which training then carries on.
# Measured after three epochs (metric: |packed - solo| <= rel |solo| + abs, abs in nats): mlp and linear
# within 5e-6 relative (val/mi, a difference of two ~5-nat terms, 1e-6 nats), parameters within 1e-6;
# conv within 2e-3 relative and parameters within 7e-3: member 0's parameters drift furthest
# (2e-4 after one epoch), Adam turning the rounding of near-zero gradients of its unused units into
# steps of size lr, while its val/elbo still agrees within 1.5e-5.
METRIC_TOL = {"mlp": (2e-5, 1e-4), "linear": (2e-5, 1e-4), "conv": (3e-3, 1e-3), "mlp_vectors": (2e-5, 1e-4)}
PARAM_RTOL = {"mlp": 1e-5, "linear": 1e-5, "conv": 1e-2, "mlp_vectors": 1e-5}


def config(kind: str, seed: int = 0, epochs: int = 2, **over) -> dict:
    d = {
        "data": dict(DATA[kind]),
        "model": dict(MODEL[kind]),
        "seed": seed,
        "train": {"epochs": epochs, "batch_size": 64, "lr": 2e-3, "device": "cpu"},
        "metrics": {"iw_samples": 4, "iw_examples": 100},
    }
    for k, v in over.items():
        d[k] = {**d.get(k, {}), **v} if isinstance(v, dict) else v
    return TrialConfig.model_validate(d).model_dump(mode="json")


def member_configs(kind: str, epochs: int = 2) -> list[dict]:
    return [config(kind, epochs=epochs, **m) for m in MEMBERS]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp(min=1e-30)).item()


def without_seconds(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in ("train/epoch_seconds", "train/member_seconds")}


def solo_run(c: dict) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """train()'s metrics per epoch and its final parameters, for the trial ``c`` alone."""
    reports = list(train(TrialConfig.model_validate(c)))
    return [without_seconds(r.metrics) for r in reports], {
        k: v.detach().clone() for k, v in reports[-1].model.state_dict().items()
    }


def pack_run(configs: list[dict], path: str = "auto") -> tuple[list[list[dict]], list[dict[str, torch.Tensor]]]:
    """The same trials as one Trainer: each member's metrics per epoch and final parameters."""
    cfgs = [TrialConfig.model_validate(c) for c in configs]
    trainer = Trainer(cfgs, load_data(cfgs[0].data, cfgs[0].data_seed), path)
    metrics: list[list[dict]] = [[] for _ in cfgs]
    for _ in range(cfgs[0].train.epochs):
        for r in trainer.run_epoch():
            metrics[r.member].append(without_seconds(r.metrics))
    return metrics, [trainer.model.member_state(k) for k in range(len(cfgs))]


def assert_close_metrics(got: dict, expected: dict, tol: tuple[float, float], what: str) -> None:
    assert got.keys() == expected.keys(), what
    for name, v in expected.items():
        assert got[name] == pytest.approx(v, rel=tol[0], abs=tol[1]), f"{what}: {name}"


@pytest.mark.parametrize("kind", ["mlp", "linear", "conv"])
def test_a_pack_of_one_is_the_solo_trial_bit_for_bit(kind):
    c = config(kind, epochs=2, **MEMBERS[2])
    solo_metrics, solo_params = solo_run(c)
    msgs = run_pack([c])
    assert metrics_of(msgs, 0) == solo_metrics  # every number, bit for bit
    end = [m for m in msgs if m["kind"] == "end"][0]
    state = torch.load(io.BytesIO(end["artifacts"]["checkpoint.pt"]))
    assert state.keys() == solo_params.keys()
    assert all(torch.equal(state[k], solo_params[k]) for k in state)


@pytest.mark.parametrize("kind", ["mlp", "linear", "conv", "mlp_vectors"])
def test_members_start_as_alone_and_equal_their_solo_trials_after_one_and_three_epochs(kind):
    configs = member_configs(kind, epochs=3)
    cfgs = [TrialConfig.model_validate(c) for c in configs]
    data = load_data(cfgs[0].data, cfgs[0].data_seed)
    trainer = Trainer(cfgs, data)
    assert type(trainer.model).__name__ == "Fused"
    for k, cfg in enumerate(cfgs):  # initial parameters: the solo model's, bit for bit
        torch.manual_seed(cfg.seed)
        init = build_model(cfg.model, data.meta.shape).state_dict()
        state = trainer.model.member_state(k)
        assert state.keys() == init.keys()
        assert all(torch.equal(state[n], init[n]) for n in init), f"{kind} member {k}: initial parameters"
    packed, params = pack_run(configs)
    for k, c in enumerate(configs):
        solo, solo_params = solo_run(c)
        assert len(packed[k]) == len(solo) == 3
        for epoch in (0, 2):
            assert_close_metrics(
                packed[k][epoch], solo[epoch], METRIC_TOL[kind], f"{kind} member {k} epoch {epoch + 1}"
            )
        for name, v in solo_params.items():
            assert rel(params[k][name], v) <= PARAM_RTOL[kind], f"{kind} member {k}: {name}"


def test_beta_tcvae_members_equal_their_solo_trials():
    """beta-TCVAE packs (its decomposition broadcast over members): members differing in seed, alpha,
    beta, gamma and anneal equal their solo trials after two epochs, mi/tc/dwkl included."""
    tc = [
        {"seed": 0, "objective": {"kind": "beta_tcvae", "tc_estimator": "mss"}},
        {"seed": 1, "objective": {"kind": "beta_tcvae", "tc_estimator": "mss", "beta": 6.0, "alpha": 0.5}},
        {"seed": 2, "objective": {"kind": "beta_tcvae", "tc_estimator": "mss", "gamma": 2.0, "anneal": "linear"}},
    ]
    configs = [config("mlp", epochs=2, **m) for m in tc]
    assert len({pack_key(c) for c in configs}) == 1
    packed, params = pack_run(configs)
    for k, c in enumerate(configs):
        solo, solo_params = solo_run(c)
        assert {"train/mi", "train/tc", "train/dwkl"} <= solo[1].keys()
        for epoch in range(2):
            assert_close_metrics(packed[k][epoch], solo[epoch], METRIC_TOL["mlp"], f"beta_tcvae member {k}")
        for name, v in solo_params.items():
            assert rel(params[k][name], v) <= PARAM_RTOL["mlp"], f"beta_tcvae member {k}: {name}"


@pytest.mark.parametrize("kind", ["mlp", "linear", "conv"])
def test_the_generic_path_equals_the_fused_one(kind):
    """torch.func over the solo model (the path any user model takes) against the built-in families'
    member-aware layers, two epochs of five different members: the same numbers up to rounding."""
    configs = member_configs(kind, epochs=2)
    fused, fused_params = pack_run(configs, "fused")
    generic, generic_params = pack_run(configs, "generic")
    for k in range(len(configs)):
        for epoch in range(2):
            assert_close_metrics(generic[k][epoch], fused[k][epoch], METRIC_TOL[kind], f"{kind} member {k}")
        for name, v in fused_params[k].items():
            assert rel(generic_params[k][name], v) <= PARAM_RTOL[kind], f"{kind} member {k}: {name}"


@pytest.mark.parametrize("kind", ["mlp", "linear", "conv"])
def test_every_built_in_family_packs_through_the_generic_path(kind):
    cfg = TrialConfig.model_validate(config(kind))
    data = load_data(cfg.data, cfg.data_seed)
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(build_model(cfg.model, data.meta.shape))
    assert check_packable(models, data.train[:32]) is None


class _Tiny(torch.nn.Module):
    """A user's model meeting vaebench.core.protocol: linear encoder, Bernoulli decoder."""

    def __init__(self, event_shape=(1, 8, 8), latent_dim=2, dropout=0.0):
        super().__init__()
        d = math.prod(event_shape)
        self.latent_dim = latent_dim
        self.enc = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(d, 2 * latent_dim))
        self.drop = torch.nn.Dropout(dropout)
        self.dec = torch.nn.Linear(latent_dim, d)

    def encode(self, x):
        return self.drop(self.enc(x)).chunk(2, dim=-1)

    def log_likelihood(self, x, z):
        logits = self.dec(z).view(*z.shape[:-1], *x.shape[1:])
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none")
        return -bce.flatten(-3).sum(-1)


def test_check_packable_passes_a_protocol_model_and_names_why_one_does_not_pack():
    x = (torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    torch.manual_seed(0)
    assert check_packable([_Tiny(), _Tiny()], x) is None
    reason = check_packable([_Tiny(dropout=0.5), _Tiny(dropout=0.5)], x)  # noise drawn inside the forward
    assert reason is not None and "vmap" in reason and "random" in reason
    assert type(run_members([_Tiny(), _Tiny()])).__name__ == "Vmapped"  # not member-aware: the generic path
    assert isinstance(run_members([_Tiny()]), One)


@pytest.mark.parametrize(
    "kind,likelihood",
    [("mlp", "bernoulli"), ("linear", "gaussian"), ("conv", "bernoulli"), ("mlp", "gaussian_learned")],
)
@pytest.mark.parametrize("path", ["fused", "generic"])
def test_batched_evaluation_gives_each_member_its_solo_metrics(kind, likelihood, path):
    """Every validation metric of a member, evaluated with its pack mates in one batched pass,
    equals vaebench.core.metrics.evaluate on the member alone (same generator seed) within 1e-5
    relative: the same noise, the same examples, the same formulas. Members differ in their
    weights (seeds) and one has diverged (NaN weights), which must not leak into the others."""
    from vaebench.core.metrics import evaluate, evaluate_members

    binarize = {"binarize": likelihood == "bernoulli"} if kind != "linear" else {}
    configs = [
        config(
            kind,
            seed=s,
            model={"likelihood": likelihood},
            data=binarize,
            metrics={"iw_samples": 8, "iw_examples": 300, "mi_batch_size": 64, "eval_batch_size": 100},
        )
        for s in range(4)
    ]
    pt = PackTrainer(configs, threads=1, path=path)
    pt._start()
    members = pt.trainer.model
    with torch.no_grad():  # one epoch's worth of drift, so members differ beyond their inits
        for p in members.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(7)))
        members.parameters()[0][3] = float("nan")  # member 3 diverged
    cfg = TrialConfig.model_validate(configs[0]).metrics
    x_val = pt.trainer.x_val
    packed = evaluate_members(members.for_metrics(), x_val, cfg, torch.Generator().manual_seed(11))
    assert len(packed) == 4 and all(math.isnan(packed[3][k]) for k in ("elbo", "iw_nll", "mi"))
    for k in range(3):
        solo = evaluate(members.solo_model(k), x_val, cfg, torch.Generator().manual_seed(11))
        assert packed[k].keys() == solo.keys() and len(solo) > 10
        for name, v in solo.items():
            assert packed[k][name] == pytest.approx(v, rel=1e-5, abs=1e-6), f"{kind} member {k}: {name}"
    assert len({round(p["elbo"], 3) for p in packed[:3]}) == 3  # the members really differ


def test_schedules_and_regulariser_per_member_equal_each_member_alone():
    cfgs = [TrialConfig.model_validate(config("mlp", **m)).objective for m in MEMBERS]
    T = 100
    hp = MemberSettings(cfgs)
    torch.manual_seed(0)
    kl = torch.rand(len(cfgs), 16, 4) * 0.3  # some dims below lambda, some above
    for t in (0, 13, 57, 99):
        kl_t = kl.clone().requires_grad_()
        reg = regulariser(kl_t, hp, t, T)
        reg.sum().backward()
        for k, o in enumerate(cfgs):
            assert hp.weight(t, T)[k].item() == pytest.approx(kl_weight(o, t, T), rel=1e-6)
            solo = kl[k : k + 1].clone().requires_grad_()
            expected = regulariser(solo, MemberSettings([o]), t, T)
            expected.backward()
            assert reg[k].item() == expected.item()  # the same ops per member: bit for bit
            assert torch.equal(kl_t.grad[k], solo.grad[0])


@pytest.mark.parametrize("kind", ["adam", "adamw", "sgd"])
def test_optimizer_step_matches_torch_optim_per_member(kind):
    lrs, wds, clips = [1e-3, 1e-2, 0.1], [0.0, 0.01, 0.1], [None, 0.5, 10.0]
    torch.manual_seed(0)
    shapes = [(5, 4), (4,), (2, 3, 2)]
    stacked = [torch.nn.Parameter(torch.randn(3, *s)) for s in shapes]
    solos = []
    for k in range(3):
        mod = torch.nn.ParameterList(torch.nn.Parameter(p[k].detach().clone()) for p in stacked)
        solos.append((mod, make_optimizer(kind, list(mod.parameters()), lrs[k], wds[k]), clips[k]))
    packed = PackedOptimizer(stacked, kind, lrs, wds, clips)
    for _ in range(6):
        grads = [torch.randn_like(p) * 3 for p in stacked]
        for p, g in zip(stacked, grads):
            p.grad = g.clone()
        packed.clip_grads()
        packed.step()
        for k, (mod, opt, clip) in enumerate(solos):
            for p, g in zip(mod, grads):
                p.grad = g[k].clone()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(mod.parameters(), clip)
            opt.step()
    for k, (mod, _, _) in enumerate(solos):
        for p, q in zip(stacked, mod):
            assert rel(p[k].detach(), q.detach()) <= 1e-5


def test_cosine_lr_schedule_per_member_equals_torch_optim_with_that_lr():
    """lr_factor is 0.5 (1 + cos(pi t / T)): 1 at the first step, 1/2 halfway, 0 at T. A packed member on
    the cosine schedule moves as torch.optim does with its lr set to lr * factor before each step; a
    constant member beside it moves as with its fixed lr."""
    T = 6
    assert lr_factor("cosine", 0, T) == 1.0 and lr_factor("cosine", 3, T) == pytest.approx(0.5)
    assert lr_factor("cosine", T, T) == pytest.approx(0.0, abs=1e-12) and lr_factor("constant", 5, T) == 1.0
    lrs, schedules = [1e-2, 1e-2], ["constant", "cosine"]
    torch.manual_seed(0)
    stacked = [torch.nn.Parameter(torch.randn(2, 5, 4)), torch.nn.Parameter(torch.randn(2, 4))]
    solos = []
    for k in range(2):
        mod = torch.nn.ParameterList(torch.nn.Parameter(p[k].detach().clone()) for p in stacked)
        solos.append((mod, make_optimizer("adam", list(mod.parameters()), lrs[k], 0.0)))
    flat = torch.nn.ParameterList(torch.nn.Parameter(p[1].detach().clone()) for p in stacked)  # member 1, constant
    flat_opt = make_optimizer("adam", list(flat.parameters()), lrs[1], 0.0)
    packed = PackedOptimizer(stacked, "adam", lrs, [0.0, 0.0], [None, None], schedules)
    for t in range(T):
        grads = [torch.randn_like(p) for p in stacked]
        for p, g in zip(stacked, grads):
            p.grad = g.clone()
        packed.step(t, T)
        for k, (mod, opt) in enumerate(solos):
            opt.param_groups[0]["lr"] = lrs[k] * lr_factor(schedules[k], t, T)
            for p, g in zip(mod, grads):
                p.grad = g[k].clone()
            opt.step()
        for p, g in zip(flat, grads):
            p.grad = g[1].clone()
        flat_opt.step()
    for k, (mod, _) in enumerate(solos):
        for p, q in zip(stacked, mod):
            assert rel(p[k].detach(), q.detach()) <= 1e-5
    # the schedule matters: the cosine member is not where a constant lr would have taken it
    assert rel(stacked[0][1].detach(), flat[0].detach()) > 1e-3


def run_pack(configs: list[dict], stop_after: dict[int, list[int]] | None = None) -> list[dict]:
    pt = PackTrainer(configs, threads=1)
    msgs, epoch = [], 0
    while not pt.done:
        msgs += pt.step()
        epoch += 1
        if stop_after and epoch in stop_after:
            pt.stop(stop_after[epoch])
    return msgs


def metrics_of(msgs: list[dict], member: int) -> list[dict]:
    return [without_seconds(m["metrics"]) for m in msgs if m["kind"] == "epoch" and m["member"] == member]


def test_a_diverging_member_ends_alone_and_leaves_the_others_as_without_it():
    # SGD at lr 1e4 on a Gaussian likelihood with sigma 0.05 overflows in the first epoch (as in test_train)
    base = {
        "data": {"kind": "digits"},
        "model": {"likelihood": "gaussian", "sigma": 0.05},
        "train": {"optimizer": "sgd", "lr": 1e-3},
    }
    a = config("mlp", seed=0, epochs=3, **base)
    bad = config("mlp", seed=1, epochs=3, **{**base, "train": {"optimizer": "sgd", "lr": 1e4}})
    c = config("mlp", seed=2, epochs=3, **{**base, "objective": {"beta": 2.0}})
    with_bad = run_pack([a, bad, c])
    without = run_pack([a, c])
    ends = {m["member"]: m for m in with_bad if m["kind"] == "end"}
    assert ends[1]["state"] == "diverged" and ends[1]["epoch"] == 1
    assert ends[0]["state"] == ends[2]["state"] == "completed"
    assert [m["state"] for m in with_bad if m["kind"] == "epoch" and m["member"] == 1] == ["diverged"]
    for member_with, member_without in ((0, 0), (2, 1)):
        got, expected = metrics_of(with_bad, member_with), metrics_of(without, member_without)
        assert len(got) == len(expected) == 3
        for g, e in zip(got, expected):
            assert g.keys() == e.keys()
            assert g == e  # bit for bit: a member's numbers never depend on its pack mates


def test_iw_every_last_computes_the_bound_at_the_last_epoch_and_changes_nothing_else():
    every = run_pack(member_configs("mlp", epochs=3))
    last = run_pack([config("mlp", epochs=3, **m, metrics={"iw_every": "last"}) for m in MEMBERS])
    for member in range(len(MEMBERS)):
        got, expected = metrics_of(last, member), metrics_of(every, member)
        assert ["val/iw_nll" in m for m in got] == [False, False, True]
        for g, e in zip(got[:2], expected[:2]):
            assert g == {k: v for k, v in e.items() if k != "val/iw_nll"}
        assert got[2] == expected[2]  # bit for bit, the bound included


def test_a_forced_nan_diverges_only_its_member():
    configs = member_configs("mlp", epochs=2)
    pt = PackTrainer(configs, threads=1)
    pt._start()
    with torch.no_grad():
        pt.trainer.model.parameters()[0][2] = float("nan")  # member 2's first weight matrix
    msgs = pt.step()
    states = {m["member"]: m["state"] for m in msgs if m["kind"] == "epoch"}
    without = run_pack(configs[:2] + configs[3:])
    assert states == {0: "running", 1: "running", 2: "diverged", 3: "running", 4: "running"}
    members = pt.trainer.model
    assert members.members == 4 and all(torch.isfinite(p).all() for p in members.parameters())
    while not pt.done:
        msgs += pt.step()
    assert {m["member"]: m["state"] for m in msgs if m["kind"] == "end"} == {
        0: "completed",
        1: "completed",
        2: "diverged",
        3: "completed",
        4: "completed",
    }
    for member_with, member_without in ((0, 0), (1, 1), (3, 2), (4, 3)):  # exactly equal, bit for bit
        assert metrics_of(msgs, member_with) == metrics_of(without, member_without)


def test_stop_masks_a_member_and_messages_match_run_trials():
    from vaebench.core.trial import run_trial

    configs = [config("conv", seed=s, epochs=3) for s in range(3)]
    msgs = run_pack(configs, stop_after={1: [1]})
    assert not [m for m in msgs if m["member"] == 1 and m["kind"] != "start" and m.get("epoch", 1) > 1]
    assert [m["epoch"] for m in msgs if m["kind"] == "epoch" and m["member"] == 1] == [1]
    assert not [m for m in msgs if m["member"] == 1 and m["kind"] == "end"]
    solo = list(run_trial(configs[2]))
    packed = [m for m in msgs if m["member"] == 2]
    assert [(m["kind"], m.get("state")) for m in packed] == [(m["kind"], m.get("state")) for m in solo]
    for p, s in zip(packed, solo):
        assert set(p) == set(s) | {"member"}
        if s["kind"] == "epoch":
            assert set(p["metrics"]) == set(s["metrics"])
    assert (
        set(packed[-1]["artifacts"])
        == set(solo[-1]["artifacts"])
        == {"checkpoint.pt", "reconstructions.png", "traversals.png"}
    )
    # the checkpoint is the solo layout: it loads strictly into the solo model
    state = torch.load(io.BytesIO(packed[-1]["artifacts"]["checkpoint.pt"]))
    cfg = TrialConfig.model_validate(configs[2])
    model = build_model(cfg.model, load_data(cfg.data, cfg.data_seed).meta.shape)
    model.load_state_dict(state, strict=True)
    assert packed[-1]["artifacts"]["reconstructions.png"].startswith(b"\x89PNG")


def test_a_bad_member_fails_alone_and_step_never_raises():
    good = config("mlp", seed=0, epochs=1)
    bad = dict(good, model={**good["model"], "latent_dim": -1})
    other_arch = config("mlp", seed=1, epochs=1, model={"hidden": [8]})
    msgs = run_pack([good, bad, other_arch])
    ends = {m["member"]: m for m in msgs if m["kind"] == "end"}
    assert ends[0]["state"] == "completed"
    assert ends[1]["state"] == ends[2]["state"] == "failed"
    assert "latent_dim" in ends[1]["traceback"] and "cannot share a pack" in ends[2]["traceback"]


def test_a_model_that_cannot_be_built_fails_every_member():
    # four stride-2 layers are too many for 8x8 digits: build_model raises while the pack is set up
    configs = [config("conv", seed=s, epochs=1, model={"channels": [4, 4, 4, 4]}) for s in range(2)]
    msgs = run_pack(configs)
    ends = {m["member"]: m for m in msgs if m["kind"] == "end"}
    assert set(ends) == {0, 1} and all(e["state"] == "failed" and "stride-2" in e["traceback"] for e in ends.values())


def test_unsupported_settings_are_named_and_not_packed():
    ok = config("mlp")
    assert unsupported(ok) == [] and pack_key(ok) is not None
    assert pack_key(config("mlp", seed=3, objective={"beta": 7.0}, train={"lr": 0.1})) == pack_key(ok)
    assert pack_key(config("mlp", train={"batch_size": 32})) != pack_key(ok)
    future = {**ok, "objective": {**ok["objective"], "kind": "tcvae"}}  # a setting another module adds later
    assert unsupported(future) == ["objective.kind='tcvae'"] and pack_key(future) is None
    # beta-TCVAE packs with beta-TCVAE of the same estimator only (the objective's code path is shared)
    tcvae = pack_key(config("mlp", objective={"kind": "beta_tcvae"}))
    assert tcvae is not None and tcvae != pack_key(ok)
    assert pack_key(config("mlp", seed=1, objective={"kind": "beta_tcvae", "beta": 6.0})) == tcvae
    assert pack_key(config("mlp", objective={"kind": "beta_tcvae", "tc_estimator": "mss"})) != tcvae
    # the ground-truth-factor metrics are not computed in packs: those trials run solo
    dsprites = TrialConfig.model_validate(
        {"data": {"kind": "dsprites", "n_samples": 100}, "metrics": {"disentanglement": ["mig"]}}
    ).model_dump(mode="json")
    assert unsupported(dsprites) == ["metrics.disentanglement=['mig']"]


def test_pack_module_imports_no_ray_mlflow_or_optuna():
    code = (
        "import sys, vaebench.core.pack; bad = [m for m in ('ray', 'mlflow', 'optuna') if m in sys.modules]; "
        "sys.exit(f'imported {bad}' if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_linear_vae_reaches_the_closed_form_packed():
    """tests/test_linear_vae.py's check (docs/metrics.md, linear VAE on pPCA data) with beta 1 and 2 trained
    as one pack: the same tolerances, 0.03 nats per dim on KL and 0.02 nats on iw_nll."""
    from test_linear_vae import EIGEN, SIGMA2, closed_form, linear_config

    from vaebench.data.ppca import ppca_nll

    configs = [linear_config(beta).model_dump(mode="json") for beta in (1.0, 2.0)]
    msgs = run_pack(configs)
    for k, beta in enumerate((1.0, 2.0)):
        last = [m for m in msgs if m["kind"] == "epoch" and m["member"] == k][-1]
        assert last["state"] == "completed"
        kl_expected, active, collapsed = closed_form(beta)
        kl = sorted((last["metrics"][f"val/kl_dim/{j:02d}"] for j in range(4)), reverse=True)
        assert kl == pytest.approx(kl_expected, abs=0.03)
        assert last["metrics"]["val/active_units"] == active
        assert last["metrics"]["val/collapsed_dims"] == collapsed
        if beta == 1.0:
            cfg = TrialConfig.model_validate(configs[0])
            exact = ppca_nll(load_data(cfg.data, cfg.data_seed).val, EIGEN, SIGMA2, k=4).mean().item()
            assert last["metrics"]["val/iw_nll"] == pytest.approx(exact, abs=0.02)


def test_a_member_records_its_own_training_time():
    """train/member_seconds: the member's share of each pack epoch (epoch seconds / members that
    trained in it), summed; a member stopped after epoch 1 leaves the others a larger share."""
    configs = [config("mlp", seed=s, epochs=3) for s in range(3)]
    msgs = run_pack(configs, stop_after={1: [1]})
    live = {1: 3, 2: 2, 3: 2}
    epochs = [m for m in msgs if m["kind"] == "epoch" and m["member"] == 2]
    total = 0.0
    for m in epochs:
        total += m["metrics"]["train/epoch_seconds"] / live[m["epoch"]]
        assert m["metrics"]["train/member_seconds"] == pytest.approx(total, rel=1e-12)
    assert epochs[-1]["metrics"]["train/member_seconds"] < sum(m["metrics"]["train/epoch_seconds"] for m in epochs)


# ----------------------------------------------------------------------- the sequence VAE (fused)

SEQ_ARGS = {
    "seq_gru": {"cell": "gru", "embed": 8, "hidden": 16, "z_feed": "init"},
    "seq_lstm": {"cell": "lstm", "embed": 8, "hidden": 16, "z_feed": "both"},
    "seq_factorised": {"cell": "gru", "embed": 8, "hidden": 16, "decoder": "factorised"},
}
for _name, _args in SEQ_ARGS.items():
    DATA[_name] = {"kind": "grammar", "n_samples": 300}
    MODEL[_name] = {"kind": "seq_vae", "latent_dim": 3, "args": _args}


@pytest.mark.parametrize("kind", list(SEQ_ARGS))
def test_sequence_vae_members_equal_their_solo_trials(kind):
    """seq_vae packs on the fused path (member-aware Embedding, GRU/LSTM, Linear): its members start
    as their solo models bit for bit and, after two epochs, equal their solo trials within the MLP's
    tolerances, every val/ metric included (iw_nll, per-token numbers: the batched evaluation)."""
    configs = member_configs(kind, epochs=2)
    cfgs = [TrialConfig.model_validate(c) for c in configs]
    data = load_data(cfgs[0].data, cfgs[0].data_seed)
    trainer = Trainer(cfgs, data)
    assert type(trainer.model).__name__ == "Fused"
    vocab = len(data.meta.vocab)
    for k, cfg in enumerate(cfgs):
        torch.manual_seed(cfg.seed)
        init = build_model(cfg.model, data.meta.shape, vocab).state_dict()
        state = trainer.model.member_state(k)
        assert state.keys() == init.keys() and all(torch.equal(state[n], init[n]) for n in init)
    assert pack_key(configs[0]) is not None and unsupported(configs[0]) == []
    packed, params = pack_run(configs)
    for k, c in enumerate(configs):
        solo, solo_params = solo_run(c)
        assert "val/perplexity" in solo[-1]
        for epoch in (0, 1):
            assert_close_metrics(
                packed[k][epoch], solo[epoch], METRIC_TOL["mlp"], f"{kind} member {k} epoch {epoch + 1}"
            )
        for name, v in solo_params.items():
            assert rel(params[k][name], v) <= PARAM_RTOL["mlp"], f"{kind} member {k}: {name}"


def test_sequence_vae_with_word_dropout_runs_solo_and_says_why():
    """Word dropout draws its masks from the global generator inside the forward: a packed member could
    not draw its solo trial's, so such a trial is not packed, and the reason names word dropout."""
    c = config("seq_gru", **{"model": {"args": {**SEQ_ARGS["seq_gru"], "word_dropout": 0.5}}})
    reasons = unsupported(c)
    assert pack_key(c) is None and len(reasons) == 1 and "word_dropout > 0" in reasons[0]


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_stacked_rnn_equals_each_member_alone(cell):
    """The member-aware GRU/LSTM stacked (its equations over the time steps, one baddbmm per step)
    against each member's torch.nn op: outputs, final states and gradients, with and without an
    initial state."""
    from vaebench.core.models.layers import GRU, LSTM, stack_members

    cls = {"gru": GRU, "lstm": LSTM}[cell]
    solos = []
    for seed in range(3):
        torch.manual_seed(seed)
        solos.append(torch.nn.Sequential(cls(5, 7, batch_first=True)))
    stacked = stack_members(solos)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 6, 5, generator=g)
    h0 = torch.randn(1, 3, 4, 7, generator=g)
    states = [None, h0 if cell == "gru" else (h0, torch.randn(1, 3, 4, 7, generator=g))]
    for hx in states:
        out, state = stacked[0](x, hx)
        out.square().sum().backward()
        for k, solo in enumerate(solos):
            hk = None if hx is None else (hx[:, k] if cell == "gru" else (hx[0][:, k], hx[1][:, k]))
            o, s = solo[0](x[k], hk)
            o.square().sum().backward()
            torch.testing.assert_close(out[k], o, atol=1e-6, rtol=1e-5)
            for a, b in zip((state,) if cell == "gru" else state, (s,) if cell == "gru" else s):
                torch.testing.assert_close(a[:, k], b, atol=1e-6, rtol=1e-5)
            for name, p in solo[0].named_parameters():
                sp = stacked[0].get_parameter(name)
                got = stacked[0].solo_layout(name, sp.grad[k])
                assert rel(got, p.grad) <= 1e-5, f"{cell}: the gradient of {name}"
                p.grad = None
        for p in stacked.parameters():
            p.grad = None


def test_stacked_embedding_leaves_the_padding_row_alone():
    """The member-aware Embedding stacked: each member's rows, the padding row read as it is and given
    no gradient (nn.Embedding's padding_idx)."""
    from vaebench.core.models.layers import Embedding, stack_members

    solos = []
    for seed in range(2):
        torch.manual_seed(seed)
        solos.append(torch.nn.Sequential(Embedding(6, 3, padding_idx=0)))
    stacked = stack_members(solos)
    ids = torch.tensor([[[0, 1, 5], [2, 0, 0]], [[3, 4, 0], [0, 0, 1]]])  # [M, B, T]
    out = stacked(ids)
    out.sum().backward()
    for k, solo in enumerate(solos):
        o = solo(ids[k])
        o.sum().backward()
        assert torch.equal(out[k], o)
        assert torch.equal(stacked[0].weight.grad[k], solo[0].weight.grad)
        assert torch.all(stacked[0].weight.grad[k, 0] == 0)
