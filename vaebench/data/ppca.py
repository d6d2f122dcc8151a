"""Probabilistic-PCA data with an exact sample covariance (docs/reference.md, "A result to
check exactly: linear VAE on probabilistic-PCA data").

x in R^n, n = len(eigenvalues), axes aligned with the eigenvectors and eigenvalues in
the given order (no rotation): the sample covariance of each split is exactly
diag(eigenvalues) and its mean exactly 0, up to float32 rounding. The sample
covariance is the maximum-likelihood one, (1/N) sum_x x x^T, the S of Tipping &
Bishop (1999) whose eigenvalues the pPCA solution and the linear-VAE optimum in
docs/reference.md are stated in terms of.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from vaebench.data.base import DataError, DataMeta, Dataset

if TYPE_CHECKING:
    from vaebench.study.config import PPCAData

__all__ = ["exact_gaussian", "load_ppca", "ppca_covariance", "ppca_nll"]


def exact_gaussian(m: int, eigenvalues: Sequence[float], rng: np.random.Generator) -> np.ndarray:
    """``m`` samples ``[m, n]`` (float64) with mean exactly 0 and (1/m) X^T X = diag(eigenvalues).

    Draw standard normals Z, centre them, whiten with the symmetric inverse square
    root of their (1/m) sample covariance S (so the sample covariance becomes I), then
    scale column i by sqrt(eigenvalues[i]). Needs m > n (centred data has rank <= m-1).
    """
    lam = np.asarray(eigenvalues, dtype=np.float64)
    n = lam.size
    if n == 0 or (lam <= 0).any():
        raise ValueError(f"eigenvalues must be non-empty and positive, got {list(lam)}")
    if m <= n:
        raise ValueError(f"need more than n={n} samples for an exact covariance, got {m}")
    z = rng.standard_normal((m, n))
    z -= z.mean(axis=0)
    d, q = np.linalg.eigh(z.T @ z / m)
    z = z @ (q / np.sqrt(d)) @ q.T  # S^{-1/2} = Q diag(d^{-1/2}) Q^T
    z -= z.mean(axis=0)  # remove the rounding residue of the first centring
    return z * np.sqrt(lam)


def ppca_covariance(eigenvalues: Sequence[float], sigma2: float, k: int) -> torch.Tensor:
    """Diagonal of the ML pPCA covariance C (float64 ``[n]``); see :func:`ppca_nll`."""
    lam = torch.as_tensor(eigenvalues, dtype=torch.float64)
    n = lam.numel()
    if not 0 <= k <= n:
        raise ValueError(f"k must lie in 0..{n}, got {k}")
    if not sigma2 > 0:
        raise ValueError(f"sigma2 must be positive, got {sigma2}")
    c = torch.full_like(lam, float(sigma2))
    top = torch.argsort(lam, descending=True, stable=True)[:k]
    c[top] = torch.clamp(lam[top], min=float(sigma2))
    return c


def ppca_nll(x: torch.Tensor, eigenvalues: Sequence[float], sigma2: float, k: int) -> torch.Tensor:
    """Exact per-example NLL (nats) of the ML pPCA model with k latents and fixed noise sigma2.

    Returns ``0.5 * (x^T C^-1 x + log det(2 pi C))`` over the last dim of ``x``
    (``[..., n] -> [...]``, x's dtype; computed in float64), with
    ``C = diag(c)``, ``c_i = max(lambda_i, sigma2)`` for the k largest eigenvalues and
    ``c_i = sigma2`` for the rest (for eigenvalues sorted descending: the first k).

    Why (Tipping & Bishop 1999, with sigma2 held fixed): the model is
    x ~ N(0, C), C = W W^T + sigma2 I, W n x k; the ML mean is the sample mean, 0 here.
    The average log-likelihood is -0.5 (n log 2pi + log|C| + tr(C^-1 S)) with
    S = diag(lambda). Its stationary points have the columns of W along eigenvectors
    of S (here the coordinate axes) with ||w_i||^2 = lambda_i - sigma2, or w_i = 0.
    Along an axis with variance c the cost is log c + lambda / c, minimised over
    c >= sigma2 at c = max(lambda, sigma2); an axis outside span(W) has c = sigma2.
    Moving an axis into span(W) saves (log sigma2 + lambda/sigma2) - (log lambda + 1)
    >= 0, increasing in lambda for lambda > sigma2, so the k largest eigenvalues are
    kept. At beta = 1 the optimum of the linear VAE in docs/reference.md attains this
    log-likelihood: there the true posterior is a diagonal Gaussian, so the ELBO is
    tight (Lucas et al. 2019).
    """
    c = ppca_covariance(eigenvalues, sigma2, k)
    if x.shape[-1] != c.numel():
        raise ValueError(f"x has {x.shape[-1]} dims, eigenvalues {c.numel()}")
    xd = x.to(torch.float64)
    c = c.to(x.device)
    quad = (xd * xd / c).sum(dim=-1)
    logdet = torch.log(2.0 * math.pi * c).sum()
    return (0.5 * (quad + logdet)).to(x.dtype)


def load_ppca(cfg: PPCAData, seed: int) -> Dataset:
    """Train and val splits (val: round(n_samples * val_fraction)), each exact on its own.

    ``meta.eigenvalues`` holds the eigenvalues, in the given order.
    """
    rng = np.random.default_rng(seed)
    n = len(cfg.eigenvalues)
    n_val = min(max(int(round(cfg.n_samples * cfg.val_fraction)), 1), cfg.n_samples - 1)
    n_train = cfg.n_samples - n_val
    if min(n_train, n_val) <= n:
        raise DataError(
            f"data.n_samples={cfg.n_samples}, val_fraction={cfg.val_fraction}: train "
            f"({n_train}) and val ({n_val}) each need more than n={n} examples for an "
            "exact sample covariance"
        )
    train = exact_gaussian(n_train, cfg.eigenvalues, rng)
    val = exact_gaussian(n_val, cfg.eigenvalues, rng)
    meta = DataMeta(
        name="ppca",
        shape=(n,),
        value_range=(-math.inf, math.inf),
        binary=False,
        eigenvalues=tuple(float(e) for e in cfg.eigenvalues),
    )
    return Dataset(
        train=torch.from_numpy(train.astype(np.float32)),
        val=torch.from_numpy(val.astype(np.float32)),
        meta=meta,
    )
