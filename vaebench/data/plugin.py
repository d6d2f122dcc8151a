"""Data from a plugin (vaebench.plugins; docs/plugins.md): ``data.kind: package.module:fn``,
``./file.py:fn`` or an entry point of group vaebench.data, called as ``fn(seed=data_seed, **args)``.

The function returns a :class:`~vaebench.data.Dataset`, or a mapping with ``train`` and ``val``
(tensors or arrays, examples along dim 0, every example the same shape) and optionally ``test``,
``name`` and ``ground_truth``: an object meeting :class:`~vaebench.data.GroundTruth` (the data's
generative factors; then ``metrics.disentanglement`` applies). Values are made float32; ``binary``
is read off the data (every value 0 or 1).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from vaebench.data import DataError, DataMeta, Dataset

if TYPE_CHECKING:
    from vaebench.study.config import PluginData


def _tensor(name: str, v: Any) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(v) if not isinstance(v, torch.Tensor) else v)
    if t.ndim < 2 or t.shape[0] < 1:
        raise DataError(f"the plugin's {name} must hold examples along dim 0 ([N, ...], N >= 1), got {tuple(t.shape)}")
    t = t.detach().to(torch.float32).cpu()
    if not torch.isfinite(t).all():
        raise DataError(f"the plugin's {name} holds NaN or infinite values")
    return t


def as_dataset(out: Any, name: str) -> Dataset:
    """A plugin's return value as a Dataset (DataError when it is not one of the allowed forms)."""
    if isinstance(out, Dataset):
        return out
    if not isinstance(out, Mapping) or "train" not in out or "val" not in out:
        raise DataError(
            f"the data plugin returned {type(out).__name__}; allowed: a vaebench.data.Dataset, or a mapping "
            "with 'train' and 'val' (and optionally 'test', 'name')"
        )
    parts = {k: _tensor(k, out[k]) for k in ("train", "val", "test") if out.get(k) is not None}
    shapes = {k: tuple(v.shape[1:]) for k, v in parts.items()}
    if len(set(shapes.values())) != 1:
        raise DataError(f"the plugin's splits differ in example shape: {shapes}")
    every = torch.cat([v.flatten() for v in parts.values()])
    binary = bool(((every == 0) | (every == 1)).all())
    lo, hi = float(every.min()), float(every.max())
    meta = DataMeta(
        name=str(out.get("name", name)),
        shape=shapes["train"],
        value_range=(0.0, 1.0) if 0 <= lo and hi <= 1 else (float("-inf"), float("inf")),
        binary=binary,
    )
    return Dataset(train=parts["train"], val=parts["val"], meta=meta, test=parts.get("test"))


def load_plugin(cfg: PluginData, seed: int) -> Dataset:
    from vaebench.plugins import PluginError, resolve

    try:
        fn = resolve(cfg.kind, "vaebench.data").obj
    except PluginError as e:
        raise DataError(f"data.kind {cfg.kind}: {e}") from None
    return as_dataset(fn(seed=seed, **cfg.args), cfg.kind)


GROUND_TRUTH_ATTRS = ("factor_names", "factor_sizes", "sample_factors", "observations")


def plugin_ground_truth(cfg: PluginData) -> Any:
    """The plugin's ``ground_truth`` (vaebench.data.GroundTruth), or None when it returns none. The
    factors are the data's generative process, independent of the split: the function is called
    with seed 0."""
    from vaebench.plugins import resolve

    out = resolve(cfg.kind, "vaebench.data").obj(seed=0, **cfg.args)
    gt = out.get("ground_truth") if isinstance(out, Mapping) else None
    if gt is None:
        return None
    missing = [a for a in GROUND_TRUTH_ATTRS if not hasattr(gt, a)]
    if missing:
        raise DataError(
            f"the plugin's ground_truth has no {', '.join(missing)} (vaebench.data.GroundTruth: factor_names, "
            "factor_sizes, sample_factors(n, rng), observations(factors))"
        )
    return gt
