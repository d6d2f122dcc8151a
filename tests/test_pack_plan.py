"""Pack planning (vaebench.core.pack.plan_packs), resources.pack and --pack: which trials share a pack."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from vaebench.cli import app
from vaebench.core import pack
from vaebench.core.models import build_model
from vaebench.core.pack import member_bytes, pack_key, plan_packs
from vaebench.study.config import TrialConfig
from vaebench.study.spec import expand, load_study

STUDIES = Path(__file__).resolve().parent.parent / "studies"

GOOD = """\
name: tiny
data: {kind: digits}
model: {kind: mlp, latent_dim: 4, hidden: [16]}
train: {epochs: 1}
space:
  objective.beta: [0.5, 2.0]
seeds: [0, 1]
"""


def collapse_configs() -> list[TrialConfig]:
    return [spec.config for spec in expand(load_study(STUDIES / "collapse.yaml"))]


def test_members_share_a_pack_only_with_the_same_shape():
    configs = collapse_configs()
    for n in (7, 10, 64):
        groups = plan_packs(configs, n, slots=2)
        assert sorted(i for g in groups for i in g) == list(range(len(configs)))  # every trial exactly once
        for g in groups:
            assert len({pack_key(configs[i]) for i in g}) == 1  # latent 8 and 32 never mixed
            assert len(g) <= n
        sizes = [len(g) for g in groups]
        assert max(sizes) - min(sizes) <= 1  # balanced (both shapes have 54 trials)
    assert plan_packs(configs, "off") == [[i] for i in range(len(configs))]


def test_auto_fills_the_slots_then_grows_packs():
    configs = collapse_configs()  # two shapes (latent 8 and 32), 54 trials each
    # one slot per shape, capped at MAX_PACK members: two packs of 27 per shape
    assert sorted(map(len, plan_packs(configs, "auto", device="cpu", slots=2))) == [27, 27, 27, 27]
    assert sorted(map(len, plan_packs(configs, "auto", device="cpu", slots=8))) == [13, 13, 13, 13, 14, 14, 14, 14]
    assert sorted(map(len, plan_packs(configs[:4], "auto", device="cpu", slots=2))) == [2, 2]  # one pack per slot
    many = configs[:54] * 3  # 162 of one shape on one slot: capped at MAX_PACK members
    assert max(map(len, plan_packs(many, "auto", device="cpu", slots=1))) <= pack.MAX_PACK["cpu"]


def test_auto_respects_memory(monkeypatch):
    configs = collapse_configs()[:10]
    per = member_bytes(configs[0])
    monkeypatch.setattr(pack, "_device_memory", lambda device: ("cpu", int(3.5 * per / pack.MEMORY_FRACTION)))
    assert max(map(len, plan_packs(configs, "auto", slots=1))) == 3  # 3 members fit, 4 do not


def test_member_bytes_counts_parameters_and_activations():
    cfg = collapse_configs()[0]
    params = sum(p.numel() for p in build_model(cfg.model, (1, 8, 8)).parameters())
    bigger = cfg.model_copy(update={"train": cfg.train.model_copy(update={"batch_size": 640})})
    assert member_bytes(cfg) > 20 * params  # parameters, gradients, two Adam moments and the step's copy
    assert member_bytes(bigger) > member_bytes(cfg)  # activations grow with the batch


def test_unsupported_trials_run_solo():
    configs = [c.model_dump(mode="json") for c in collapse_configs()[:6]]
    configs[2]["objective"]["kind"] = "tcvae"  # a setting PackTrainer does not know (added by another module)
    groups = plan_packs(configs, "auto", device="cpu", slots=1)
    assert [2] in groups and [0, 1, 3, 4, 5] in groups


@pytest.mark.parametrize("value", ["lots", "0", "-3", "true", "1.5"])
@pytest.mark.parametrize("command", ["validate", "sweep"])
def test_bad_pack_value_exits_2_and_writes_nothing(tmp_path, monkeypatch, value, command):
    monkeypatch.chdir(tmp_path)
    study = tmp_path / "tiny.yaml"
    study.write_text(GOOD + f"resources: {{pack: {value}}}\n")
    args = [command, str(study)] + (
        ["--tracking-uri", f"sqlite:///{tmp_path}/store/mlflow.db"] if command == "sweep" else []
    )
    result = CliRunner().invoke(app, args)
    message = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert "tiny.yaml" in message and "resources.pack" in message and "allowed: auto, off" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.yaml"]


@pytest.mark.parametrize("command", ["validate", "sweep"])
def test_bad_pack_option_exits_2_and_writes_nothing(tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    study = tmp_path / "tiny.yaml"
    study.write_text(GOOD)
    args = [command, str(study), "--pack", "many"] + (
        ["--tracking-uri", f"sqlite:///{tmp_path}/store/mlflow.db"] if command == "sweep" else []
    )
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "--pack 'many'" in " ".join(result.output.split())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.yaml"]


def test_validate_prints_the_packing(tmp_path):
    study = tmp_path / "tiny.yaml"
    study.write_text(GOOD + "resources: {pack: 3}\n")
    out = " ".join(CliRunner().invoke(app, ["validate", str(study)]).output.split())
    assert "packing (resources.pack: 3" in out and "4 trials in 2 pack(s) of 2 members" in out
    out = " ".join(CliRunner().invoke(app, ["validate", str(study), "--pack", "off"]).output.split())
    assert "every trial runs alone" in out
    assert load_study(study).resources.pack == 3


def test_auto_keeps_conv_solo_on_cpu_but_n_packs_it():
    conv = [
        TrialConfig.model_validate(
            {
                "data": {"kind": "dsprites", "n_samples": 100},
                "model": {"kind": "conv"},
                "seed": s,
                "train": {"device": "cpu"},
            }
        )
        for s in range(4)
    ]
    assert plan_packs(conv, "auto", slots=1) == [[0], [1], [2], [3]]  # grouped convolutions are slower on a CPU
    assert plan_packs(conv, 2, slots=1) == [[0, 1], [2, 3]]


def test_auto_keeps_pixelcnn_trials_solo_on_a_cpu_and_n_packs_them():
    """The PixelCNN packs correctly (torch.func) but no faster on a CPU (benchmarks/STRONG_DECODERS.md):
    "auto" runs its trials alone there, as conv trials; an explicit pack size still packs them."""
    configs = [
        TrialConfig.model_validate(
            {
                "data": {"kind": "digits", "binarize": True},
                "model": {"kind": "pixelcnn", "latent_dim": 4, "args": {"layers": 1, "channels": 4}},
                "seed": s,
            }
        ).model_dump(mode="json")
        for s in range(4)
    ]
    assert plan_packs(configs, "auto", device="cpu", slots=2) == [[0], [1], [2], [3]]
    assert sorted(map(len, plan_packs(configs, 2, device="cpu", slots=2))) == [2, 2]
