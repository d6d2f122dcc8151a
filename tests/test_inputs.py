"""Inputs bounded and checked before anything runs (issue 9, items 5, 7, 8, 10): the study
file's limits, every command-line value, data files and devices, where the store lives.

Every bad input exits 2 with a message naming the file or option, the field and what is
allowed, and writes nothing (no sweeps/, no store, no reports/) and starts no Ray."""

from __future__ import annotations

import gzip
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from vaebench.cli import app
from vaebench.record.store import (
    StoreAddressError,
    check_storage,
    check_tracking_uri,
    check_writable,
    default_storage,
    default_store,
    project_root,
)
from vaebench.report.command import report_folder
from vaebench.study.spec import Study, expand, iter_trials, load_study
from vaebench.study.yaml_input import MAX_NODES, YamlInputError, expanded_size, parse
from vaebench.sweep.checks import CheckError, check_address, check_device, check_server, parse_address

REPO = Path(__file__).resolve().parent.parent
STUDIES = REPO / "studies"

GOOD = """\
name: tiny
data: {kind: digits}
model: {kind: mlp, latent_dim: 4, hidden: [16]}
train: {epochs: 1}
space:
  objective.beta: [0.5, 2.0]
seeds: [0, 1]
"""
SEARCH = (
    GOOD.replace("objective.beta: [0.5, 2.0]", "objective.beta: {low: 0.5, high: 2.0}")
    + "search: {kind: random, budget: 2}\n"
)


def alias_bomb(levels: int = 9, width: int = 10, field: str = "search: {kind: *a%d}") -> str:
    """The issue's bomb: each anchor a list of ``width`` references to the one before."""
    lines = ["name: bomb", "space: {objective.beta: [1]}", "a0: &a0 [" + ",".join(["x"] * width) + "]"]
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels + 1)]
    return "\n".join(lines + [field % levels]) + "\n"


@pytest.fixture(autouse=True)
def _no_env_store(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture
def project(tmp_path, monkeypatch):
    """tmp/proj/studies/ holding the study files; the commands run from tmp/elsewhere."""
    studies = tmp_path / "proj" / "studies"
    studies.mkdir(parents=True)
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return studies


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def invoke(*args: str):
    result = CliRunner().invoke(app, list(args))
    return result, " ".join(result.output.split())  # rich wraps long lines


def refused(root: Path, *args: str, fragments: tuple[str, ...] = ()) -> str:
    """Run a command that must exit 2, write nothing under ``root`` and name ``fragments``."""
    before = tree(root)
    result, message = invoke(*args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert tree(root) == before
    return message


def write(path: Path, text: str | bytes) -> Path:
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return path


# ----------------------------------------------------------------------------- the YAML itself


def test_expanded_size_is_counted_on_the_node_graph():
    # a 3-level bomb is small enough to expand: its size equals the count of the constructed data
    text = alias_bomb(3, 4, "top: *a%d")

    def count(x) -> int:
        if isinstance(x, dict):
            return 1 + sum(1 + count(v) for v in x.values())
        if isinstance(x, list):
            return 1 + sum(count(v) for v in x)
        return 1

    assert expanded_size(yaml.compose(text)) == count(yaml.safe_load(text))
    # the 9-level bomb (~10^9 values) is counted in a few steps, capped just above the bound
    started = time.perf_counter()
    assert expanded_size(yaml.compose(alias_bomb())) == MAX_NODES + 1
    assert time.perf_counter() - started < 1.0


def test_recursive_alias_and_deep_nesting_are_refused():
    with pytest.raises(YamlInputError, match="recursive"):
        parse("a: &a [1, *a]\n")
    with pytest.raises(YamlInputError, match="nested more than"):
        parse("a: " + "[" * 150 + "]" * 150 + "\n")


def test_merge_keys_are_not_duplicates():
    data, _ = parse("x: &b {p: 1, q: 2}\ny: {<<: *b, p: 3}\n")
    assert data["y"] == {"p": 3, "q": 2}


@pytest.mark.parametrize("command", ["validate", "sweep"])
def test_alias_bomb_fails_fast_without_printing_the_input(tmp_path, command):
    # a subprocess with a timeout: a regression would hang, not fail
    study = write(tmp_path / "bomb.yaml", alias_bomb())
    assert len(study.read_bytes()) < 700
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "vaebench.cli", command, str(study)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert time.perf_counter() - started < 60
    assert "bomb.yaml" in proc.stderr and "aliases" in proc.stderr
    assert len(proc.stdout + proc.stderr) < 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.yaml"]


def test_a_smaller_bomb_in_a_literal_prints_a_bounded_value(tmp_path):
    # 10^4 values pass the expansion bound; the literal's error shows a cut repr, not 10^4 x's
    study = write(tmp_path / "b4.yaml", alias_bomb(3))
    msg = refused(tmp_path, "validate", str(study), fragments=("b4.yaml", "search.kind", "allowed", "characters"))
    assert len(msg) < 1500


@pytest.mark.parametrize(
    "case,text,fragments",
    [
        ("duplicate_section", GOOD + "train: {lr: 0.1}\n", ["duplicate key 'train'", "(line 8)", "first at line 4"]),
        ("duplicate_nested", GOOD.replace("epochs: 1", "epochs: 1, epochs: 2"), ["duplicate key 'epochs'", "(line 4)"]),
        ("not_utf8", GOOD.encode() + b"description: caf\xe9\n", ["not UTF-8", "0xe9", "line 8"]),
        ("oversize", GOOD + "#" * 1_000_001 + "\n", ["bytes", "at most 1,000,000"]),
        ("recursive", GOOD + "x: &a [*a]\n", ["recursive"]),
        ("huge_literal", GOOD + "search: {kind: " + "x" * 200_000 + "}\n", ["search.kind", "allowed"]),
        ("huge_key", GOOD + "y" * 1000 + ": 1\n", ["unknown key", "yyy..."]),
        ("huge_space_key", GOOD.replace("objective.beta:", "objective." + "b" * 1000 + ":"), ["names no setting"]),
        ("huge_simple_key", GOOD + "y" * 100_000 + ": 1\n", ["not valid YAML"]),  # bounded: len < 2000
        (
            "duplicate_seeds",
            GOOD.replace("seeds: [0, 1]", "seeds: [0, 1, 0]"),
            ["seeds", "(line 7)", "0 repeated", "once"],
        ),
        ("duplicate_seeds_search", SEARCH.replace("seeds: [0, 1]", "seeds: [3, 3]"), ["seeds", "3 repeated"]),
        (
            "duplicate_levels",
            GOOD.replace("[0.5, 2.0]", "[2, 0.5, 2.0]"),
            ["space.objective.beta", "2 and 2.0", "same"],
        ),
        (
            "duplicate_anneal",
            GOOD.replace("objective.beta: [0.5, 2.0]", "objective.anneal: [none, {kind: none}]"),
            ["space.objective.anneal", "same setting"],
        ),
    ],
)
@pytest.mark.parametrize("command", ["validate", "sweep"])
def test_bad_study_file(project, command, case, text, fragments):
    study = write(project / f"{case}.yaml", text)
    msg = refused(project.parent.parent, command, str(study), fragments=(f"{case}.yaml", *fragments))
    assert len(msg) < 2000  # never the unbounded input


@pytest.mark.parametrize(
    "setting,fragments",
    [
        ("train.epochs=[", ["--set 'train.epochs=['", "not valid YAML"]),
        ("train.epochs={a: [}", ["not valid YAML"]),
        ("train.epochs", ["expected dotted.path=value"]),
        ("=3", ["expected dotted.path=value"]),
        ("model.hidden.x=1", ["'model.hidden.x' does not name a setting"]),
        ("seeds=[0, 0]", ["seeds", "0 repeated"]),
        ("space.objective.beta=[1, 1.0]", ["space.objective.beta", "same setting"]),
        ("train.epochs=" + "9" * 200_001, ["longer than 100,000 bytes"]),
        ("a=" + "&x [" * 3 + "]" * 3, ["not valid YAML"]),
    ],
)
@pytest.mark.parametrize("command", ["validate", "sweep"])
def test_bad_set_values(project, command, setting, fragments):
    study = write(project / "s.yaml", GOOD)
    msg = refused(project.parent.parent, command, str(study), "--set", setting, fragments=tuple(fragments))
    assert len(msg) < 2000


def test_set_a_space_factor(tmp_path):
    study = write(tmp_path / "s.yaml", GOOD)
    s = load_study(study, ["space.objective.beta=[1, 2, 4]"])  # the factor's own key has dots
    assert s.space["objective.beta"] == [1, 2, 4] and s.n_trials() == 6


# ----------------------------------------------------------------------------- counting, lazily

BIG = GOOD.replace(
    "  objective.beta: [0.5, 2.0]\n",
    "".join(
        f"  {k}: [{', '.join(str(v) for v in vals)}]\n"
        for k, vals in {
            "objective.beta": [0.5 * i for i in range(1, 11)],
            "objective.free_bits": [0.1 * i for i in range(10)],
            "train.lr": [0.001 * i for i in range(1, 11)],
            "train.epochs": list(range(1, 11)),
            "train.batch_size": list(range(1, 11)),
            "model.latent_dim": list(range(1, 11)),
            "train.weight_decay": [0.1 * i for i in range(10)],
            "metrics.iw_samples": list(range(1, 11)),
            "metrics.active_threshold": [0.01 * i for i in range(1, 11)],
        }.items()
    ),
)  # 10^9 points x 2 seeds


@pytest.mark.parametrize("command", ["validate", "sweep"])
def test_a_grid_above_the_limit_is_refused_by_arithmetic(project, command):
    study = write(project / "big.yaml", BIG)
    started = time.perf_counter()
    refused(
        project.parent.parent,
        command,
        str(study),
        fragments=("big.yaml", "2,000,000,000 trials", "10 objective.beta x", "2 seeds", "trial_limit (100,000)"),
    )
    assert time.perf_counter() - started < 20  # building 2e9 configs would take hours and terabytes


def test_search_budget_counts_against_the_limit(project):
    study = write(project / "s.yaml", SEARCH.replace("budget: 2", "budget: 60000"))
    refused(project.parent.parent, "validate", str(study), fragments=("120,000 trials", "budget 60000"))


def test_validate_counts_a_raised_limit_without_building_trials(tmp_path):
    study = write(tmp_path / "big.yaml", BIG)
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "vaebench.cli", "validate", str(study), "--set", "trial_limit=10000000000"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "1,000,000,000 points x 2 seeds = 2,000,000,000 trials" in " ".join(proc.stdout.split())
    assert time.perf_counter() - started < 60
    s = load_study(study, ["trial_limit=10000000000"])
    trials = iter_trials(s)  # lazy: the first trial comes at once, the other 2e9 are never built
    first = next(trials)
    assert first.seed == 0 and first.config.objective.beta == 0.5 and first.config.train.epochs == 1


@pytest.mark.parametrize("name", ["quick", "collapse", "search", "pareto", "annealing", "linear_collapse"])
def test_the_count_is_what_expand_builds(name):
    s = load_study(STUDIES / f"{name}.yaml")
    if s.search.kind == "grid":
        specs = expand(s)
        assert s.n_trials() == len(specs) == len({x.config_hash for x in specs})
        assert [x.config_hash for x in iter_trials(s)] == [x.config_hash for x in specs]
    else:
        assert s.n_trials() == s.search.budget * len(s.seeds)


# ----------------------------------------------------------------------------- data files and devices

GAUSS = GOOD.replace("hidden: [16]", "hidden: [16], likelihood: gaussian")


@pytest.fixture
def data_files(project) -> dict[str, Path]:
    d = project.parent / "data"
    d.mkdir()
    np.savez(d / "good.npz", x_train=np.random.default_rng(0).random((20, 4)).astype(np.float32))
    np.savez(d / "flat.npz", x_train=np.zeros(10, dtype=np.float32))
    np.savez(d / "objects.npz", x_train=np.array([[1, "a"], [2, "b"]], dtype=object))
    idx = b"\x00\x00\x08\x03" + np.array([3, 2, 2], ">u4").tobytes() + bytes(12)
    write(d / "good-idx.gz", gzip.compress(idx))
    write(d / "corrupt.gz", b"\x1f\x8b" + bytes(range(200)))
    write(d / "other-idx", b"\x00\x00\x08\x03" + np.array([3, 3, 3], ">u4").tobytes() + bytes(27))
    return {p.name: p for p in d.iterdir()}


@pytest.mark.parametrize(
    "case,data,fragments",
    [
        ("corrupt_gzip", "{kind: idx, train_images: DATA/corrupt.gz}", ["data.train_images", "corrupt.gz", "gzip"]),
        ("wrong_shape", "{kind: npz, path: DATA/flat.npz}", ["data.path", "flat.npz", "shape (10,)"]),
        ("object_array", "{kind: npz, path: DATA/objects.npz}", ["data.path", "objects.npz", "allow_pickle"]),
        (
            "val_shape",
            "{kind: idx, train_images: DATA/good-idx.gz, val_images: DATA/other-idx}",
            ["data.train_images / data.val_images", "other-idx", "differs from the training shape"],
        ),
    ],
)
@pytest.mark.parametrize("command", ["validate", "sweep"])
def test_unreadable_data_fails_before_any_trial(project, data_files, command, case, data, fragments):
    text = GAUSS.replace("{kind: digits}", data.replace("DATA", str(project.parent / "data")))
    study = write(project / f"{case}.yaml", text)
    refused(project.parent.parent, command, str(study), fragments=(f"{case}.yaml", "(line 2)", *fragments))


def test_a_bad_file_among_space_levels(project, data_files):
    d = project.parent / "data"
    text = GAUSS.replace("{kind: digits}", f"{{kind: npz, path: {d}/good.npz}}").replace(
        "objective.beta: [0.5, 2.0]", f"data.path: [{d}/good.npz, {d}/flat.npz]"
    )
    study = write(project / "levels.yaml", text)
    refused(project.parent.parent, "validate", str(study), fragments=("space.data.path", "flat.npz", "(line 6)"))


def test_readable_data_passes(project, data_files):
    text = GAUSS.replace("{kind: digits}", f"{{kind: npz, path: {project.parent}/data/good.npz}}")
    result, message = invoke("validate", str(write(project / "ok.yaml", text)))
    assert result.exit_code == 0, result.output
    assert "2 points x 2 seeds = 4 trials" in message


@pytest.mark.parametrize("command", ["validate", "sweep"])
def test_cuda_without_gpus_per_trial(project, command):
    study = write(project / "cuda.yaml", GOOD.replace("epochs: 1", "epochs: 1, device: cuda"))
    refused(
        project.parent.parent,
        command,
        str(study),
        fragments=("cuda.yaml", "train.device is cuda", "gpus_per_trial is 0"),
    )


@pytest.mark.parametrize("command", ["validate", "sweep"])
def test_cuda_on_this_machine(project, command):
    import torch

    text = GOOD.replace("epochs: 1", "epochs: 1, device: cuda") + "resources: {gpus_per_trial: 1}\n"
    study = write(project / "cuda.yaml", text)
    if torch.cuda.is_available():
        s = load_study(study)
        check_device(s, local=True)  # raises nothing where CUDA is
    else:
        refused(project.parent.parent, command, str(study), fragments=("cuda.yaml", "no CUDA device"))


def test_cuda_as_a_level_is_checked():
    s = Study.model_validate({"name": "x", "space": {"train.device": ["cpu", "cuda"]}})
    with pytest.raises(CheckError, match="gpus_per_trial is 0"):
        check_device(s, local=False)


# ----------------------------------------------------------------------------- command-line values


@pytest.mark.parametrize(
    "args,fragments",
    [
        (["--tracking-uri", "foo://x"], ["--tracking-uri 'foo://x'", "allowed", "sqlite:///PATH.db", "http(s)://"]),
        (["--tracking-uri", "some/folder"], ["--tracking-uri 'some/folder'", "a PATH ending in .db"]),
        (["--tracking-uri", "sqlite://"], ["allowed"]),
        (["--storage", "foo://x"], ["--storage 'foo://x'", "sqlite:///PATH.db", "postgresql://"]),
        (["--address", "nope"], ["--address 'nope'", "HOST:PORT"]),
        (["--address", "127.0.0.1:99999"], ["HOST:PORT"]),
    ],
)
@pytest.mark.parametrize("kind", ["grid", "search"])
def test_bad_option_values(project, args, fragments, kind):
    study = write(project / "s.yaml", GOOD if kind == "grid" else SEARCH)
    refused(project.parent.parent, "sweep", str(study), *args, fragments=tuple(fragments))


def test_bad_tracking_uri_from_the_environment(project, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "foo://x")
    study = write(project / "s.yaml", GOOD)
    for command in ("sweep", "validate"):
        refused(project.parent.parent, command, str(study), fragments=("MLFLOW_TRACKING_URI 'foo://x'", "allowed"))


def test_tracking_uris_accepted_and_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert check_tracking_uri("store.db") == f"sqlite:///{tmp_path}/store.db"
    assert check_tracking_uri("sqlite:///rel/m.db") == f"sqlite:///{tmp_path}/rel/m.db"
    assert check_tracking_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"
    for uri in ("http://127.0.0.1:5000", "https://mlflow.example.org/path", "postgresql+psycopg2://u@h/db"):
        assert check_tracking_uri(uri) == uri
    for uri in ("file:///x", "mlruns", "http://", "databricks", "sqlite:///:memory:"):
        with pytest.raises(StoreAddressError):
            check_tracking_uri(uri)
    assert check_storage("sqlite:///o.db") == f"sqlite:///{tmp_path}/o.db"
    assert check_storage("mysql://u@h/db") == "mysql://u@h/db"
    with pytest.raises(StoreAddressError, match="allowed"):
        check_storage("redis://h")


def test_a_file_where_sweeps_should_be(project):
    (project.parent / "sweeps").write_text("not a folder")
    study = write(project / "s.yaml", GOOD)
    refused(project.parent.parent, "sweep", str(study), fragments=("sweeps", "is a file, not a folder"))
    search = write(project / "t.yaml", SEARCH)
    refused(project.parent.parent, "sweep", str(search), fragments=("is a file, not a folder",))


def test_a_store_path_that_is_a_folder(project, tmp_path):
    (tmp_path / "m.db").mkdir()
    study = write(project / "s.yaml", GOOD)
    refused(
        project.parent.parent,
        "sweep",
        str(study),
        "--tracking-uri",
        f"sqlite:///{tmp_path}/m.db",
        fragments=("is not a file",),
    )


@pytest.mark.skipif(
    os.geteuid() == 0,
    reason="root writes through permission bits: a read-only folder is "
    "writable for root, so there is nothing to refuse",
)
def test_a_read_only_sweeps_folder(project):
    (project.parent / "sweeps").mkdir(mode=0o555)
    study = write(project / "s.yaml", GOOD)
    try:
        refused(project.parent.parent, "sweep", str(study), fragments=("is read-only", str(project.parent / "sweeps")))
        (project.parent / "sweeps").chmod(0o755)
        store = project.parent / "sweeps" / "mlflow.db"
        write(store, b"").chmod(0o444)
        refused(project.parent.parent, "sweep", str(study), fragments=("is read-only", str(store)))
    finally:
        (project.parent / "sweeps").chmod(0o755)


def test_check_writable_refuses_what_it_cannot_create(tmp_path):
    write(tmp_path / "blocker", "a file")
    with pytest.raises(StoreAddressError, match="is a file, not a folder"):
        check_writable(f"sqlite:///{tmp_path}/blocker/sweeps/m.db")
    (tmp_path / "m.db").mkdir()
    with pytest.raises(StoreAddressError, match="is not a file"):
        check_writable(f"sqlite:///{tmp_path}/m.db")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_address_fails_in_seconds(project):
    study = write(project / "s.yaml", GOOD)
    started = time.perf_counter()
    refused(
        project.parent.parent,
        "sweep",
        str(study),
        "--address",
        f"127.0.0.1:{_free_port()}",
        fragments=("cannot reach a Ray cluster", "ray start --head"),
    )
    assert time.perf_counter() - started < 15


def test_check_address_is_bounded_by_its_timeout():
    assert parse_address("ray://head.example:10001") == ("head.example", 10001)
    assert parse_address("[::1]:6379") == ("::1", 6379)
    assert parse_address("auto") is None
    # a listener whose backlog is full drops new connections' SYNs: a peer that never answers
    with socket.socket() as server, socket.socket() as held:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port = server.getsockname()[1]
        held.connect(("127.0.0.1", port))  # fills the backlog (never accepted)
        started = time.perf_counter()
        with pytest.raises(CheckError, match="no answer"):
            check_address(f"127.0.0.1:{port}", timeout=0.5)
        assert time.perf_counter() - started < 3
    with socket.socket() as server:  # something listening: accepted
        server.bind(("127.0.0.1", 0))
        server.listen()
        check_address(f"127.0.0.1:{server.getsockname()[1]}")


@pytest.mark.parametrize("command", ["sweep", "status", "report"])
def test_a_tracking_server_that_does_not_answer(project, command):
    write(project / "s.yaml", GOOD)
    url = f"http://127.0.0.1:{_free_port()}"
    started = time.perf_counter()
    refused(
        project.parent.parent,
        command,
        str(project / "s.yaml"),
        "--tracking-uri",
        url,
        fragments=(f"tracking server {url}", "nothing answers"),
    )
    assert time.perf_counter() - started < 15  # MLflow's own client retries for minutes


def test_check_server():
    check_server("sqlite:////nowhere/m.db")  # not a server: nothing to probe
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        check_server(f"http://127.0.0.1:{server.getsockname()[1]}/prefix")


def test_ui_refuses_a_server_uri(project):
    refused(project.parent.parent, "ui", "--tracking-uri", "http://127.0.0.1:5000", fragments=("open it in a browser",))


# ----------------------------------------------------------------------------- where the store lives


def test_the_store_sits_beside_the_project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert project_root(tmp_path / "p" / "studies" / "x.yaml") == tmp_path / "p"
    assert project_root("studies/x.yaml") == tmp_path  # relative: from the current folder
    assert project_root(tmp_path / "p" / "x.yaml") == tmp_path  # not in studies/: the current folder
    assert project_root(None) == tmp_path
    assert default_store(tmp_path / "p" / "studies" / "x.yaml") == tmp_path / "p" / "sweeps" / "mlflow.db"
    assert default_storage(tmp_path / "p" / "studies" / "x.yaml", "x") == f"sqlite:///{tmp_path}/p/sweeps/x/optuna.db"


def test_every_folder_reaches_the_same_store(project, tmp_path, monkeypatch):
    from vaebench.record.writer import Record

    study = write(project / "tiny.yaml", GOOD)
    store = project.parent / "sweeps" / "mlflow.db"
    for cwd in (tmp_path / "elsewhere", project, project.parent):
        monkeypatch.chdir(cwd)
        result, message = invoke("validate", str(study))
        assert result.exit_code == 0 and f"store: sqlite:///{store} (not created yet)" in message, message
    # a real store beside the project: status finds it from anywhere, by the study file
    Record(f"sqlite:///{store}", "tiny").start_study("d", GOOD, {})
    monkeypatch.chdir(tmp_path / "elsewhere")
    result, message = invoke("status", str(study))
    assert result.exit_code == 0, result.output
    assert f"store: sqlite:///{store}" in message and "tiny partial (0 of 4)" in message
    monkeypatch.chdir(project.parent)  # by name, from the project folder (studies/tiny.yaml)
    result, message = invoke("status", "tiny")
    assert result.exit_code == 0 and f"store: sqlite:///{store}" in message, message
    result, message = invoke("ui", "--dry-run")
    assert result.exit_code == 0 and f"--backend-store-uri sqlite:///{store}" in message, message


@pytest.mark.parametrize("args", [["ui"], ["status", "tiny"], ["report", "tiny"], ["ui", "studies/tiny.yaml"]])
def test_readers_refuse_a_missing_store(project, args, monkeypatch):
    monkeypatch.chdir(project.parent)
    write(project / "tiny.yaml", GOOD)
    msg = refused(project.parent.parent, *args, fragments=("no tracking store at", "the file does not exist"))
    assert f"sqlite:///{project.parent}/sweeps/mlflow.db" in msg


# ----------------------------------------------------------------------------- report folder


@pytest.mark.parametrize("name", ["/tmp/abs", "../escape", "a/b", "..", ".hidden", "x" * 300, "a\\b"])
def test_report_folder_refuses_names_that_leave_reports(tmp_path, name):
    with pytest.raises(StoreAddressError, match="plain folder name"):
        report_folder(name, tmp_path)


def test_report_of_a_store_name_that_would_escape(tmp_path, monkeypatch):
    from vaebench.record.writer import Record

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/m.db"
    Record(uri, "../escape").start_study("d", "name: x\n", {})  # MLflow takes any experiment name
    Record(uri, str(tmp_path / "abs")).start_study("d", "name: x\n", {})
    for name in ("../escape", str(tmp_path / "abs")):
        refused(tmp_path, "report", name, "--tracking-uri", uri, fragments=("not a plain folder name", "--out"))
    assert report_folder("collapse", tmp_path) == tmp_path / "sweeps" / "collapse" / "report"


# ----------------------------------------------------------------------------- house style


def test_help_is_one_clean_line():
    proc = subprocess.run(
        [sys.executable, "-m", "vaebench.cli", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "100"},
    )
    assert proc.returncode == 0
    assert "Sweeps and ablations of VAEs: study YAML -> Ray -> MLflow -> reports." in proc.stdout
    for outside in (".md", "DESIGN", "REFERENCE", "/work", "shared"):
        assert outside not in proc.stdout


def test_one_fail_and_the_reproduce_command_in_cli():
    import vaebench.cli
    import vaebench.console
    import vaebench.report.command
    import vaebench.reproduce

    assert vaebench.report.command.fail is vaebench.console.fail is vaebench.cli.fail
    assert not hasattr(vaebench.reproduce, "reproduce") and hasattr(vaebench.cli, "reproduce")
    names = [c.name or c.callback.__name__ for c in app.registered_commands]
    assert sorted(names) == ["docs", "report", "reproduce", "status", "sweep", "ui", "validate"]


def test_check_writable_writes_nothing(tmp_path):
    check_writable(f"sqlite:///{tmp_path}/a/b/c/m.db")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.integration
def test_a_sweep_from_another_folder_resumes_the_same_store(tmp_path):
    """A real sweep (local Ray, SQLite MLflow) of /abs/proj/studies/x.yaml, run from the project
    and then from another folder: one store beside the project, the second run reruns nothing."""
    proj = tmp_path / "proj"
    (proj / "studies").mkdir(parents=True)
    study = write(
        proj / "studies" / "here.yaml",
        GOOD.replace("name: tiny", "name: here").replace("[0.5, 2.0]", "[1.0]").replace("seeds: [0, 1]", "seeds: [0]"),
    )
    (tmp_path / "other").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    store = proj / "sweeps" / "mlflow.db"
    outputs = []
    for cwd in (proj, tmp_path / "other"):
        proc = subprocess.run(
            [sys.executable, "-m", "vaebench.cli", "sweep", str(study)],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr
        assert f"store: sqlite:///{store}" in proc.stderr
        outputs.append(" ".join(proc.stderr.split()))
    assert store.is_file() and not (tmp_path / "other" / "sweeps").exists()
    assert "1 already done, not rerun" in outputs[1]
