"""Plugins (issue 17): models, objectives and data by reference; checked before anything runs
(exit 2, nothing written); part of the record (an edited plugin is refused until --fresh); the
built-in families registered through the same mechanism with unchanged config hashes; the
examples run inline."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import mlflow
import pytest
import torch
from typer.testing import CliRunner

from vaebench.cli import app
from vaebench.core.models import VAE, build_model
from vaebench.core.models.plugin import ProtocolModel, build
from vaebench.plugins import PluginError, absolute_file_ref, available, resolve
from vaebench.study.config import ModelConfig, TrialConfig
from vaebench.study.spec import iter_trials, load_study

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"

MODEL = """\
import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self, event_shape, latent_dim, width=8):
        super().__init__()
        d = 1
        for s in event_shape:
            d *= s
        self.event_shape, self.latent_dim = tuple(event_shape), latent_dim
        self.enc = nn.Sequential(nn.Flatten(), nn.Linear(d, width), nn.Tanh(), nn.Linear(width, 2 * latent_dim))
        self.dec = nn.Sequential(nn.Linear(latent_dim, width), nn.Tanh(), nn.Linear(width, d))

    def encode(self, x):
        return tuple(self.enc(x).chunk(2, -1))

    def log_likelihood(self, x, z):
        logits = self.dec(z).view(-1, *self.event_shape)
        return -nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)
"""

STUDY = """\
name: plug
data: {kind: digits}
model: {kind: "./my_vae.py:Tiny", latent_dim: 3, args: {width: 8}}
train: {epochs: 1, batch_size: 256}
metrics: {iw_samples: 2, iw_examples: 20}
space: {objective.beta: [1.0, 2.0]}
"""


@pytest.fixture(autouse=True)
def _no_env_store(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture
def project(tmp_path, monkeypatch):
    """tmp/proj (a project: pyproject.toml) holding the study and the plugin; commands run from
    tmp/elsewhere, so a relative reference must resolve against the study file, not the cwd."""
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (proj / "my_vae.py").write_text(MODEL)
    (proj / "study.yaml").write_text(STUDY)
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return proj


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if "__pycache__" not in p.parts)


def invoke(*args: str):
    result = CliRunner().invoke(app, list(args))
    return result, " ".join(result.output.split())


def refused(root: Path, *args: str, fragments: tuple[str, ...] = ()) -> str:
    before = tree(root)
    result, message = invoke(*args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert tree(root) == before
    return message


# ------------------------------------------------------------------------- resolution


def test_builtins_resolve_through_the_registry():
    for kind in ("mlp", "conv", "linear"):
        r = resolve(kind, "vaebench.models")
        assert r.builtin and r.qualname == f"vaebench.core.models.vae:{kind}_vae"
    assert {"mlp", "conv", "linear"} <= set(available("vaebench.models"))
    assert "mmd" in available("vaebench.objectives")
    m = build_model(ModelConfig(kind="mlp", hidden=[16], latent_dim=3), (1, 8, 8))
    assert isinstance(m, VAE) and m.encode(torch.rand(2, 1, 8, 8))[0].shape == (2, 3)


def test_a_package_reference_resolves_with_its_identity():
    r = resolve("torch.nn:Linear", "vaebench.models")
    assert r.obj is torch.nn.Linear and r.qualname == "torch.nn.modules.linear:Linear"
    assert r.distribution == "torch" and r.version == torch.__version__.split("+")[0] or r.version
    assert r.source.endswith("linear.py") and len(r.sha256) == 64


def test_unknown_name_lists_what_is_known():
    with pytest.raises(PluginError, match="mlp"):
        resolve("nope", "vaebench.models")
    with pytest.raises(ValueError, match="allowed: mlp, conv, linear"):
        ModelConfig(kind="mpl")


def test_a_file_outside_the_project_is_refused(tmp_path):
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "pyproject.toml").write_text("")
    (tmp_path / "outside.py").write_text(MODEL)
    with pytest.raises(PluginError, match="outside the study's project folder"):
        absolute_file_ref("../outside.py:Tiny", tmp_path / "proj")


def test_builtin_trials_keep_their_config_hashes():
    """Hashes of the studies' trials as computed before plugins existed (records stay valid)."""
    before = {
        "collapse": ["203986e49d60b49e", "9d166c6324554df9", "c6df2157afc07c9a"],
        "linear_collapse": ["24b3bbcac76f22c8", "53699d9173cd4baa", "b092ad8c896bf70d"],
        "beta_dsprites": ["10a58f8899de0544", "a544544fb4cb48ce", "c5e1837524f8a3d6"],
        "quick": ["f6074a401c8c9dd6", "6289d02a64393b33", "0ab5c27f69428ae2"],
    }
    for name, hashes in before.items():
        study = load_study(REPO / "studies" / f"{name}.yaml", open_data=False)
        got = [t.config_hash for _, t in zip(range(3), iter_trials(study))]
        assert got == hashes, name
    assert TrialConfig().config_hash() == "02d58afbd61fcbf1"
    # the record's definition of a built-in study has no plugins key (unchanged)
    from vaebench.record.definition import definition

    assert "plugins" not in definition(load_study(REPO / "studies" / "quick.yaml", open_data=False))


def test_a_plugin_model_folds_sample_axes(project):
    cfg = ModelConfig(kind=f"{project / 'my_vae.py'}:Tiny", latent_dim=3)
    model = build(cfg, (1, 8, 8))
    assert isinstance(model, ProtocolModel)
    x, z = torch.rand(5, 1, 8, 8).round(), torch.randn(4, 5, 3)
    folded = model.log_likelihood(x, z)
    assert folded.shape == (4, 5)
    torch.testing.assert_close(folded[2], model.inner.log_likelihood(x, z[2]))


# ------------------------------------------------------------------------- checks (exit 2)

BAD = {
    "import": ("import not_a_module_anywhere\n", "Tiny", ("No module named 'not_a_module_anywhere'", "cannot import")),
    "not_class": ("Tiny = 3\n", "Tiny", ("is a int, not a class or a function",)),
    "no_attr": (MODEL, "Nope", ("has no attribute 'Nope'",)),
    "missing_method": (
        MODEL.replace("def log_likelihood", "def loglik"),
        "Tiny",
        ("the class has no log_likelihood",),
    ),
    "shape": (
        MODEL.replace(
            "return tuple(self.enc(x).chunk(2, -1))", "mu, lv = self.enc(x).chunk(2, -1); return mu[:, :2], lv"
        ),
        "Tiny",
        ("encode(x)'s mu has shape [2, 2]; expected [2, 3]",),
    ),
    "ll_shape": (
        MODEL.replace(".flatten(1).sum(1)", ".flatten(1)"),
        "Tiny",
        ("log_likelihood(x, z) has shape [2, 64]; expected [2]",),
    ),
    "nan": (MODEL.replace(".flatten(1).sum(1)", ".flatten(1).sum(1) * float('nan')"), "Tiny", ("NaN or infinite",)),
    "dtype": (MODEL.replace("return tuple(", "return tuple(t.long() for t in "), "Tiny", ("dtype torch.int64",)),
}


@pytest.mark.parametrize("command", ["validate", "sweep"])
@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_model_plugin_exits_2(project, command, case):
    source, attr, fragments = BAD[case]
    (project / "my_vae.py").write_text(source)
    (project / "study.yaml").write_text(STUDY.replace("my_vae.py:Tiny", f"my_vae.py:{attr}"))
    refused(
        project, command, str(project / "study.yaml"), fragments=(str(project / "study.yaml"), "model.kind", *fragments)
    )


def test_constructor_rejecting_args_exits_2(project):
    (project / "study.yaml").write_text(STUDY.replace("{width: 8}", "{width: 8, depth: 3}"))
    refused(
        project,
        "validate",
        str(project / "study.yaml"),
        fragments=("model.args", "rejects them", "unexpected keyword argument 'depth'"),
    )


def test_file_plugin_outside_the_project_exits_2(project):
    shutil.copy(project / "my_vae.py", project.parent / "outside.py")
    (project / "study.yaml").write_text(STUDY.replace("./my_vae.py", "../outside.py"))
    refused(
        project, "sweep", str(project / "study.yaml"), fragments=("model.kind", "outside the study's project folder")
    )


def test_a_bad_objective_plugin_exits_2(project):
    (project / "obj.py").write_text("def bad(batch, hp):\n    return {'recon': -batch.log_lik.mean(-1)}\n")
    (project / "study.yaml").write_text(STUDY + 'objective: {kind: "./obj.py:bad"}\n')
    refused(
        project, "validate", str(project / "study.yaml"), fragments=("objective.kind", "must return a dict with 'loss'")
    )


# ------------------------------------------------------------------------- the record


def test_plugin_in_the_record_and_an_edit_is_refused_until_fresh(project):
    uri = f"sqlite:///{project / 'm.db'}"
    study = str(project / "study.yaml")
    result, message = invoke("sweep", study, "--inline", "--tracking-uri", uri)
    assert result.exit_code == 0, result.output
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["plug"], filter_string="tags.vaebench.config_hash != ''")
    sha = hashlib.sha256((project / "my_vae.py").read_bytes()).hexdigest()
    assert set(runs["params.plugin.model.sha256"]) == {sha}
    assert set(runs["params.plugin.model.qualname"]) == {f"{project / 'my_vae.py'}:Tiny"}
    assert (runs["metrics.val/elbo"] < 0).all()

    (project / "my_vae.py").write_text(MODEL.replace("nn.Tanh()", "nn.ReLU()"))
    result, message = invoke("sweep", study, "--inline", "--tracking-uri", uri)
    assert result.exit_code == 2, result.output
    assert "plugins.vaebench.models:" in message and "sha256" in message and "--fresh" in message
    result, _ = invoke("sweep", study, "--inline", "--tracking-uri", uri, "--fresh")
    assert result.exit_code == 0, result.output


# ------------------------------------------------------------------------- examples, inline


def test_the_one_file_example_runs_inline(tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    result, _ = invoke(
        "sweep", str(EXAMPLES / "custom_model" / "study.yaml"), "--inline", "--tracking-uri", uri,
        "--set", "train.epochs=1", "--set", "space.model.args.width=[16]",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(
        experiment_names=["custom_model_example"], filter_string="tags.vaebench.config_hash != ''"
    )
    assert len(runs) == 2 and runs["metrics.val/elbo"].notna().all()


def _example_package_installed() -> bool:
    from importlib.metadata import entry_points

    return any(ep.name == "gaussian_mlp" for ep in entry_points(group="vaebench.models"))


@pytest.mark.skipif(not _example_package_installed(), reason="pip install -e examples/plugin_package (.ci/run does)")
def test_the_plugin_package_example_runs_inline(tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    result, _ = invoke(
        "sweep", str(EXAMPLES / "plugin_package" / "study.yaml"), "--inline", "--tracking-uri", uri,
        "--set", "train.epochs=1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(
        experiment_names=["plugin_package_example"], filter_string="tags.vaebench.config_hash != ''"
    )
    assert len(runs) == 2
    assert runs["metrics.train/l2"].notna().all()  # the objective plugin's own term
    assert runs["metrics.test/elbo"].notna().all()  # the data plugin's test split
    assert set(runs["params.plugin.model.qualname"]) == {"vaebench_example_plugin.model:GaussianMLPVAE"}
    assert set(runs["params.plugin.model.version"]) == {"0.1.0"}


def test_the_mmd_objective_trains_and_logs_its_term():
    from vaebench.core.train import train

    cfg = TrialConfig.model_validate(
        {
            "model": {"latent_dim": 2, "hidden": [16]},
            "objective": {"kind": "mmd", "beta": 0.0, "args": {"weight": 50.0}},
            "train": {"epochs": 2, "batch_size": 256},
            "metrics": {"iw_samples": 2, "iw_examples": 20},
        }
    )
    reports = list(train(cfg))
    assert reports[-1].state == "completed"
    m = reports[-1].metrics
    assert {"train/mmd", "train/kl", "train/recon"} <= set(m)
    # beta 0: the loss is recon + 50 mmd (epoch means of the batch values)
    assert m["train/loss"] == pytest.approx(m["train/recon"] + 50.0 * m["train/mmd"], rel=1e-5)


# ------------------------------------------------------------------------- packing


def test_a_plugin_model_packed_equals_solo(project):
    """The file plugin passes core's dry-step check and trains through torch.func: each member of a
    pack ends where its solo trial ends (same init, batches and noise; float tolerance)."""
    from vaebench.core.pack import PackTrainer, plugin_packs, unsupported
    from vaebench.core.train import train

    def cfg(seed, beta):
        return TrialConfig.model_validate(
            {
                "model": {"kind": f"{project / 'my_vae.py'}:Tiny", "latent_dim": 3, "args": {"width": 8}},
                "objective": {"beta": beta},
                "train": {"epochs": 2, "batch_size": 256},
                "metrics": {"iw_samples": 2, "iw_examples": 20},
                "seed": seed,
            }
        )

    members = [cfg(0, 1.0), cfg(1, 4.0)]
    assert plugin_packs(members[0]) is None and unsupported(members[0]) == []
    msgs, pt = [], PackTrainer([c.model_dump(mode="json") for c in members], threads=1)
    while not pt.done:
        msgs += pt.step()
    assert not [m for m in msgs if m.get("state") == "failed"], msgs
    for i, c in enumerate(members):
        packed = [m for m in msgs if m["kind"] == "epoch" and m["member"] == i][-1]["metrics"]
        solo = list(train(c))[-1].metrics
        for key in ("train/loss", "val/elbo", "val/kl"):
            assert packed[key] == pytest.approx(solo[key], rel=1e-4, abs=1e-4), (i, key)


def test_a_plugin_that_does_not_pack_runs_solo_and_validate_says_why(project):
    source = MODEL.replace(
        "return tuple(self.enc(x).chunk(2, -1))", "return tuple(nn.functional.dropout(self.enc(x), 0.1).chunk(2, -1))"
    )
    (project / "my_vae.py").write_text(source)
    (project / "study.yaml").write_text(STUDY.replace("[1.0, 2.0]", "[1.0, 2.0, 3.0, 4.0]") + "resources: {pack: 4}\n")
    result, message = invoke("validate", str(project / "study.yaml"))
    assert result.exit_code == 0, result.output
    assert "4 trial(s) solo" in message and "does not run under torch.func.vmap" in message


# ------------------------------------------------------------------------- data plugins with factors

FACTOR_DATA = '''\
import numpy as np
import torch


class Bars:
    """Two factors (position 0..7, height 0..3) rendered as an 8-pixel vector."""

    factor_names = ("position", "height")
    factor_sizes = (8, 4)

    def sample_factors(self, n, rng):
        return np.stack([rng.integers(0, s, n) for s in self.factor_sizes], axis=1).astype(np.int64)

    def observations(self, factors):
        x = torch.zeros(len(factors), 8)
        x[torch.arange(len(factors)), torch.as_tensor(factors[:, 0])] = torch.as_tensor(factors[:, 1] + 1.0, dtype=torch.float32) / 4
        return x


def bars(seed, n=400, factors=True):
    gt = Bars()
    rng = np.random.default_rng(seed)
    x = gt.observations(gt.sample_factors(n, rng))
    out = {"train": x[: n // 2], "val": x[n // 2 :], "name": "bars"}
    if factors:
        out["ground_truth"] = gt
    return out
'''


def test_a_data_plugin_with_factors_gets_the_disentanglement_metrics(project):
    (project / "bars.py").write_text(FACTOR_DATA)
    text = (
        "name: bars\ndata: {kind: './bars.py:bars'}\n"
        "model: {latent_dim: 2, hidden: [16], likelihood: gaussian}\n"
        "train: {epochs: 1, batch_size: 100}\nmetrics: {iw_samples: 2, iw_examples: 20, disentanglement: [mig]}\n"
        "space: {objective.beta: [1.0]}\n"
    )
    (project / "bars.yaml").write_text(text)
    uri = f"sqlite:///{project / 'm.db'}"
    result, _ = invoke("sweep", str(project / "bars.yaml"), "--inline", "--tracking-uri", uri)
    assert result.exit_code == 0, result.output
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["bars"], filter_string="tags.vaebench.config_hash != ''")
    assert 0.0 <= runs["metrics.val/dis/mig"].iloc[0] <= 1.0
    assert runs["params.plugin.data.qualname"].iloc[0].endswith("bars.py:bars")
    # without ground_truth the study is refused before anything runs
    (project / "bars.yaml").write_text(text.replace("'./bars.py:bars'}", "'./bars.py:bars', args: {factors: false}}"))
    refused(project, "validate", str(project / "bars.yaml"), fragments=("metrics.disentanglement", "no ground_truth"))
