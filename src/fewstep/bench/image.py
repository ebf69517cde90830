"""Sample grids as PNG files, written with zlib alone (no imaging library needed)."""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from fewstep.cache import atomic_write_bytes


def _png_bytes(rgb: np.ndarray) -> bytes:
    """Encode an ``[H, W, 3]`` uint8 array as PNG (8-bit RGB, no filter)."""
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[i].tobytes() for i in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def grid_array(images: torch.Tensor, nrow: int | None = None, scale: int = 4, pad: int = 1,
               value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """Tile ``[N, C, H, W]`` images (C = 1 or 3) into one ``[H', W', 3]`` uint8 picture."""
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be [N, 1|3, H, W]; got shape {tuple(images.shape)}")
    lo, hi = value_range
    x = ((images.detach().float().cpu() - lo) / (hi - lo)).clamp(0, 1)
    x = (x * 255 + 0.5).to(torch.uint8).numpy()
    if x.shape[1] == 1:
        x = np.repeat(x, 3, axis=1)
    x = x.repeat(scale, axis=2).repeat(scale, axis=3)
    n, _, h, w = x.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    ncol = math.ceil(n / nrow)
    out = np.full((ncol * (h + pad) + pad, nrow * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for k in range(n):
        r, c = divmod(k, nrow)
        out[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = \
            x[k].transpose(1, 2, 0)
    return out


def grid_png(images: torch.Tensor, **kw) -> bytes:
    """A grid PNG of ``images`` (``grid_array``'s keywords), as the bytes of the file."""
    return _png_bytes(grid_array(images, **kw))


def save_grid(images: torch.Tensor, path: str | Path, **kw) -> Path:
    """Write a grid PNG of ``images`` to ``path`` (through a temporary file and a rename)."""
    return atomic_write_bytes(Path(path), grid_png(images, **kw))
