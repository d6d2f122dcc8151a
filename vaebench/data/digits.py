"""scikit-learn's bundled 8x8 handwritten digits (1,797 images; no download).

Pixel values 0..16 are divided by 16 into [0, 1]; ``binarize`` thresholds at 0.5
(``x > 0.5``). The train/val split is a random permutation drawn from the seed.
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from vaebench.data.base import DataMeta, Dataset, split_indices
from vaebench.data.files import binarize

if TYPE_CHECKING:
    from vaebench.study.config import DigitsData

__all__ = ["SHAPE", "digit_images", "load_digits"]

SHAPE = (1, 8, 8)


def _bundled_csv() -> Path | None:
    """scikit-learn's digits.csv.gz, found without importing scikit-learn (the import costs ~1.4 s
    in every trial process; the file is all load_digits reads)."""
    spec = importlib.util.find_spec("sklearn")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            return path
    return None


def digit_images() -> torch.Tensor:
    """All 1,797 digit images as float32 ``[1797, 1, 8, 8]`` in [0, 1]."""
    path = _bundled_csv()
    if path is not None:  # rows of 64 pixels then the label, as sklearn.datasets.load_digits reads them
        with gzip.open(path, "rt") as f:
            pixels = np.loadtxt(f, delimiter=",")[:, :-1]
    else:  # a scikit-learn that keeps the file elsewhere: its public loader
        from sklearn.datasets import load_digits as _sk_load_digits

        pixels = _sk_load_digits().data  # [1797, 64], integer values 0..16 as float64
    return torch.from_numpy((pixels / 16.0).astype(np.float32).reshape(-1, *SHAPE))


def load_digits(cfg: DigitsData, seed: int) -> Dataset:
    """Digits split into train/val (``cfg.val_fraction`` held out, permutation by ``seed``)."""
    x = digit_images()
    if cfg.binarize:
        x = binarize(x)
    tr, va = split_indices(x.shape[0], cfg.val_fraction, np.random.default_rng(seed))
    meta = DataMeta(name="digits", shape=SHAPE, value_range=(0.0, 1.0), binary=cfg.binarize)
    return Dataset(train=x[torch.from_numpy(tr)], val=x[torch.from_numpy(va)], meta=meta)
