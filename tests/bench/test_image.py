"""fewstep.bench.image: the grid layout, the value mapping, and a PNG that decodes back to the grid."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch

from fewstep.bench.image import grid_array, save_grid


def _decode_png(data: bytes) -> np.ndarray:
    """A minimal decoder for what ``save_grid`` writes: 8-bit RGB, one IDAT, filter 0 on every row."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        tag, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])
        assert crc == zlib.crc32(tag + body) & 0xFFFFFFFF
        chunks.append((tag, body))
        pos += 12 + n
    assert [t for t, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"]
    w, h, depth, color, *_ = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, color) == (8, 2)
    raw = np.frombuffer(zlib.decompress(chunks[1][1]), dtype=np.uint8).reshape(h, 1 + 3 * w)
    assert (raw[:, 0] == 0).all()
    return raw[:, 1:].reshape(h, w, 3)


def test_grid_layout_and_values():
    images = torch.linspace(-1, 1, 5)[:, None, None, None].expand(5, 1, 2, 3)  # image k is one flat grey
    out = grid_array(images, scale=2, pad=1)
    nrow, ncol, h, w = 3, 2, 4, 6  # ceil(sqrt(5)) per row; each image scaled 2x
    assert out.dtype == np.uint8 and out.shape == (ncol * (h + 1) + 1, nrow * (w + 1) + 1, 3)
    expected = [0, 64, 128, 191, 255]  # [-1, 1] -> [0, 255], rounded
    for k, v in enumerate(expected):
        r, c = divmod(k, nrow)
        tile = out[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + c * (w + 1):1 + c * (w + 1) + w]
        assert (tile == v).all()
    mask = np.ones(out.shape[:2], bool)
    for k in range(5):
        r, c = divmod(k, nrow)
        mask[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + c * (w + 1):1 + c * (w + 1) + w] = False
    assert (out[mask] == 255).all()  # padding and the empty sixth cell are white


def test_colour_clipping_range_and_row_length():
    x = torch.tensor([-3.0, 0.0, 3.0]).reshape(1, 3, 1, 1)  # RGB channels of one pixel, beyond the range
    assert grid_array(x, scale=1, pad=0).tolist() == [[[0, 128, 255]]]
    assert grid_array(torch.zeros(1, 1, 1, 1), scale=1, pad=0, value_range=(0.0, 2.0)).tolist() == [[[0, 0, 0]]]
    assert grid_array(torch.zeros(4, 2, 2), nrow=4, scale=1, pad=0).shape == (2, 8, 3)  # [N, H, W]: one channel


def test_bad_shapes_are_refused():
    for bad in (torch.zeros(2, 2, 4, 4), torch.zeros(4, 4), torch.zeros(1, 1, 1, 4, 4)):
        with pytest.raises(ValueError, match=r"images must be \[N, 1\|3, H, W\]"):
            grid_array(bad)


def test_save_grid_writes_a_png_of_the_grid(tmp_path):
    images = torch.rand(7, 3, 5, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
    path = save_grid(images, tmp_path / "g.png", scale=3)
    assert path == tmp_path / "g.png"
    np.testing.assert_array_equal(_decode_png(path.read_bytes()), grid_array(images, scale=3))
