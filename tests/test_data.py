"""Tests of vaebench.data: digits, procedural dSprites, pPCA, IDX and npz files."""

from __future__ import annotations

import gzip
import math
import struct

import numpy as np
import pytest
import torch

from vaebench.data import DataError, load_data
from vaebench.data import dsprites as ds
from vaebench.data.digits import digit_images
from vaebench.data.files import binarize, read_idx, read_idx_images, read_npz_array
from vaebench.data.ppca import exact_gaussian, ppca_nll
from vaebench.study.config import DigitsData, DSpritesData, IdxData, NpzData, PPCAData

# ----------------------------------------------------------------------------- digits


def _sorted_rows(x: torch.Tensor) -> np.ndarray:
    a = x.flatten(1).numpy()
    return a[np.lexsort(a.T[::-1])]


def test_digits_shapes_range_and_split():
    d = load_data(DigitsData(), seed=0)
    assert d.train.dtype == d.val.dtype == torch.float32
    assert d.train.shape[1:] == d.val.shape[1:] == (1, 8, 8)
    assert d.train.shape[0] + d.val.shape[0] == 1797
    assert d.val.shape[0] == round(1797 * 0.2)
    assert d.train.min() >= 0 and d.train.max() == 1.0
    assert d.meta.shape == (1, 8, 8) and d.meta.value_range == (0.0, 1.0)
    assert not d.meta.binary and d.meta.name == "digits"
    # train and val partition all the images: none lost, none duplicated
    assert np.array_equal(_sorted_rows(torch.cat([d.train, d.val])), _sorted_rows(digit_images()))


def test_digits_read_from_the_file_equal_scikit_learns_loader(monkeypatch):
    from sklearn.datasets import load_digits

    from vaebench.data import digits

    assert digits._bundled_csv() is not None  # the fast path is the one taken here
    expected = torch.from_numpy((load_digits().data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8))
    assert torch.equal(digit_images(), expected)
    monkeypatch.setattr(digits, "_bundled_csv", lambda: None)  # the fallback: scikit-learn's loader
    assert torch.equal(digit_images(), expected)


def test_digits_deterministic_in_seed():
    a, b, c = (load_data(DigitsData(), seed=s) for s in (1, 1, 2))
    assert torch.equal(a.train, b.train) and torch.equal(a.val, b.val)
    assert not torch.equal(a.train, c.train)


def test_digits_binarize():
    d = load_data(DigitsData(binarize=True), seed=0)
    raw = load_data(DigitsData(), seed=0)
    assert d.meta.binary
    assert set(torch.unique(d.train).tolist()) == {0.0, 1.0}
    assert torch.equal(d.train, (raw.train > 0.5).float())


# --------------------------------------------------------------------------- dSprites


def test_full_factor_grid():
    f = ds.all_factors()
    assert f.shape == (737_280, 5) and f.dtype == np.int64
    key = (((f[:, 0] * 6 + f[:, 1]) * 40 + f[:, 2]) * 32 + f[:, 3]) * 32 + f[:, 4]  # mixed radix
    assert len(np.unique(key)) == 737_280  # all rows distinct
    assert tuple(f.max(axis=0) + 1) == ds.FACTOR_SIZES and f.min() == 0


def test_sample_factors_distinct_and_restricted():
    rng = np.random.default_rng(0)
    f = ds.sample_factors(5000, rng, shapes=["heart", "square"])
    assert f.shape == (5000, 5) and f.dtype == np.int64
    assert len(np.unique(f, axis=0)) == 5000
    assert set(f[:, 0].tolist()) == {0, 2}
    assert (f >= 0).all() and (f < np.array(ds.FACTOR_SIZES)).all()
    with pytest.raises(ValueError):
        ds.sample_factors(245_761, rng, shapes=["ellipse"])
    with pytest.raises(ValueError):
        ds.sample_factors(10, rng, shapes=["circle"])


def test_dsprites_loader_images_and_factors():
    cfg = DSpritesData(n_samples=600, val_fraction=0.25)
    d = load_data(cfg, seed=0)
    assert d.train.shape == (450, 1, 64, 64) and d.val.shape == (150, 1, 64, 64)
    assert d.train.dtype == torch.float32
    assert set(torch.unique(torch.cat([d.train, d.val])).tolist()) == {0.0, 1.0}
    m = d.meta
    assert m.binary and m.shape == (1, 64, 64) and m.factor_names == ds.FACTOR_NAMES
    assert m.train_factors.shape == (450, 5) and m.val_factors.shape == (150, 5)
    assert m.train_factors.dtype == torch.int64
    every = torch.cat([m.train_factors, m.val_factors])
    assert len(torch.unique(every, dim=0)) == 600  # train and val disjoint
    # render of a factor row equals the loader's image of that row
    for split, fac in ((d.train, m.train_factors), (d.val, m.val_factors)):
        for i in (0, 7, len(fac) - 1):
            img = ds.render(fac[i : i + 1].numpy())[0]
            assert torch.equal(split[i, 0], torch.from_numpy(img).float())
    again = load_data(cfg, seed=0)
    assert torch.equal(again.train, d.train) and torch.equal(again.meta.val_factors, m.val_factors)
    other = load_data(cfg, seed=1)
    assert not torch.equal(other.meta.train_factors, m.train_factors)


def test_render_deterministic_and_binary():
    f = ds.sample_factors(300, np.random.default_rng(5))
    a, b = ds.render(f), ds.render(f)
    assert a.shape == (300, 64, 64) and a.dtype == bool
    assert np.array_equal(a, b)
    # batch-independent: each image rendered alone is the same
    assert np.array_equal(ds.render(f[::-1])[::-1], a)
    assert all(np.array_equal(ds.render(f[i : i + 1])[0], a[i]) for i in (0, 150, 299))
    assert (a.reshape(300, -1).sum(1) > 0).all()  # never an empty image


def _grid(shape, scale, orient, px, py):
    return np.array(np.broadcast_arrays(shape, scale, orient, px, py)).T.reshape(-1, 5)


def test_area_grows_strictly_with_scale():
    for shape in range(3):
        for orient in (0, 7, 23):
            f = _grid(shape, np.arange(6), orient, 16, 16)
            area = ds.render(f).sum(axis=(1, 2))
            assert (np.diff(area) > 0).all(), (shape, orient, area)


def test_shapes_differ_at_same_scale():
    for scale in (0, 5):
        img = ds.render(_grid(np.arange(3), scale, 0, 16, 16))
        assert not np.array_equal(img[0], img[1])
        assert not np.array_equal(img[0], img[2])
        assert not np.array_equal(img[1], img[2])


def test_shapes_stay_inside_image_at_max_scale():
    px, py = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    for shape in range(3):
        for orient in (0, 3, 5, 10, 17, 31):
            img = ds.render(_grid(shape, 5, orient, px.ravel(), py.ravel()))
            area = img.sum(axis=(1, 2))
            # no pixels cut: area independent of position up to sub-pixel aliasing
            assert np.abs(area / np.median(area) - 1).max() < 0.15, (shape, orient)
            border = img[:, 0].any() or img[:, -1].any() or img[:, :, 0].any() or img[:, :, -1].any()
            assert not border
    # the extreme positions reach to within a pixel of the border: the free area is used
    ell = ds.render(np.array([[1, 5, 0, 0, 16], [1, 5, 0, 31, 16]]))  # long axis horizontal
    assert ell[0, :, 1].any() and ell[1, :, 62].any()


def test_position_factors_move_the_shape():
    img = ds.render(_grid(1, 2, 0, np.arange(32), 16))
    cols = [np.flatnonzero(i.any(axis=0)).mean() for i in img]
    assert (np.diff(cols) > 0).all()  # pos_x moves right
    img = ds.render(_grid(1, 2, 0, 16, np.arange(32)))
    rows = [np.flatnonzero(i.any(axis=1)).mean() for i in img]
    assert (np.diff(rows) > 0).all()  # pos_y moves down


def test_render_rejects_bad_factors():
    with pytest.raises(ValueError):
        ds.render(np.array([[3, 0, 0, 0, 0]]))
    with pytest.raises(ValueError):
        ds.render(np.zeros((2, 4), dtype=int))


def test_dsprites_10000_samples():
    d = load_data(DSpritesData(n_samples=10_000), seed=0)
    assert d.train.shape == (9000, 1, 64, 64) and d.val.shape == (1000, 1, 64, 64)
    assert d.meta.train_factors.shape == (9000, 5)


def test_dsprites_too_many_samples_is_data_error():
    with pytest.raises(DataError, match="n_samples"):
        load_data(DSpritesData(n_samples=300_000, shapes=["heart"]), seed=0)


# ------------------------------------------------------------------------------ pPCA


def test_ppca_exact_covariance_and_zero_mean():
    lam = [5.0, 2.0, 0.8, 0.3, 0.1]
    d = load_data(PPCAData(eigenvalues=lam, n_samples=5000, val_fraction=0.2), seed=0)
    assert d.train.shape == (4000, 5) and d.val.shape == (1000, 5)
    assert d.train.dtype == torch.float32
    assert d.meta.eigenvalues == tuple(lam) and d.meta.shape == (5,) and not d.meta.binary
    for x in (d.train.double(), d.val.double()):
        cov = x.T @ x / x.shape[0]
        assert torch.allclose(cov, torch.diag(torch.tensor(lam, dtype=torch.float64)), atol=1e-5)
        assert x.mean(0).abs().max() < 1e-6
    assert torch.equal(load_data(PPCAData(), seed=0).train, load_data(PPCAData(), seed=0).train)
    assert not torch.equal(load_data(PPCAData(), seed=0).train, load_data(PPCAData(), seed=1).train)


def test_ppca_keeps_given_order_and_needs_enough_samples():
    x = exact_gaussian(50, [0.5, 3.0, 1.0], np.random.default_rng(0))
    assert np.allclose(x.T @ x / 50, np.diag([0.5, 3.0, 1.0]), atol=1e-12)
    with pytest.raises(DataError):
        load_data(PPCAData(eigenvalues=[1.0] * 8, n_samples=20, val_fraction=0.2), seed=0)


@pytest.mark.parametrize("sigma2,k", [(0.5, 4), (0.5, 2), (0.05, 3), (1.0, 5), (3.0, 1), (0.5, 0)])
def test_ppca_nll_matches_gaussian_log_prob(sigma2, k):
    lam = [5.0, 2.0, 0.8, 0.3, 0.1]
    x = load_data(PPCAData(eigenvalues=lam), seed=0).val.double()[:200]
    c = [max(v, sigma2) if i < k else sigma2 for i, v in enumerate(lam)]
    mvn = torch.distributions.MultivariateNormal(
        torch.zeros(5, dtype=torch.float64), torch.diag(torch.tensor(c, dtype=torch.float64))
    )
    nll = ppca_nll(x, lam, sigma2, k)
    assert nll.shape == (200,) and nll.dtype == torch.float64
    assert torch.allclose(nll, -mvn.log_prob(x), rtol=0, atol=1e-10)


def test_ppca_nll_keeps_largest_eigenvalues_in_any_order():
    lam = [5.0, 2.0, 0.8, 0.3, 0.1]
    x = exact_gaussian(100, lam, np.random.default_rng(1))
    perm = [3, 0, 4, 2, 1]
    a = ppca_nll(torch.from_numpy(x), lam, 0.5, 2)
    b = ppca_nll(torch.from_numpy(x[:, perm]), [lam[i] for i in perm], 0.5, 2)
    assert torch.allclose(a, b, atol=1e-12)
    # mean NLL over exact data: 0.5 * sum(lambda_i / c_i + log(2 pi c_i))
    c = [5.0, 2.0, 0.5, 0.5, 0.5]
    expected = 0.5 * sum(v / ci + math.log(2 * math.pi * ci) for v, ci in zip(lam, c, strict=True))
    assert float(a.mean()) == pytest.approx(expected, abs=1e-10)


# ------------------------------------------------------------------------------- IDX


def _idx_bytes(arr: np.ndarray) -> bytes:
    arr = np.asarray(arr, dtype=np.uint8)
    head = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return head + arr.tobytes()


def _images(n=20, h=6, w=5, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w), dtype=np.uint8)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path, gz):
    imgs = _images()
    data = _idx_bytes(imgs)
    # the file name deliberately lies: gzip is detected from the magic bytes
    path = tmp_path / ("images.idx" if gz else "images.gz")
    path.write_bytes(gzip.compress(data) if gz else data)
    x = read_idx_images(path)
    assert x.shape == (20, 1, 6, 5) and x.dtype == torch.float32
    assert torch.allclose(x[:, 0], torch.from_numpy(imgs).float() / 255)
    labels = np.arange(10, dtype=np.uint8)
    (tmp_path / "labels").write_bytes(_idx_bytes(labels))
    assert np.array_equal(read_idx(tmp_path / "labels"), labels)


def test_idx_errors_name_the_path(tmp_path):
    good = _idx_bytes(_images())
    cases = {
        "missing": None,
        "truncated": good[:-7],
        "trailing": good + b"\x00",
        "short_header": good[:6],
        "wrong_magic": b"\x12\x34" + good[2:],
        "bad_gzip": gzip.compress(good)[:30],
    }
    for name, content in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(DataError) as err:
            read_idx_images(path)
        assert str(path) in str(err.value), name
    (tmp_path / "labels").write_bytes(_idx_bytes(np.arange(10, dtype=np.uint8)))
    with pytest.raises(DataError, match="label"):
        read_idx_images(tmp_path / "labels")


def test_idx_loader(tmp_path):
    (tmp_path / "train").write_bytes(gzip.compress(_idx_bytes(_images(40))))
    (tmp_path / "val").write_bytes(_idx_bytes(_images(10, seed=1)))
    d = load_data(IdxData(train_images=str(tmp_path / "train")), seed=0)
    assert d.train.shape == (36, 1, 6, 5) and d.val.shape == (4, 1, 6, 5)
    assert d.meta.shape == (1, 6, 5) and d.meta.value_range == (0.0, 1.0)
    d2 = load_data(
        IdxData(train_images=str(tmp_path / "train"), val_images=str(tmp_path / "val"), binarize=True),
        seed=0,
    )
    assert d2.train.shape[0] == 40 and d2.val.shape[0] == 10 and d2.meta.binary
    assert set(torch.unique(d2.train).tolist()) <= {0.0, 1.0}
    (tmp_path / "odd").write_bytes(_idx_bytes(_images(10, h=7)))
    with pytest.raises(DataError, match="odd"):
        load_data(IdxData(train_images=str(tmp_path / "train"), val_images=str(tmp_path / "odd")), 0)


# ------------------------------------------------------------------------------- npz


def test_npz_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    vec = rng.normal(size=(30, 7)).astype(np.float32)
    img = rng.integers(0, 256, size=(30, 5, 4), dtype=np.uint8)
    rgb = rng.random(size=(30, 3, 4, 4))
    path = tmp_path / "data.npz"
    np.savez(path, vec=vec, img=img, rgb=rgb)
    assert torch.equal(read_npz_array(path, "vec"), torch.from_numpy(vec))
    x = read_npz_array(path, "img")
    assert x.shape == (30, 1, 5, 4) and torch.allclose(x[:, 0], torch.from_numpy(img) / 255.0)
    r = read_npz_array(path, "rgb")
    assert r.shape == (30, 3, 4, 4) and r.dtype == torch.float32
    d = load_data(NpzData(path=str(path), train_key="vec", val_fraction=0.2), seed=0)
    assert d.train.shape == (24, 7) and d.val.shape == (6, 7) and d.meta.shape == (7,)
    assert d.meta.value_range == (float(vec.min()), float(vec.max()))
    d = load_data(NpzData(path=str(path), train_key="img", val_key="img", binarize=True), seed=0)
    assert d.train.shape == d.val.shape == (30, 1, 5, 4) and d.meta.binary


def test_npz_errors(tmp_path):
    path = tmp_path / "data.npz"
    np.savez(path, a=np.zeros((3, 2)), b=np.zeros((3, 2)))
    with pytest.raises(DataError) as err:
        read_npz_array(path, "x_train")
    msg = str(err.value)
    assert str(path) in msg and "'a'" in msg and "'b'" in msg and "x_train" in msg
    with pytest.raises(DataError, match="missing.npz"):
        read_npz_array(tmp_path / "missing.npz", "a")
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    with pytest.raises(DataError, match="junk.npz"):
        read_npz_array(tmp_path / "junk.npz", "a")
    np.save(tmp_path / "single.npy", np.zeros((3, 2)))
    with pytest.raises(DataError, match="single.npy"):
        read_npz_array(tmp_path / "single.npy", "a")
    np.savez(tmp_path / "nan.npz", a=np.array([[0.0, np.nan]]), v=np.zeros(4))
    with pytest.raises(DataError, match="NaN"):
        read_npz_array(tmp_path / "nan.npz", "a")
    with pytest.raises(DataError, match="shape"):
        read_npz_array(tmp_path / "nan.npz", "v")


def test_binarize_threshold():
    x = torch.tensor([0.0, 0.49, 0.5, 0.51, 1.0])
    assert binarize(x).tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]
    assert binarize(x).dtype == torch.float32
