"""scikit-learn's bundled 8x8 handwritten digits (1,797 images; no download).

Pixel values 0..16 are divided by 16 into [0, 1]; ``binarize`` thresholds at 0.5
(``x > 0.5``). The train/val split is a random permutation drawn from the seed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from vaebench.data import DataMeta, Dataset, split_indices
from vaebench.data.files import binarize

if TYPE_CHECKING:
    from vaebench.config import DigitsData

__all__ = ["SHAPE", "digit_images", "load_digits"]

SHAPE = (1, 8, 8)


def digit_images() -> torch.Tensor:
    """All 1,797 digit images as float32 ``[1797, 1, 8, 8]`` in [0, 1]."""
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
