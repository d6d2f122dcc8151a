"""Datasets read from disk: MNIST-style IDX files and ``.npz`` archives. Never downloads.

IDX format (LeCun's MNIST files): a big-endian header ``00 00 <type> <ndim>``, then
``ndim`` big-endian uint32 sizes, then the data. Only unsigned-byte data (type 0x08)
is supported: magic 0x0801 is a label vector, 0x0803 an image stack ``[N, H, W]``.
Gzip is detected from the magic bytes ``1f 8b``, never from the file name.
Every problem with a file raises :class:`~vaebench.data.DataError` naming the path.
"""

from __future__ import annotations

import gzip
import struct
import zipfile
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from vaebench.data.base import DataError, DataMeta, Dataset, split_indices

if TYPE_CHECKING:
    from vaebench.study.config import IdxData, NpzData

__all__ = ["binarize", "load_idx", "load_npz", "read_idx", "read_idx_images", "read_npz_array"]

_GZIP_MAGIC = b"\x1f\x8b"
_IDX_UBYTE = 0x08
_IDX_LABELS, _IDX_IMAGES = 0x0801, 0x0803


def binarize(x: torch.Tensor) -> torch.Tensor:
    """Threshold at 0.5: 1.0 where ``x > 0.5``, else 0.0 (float32)."""
    return (x > 0.5).to(torch.float32)


def _read_bytes(path: str | Path) -> bytes:
    """The file's content, gunzipped when it starts with the gzip magic bytes."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such file" if not p.exists() else f"{p}: not a regular file")
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise DataError(f"{p}: cannot read: {e}") from e
    if raw[:2] == _GZIP_MAGIC:
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{p}: corrupt or truncated gzip data: {e}") from e
    return raw


def read_idx(path: str | Path) -> np.ndarray:
    """Read an unsigned-byte IDX file (plain or gzipped) into a uint8 array of its dims.

    The header's sizes must account for the file length exactly; a truncated file or
    trailing bytes raise DataError.
    """
    buf = _read_bytes(path)
    if len(buf) < 4:
        raise DataError(f"{path}: not an IDX file ({len(buf)} bytes, too short for the header)")
    zero, dtype, ndim = struct.unpack(">HBB", buf[:4])
    magic = struct.unpack(">I", buf[:4])[0]
    if zero != 0 or ndim == 0:
        raise DataError(f"{path}: not an IDX file (bad magic number 0x{magic:08x})")
    if dtype != _IDX_UBYTE:
        raise DataError(f"{path}: IDX data type 0x{dtype:02x} is not supported (only unsigned byte, 0x08)")
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise DataError(f"{path}: truncated IDX header ({len(buf)} bytes, needs {header})")
    dims = struct.unpack(f">{ndim}I", buf[4:header])
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(buf) != expected:
        what = "truncated" if len(buf) < expected else "has trailing bytes"
        raise DataError(
            f"{path}: IDX file {what}: header dims {dims} need {expected} bytes, "
            f"file has {len(buf)} (after decompression)"
        )
    return np.frombuffer(buf, dtype=np.uint8, offset=header).reshape(dims)


def read_idx_images(path: str | Path) -> torch.Tensor:
    """An IDX image file (magic 0x0803) as float32 ``[N, 1, H, W]`` in [0, 1] (bytes / 255)."""
    arr = read_idx(path)
    if arr.ndim != 3:
        kind = f"a label file (magic 0x{_IDX_LABELS:04x})" if arr.ndim == 1 else f"{arr.ndim}-D"
        raise DataError(f"{path}: expected an IDX image file (magic 0x{_IDX_IMAGES:04x}, dims N x H x W), got {kind}")
    if arr.shape[0] == 0:
        raise DataError(f"{path}: IDX file holds no images")
    if 0 in arr.shape[1:]:
        raise DataError(f"{path}: IDX images are {arr.shape[1]} x {arr.shape[2]} pixels; each side needs at least 1")
    return torch.from_numpy(arr.astype(np.float32) / 255.0).unsqueeze(1)


def read_npz_array(path: str | Path, key: str) -> torch.Tensor:
    """Array ``key`` of an npz file as float32: ``[N, d]``, or ``[N, H, W]`` -> ``[N, 1, H, W]``.

    4-D arrays are kept as they are (``[N, C, H, W]``). uint8 is scaled by 1/255,
    floats are kept, bool and other integers are cast unscaled. A missing key lists
    the keys present. Non-finite values are an error.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such file" if not p.exists() else f"{p}: not a regular file")
    try:
        npz = np.load(p, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise DataError(f"{p}: cannot read as npz: {e}") from e
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise DataError(f"{p}: not an npz archive (a single .npy array?)")
    with npz:
        if key not in npz.files:
            raise DataError(f"{p}: no array {key!r}; keys present: {sorted(npz.files)}")
        try:
            arr = npz[key]
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            raise DataError(f"{p}: cannot read array {key!r}: {e}") from e
    if arr.ndim not in (2, 3, 4):
        raise DataError(f"{p}: array {key!r} has shape {arr.shape}; expected [N, d], [N, H, W] or [N, C, H, W]")
    if arr.shape[0] == 0:
        raise DataError(f"{p}: array {key!r} is empty")
    if 0 in arr.shape[1:]:
        raise DataError(f"{p}: array {key!r} has shape {arr.shape}: its examples are empty (a size of 0 after N)")
    if arr.dtype == np.uint8:
        out = arr.astype(np.float32) / 255.0
    elif arr.dtype.kind in "fiub":
        out = arr.astype(np.float32)
    else:
        raise DataError(f"{p}: array {key!r} has unsupported dtype {arr.dtype}")
    if not np.isfinite(out).all():
        raise DataError(f"{p}: array {key!r} contains NaN or infinite values")
    if out.ndim == 3:
        out = out[:, None]
    return torch.from_numpy(np.ascontiguousarray(out))


def _train_val(
    train: torch.Tensor, val: torch.Tensor | None, val_fraction: float, seed: int, where: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hold out val_fraction of ``train`` when ``val`` is None, else check the shapes agree.

    ``where`` names the validation source in the error message.
    """
    if val is None:
        tr, va = split_indices(train.shape[0], val_fraction, np.random.default_rng(seed))
        return train[torch.from_numpy(tr)], train[torch.from_numpy(va)]
    if val.shape[1:] != train.shape[1:]:
        raise DataError(
            f"{where}: validation example shape {tuple(val.shape[1:])} differs from the "
            f"training shape {tuple(train.shape[1:])}"
        )
    return train, val


def _is_binary(*xs: torch.Tensor) -> bool:
    return all(bool(((x == 0) | (x == 1)).all()) for x in xs)


def load_idx(cfg: IdxData, seed: int) -> Dataset:
    """IDX images from ``cfg.train_images`` (and ``cfg.val_images``, else a seeded hold-out).

    value_range is (0, 1) (bytes / 255); ``meta.binary`` when binarized or already 0/1.
    """
    train = read_idx_images(cfg.train_images)
    val = read_idx_images(cfg.val_images) if cfg.val_images is not None else None
    train, val = _train_val(train, val, cfg.val_fraction, seed, str(cfg.val_images))
    if cfg.binarize:
        train, val = binarize(train), binarize(val)
    meta = DataMeta(
        name=f"idx:{Path(cfg.train_images).name}",
        shape=tuple(train.shape[1:]),
        value_range=(0.0, 1.0),
        binary=cfg.binarize or _is_binary(train, val),
    )
    return Dataset(train, val, meta)


def load_npz(cfg: NpzData, seed: int) -> Dataset:
    """Arrays ``cfg.train_key`` (and ``cfg.val_key``, else a seeded hold-out) of ``cfg.path``.

    value_range is the observed (min, max) over both splits ((0, 1) when binarized);
    ``meta.binary`` when binarized or already 0/1.
    """
    train = read_npz_array(cfg.path, cfg.train_key)
    val = read_npz_array(cfg.path, cfg.val_key) if cfg.val_key is not None else None
    train, val = _train_val(train, val, cfg.val_fraction, seed, f"{cfg.path}[{cfg.val_key!r}]")
    if cfg.binarize:
        train, val = binarize(train), binarize(val)
    lo, hi = float(min(train.min(), val.min())), float(max(train.max(), val.max()))
    meta = DataMeta(
        name=f"npz:{Path(cfg.path).name}",
        shape=tuple(train.shape[1:]),
        value_range=(0.0, 1.0) if cfg.binarize else (lo, hi),
        binary=cfg.binarize or _is_binary(train, val),
    )
    return Dataset(train, val, meta)
