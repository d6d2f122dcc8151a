"""PackedExecutor on a real Ray (local, started here) and sweeps of packed trials into a real
SQLite MLflow store, read back through MLflow's API. Marked integration: Ray takes seconds to start."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import mlflow
import pytest

from vaebench.core.pack import PackTrainer
from vaebench.record.vocab import PACK_TAG
from vaebench.study.config import TrialConfig
from vaebench.study.spec import expand, load_study
from vaebench.sweep.driver import SweepOptions, run_sweep
from vaebench.sweep.executors import Job, PackedExecutor, connect_ray

pytestmark = pytest.mark.integration


def config(seed: int, epochs: int = 3, **train) -> dict:
    return TrialConfig.model_validate(
        {
            "data": {"kind": "digits"},
            "model": {"latent_dim": 2, "hidden": [16], "likelihood": "gaussian", "sigma": 0.3},
            "train": {"epochs": epochs, "batch_size": 128, "optimizer": "sgd", "lr": 1e-3, **train},
            "metrics": {"iw_samples": 4},
            "seed": seed,
        }
    ).model_dump(mode="json")


def drain(ex: PackedExecutor, until, timeout: float = 240) -> list:
    events, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        events += ex.poll(1.0)
        if until(events):
            return events
    raise TimeoutError(f"executor events so far: {[(e.key, e.kind) for e in events]}")


def test_a_dead_pack_worker_is_rerun_with_its_live_members():
    import ray

    connect_ray(None, 1, 0)
    try:
        ex = PackedExecutor(workers=1, cpus_per_trial=1, gpus_per_trial=0, pack="auto")
        jobs = [Job(f"k{i}", config(i, epochs=30), f"trial {i}") for i in range(3)]
        ex.submit(jobs)
        assert ex.capacity() == 0  # its one slot is taken
        events = drain(ex, lambda evs: sum(e.kind == "epoch" for e in evs) >= 3)
        starts = [e for e in events if e.kind == "start"]
        assert {e.key for e in starts} == {"k0", "k1", "k2"} and {e.tags[PACK_TAG] for e in starts} == {"p1/3"}
        ex.cancel(["k1"])  # pruned: masked, no more events
        pid = starts[0].msg["pid"]
        os.kill(pid, signal.SIGKILL)  # the pack's worker dies mid-training
        events = drain(ex, lambda evs: sum(e.kind == "end" for e in evs) == 2)
        assert not [e for e in events if e.key == "k1"]
        assert sorted(e.key for e in events if e.kind == "restart") == ["k0", "k2"]
        restarted = [e for e in events if e.kind == "start"]
        assert {e.key for e in restarted} == {"k0", "k2"} and {e.tags[PACK_TAG] for e in restarted} == {"p2/2"}
        assert restarted[0].msg["pid"] != pid
        ends = {e.key: e.msg for e in events if e.kind == "end"}
        assert {k: m["state"] for k, m in ends.items()} == {"k0": "completed", "k2": "completed"}
        epochs = [e.msg["epoch"] for e in events if e.kind == "epoch" and e.key == "k0"]
        assert epochs[-30:] == list(range(1, 31))  # the rerun starts from scratch
        ex.close()
    finally:
        ray.shutdown()


def test_a_slot_runs_its_packs_in_one_worker_and_a_pack_owes_nothing_to_the_last():
    import ray

    def metrics(events: list, keys: list[str]) -> dict:
        return {
            (e.key, e.msg["epoch"]): {
                k: v for k, v in e.msg["metrics"].items() if k not in ("train/epoch_seconds", "train/member_seconds")
            }
            for e in events
            if e.kind == "epoch" and e.key in keys
        }

    connect_ray(None, 1, 0)
    try:
        jobs = [Job(f"k{i}", config(i, epochs=2, lr=10.0**-i), f"trial {i}") for i in range(4)]
        ex = PackedExecutor(workers=1, cpus_per_trial=1, gpus_per_trial=0, pack=2)
        ex.submit(jobs)  # two packs of two, one after the other on the one slot
        events = drain(ex, lambda evs: sum(e.kind == "end" for e in evs) == 4)
        starts = {e.key: e for e in events if e.kind == "start"}
        assert {e.tags[PACK_TAG] for e in starts.values()} == {"p1/2", "p2/2"}
        assert len({e.msg["pid"] for e in starts.values()}) == 1  # one worker process ran both
        ex.close()  # frees the slot its idle worker held
        fresh = PackedExecutor(workers=1, cpus_per_trial=1, gpus_per_trial=0, pack=2)
        second = [j for j in jobs if starts[j.key].tags[PACK_TAG] == "p2/2"]
        fresh.submit(second)
        alone = drain(fresh, lambda evs: sum(e.kind == "end" for e in evs) == 2)
        keys = [j.key for j in second]
        assert {e.msg["pid"] for e in alone if e.kind == "start"} != {starts[keys[0]].msg["pid"]}
        assert metrics(events, keys) == metrics(alone, keys)  # bit for bit, after another pack or not
        fresh.close()
    finally:
        ray.shutdown()


STUDY = """\
name: packed
data: {kind: digits}
model: {kind: mlp, latent_dim: 2, hidden: [16], likelihood: gaussian, sigma: 0.3}
train: {epochs: 3, batch_size: 128, optimizer: sgd}
metrics: {iw_samples: 4}
resources: {cpus_per_trial: 1, pack: auto}
space:
  objective.beta: [0.5, 2.0]
  train.lr: [1.0e-3, 1.0e+4]     # 1e4: the loss becomes NaN -> diverged; its pack mates go on
seeds: [0, 1]
"""


def test_a_grid_runs_the_packs_validate_shows(tmp_path, monkeypatch):
    """A grid's packs are planned over the whole grid (two packs' worth per free slot), so the
    sweep runs the plan `vaebench validate` prints, not the accident of which trials came first."""
    from collections import Counter

    from vaebench.core.pack import plan_packs

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    text = (
        STUDY.replace("name: packed", "name: lookahead")
        .replace("resources: {cpus_per_trial: 1, pack: auto}", "resources: {cpus_per_trial: 1, pack: 4}")
        .replace("model: {kind: mlp, latent_dim: 2,", "model: {kind: mlp,")
        .replace("  objective.beta: [0.5, 2.0]", "  model.latent_dim: [2, 3]\n  objective.beta: [0.5, 2.0, 4.0]")
        .replace("train.lr: [1.0e-3, 1.0e+4]     # 1e4: the loss becomes NaN -> diverged; its pack mates go on", "")
    )
    path = tmp_path / "lookahead.yaml"
    path.write_text(text)
    study = load_study(path)
    configs = [s.config for s in expand(study)]  # two shapes (latent 2 and 3), 6 trials each
    planned = sorted(map(len, plan_packs(configs, 4, slots=2)))
    assert planned == [3, 3, 3, 3]  # one slot's worth at a time would give 3, 3, 2 then 4
    summary = run_sweep(study, text, SweepOptions(f"sqlite:///{tmp_path}/m.db", workers=2))
    assert summary.exit_code == 0
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/m.db")
    runs = mlflow.search_runs(
        experiment_names=["lookahead"], output_format="list", filter_string="tags.`vaebench.role` = 'trial'"
    )
    ran = sorted(Counter(r.data.tags[PACK_TAG] for r in runs).values())
    assert len(runs) == len(configs) and ran == planned, (ran, planned)


def test_packed_sweep_records_each_member_as_its_own_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    path = Path(tmp_path / "packed.yaml")
    path.write_text(STUDY)
    study = load_study(path)
    uri = f"sqlite:///{tmp_path}/m.db"
    summary = run_sweep(study, STUDY, SweepOptions(uri, workers=2))
    assert summary.exit_code == 0
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(
        experiment_names=["packed"], output_format="list", filter_string="tags.`vaebench.role` = 'trial'"
    )
    specs = {s.config_hash: s for s in expand(study)}
    assert len(runs) == 8 and {r.data.tags["vaebench.config_hash"] for r in runs} == set(specs)
    for r in runs:
        spec = specs[r.data.tags["vaebench.config_hash"]]
        assert r.data.tags[PACK_TAG].startswith("p") and "/" in r.data.tags[PACK_TAG]
        expected = "diverged" if spec.point["train.lr"] > 1 else "completed"
        assert r.data.tags["vaebench.trial_state"] == expected and r.info.status == "FINISHED"
        if expected == "completed":
            # a member's numbers never depend on its pack mates (in packs of two or more: torch runs a
            # batch of one matrix product through another kernel): the record equals the trial packed
            # with any other
            msgs = []
            other = next(s for s in specs.values() if s is not spec).config.model_dump(mode="json")
            pt = PackTrainer([spec.config.model_dump(mode="json"), other], threads=1)
            while not pt.done:
                msgs += pt.step()
            last = [m for m in msgs if m["kind"] == "epoch" and m["member"] == 0][-1]["metrics"]
            assert r.data.metrics["val/elbo"] == last["val/elbo"]
            assert r.data.metrics["train/loss"] == last["train/loss"]
            arts = {a.path for a in mlflow.MlflowClient(uri).list_artifacts(r.info.run_id)}
            assert "checkpoint.pt" in arts and "reconstructions.png" in arts


def test_sigkill_of_the_driver_mid_pack_then_resume(ray_cluster, tmp_path, monkeypatch):
    """SIGKILL of the driver while packs train, then the same command: every trial recorded once, completed,
    nothing left RUNNING, each a member of a pack (tagged) with its full history."""
    import subprocess
    import sys

    from mlflow import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    study = tmp_path / "midpack.yaml"
    study.write_text(
        STUDY.replace("name: packed", "name: midpack")
        .replace("epochs: 3", "epochs: 40")
        .replace(
            "train.lr: [1.0e-3, 1.0e+4]     # 1e4: the loss becomes NaN -> diverged; its pack mates go on",
            "train.lr: [1.0e-3, 2.0e-3]",
        )
    )
    uri = f"sqlite:///{tmp_path}/m.db"
    args = [
        sys.executable,
        "-m",
        "vaebench.cli",
        "sweep",
        str(study),
        "--address",
        ray_cluster.address,
        "--tracking-uri",
        uri,
    ]
    # metrics flushed every epoch, so that the kill lands early in the packs (epoch 2 of 40), never
    # between the ends of one pack's members (a member left alone would rerun solo, untagged)
    proc = subprocess.Popen(
        args,
        env={**ray_cluster.env, "VAEBENCH_FLUSH_SECONDS": "0"},
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)

    def trials():
        return mlflow.search_runs(
            experiment_names=["midpack"], output_format="list", filter_string="tags.`vaebench.role` = 'trial'"
        )

    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        try:
            if any(len(client.get_metric_history(r.info.run_id, "val/elbo")) >= 2 for r in trials()):
                break
        except Exception:  # noqa: BLE001, S110  (the experiment does not exist yet)
            pass
        time.sleep(0.5)
    proc.kill()  # SIGKILL: no cleanup at all
    proc.wait()
    assert any(r.info.status == "RUNNING" for r in trials())  # packs in flight, left behind by the dead driver
    again = subprocess.run(
        args, env=ray_cluster.env, cwd=tmp_path, capture_output=True, text=True, timeout=400, check=False
    )
    assert again.returncode == 0, again.stderr
    final = trials()
    hashes = [r.data.tags["vaebench.config_hash"] for r in final]
    assert len(hashes) == len(set(hashes)) == 8  # each trial exactly once
    assert {r.data.tags["vaebench.trial_state"] for r in final} == {"completed"}
    assert not any(r.info.status == "RUNNING" for r in final)
    for r in final:
        assert r.data.tags[PACK_TAG]
        assert [m.step for m in client.get_metric_history(r.info.run_id, "val/elbo")] == list(range(1, 41))
