"""Plugins on a local Ray (issue 17, items 5, 6 and 8): a file plugin runs on the workers (they
share this machine's filesystem and import it by its absolute path), packed and unpacked; a plugin
the workers cannot import stops the sweep once, at start, with exit 2 and nothing run. Marked
integration: a local Ray takes seconds to start."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import mlflow
import pytest
from typer.testing import CliRunner

from vaebench.cli import app

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _no_env_store(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def invoke(*args: str):
    result = CliRunner().invoke(app, list(args))
    return result, " ".join(result.output.split())


def trials(uri: str, name: str):
    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(
        experiment_names=[name], output_format="list", filter_string="tags.`vaebench.role` = 'trial'"
    )


@pytest.mark.parametrize("pack", ["off", "2"])
def test_the_file_plugin_example_runs_on_a_local_ray(tmp_path, pack):
    proj = tmp_path / "proj"
    shutil.copytree(REPO / "examples" / "custom_model", proj)
    (proj / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    result, message = invoke(
        "sweep", str(proj / "study.yaml"), "--tracking-uri", uri, "--pack", pack,
        "--set", "train.epochs=1", "--set", "space.model.args.width=[16]",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    runs = trials(uri, "custom_model_example")
    assert len(runs) == 2 and all(r.data.tags["vaebench.trial_state"] == "completed" for r in runs)
    assert all(r.data.params["plugin.model.qualname"].endswith("my_vae.py:TinyVAE") for r in runs)
    if pack == "2":  # packed through torch.func: both members in one pack
        assert len({r.data.tags["vaebench.pack"] for r in runs}) == 1


def test_a_plugin_the_workers_cannot_import_stops_the_sweep_once(tmp_path):
    """The plugin imports in this process (the driver) and fails in every other (the Ray workers):
    the sweep stops before any trial, exit 2, naming the plugin and the node."""
    proj = tmp_path / "proj"
    shutil.copytree(REPO / "examples" / "custom_model", proj)
    (proj / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    source = (proj / "my_vae.py").read_text()
    guard = f"import os\nif os.getpid() != {os.getpid()}:\n    raise ImportError('no such package on this node')\n"
    (proj / "my_vae.py").write_text(source + "\n" + guard)
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    result, message = invoke("sweep", str(proj / "study.yaml"), "--tracking-uri", uri, "--set", "train.epochs=1")
    assert result.exit_code == 2, result.output
    assert "cannot be imported on the Ray node" in message and "no such package on this node" in message
    assert "install the plugin's package on every node" in message
    assert "Traceback" not in result.output


def test_the_plugin_package_example_runs_on_a_local_ray_packed(tmp_path):
    from importlib.metadata import entry_points

    if not any(ep.name == "gaussian_mlp" for ep in entry_points(group="vaebench.models")):
        pytest.skip("pip install -e examples/plugin_package (.ci/run does)")
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    study = REPO / "examples" / "plugin_package" / "study.yaml"
    result, _ = invoke("sweep", str(study), "--tracking-uri", uri, "--set", "train.epochs=1", "--pack", "2")
    assert result.exit_code == 0, result.output
    runs = trials(uri, "plugin_package_example")
    assert len(runs) == 2 and all("test/elbo" in r.data.metrics and "train/l2" in r.data.metrics for r in runs)
