"""Datasets of vaebench: one entry point, ``load_data(cfg, seed)``.

Every loader returns a :class:`Dataset` of float32 tensors, images shaped
``[N, 1, H, W]`` and vectors ``[N, n]``, or int64 token sequences ``[N, T]`` (text and
grammar: ``vaebench.data.text``), plus a :class:`DataMeta` describing them.
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
