"""The benchmark data: a synthetic, MNIST-shaped binary dataset, generated once and cached.

Nothing may be downloaded, so the "60,000 x 784 binary images" are made here:

    white Gaussian noise on a 28x28 grid
      -> Gaussian low-pass filter (FFT, sigma = 1.5 px): smooth random fields
      -> times a centred Gaussian envelope (std 7 px): ink concentrates in the middle,
         the border is mostly blank, as in MNIST
      -> each image thresholded at its own quantile so that a random 8-20 % of its
         pixels are 1 (MNIST binarised at 0.5 has about 13 % ones)

The result is spatially correlated blobs and strokes: a Bernoulli VAE learns it (the
ELBO improves over epochs, some latent dims stay active), unlike i.i.d. Bernoulli noise.
Arrays are stored as bool, which ``vaebench.data.files.read_npz_array`` casts to 0/1
float32 (uint8 would be scaled by 1/255). Deterministic in the seed.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

GENERATOR = "smooth-threshold-v1"  # bump when the recipe changes: it names the cache file
SIDE = 28
CACHE = Path(__file__).resolve().parent / ".cache"


def synthetic_binary(n: int, seed: int, side: int = SIDE, chunk: int = 5000) -> np.ndarray:
    """``n`` binary images as a bool array [n, side * side]."""
    rng = np.random.default_rng(seed)
    fy = np.fft.fftfreq(side)[:, None]
    fx = np.fft.rfftfreq(side)[None, :]
    sigma = 1.5
    low_pass = np.exp(-2 * np.pi**2 * sigma**2 * (fx**2 + fy**2)).astype(np.float32)
    r = np.arange(side) - (side - 1) / 2
    envelope = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * 7.0**2)).astype(np.float32)
    out = np.empty((n, side * side), dtype=bool)
    for start in range(0, n, chunk):
        c = min(chunk, n - start)
        noise = rng.standard_normal((c, side, side), dtype=np.float32)
        field = np.fft.irfft2(np.fft.rfft2(noise) * low_pass, s=(side, side)).astype(np.float32)
        field = (field * envelope).reshape(c, -1)
        ink = rng.uniform(0.08, 0.20, size=c)  # fraction of pixels set, per image
        order = np.sort(field, axis=1)
        k = np.clip(np.round((1 - ink) * field.shape[1]).astype(int), 0, field.shape[1] - 1)
        out[start : start + c] = field > order[np.arange(c), k][:, None]
    return out


def dataset_path(n_train: int, n_val: int, seed: int = 0) -> Path:
    """The cached .npz (x_train, x_val), generated on first use."""
    path = CACHE / f"{GENERATOR}-{n_train}x{SIDE * SIDE}-val{n_val}-seed{seed}.npz"
    if not path.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        x = synthetic_binary(n_train + n_val, seed)
        tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
        np.savez(tmp, x_train=x[:n_train], x_val=x[n_train:])
        tmp.replace(path)
    return path
