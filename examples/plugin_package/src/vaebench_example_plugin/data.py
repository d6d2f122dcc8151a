"""A data plugin: Gaussian blobs in 8 dimensions, called as blobs(seed=data_seed, **data.args)."""

from __future__ import annotations

import torch


def blobs(seed: int, n: int = 600, dim: int = 8, centres: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    means = 3 * torch.randn(centres, dim, generator=g)
    x = means[torch.randint(centres, (n,), generator=g)] + torch.randn(n, dim, generator=g)
    cut, test = int(0.7 * n), int(0.85 * n)
    return {"train": x[:cut], "val": x[cut:test], "test": x[test:], "name": "blobs"}
