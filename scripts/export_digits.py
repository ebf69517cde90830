"""Export scikit-learn's 8x8 digits once, as package data that fewstep reads without scikit-learn.

Writes ``src/fewstep/models/data/digits.npz`` with three arrays:

- ``images``: uint8 ``[1797, 64]``, pixel values 0..16 (row-major 8x8), exactly as in sklearn;
- ``labels``: uint8 ``[1797]``, the digit 0..9;
- ``heldout``: bool ``[1797]``, the fixed held-out split (a seeded permutation, 20 % of the
  images), which the digits classifier never sees in training.

The archive is byte-reproducible: members are written in a fixed order with a fixed timestamp.
Run from the repository root:

    .venv/bin/python scripts/export_digits.py
"""

from __future__ import annotations

import argparse
import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np

SPLIT_SEED = 20190415
HELDOUT_FRACTION = 0.2
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src/fewstep/models/data/digits.npz"


def heldout_mask(n: int, seed: int = SPLIT_SEED, fraction: float = HELDOUT_FRACTION) -> np.ndarray:
    """Marks ``round(fraction * n)`` images, chosen by a seeded permutation, as held out."""
    perm = np.random.default_rng(seed).permutation(n)
    mask = np.zeros(n, dtype=bool)
    mask[perm[: round(fraction * n)]] = True
    return mask


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Writes a compressed ``.npz`` that ``np.load`` reads, with fixed member timestamps."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for name, array in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue(), compresslevel=9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output .npz path")
    args = parser.parse_args()

    from sklearn.datasets import load_digits  # only this script needs scikit-learn

    digits = load_digits()
    data = np.asarray(digits.data)
    if data.min() < 0 or data.max() > 16 or not np.array_equal(data, np.round(data)):
        raise RuntimeError("sklearn digits are expected to hold integers 0..16")
    arrays = {
        "images": data.astype(np.uint8),
        "labels": np.asarray(digits.target).astype(np.uint8),
        "heldout": heldout_mask(len(data)),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_npz(args.out, arrays)
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    n_held = int(arrays["heldout"].sum())
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes, sha256 {digest})")
    print(f"{len(data)} images, {len(data) - n_held} train / {n_held} held out (seed {SPLIT_SEED})")


if __name__ == "__main__":
    main()
