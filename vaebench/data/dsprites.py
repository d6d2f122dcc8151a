"""Procedural dSprites (docs/reference.md, "Disentanglement data with ground truth").

64x64 binary images of one white shape on black, generated on the fly from five
factors, deterministically; nothing is downloaded. Factors, as integer indices:

- shape: 0 square, 1 ellipse, 2 heart;
- scale: 6 values linearly 0.5 .. 1;
- orientation: 40 values 2*pi*i/40 in [0, 2*pi);
- pos_x, pos_y: 32 values each, linearly 0 .. 1 across the free area (below);

3 * 6 * 40 * 32 * 32 = 737,280 combinations.

Geometry. Pixel (row r, column c) is sampled at its centre (c + 0.5, r + 0.5); x runs
right, y down. A shape is defined in a canonical frame (u, v) where its minimal
enclosing circle is the unit circle: square |u|, |v| <= 1/sqrt(2); ellipse
u^2 + (v / 0.5)^2 <= 1, elongated 2:1 as in the original dSprites; heart the implicit
curve (X^2 + Y^2 - 1)^3 - X^2 Y^3 <= 0 with X = 1.25 u, Y = 0.25 - 1.25 v (its minimal
enclosing circle has centre (0, 0.25) and radius 1.25: the bottom tip and both lobes
touch it; Y points up so the heart is upright at orientation 0). Orientation turns
the shape counter-clockwise as seen on screen. A pixel is white iff its centre,
translated to the shape's position, rotated back by the orientation and divided by
``scale * RADIUS``, falls inside. Because every shape fits in its circle of
radius ``scale * RADIUS <= RADIUS`` at every orientation, positions map 0 .. 1
linearly onto centres MARGIN + RADIUS .. 64 - MARGIN - RADIUS (the free area), and
no shape is ever cut by the image border.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from vaebench.data.base import DataError, DataMeta, Dataset, split_indices

if TYPE_CHECKING:
    from vaebench.study.config import DSpritesData

__all__ = [
    "DSpritesFactors",
    "FACTOR_NAMES",
    "FACTOR_SIZES",
    "IMAGE_SIZE",
    "MARGIN",
    "RADIUS",
    "SHAPE_NAMES",
    "all_factors",
    "factor_values",
    "load_dsprites",
    "render",
    "sample_factors",
]

FACTOR_NAMES = ("shape", "scale", "orientation", "pos_x", "pos_y")
FACTOR_SIZES = (3, 6, 40, 32, 32)
SHAPE_NAMES = ("square", "ellipse", "heart")
IMAGE_SIZE = 64
RADIUS = 12.0  # enclosing-circle radius in pixels at scale 1 (square side 17 px)
MARGIN = 1.0  # pixels kept free between the enclosing circle and the border

_ELLIPSE_AXIS_RATIO = 0.5
_HEART_ZOOM, _HEART_SHIFT = 1.25, 0.25
_CHUNK = 256  # images per vectorised block: 256 x 64 x 64 float32 = 4 MiB per array


def factor_values() -> tuple[np.ndarray, ...]:
    """The value of each factor index, one array per factor (float64).

    shape: 0, 1, 2 (codes); scale: 0.5 .. 1; orientation: radians in [0, 2*pi);
    pos_x, pos_y: 0 .. 1 (fraction of the free area).
    """
    return (
        np.arange(FACTOR_SIZES[0], dtype=np.float64),
        np.linspace(0.5, 1.0, FACTOR_SIZES[1]),
        2.0 * np.pi * np.arange(FACTOR_SIZES[2]) / FACTOR_SIZES[2],
        np.linspace(0.0, 1.0, FACTOR_SIZES[3]),
        np.linspace(0.0, 1.0, FACTOR_SIZES[4]),
    )


def all_factors() -> np.ndarray:
    """The full factor grid, int64 ``[737280, 5]``, in row-major (C) order of FACTOR_SIZES."""
    total = int(np.prod(FACTOR_SIZES))
    return np.stack(np.unravel_index(np.arange(total), FACTOR_SIZES), axis=1).astype(np.int64)


def _shape_indices(shapes: Sequence[str]) -> np.ndarray:
    """Sorted distinct shape codes of the given shape names."""
    if not shapes:
        raise ValueError("at least one shape is needed")
    unknown = sorted(set(shapes) - set(SHAPE_NAMES))
    if unknown:
        raise ValueError(f"unknown shape(s) {unknown}; known: {list(SHAPE_NAMES)}")
    return np.array(sorted({SHAPE_NAMES.index(s) for s in shapes}), dtype=np.int64)


def sample_factors(n: int, rng: np.random.Generator, shapes: Sequence[str] = SHAPE_NAMES) -> np.ndarray:
    """``n`` distinct factor combinations drawn uniformly without replacement, int64 ``[n, 5]``.

    Only the given shapes occur; all other factors range over their full grids. Drawing
    without replacement keeps train and val disjoint; ``n`` may not exceed the number
    of combinations (245,760 per shape).
    """
    codes = _shape_indices(shapes)
    per_shape = int(np.prod(FACTOR_SIZES[1:]))
    total = len(codes) * per_shape
    if not 0 <= n <= total:
        raise ValueError(
            f"cannot draw {n} distinct dSprites factor combinations: shapes "
            f"{[SHAPE_NAMES[c] for c in codes]} have {total}"
        )
    flat = rng.choice(total, size=n, replace=False)
    slot, rest = np.divmod(flat, per_shape)
    others = np.stack(np.unravel_index(rest, FACTOR_SIZES[1:]), axis=1)
    return np.concatenate([codes[slot][:, None], others], axis=1).astype(np.int64)


def _check_factors(factors: np.ndarray) -> np.ndarray:
    f = np.asarray(factors)
    if f.ndim != 2 or f.shape[1] != len(FACTOR_SIZES):
        raise ValueError(f"factors must have shape [N, {len(FACTOR_SIZES)}], got {f.shape}")
    if f.size and not np.issubdtype(f.dtype, np.integer):
        raise ValueError(f"factors must be integer indices, got dtype {f.dtype}")
    f = f.astype(np.int64, copy=False)
    bad = (f < 0) | (f >= np.array(FACTOR_SIZES))
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ValueError(
            f"factor {FACTOR_NAMES[col]} index {f[row, col]} (row {row}) outside 0..{FACTOR_SIZES[col] - 1}"
        )
    return f


def _inside(code: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-test of shape ``code`` in its canonical frame (enclosing circle = unit circle)."""
    if code == 0:  # square, half-side 1/sqrt(2): corners on the unit circle
        h = np.float32(1.0 / np.sqrt(2.0))
        return (np.abs(u) <= h) & (np.abs(v) <= h)
    if code == 1:  # ellipse, semi-axes 1 and 0.5
        w = v / np.float32(_ELLIPSE_AXIS_RATIO)
        return u * u + w * w <= 1.0
    # heart: (X^2 + Y^2 - 1)^3 - X^2 Y^3 <= 0, upright (Y up = -v)
    x = u * np.float32(_HEART_ZOOM)
    y = np.float32(_HEART_SHIFT) - v * np.float32(_HEART_ZOOM)
    x2 = x * x
    q = x2 + y * y - 1.0
    return q * q * q <= x2 * (y * y * y)


def render(factors: np.ndarray) -> np.ndarray:
    """Images of the given factor rows: bool ``[N, 64, 64]``, True = white (shape).

    ``factors`` are integer indices ``[N, 5]`` in FACTOR_NAMES order. Pure and
    vectorised; each image depends only on its own row, so the result does not depend
    on N, the order of rows or the chunking.
    """
    f = _check_factors(factors)
    _, scales, angles, px, py = factor_values()
    free = IMAGE_SIZE - 2.0 * (MARGIN + RADIUS)
    # Per-index lookup tables (computed once per call on fixed-size arrays, so an image
    # is bit-identical whatever batch it is rendered in).
    cos_t, sin_t = np.cos(angles), np.sin(angles)
    cx_tab = MARGIN + RADIUS + free * px
    cy_tab = MARGIN + RADIUS + free * py
    grid = np.arange(IMAGE_SIZE, dtype=np.float64) + 0.5

    out = np.zeros((f.shape[0], IMAGE_SIZE, IMAGE_SIZE), dtype=bool)
    for code in range(FACTOR_SIZES[0]):
        rows = np.flatnonzero(f[:, 0] == code)
        for start in range(0, rows.size, _CHUNK):
            idx = rows[start : start + _CHUNK]
            g = f[idx]
            inv = 1.0 / (scales[g[:, 1]] * RADIUS)
            c, s = cos_t[g[:, 2]] * inv, sin_t[g[:, 2]] * inv
            dx = grid[None, :] - cx_tab[g[:, 3]][:, None]  # [n, 64] along columns
            dy = grid[None, :] - cy_tab[g[:, 4]][:, None]  # [n, 64] along rows
            # Undo the rotation (counter-clockwise on screen, y down) and the scale:
            # u = (dx cos - dy sin)/k, v = (dx sin + dy cos)/k. Separable, so each
            # full-size (float32) array is one broadcast add.
            dxc, dxs = (dx * c[:, None]).astype(np.float32), (dx * s[:, None]).astype(np.float32)
            dyc, dys = (dy * c[:, None]).astype(np.float32), (dy * s[:, None]).astype(np.float32)
            u = dxc[:, None, :] - dys[:, :, None]
            v = dyc[:, :, None] + dxs[:, None, :]
            out[idx] = _inside(code, u, v)
    return out


def _as_images(masks: np.ndarray) -> torch.Tensor:
    """bool ``[N, 64, 64]`` -> float32 0/1 ``[N, 1, 64, 64]``."""
    return torch.from_numpy(masks).to(torch.float32).unsqueeze(1)


class DSpritesFactors:
    """Procedural dSprites as a ground-truth dataset (``vaebench.data.GroundTruth``).

    Restricted to ``shapes`` as the training data is: the shape factor's indices 0 .. S-1 map to
    those shapes (sorted by code); the other factors take their full grids. Colour is fixed (white),
    so it is no factor. Sampling is uniform and with replacement, as in disentanglement_lib.
    """

    factor_names = FACTOR_NAMES

    def __init__(self, shapes: Sequence[str] = SHAPE_NAMES):
        self.shape_codes = _shape_indices(shapes)
        self.factor_sizes = (len(self.shape_codes), *FACTOR_SIZES[1:])

    def sample_factors(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.stack([rng.integers(0, s, size=n) for s in self.factor_sizes], axis=1).astype(np.int64)

    def observations(self, factors: np.ndarray) -> torch.Tensor:
        f = np.array(factors, dtype=np.int64)
        f[:, 0] = self.shape_codes[f[:, 0]]
        return _as_images(render(f))


def load_dsprites(cfg: DSpritesData, seed: int) -> Dataset:
    """``cfg.n_samples`` distinct random combinations of ``cfg.shapes``, rendered and split.

    Images are float32 0/1 ``[N, 1, 64, 64]``; their factor indices are
    ``meta.train_factors`` / ``meta.val_factors`` (int64 ``[N, 5]``, FACTOR_NAMES order).
    """
    rng = np.random.default_rng(seed)
    try:
        factors = sample_factors(cfg.n_samples, rng, cfg.shapes)
    except ValueError as e:
        raise DataError(f"data.n_samples={cfg.n_samples}: {e}") from e
    tr, va = split_indices(cfg.n_samples, cfg.val_fraction, rng)
    ftr, fva = factors[tr], factors[va]
    meta = DataMeta(
        name="dsprites",
        shape=(1, IMAGE_SIZE, IMAGE_SIZE),
        value_range=(0.0, 1.0),
        binary=True,
        factor_names=FACTOR_NAMES,
        train_factors=torch.from_numpy(ftr),
        val_factors=torch.from_numpy(fva),
    )
    return Dataset(train=_as_images(render(ftr)), val=_as_images(render(fva)), meta=meta)
