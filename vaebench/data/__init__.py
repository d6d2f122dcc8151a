"""Datasets of vaebench: one entry point, ``load_data(cfg, seed)``.

Every loader returns a :class:`Dataset` of float32 tensors, images shaped
``[N, 1, H, W]`` and vectors ``[N, n]``, plus a :class:`DataMeta` describing them.
Loading is deterministic given the seed: all randomness comes from
``numpy.random.default_rng(seed)``, never from global RNG state. Nothing is ever
downloaded: digits ship with scikit-learn, dSprites and pPCA data are generated
(docs/reference.md, "procedural dSprites" and "linear VAE on probabilistic-PCA data"),
IDX and npz files are read from disk.

The submodules are imported lazily by :func:`load_data`, so importing this package
does not import scikit-learn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vaebench.data.base import DataError, DataMeta, Dataset, GroundTruth, split_indices
from vaebench.study.config import FACTOR_KINDS  # data kinds whose generative factors are known

if TYPE_CHECKING:
    from vaebench.study.config import DigitsData, DSpritesData, IdxData, NpzData, PPCAData

__all__ = [
    "DataError",
    "DataMeta",
    "Dataset",
    "GroundTruth",
    "ground_truth",
    "load_data",
    "split_indices",
    "FACTOR_KINDS",
]


def load_data(cfg: DigitsData | DSpritesData | PPCAData | IdxData | NpzData, seed: int) -> Dataset:
    """Load the dataset ``cfg`` describes (dispatch on ``cfg.kind``); deterministic in ``seed``."""
    kind = cfg.kind
    if kind == "digits":
        from vaebench.data.digits import load_digits

        return load_digits(cfg, seed)
    if kind == "dsprites":
        from vaebench.data.dsprites import load_dsprites

        return load_dsprites(cfg, seed)
    if kind == "ppca":
        from vaebench.data.ppca import load_ppca

        return load_ppca(cfg, seed)
    if kind == "idx":
        from vaebench.data.files import load_idx

        return load_idx(cfg, seed)
    if kind == "npz":
        from vaebench.data.files import load_npz

        return load_npz(cfg, seed)
    raise ValueError(f"unknown data kind {kind!r}")


def ground_truth(cfg: DigitsData | DSpritesData | PPCAData | IdxData | NpzData) -> GroundTruth | None:
    """The ground-truth factor interface of the data ``cfg`` describes, None when its factors are unknown."""
    if cfg.kind == "dsprites":
        from vaebench.data.dsprites import DSpritesFactors

        return DSpritesFactors(tuple(cfg.shapes))
    return None
