"""The types every loader shares: a dataset, its meta, the user-facing data error, the
ground-truth factor interface, and the train/validation split."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch


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
    are the exact covariance eigenvalues of pPCA data (docs/reference.md).
    """

    name: str
    shape: tuple[int, ...]
    value_range: tuple[float, float]
    binary: bool
    factor_names: tuple[str, ...] = ()
    train_factors: torch.Tensor | None = None
    val_factors: torch.Tensor | None = None
    eigenvalues: tuple[float, ...] | None = None
    vocab: tuple[str, ...] = ()  # token data: the vocabulary, index = token id (vaebench.data.text)
    entropy: float | None = None  # H(x) in nats when known exactly (the grammar corpus)
    # train holds grey levels, drawn afresh as binary images every epoch (vaebench.data.mnist)
    dynamic_binarize: bool = False


@dataclass(frozen=True)
class Dataset:
    """Train and validation tensors (float32, or int64 token ids; examples along dim 0) and their meta;
    ``test``, when the data have one, is kept apart: validation drives pruning and curves, test gives the final
    numbers (``test/NAME``)."""

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
        """The observations of the given factor rows, float32 ``[n, *event]``; row i depends only on
        factors[i] (deterministic), so a representation of them is order-independent."""
