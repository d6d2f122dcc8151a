"""Sweeps end to end, with real parts: the CLI in a subprocess, a real Ray cluster (two nodes
on 127.0.0.1, or a local Ray started by vaebench), a real MLflow store (SQLite or an
`mlflow server`), a real Optuna storage; records are read back through MLflow's own API.
The integration tier (slow); the driver's logic is tested fast in test_driver.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import mlflow
import optuna
import pytest
from conftest import free_port, http_ok, stop, wait_for
from mlflow import MlflowClient
from mlflow.entities import ViewType

from vaebench.study.spec import expand, load_study

TINY = """\
name: {name}
description: a tiny grid for the tests
data: {{kind: digits, binarize: true}}
model: {{kind: mlp, latent_dim: 3, hidden: [16]}}
train: {{epochs: {epochs}, batch_size: 128}}
metrics: {{iw_samples: 4}}
space:
  objective.beta: [0.5, 2.0]
  objective.free_bits: [0.0, 0.5]
seeds: [0, 1]
"""

VAL = [
    "val/elbo",
    "val/recon",
    "val/kl",
    "val/active_units",
    "val/mi",
    "val/iw_nll",
    "val/collapsed_dims",
    "val/collapsed_fraction",
]
TRAIN = ["train/loss", "train/recon", "train/kl", "train/kl_weight"]


def write(tmp: Path, text: str, name: str = "study.yaml") -> Path:
    p = tmp / name
    p.write_text(text)
    return p


def vaebench(
    *args: str, env: dict | None = None, cwd: Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vaebench.cli", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def spawn(*args: str, env: dict, cwd: Path | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "vaebench.cli", *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


pytestmark = pytest.mark.integration


def children(uri: str, name: str, view=ViewType.ACTIVE_ONLY):
    runs = mlflow.search_runs(
        experiment_names=[name],
        output_format="list",
        run_view_type=view,
        filter_string="tags.`vaebench.role` = 'trial'",
        max_results=5000,
    )
    return runs


@pytest.fixture(autouse=True)
def _isolate_tracking(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield
    mlflow.set_tracking_uri(None)


# --------------------------------------------------------------------------- grid record


@pytest.fixture(scope="module")
def grid_record(ray_cluster, tmp_path_factory):
    """The tiny grid run once through the CLI on the two-node cluster into a SQLite store."""
    tmp = tmp_path_factory.mktemp("grid")
    study = write(tmp, TINY.format(name="tiny", epochs=2))
    uri = f"sqlite:///{tmp}/mlflow.db"
    proc = vaebench(
        "sweep", str(study), "--address", ray_cluster.address, "--tracking-uri", uri, env=ray_cluster.env, cwd=tmp
    )
    return tmp, study, uri, proc


def test_grid_sweep_record(grid_record):
    tmp, study_path, uri, proc = grid_record
    assert proc.returncode == 0, proc.stdout + proc.stderr
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    runs = mlflow.search_runs(experiment_names=["tiny"], output_format="list")
    parents = [r for r in runs if r.data.tags.get("vaebench.role") == "study"]
    kids = [r for r in runs if r.data.tags.get("vaebench.role") == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    study = load_study(study_path)
    specs = expand(study)
    assert len(kids) == len(specs) == 8  # 4 points x 2 seeds
    assert {r.data.tags["mlflow.parentRunId"] for r in kids} == {parents[0].info.run_id}
    assert {r.data.tags["vaebench.trial_state"] for r in kids} == {"completed"}
    assert {r.info.status for r in kids} == {"FINISHED"}
    # the config hash of every (point, seed) exactly once
    assert sorted(r.data.tags["vaebench.config_hash"] for r in kids) == sorted(s.config_hash for s in specs)
    by_hash = {s.config_hash: s for s in specs}
    for r in kids:
        spec = by_hash[r.data.tags["vaebench.config_hash"]]
        # params: the config flattened with dotted names (the settings of its model kind), plus the seed
        expected = {
            k: (json.dumps(v) if isinstance(v, (list, dict)) else str(v)) for k, v in spec.config.params().items()
        }
        expected["seed"] = str(spec.seed)
        assert r.data.params == expected
        assert json.loads(r.data.tags["vaebench.point"]) == spec.point
        # every metric at every epoch, step = epoch
        for key in VAL + TRAIN + [f"val/kl_dim/{j:02d}" for j in range(3)]:
            history = client.get_metric_history(r.info.run_id, key)
            assert [m.step for m in history] == [1, 2], key
        artifacts = {a.path for a in client.list_artifacts(r.info.run_id)}
        assert {"checkpoint.pt", "reconstructions.png"} <= artifacts
        final = r.data.metrics
        assert final["val/elbo"] == pytest.approx(-(final["val/recon"] + final["val/kl"]))


def test_rerun_resumes_without_duplicates(grid_record, ray_cluster):
    tmp, study, uri, _ = grid_record
    mlflow.set_tracking_uri(uri)
    before = {r.info.run_id for r in children(uri, "tiny")}
    proc = vaebench(
        "sweep", str(study), "--address", ray_cluster.address, "--tracking-uri", uri, env=ray_cluster.env, cwd=tmp
    )
    assert proc.returncode == 0, proc.stderr
    assert "8 already done" in proc.stderr
    mlflow.set_tracking_uri(uri)
    assert {r.info.run_id for r in children(uri, "tiny")} == before
    status = vaebench("status", "tiny", "--tracking-uri", uri, cwd=tmp)
    assert status.returncode == 0 and "completed 8" in status.stdout


def test_remote_tracking_server_records_the_same(grid_record, ray_cluster, mlflow_server):
    tmp, study, uri, _ = grid_record
    proc = vaebench(
        "sweep",
        str(study),
        "--address",
        ray_cluster.address,
        "--tracking-uri",
        mlflow_server,
        env=ray_cluster.env,
        cwd=tmp,
    )
    assert proc.returncode == 0, proc.stderr
    mlflow.set_tracking_uri(uri)
    local = {r.data.tags["vaebench.config_hash"]: r for r in children(uri, "tiny")}
    mlflow.set_tracking_uri(mlflow_server)
    remote = {r.data.tags["vaebench.config_hash"]: r for r in children(mlflow_server, "tiny")}
    assert local.keys() == remote.keys()
    for h, r in remote.items():
        # same configs, same seeds, on CPU: the very same numbers (all but the wall-clock time)
        timing = ("train/epoch_seconds", "train/member_seconds")
        assert {k: v for k, v in r.data.metrics.items() if k not in timing} == {
            k: v for k, v in local[h].data.metrics.items() if k not in timing
        }
        assert r.data.params == local[h].data.params
    client = MlflowClient(mlflow_server)
    some = next(iter(remote.values()))
    assert "checkpoint.pt" in {a.path for a in client.list_artifacts(some.info.run_id)}


def test_default_local_ray_and_store(tmp_path):
    """No --address, no --tracking-uri: vaebench starts its own Ray and writes sweeps/mlflow.db."""
    study = write(
        tmp_path,
        TINY.format(name="local", epochs=1)
        .replace("[0.5, 2.0]", "[1.0]")
        .replace("[0.0, 0.5]", "[0.0]")
        .replace("seeds: [0, 1]", "seeds: [0]"),
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    proc = vaebench("sweep", str(study), env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "sweeps" / "mlflow.db").is_file()
    uri = f"sqlite:///{tmp_path}/sweeps/mlflow.db"
    mlflow.set_tracking_uri(uri)
    (run,) = children(uri, "local")
    assert run.data.tags["vaebench.trial_state"] == "completed"
    assert run.info.artifact_uri.startswith((tmp_path / "sweeps" / "artifacts").as_uri())


# --------------------------------------------------------------------------- faults


def test_failed_and_diverged_trials(ray_cluster, tmp_path):
    text = """\
name: faults
data: {kind: digits}
model: {kind: mlp, latent_dim: 2, hidden: [16], likelihood: gaussian, sigma: 0.3}
train: {epochs: 3, optimizer: sgd}
space:
  model.kind: [mlp, conv]        # conv: too many stride-2 layers for 8x8 images -> raises in the trial
  train.lr: [1.0e-3, 1.0e+4]     # 1e4: the loss becomes NaN -> diverged
seeds: [0]
"""
    uri = f"sqlite:///{tmp_path}/m.db"
    proc = vaebench(
        "sweep",
        str(write(tmp_path, text)),
        "--address",
        ray_cluster.address,
        "--tracking-uri",
        uri,
        env=ray_cluster.env,
        cwd=tmp_path,
    )
    assert proc.returncode == 1, proc.stderr  # some trial failed
    assert "failed" in proc.stderr and "stride-2 layers" in proc.stderr
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    runs = {
        (
            json.loads(r.data.tags["vaebench.point"])["model.kind"],
            json.loads(r.data.tags["vaebench.point"])["train.lr"],
        ): r
        for r in children(uri, "faults")
    }
    assert len(runs) == 4
    assert runs[("mlp", 1e-3)].data.tags["vaebench.trial_state"] == "completed"
    div = runs[("mlp", 1e4)]
    assert div.data.tags["vaebench.trial_state"] == "diverged" and div.info.status == "FINISHED"
    assert 1 <= int(div.data.tags["vaebench.diverged_epoch"]) <= 3
    for lr in (1e-3, 1e4):
        failed = runs[("conv", lr)]
        assert failed.data.tags["vaebench.trial_state"] == "failed" and failed.info.status == "FAILED"
        tb = client.download_artifacts(failed.info.run_id, "traceback.txt", str(tmp_path))
        assert "ValueError" in Path(tb).read_text()


def test_sigkill_driver_then_resume(ray_cluster, tmp_path):
    study = write(tmp_path, TINY.format(name="killed", epochs=6))
    uri = f"sqlite:///{tmp_path}/m.db"
    # --pack off: trials end one by one (a pack's members end together; tests/test_pack_executor.py kills mid-pack)
    args = ("sweep", str(study), "--address", ray_cluster.address, "--tracking-uri", uri, "--pack", "off")
    proc = spawn(*args, env=ray_cluster.env, cwd=tmp_path)
    mlflow.set_tracking_uri(uri)

    def some_completed() -> bool:
        try:
            return sum(r.data.tags.get("vaebench.trial_state") == "completed" for r in children(uri, "killed")) >= 2
        except Exception:  # the experiment does not exist yet
            return False

    wait_for(some_completed, what="two completed trials")
    proc.kill()  # SIGKILL: no cleanup at all
    proc.wait()
    first = children(uri, "killed")
    done_before = {r.info.run_id for r in first if r.data.tags["vaebench.trial_state"] == "completed"}
    assert any(r.info.status == "RUNNING" for r in first)  # left behind by the dead driver

    again = vaebench(*args, env=ray_cluster.env, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    final = children(uri, "killed")
    hashes = [r.data.tags["vaebench.config_hash"] for r in final]
    assert len(hashes) == len(set(hashes)) == 8  # each trial exactly once
    assert {r.data.tags["vaebench.trial_state"] for r in final} == {"completed"}
    assert not any(r.info.status == "RUNNING" for r in final)
    assert done_before <= {r.info.run_id for r in final}  # completed trials were not rerun
    for r in final:  # a rerun trial's history is its own: one value per epoch
        assert [m.step for m in MlflowClient(uri).get_metric_history(r.info.run_id, "val/elbo")] == list(range(1, 7))


def test_sigterm_kills_in_flight_trials_cleanly(ray_cluster, tmp_path):
    study = write(tmp_path, TINY.format(name="term", epochs=500))
    uri = f"sqlite:///{tmp_path}/m.db"
    proc = spawn(
        "sweep", str(study), "--address", ray_cluster.address, "--tracking-uri", uri, env=ray_cluster.env, cwd=tmp_path
    )
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)

    def training() -> bool:
        try:
            return any(client.get_metric_history(r.info.run_id, "val/elbo") for r in children(uri, "term"))
        except Exception:
            return False

    # 500 epochs: a pack of these tiny MLPs trains 30 in a few seconds on an idle machine, and the
    # signal must arrive while trials are still in flight (at 30 epochs CI once saw every trial done)
    wait_for(training, what="a trial with a logged epoch")
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    runs = children(uri, "term")
    assert runs and not any(r.info.status == "RUNNING" for r in runs)
    killed = [r for r in runs if r.data.tags["vaebench.trial_state"] == "killed"]
    states = [(r.data.tags["vaebench.trial_state"], r.info.status) for r in runs]
    assert killed and all(r.info.status == "KILLED" for r in killed), states
    parent = mlflow.search_runs(
        experiment_names=["term"], output_format="list", filter_string="tags.`vaebench.role` = 'study'"
    )[0]
    assert parent.info.status == "KILLED"


def test_dead_worker_is_retried(ray_cluster, tmp_path):
    study = write(tmp_path, TINY.format(name="crash", epochs=40).replace("seeds: [0, 1]", "seeds: [0]"))
    uri = f"sqlite:///{tmp_path}/m.db"
    env = {**ray_cluster.env, "VAEBENCH_FLUSH_SECONDS": "0"}  # every epoch visible at once: the kill lands mid-training
    # --pack off: one Ray task per trial (RayExecutor); tests/test_pack_executor.py kills a pack's worker
    proc = spawn(
        "sweep",
        str(study),
        "--address",
        ray_cluster.address,
        "--tracking-uri",
        uri,
        "--pack",
        "off",
        env=env,
        cwd=tmp_path,
    )
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    victim: dict[str, object] = {}

    def mid_training() -> bool:
        # a trial that has logged two epochs and is still running; its worker's process title
        # is "ray::vaebench:<study>:<run name>"
        try:
            runs = [r for r in children(uri, "crash") if r.info.status == "RUNNING"]
        except Exception:
            return False
        ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
        for r in runs:
            if len(client.get_metric_history(r.info.run_id, "val/elbo")) >= 2:
                pids = [
                    int(line.split()[0]) for line in ps.splitlines() if f"ray::vaebench:crash:{r.info.run_name}" in line
                ]
                if pids:
                    victim.update(name=r.info.run_name, pid=pids[0])
                    return True
        return False

    wait_for(mid_training, what="a trial two epochs into training")
    os.kill(victim["pid"], signal.SIGKILL)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out
    runs = children(uri, "crash")
    hashes = [r.data.tags["vaebench.config_hash"] for r in runs]
    assert len(hashes) == len(set(hashes)) == 4
    assert {r.data.tags["vaebench.trial_state"] for r in runs} == {"completed"}
    (rerun,) = [r for r in runs if r.info.run_name == victim["name"]]
    assert rerun.data.tags["vaebench.attempt"] == "1", out  # rerun from scratch in a fresh run
    assert [m.step for m in client.get_metric_history(rerun.info.run_id, "val/elbo")] == list(range(1, 41))
    deleted = children(uri, "crash", ViewType.DELETED_ONLY)  # its partial first attempt, soft-deleted
    assert [r.info.run_name for r in deleted] == [victim["name"]] and deleted[0].info.status == "KILLED"


def test_gpu_request_without_gpus_fails_at_once(ray_cluster, tmp_path):
    study = write(tmp_path, TINY.format(name="gpu", epochs=1) + "resources: {gpus_per_trial: 1}\n")
    proc = vaebench(
        "sweep",
        str(study),
        "--address",
        ray_cluster.address,
        "--tracking-uri",
        f"sqlite:///{tmp_path}/m.db",
        env=ray_cluster.env,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "gpus_per_trial" in proc.stderr and "GPU" in proc.stderr
    assert not (tmp_path / "m.db").exists()


# --------------------------------------------------------------------------- search


SEARCH = """\
name: {name}
data: {{kind: digits, binarize: true}}
model: {{kind: mlp, latent_dim: 3, hidden: [16]}}
train: {{epochs: {epochs}, batch_size: 128}}
metrics: {{iw_samples: 4}}
space:
{space}
seeds: [0]
search: {search}
"""


def optuna_trials(storage: str, uri: str, name: str):
    mlflow.set_tracking_uri(uri)
    parent = mlflow.search_runs(
        experiment_names=[name], output_format="list", filter_string="tags.`vaebench.role` = 'study'"
    )[0]
    study = optuna.load_study(study_name=parent.data.tags["vaebench.optuna_study"], storage=storage)
    return study, {int(r.data.tags["vaebench.optuna_trial"]): r for r in children(uri, name)}


def test_tpe_runs_its_budget(ray_cluster, tmp_path):
    text = SEARCH.format(
        name="tpe",
        epochs=2,
        search="{kind: tpe, budget: 5, objectives: {val/elbo: max}}",
        space="  train.lr: {low: 1.0e-4, high: 1.0e-2, log: true}\n  model.latent_dim: {low: 2, high: 6}\n"
        "  objective.anneal: [none, {kind: cyclical, cycles: 2, ratio: 0.5}]",
    )
    uri, storage = f"sqlite:///{tmp_path}/m.db", f"sqlite:///{tmp_path}/optuna.db"
    proc = vaebench(
        "sweep",
        str(write(tmp_path, text)),
        "--address",
        ray_cluster.address,
        "--tracking-uri",
        uri,
        "--storage",
        storage,
        env=ray_cluster.env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    study, runs = optuna_trials(storage, uri, "tpe")
    assert len(study.trials) == 5 and len(runs) == 5
    for t in study.trials:
        assert t.state == optuna.trial.TrialState.COMPLETE
        run = runs[t.number]
        assert t.value == pytest.approx(run.data.metrics["val/elbo"])
        assert float(run.data.params["train.lr"]) == pytest.approx(t.params["train.lr"])
        assert int(run.data.params["model.latent_dim"]) == t.params["model.latent_dim"]


def test_median_pruner_prunes_bad_trials(ray_cluster, tmp_path):
    # one lr level cannot learn (1e-7): its ELBO trails the median at every epoch
    text = SEARCH.format(
        name="prune",
        epochs=6,
        search="{kind: random, budget: 12, pruner: median}",
        space="  train.lr: [1.0e-2, 5.0e-3, 2.0e-3, 1.0e-7]\n  objective.beta: [0.5, 1.0]",
    )
    uri, storage = f"sqlite:///{tmp_path}/m.db", f"sqlite:///{tmp_path}/optuna.db"
    proc = vaebench(
        "sweep",
        str(write(tmp_path, text)),
        "--address",
        ray_cluster.address,
        "--tracking-uri",
        uri,
        "--storage",
        storage,
        "--workers",
        "1",
        env=ray_cluster.env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    study, runs = optuna_trials(storage, uri, "prune")
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned, [(t.params, t.state) for t in study.trials]
    client = MlflowClient(uri)
    pruned_runs = [runs[t.number] for t in pruned if t.number in runs]  # a re-proposed point reuses its run
    assert pruned_runs
    for run in pruned_runs:
        assert run.data.tags["vaebench.trial_state"] == "pruned"
        assert len(client.get_metric_history(run.info.run_id, "val/elbo")) < 6  # stopped early
    # every point that cannot learn was pruned once it had run a few epochs
    bad = [r for r in runs.values() if float(r.data.params["train.lr"]) == 1e-7]
    assert bad and all(r.data.tags["vaebench.trial_state"] == "pruned" for r in bad)


def test_nsga2_records_both_objectives(ray_cluster, tmp_path):
    text = SEARCH.format(
        name="nsga",
        epochs=2,
        search="{kind: nsga2, budget: 4, objectives: {val/recon: min, val/kl: min}}",
        space="  objective.beta: {low: 0.1, high: 10.0, log: true}",
    )
    uri, storage = f"sqlite:///{tmp_path}/m.db", f"sqlite:///{tmp_path}/optuna.db"
    proc = vaebench(
        "sweep",
        str(write(tmp_path, text)),
        "--address",
        ray_cluster.address,
        "--tracking-uri",
        uri,
        "--storage",
        storage,
        env=ray_cluster.env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    study, runs = optuna_trials(storage, uri, "nsga")
    assert len(study.trials) == 4
    for t in study.trials:
        m = runs[t.number].data.metrics
        assert t.values == pytest.approx([m["val/recon"], m["val/kl"]])


# --------------------------------------------------------------------------- CLI options


def test_max_trials_then_resume_then_fresh(ray_cluster, tmp_path):
    study = write(
        tmp_path,
        TINY.format(name="opts", epochs=1).replace("[0.0, 0.5]", "[0.0]").replace("seeds: [0, 1]", "seeds: [0]"),
    )
    uri = f"sqlite:///{tmp_path}/m.db"
    base = ("sweep", str(study), "--address", ray_cluster.address, "--tracking-uri", uri)
    first = vaebench(*base, "--max-trials", "1", "--set", "train.batch_size=64", env=ray_cluster.env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    mlflow.set_tracking_uri(uri)
    (run,) = children(uri, "opts")
    assert run.data.params["train.batch_size"] == "64"  # --set reached the trial config
    second = vaebench(*base, "--set", "train.batch_size=64", env=ray_cluster.env, cwd=tmp_path)
    assert second.returncode == 0 and "1 already done" in second.stderr
    old = children(uri, "opts")
    assert len(old) == 2
    third = vaebench(*base, "--set", "train.batch_size=64", "--fresh", env=ray_cluster.env, cwd=tmp_path)
    assert third.returncode == 0, third.stderr
    parents = mlflow.search_runs(
        experiment_names=["opts"],
        output_format="list",
        filter_string="tags.`vaebench.role` = 'study'",
        order_by=["attributes.start_time ASC"],
    )
    assert len(parents) == 2
    assert (
        parents[0].data.tags.get("vaebench.superseded") == "true" and "vaebench.superseded" not in parents[1].data.tags
    )
    by_parent = {
        p.info.run_id: [r for r in children(uri, "opts") if r.data.tags["mlflow.parentRunId"] == p.info.run_id]
        for p in parents
    }
    assert [len(v) for v in by_parent.values()] == [2, 2]  # the old record is still readable
    assert {r.info.run_id for r in by_parent[parents[0].info.run_id]} == {r.info.run_id for r in old}


def test_ui_serves_the_store(tmp_path):
    from vaebench.record.writer import Record

    uri = f"sqlite:///{tmp_path}/m.db"
    Record(uri, "served").start_study("d", "name: served\n", {})  # ui refuses a store that does not exist
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "vaebench.cli", "ui", "--port", str(port), "--tracking-uri", uri],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(lambda: http_ok(f"http://127.0.0.1:{port}/health"), "vaebench ui", timeout=120)
        api = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get-by-name?experiment_name=served"
        wait_for(
            lambda: http_ok(api), "the store's experiment through the ui", timeout=60
        )  # first call opens the store
    finally:
        stop(proc)


LOCAL_RAY = r"""
import os, subprocess, sys
import ray
from vaebench.sweep.executors import connect_ray
connect_ray(None, 1, 0)
address = ray.get_runtime_context().gcs_address
env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
probe = f"import ray; ray.init(address={address!r}, logging_level='ERROR')"
stranger = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
print("MODE", os.environ.get("RAY_AUTH_MODE"), "STRANGER", stranger.returncode, flush=True)
ray.shutdown()
"""


def test_local_ray_requires_its_token(tmp_path):
    """The local Ray vaebench starts takes no client without its token (see executors.local_ray_auth)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    proc = subprocess.run(
        [sys.executable, "-c", LOCAL_RAY], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "MODE token STRANGER 1" in proc.stdout, proc.stdout


def test_server_lease_refuses_a_second_driver(mlflow_server):
    """With a tracking server the record's lock is a lease in an experiment tag."""
    from vaebench.record.writer import LockError, Record

    first, second = Record(mlflow_server, "leased"), Record(mlflow_server, "leased")
    assert first.lock() is None
    with pytest.raises(LockError, match=f"pid {os.getpid()}"):
        second.lock()
    first.unlock()
    assert second.lock() is None
    second.unlock()
