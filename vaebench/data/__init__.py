"""Datasets of vaebench: one entry point, ``load_data(cfg, seed)``.

Every loader returns a :class:`Dataset` of float32 tensors, images shaped
``[N, 1, H, W]`` and vectors ``[N, n]``, or int64 token sequences ``[N, T]`` (text and
grammar: ``vaebench.data.text``), plus a :class:`DataMeta` describing them.
Loading is deterministic given the seed: all randomness comes from
``numpy.random.default_rng(seed)``, never from global RNG state. Nothing is ever
downloaded: digits ship with scikit-learn, dSprites and pPCA data are generated
(REFERENCE.md, "procedural dSprites" and "linear VAE on probabilistic-PCA data"),
IDX and npz files are read from disk.

The submodules are imported lazily by :func:`load_data`, so importing this package
does not import scikit-learn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

if TYPE_CHECKING:
    from vaebench.study.config import DataConfig

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


class DataError(ValueError):
    """A user-facing data problem (missing or malformed file, impossible request).

    The message names the offending path (or setting) and what is wrong with it.
    """


@dataclass(frozen=True)
class DataMeta:
    """What a model and the metrics need to know about a dataset.

    ``shape`` is one example's shape, e.g. ``(1, 8, 8)``, ``(1, 64, 64)`` or ``(n,)``.
    ``value_range`` is the (min, max) the values can take; ``(-inf, inf)`` for
    unbounded (Gaussian) data. ``binary`` is True when every value is 0 or 1 (a
    Bernoulli likelihood fits). Ground-truth factors (dSprites) come as int64 index
    tensors ``[N, len(factor_names)]``, row i belonging to example i. ``eigenvalues``
    are the exact covariance eigenvalues of pPCA data (REFERENCE.md).
    """

    name: str
    shape: tuple[int, ...]
    value_range: tuple[float, float]
    binary: bool
    factor_names: tuple[str, ...] = ()
    train_factors: torch.Tensor | None = None
    val_factors: torch.Tensor | None = None
    eigenvalues: tuple[float, ...] | None = None
    vocab: tuple[str, ...] = ()
    entropy: float | None = None
    # train holds grey levels, drawn afresh as binary images every epoch (vaebench.data.mnist)
    dynamic_binarize: bool = False


@dataclass(frozen=True)
class Dataset:
    """Train and validation tensors (float32, or int64 token ids; examples along dim 0) and their meta;
    ``test``, when the data have one, is kept apart: validation drives pruning and curves, test gives
    the final numbers (``test/NAME``)."""

    train: torch.Tensor
    val: torch.Tensor
    meta: DataMeta
    test: torch.Tensor | None = None


def split_indices(n: int, val_fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random (train, val) partition of ``range(n)``; val gets round(n * val_fraction).

    Both parts are kept non-empty (n >= 2 is required).
    """
    if n < 2:
        raise DataError(f"cannot split {n} example(s) into non-empty train and val sets")
    n_val = min(max(int(round(n * val_fraction)), 1), n - 1)
    perm = rng.permutation(n)
    return perm[n_val:], perm[:n_val]


def load_data(cfg: DataConfig, seed: int) -> Dataset:
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
    if kind == "text":
        from vaebench.data.text import load_text

        return load_text(cfg, seed)
    if kind == "grammar":
        from vaebench.data.text import load_grammar

        return load_grammar(cfg, seed)
    if kind in ("mnist", "fashion_mnist"):
        from vaebench.data.mnist import load_mnist

        return load_mnist(cfg, seed)
    from vaebench.data.plugin import load_plugin

    return load_plugin(cfg, seed)


# ------------------------------------------------------------------ ground-truth factors

#: data kinds whose generative factors are known (the disentanglement metrics need them)
FACTOR_KINDS = ("dsprites", "grammar")


class GroundTruth(Protocol):
    """A dataset that knows its generative factors (as disentanglement_lib's GroundTruthData).

    Factors are integer indices: factor k takes the values 0 .. ``factor_sizes[k] - 1``.
    The disentanglement metrics draw their own factor combinations (they need pairs that
    share one factor, which a fixed validation split does not provide) and render them.
    """

    factor_names: tuple[str, ...]
    factor_sizes: tuple[int, ...]

    def sample_factors(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` independent uniform factor combinations, int64 ``[n, K]`` (with replacement)."""

    def observations(self, factors: np.ndarray) -> torch.Tensor:
        """The observations of the given factor rows, float32 ``[n, *event]`` (int64 for tokens); row i depends only on
        factors[i] (deterministic), so a representation of them is order-independent."""


def ground_truth(cfg: DataConfig) -> GroundTruth | None:
    """The ground-truth factor interface of the data ``cfg`` describes, None when its factors are unknown."""
    if cfg.kind == "dsprites":
        from vaebench.data.dsprites import DSpritesFactors

        return DSpritesFactors(tuple(cfg.shapes))
    if cfg.kind == "grammar":
        from vaebench.data.text import GrammarFactors

        return GrammarFactors()
    if is_plugin_kind(cfg.kind):
        from vaebench.data.plugin import plugin_ground_truth

        return plugin_ground_truth(cfg)
    return None


def is_plugin_kind(kind: str) -> bool:
    """A data kind that is not built in: a plugin (vaebench.plugins), whose factors, if any, are
    known only once it is imported (vaebench.study.plugin_checks)."""
    from vaebench.study.config import BUILTIN_DATA

    return kind not in BUILTIN_DATA
