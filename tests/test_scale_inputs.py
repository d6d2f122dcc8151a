"""Values `validate` accepted and the sweep then failed on (issue 19, "what still breaks"): each is
refused by `validate` and `sweep` alike, exit 2, naming the field, nothing written, no Ray started.
And studies with huge grids or factors: validated in bounded time and memory."""

from __future__ import annotations

import gzip
import resource
import time
from pathlib import Path

import numpy as np
import pytest
from test_inputs import GAUSS, GOOD, SEARCH, invoke, refused, write

from vaebench.study.spec import MAX_NAME, load_study


@pytest.fixture(autouse=True)
def _no_env_store(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture
def project(tmp_path, monkeypatch):
    studies = tmp_path / "proj" / "studies"
    studies.mkdir(parents=True)
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return studies


@pytest.mark.parametrize(
    "case,text,fragments",
    [
        ("tiny_cpus", GOOD + "resources: {cpus_per_trial: 0.00001}\n", ["resources.cpus_per_trial", "allowed", "0.01"]),
        ("zero_cpus", GOOD + "resources: {cpus_per_trial: 0}\n", ["resources.cpus_per_trial", "allowed"]),
        ("fine_cpus", GOOD + "resources: {cpus_per_trial: 0.12345}\n", ["resources.cpus_per_trial", "0.0001"]),
        ("half_cpus", GOOD + "resources: {cpus_per_trial: 1.5}\n", ["resources.cpus_per_trial", "whole number"]),
        ("tiny_gpus", GOOD + "resources: {gpus_per_trial: 0.00001}\n", ["resources.gpus_per_trial", "allowed"]),
        ("neg_data_seed", GOOD + "data_seed: -1\n", ["data_seed", "greater than or equal to 0"]),
        ("big_data_seed", GOOD + f"data_seed: {2**64}\n", ["data_seed", "less than or equal to 4294967295"]),
        ("big_seed", GOOD.replace("seeds: [0, 1]", f"seeds: [0, {2**64}]"), ["seeds.1", "4294967295"]),
        ("neg_seed", SEARCH.replace("seeds: [0, 1]", "seeds: [-3]"), ["seeds.0", "greater than or equal to 0"]),
        ("big_epochs", GOOD.replace("epochs: 1", f"epochs: {2**64}"), ["train.epochs", "2^63-1"]),
        ("big_hidden", GOOD.replace("hidden: [16]", f"hidden: [{2**70}]"), ["model.hidden", "2^63-1"]),
        ("big_dis_seed", GOOD + f"metrics: {{disentanglement_seed: {2**40}}}\n", ["metrics.disentanglement_seed"]),
        ("inf_lr", GOOD.replace("epochs: 1", "epochs: 1, lr: .inf"), ["train.lr", "finite"]),
        ("nan_beta", GOOD + "objective: {beta: .nan}\n", ["objective.beta", "finite"]),
        (
            "big_level",
            GOOD.replace("objective.beta: [0.5, 2.0]", f"train.epochs: [1, {2**64}]"),
            ["space.train.epochs"],
        ),
        ("long_name", GOOD.replace("name: tiny", "name: " + "n" * 251), ["name", f"at most {MAX_NAME} characters"]),
    ],
)
@pytest.mark.parametrize("command", ["validate", "sweep"])
def test_values_the_sweep_cannot_use_are_refused_at_validate(project, command, case, text, fragments):
    study = write(project / f"{case}.yaml", text)
    msg = refused(project.parent.parent, command, str(study), fragments=(f"{case}.yaml", *fragments))
    assert len(msg) < 2000


@pytest.mark.parametrize("value", ["0.01", "0.5", "0.25", "1", "2", "16"])
def test_schedulable_resources_pass(project, value):
    study = write(project / "ok.yaml", GOOD + f"resources: {{cpus_per_trial: {value}, gpus_per_trial: 0}}\n")
    assert load_study(study).resources.cpus_per_trial == float(value)


def test_seed_bounds_are_inclusive(project):
    study = write(project / "ok.yaml", GOOD.replace("seeds: [0, 1]", f"seeds: [0, {2**32 - 1}]") + "data_seed: 0\n")
    assert load_study(study).seeds == [0, 2**32 - 1]


def test_a_name_at_the_limit_passes(project):
    study = write(project / "ok.yaml", GOOD.replace("name: tiny", "name: " + "n" * MAX_NAME))
    assert len(load_study(study).name) == MAX_NAME


@pytest.fixture
def empty_data(project) -> Path:
    d = project.parent / "data"
    d.mkdir()
    # IDX image files of 3 images of 0 x 0 and 0 x 4 pixels (headers that add up: no bytes of data)
    write(d / "zero-idx", b"\x00\x00\x08\x03" + np.array([3, 0, 0], ">u4").tobytes())
    write(d / "thin-idx.gz", gzip.compress(b"\x00\x00\x08\x03" + np.array([3, 0, 4], ">u4").tobytes()))
    np.savez(d / "scalar.npz", x_train=np.array(3.0, dtype=np.float32))  # 0-dimensional
    np.savez(d / "hollow.npz", x_train=np.zeros((20, 0), dtype=np.float32))  # 20 examples of 0 values
    np.savez(d / "hollow3.npz", x_train=np.zeros((20, 0, 5), dtype=np.uint8))
    return d


@pytest.mark.parametrize(
    "case,data,fragments",
    [
        ("idx_0x0", "{kind: idx, train_images: DATA/zero-idx}", ["data.train_images", "zero-idx", "0 x 0 pixels"]),
        ("idx_0x4", "{kind: idx, train_images: DATA/thin-idx.gz}", ["data.train_images", "0 x 4 pixels"]),
        ("npz_0d", "{kind: npz, path: DATA/scalar.npz}", ["data.path", "scalar.npz", "shape ()"]),
        ("npz_empty_rows", "{kind: npz, path: DATA/hollow.npz}", ["data.path", "hollow.npz", "(20, 0)", "empty"]),
        ("npz_empty_images", "{kind: npz, path: DATA/hollow3.npz}", ["data.path", "(20, 0, 5)", "empty"]),
    ],
)
@pytest.mark.parametrize("command", ["validate", "sweep"])
def test_empty_examples_are_refused(project, empty_data, command, case, data, fragments):
    text = GAUSS.replace("{kind: digits}", data.replace("DATA", str(empty_data)))
    study = write(project / f"{case}.yaml", text)
    refused(project.parent.parent, command, str(study), fragments=(f"{case}.yaml", *fragments))


# ----------------------------------------------------------------------------- huge grids


def _levels(n: int) -> str:
    return "[" + ", ".join(f"{0.001 * (i + 1):.4f}" for i in range(n)) + "]"


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize(
    "space,trials",
    [
        ("objective.beta: " + _levels(20_000), "20,000 points x 1 seeds = 20,000 trials"),
        (
            "objective.beta: " + _levels(300) + "\n  train.lr: " + _levels(300),
            "90,000 points x 1 seeds = 90,000 trials",
        ),
    ],
)
def test_validate_of_a_huge_grid_is_fast_and_small(project, space, trials):
    text = GOOD.replace("objective.beta: [0.5, 2.0]", space).replace("seeds: [0, 1]", "seeds: [0]")
    study = write(project / "huge.yaml", text)
    before = _peak_mb()
    started = time.monotonic()
    result, message = invoke("validate", str(study))
    took = time.monotonic() - started
    assert result.exit_code == 0, result.output[-2000:]
    assert trials in message
    assert "planned round by round" in message  # the packing line plans no grid this size
    assert took < 15, took  # was 37 s for 20,000 levels (2 shared cores: generous)
    assert _peak_mb() - before < 200  # was 460 MB
    assert len(result.output) < 20_000  # the table shows the first levels and a count, not all of them


def test_duplicate_levels_among_many_are_still_found(project):
    levels = _levels(5_000)[:-1] + ", 0.0010]"
    study = write(project / "dup.yaml", GOOD.replace("[0.5, 2.0]", levels))
    refused(project.parent.parent, "validate", str(study), fragments=("space.objective.beta", "0.001", "same setting"))
