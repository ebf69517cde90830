"""Train the bundled digits classifier (``fewstep.metrics.features.DigitsNet``), deterministically.

Trains on the fixed train split of the 8x8 digits (``fewstep.models.digits_data``), reports the
accuracy on the held-out split, and writes

- ``src/fewstep/metrics/data/digits_cnn.safetensors`` (float32 weights; metadata holds the
  seed, epochs, held-out accuracy and torch version). It prints the file's SHA-256, which goes into
  ``BUNDLED_SHA256`` in ``src/fewstep/_verify.py`` (checked at load).

Runs on 2 CPU threads with a fixed seed; it takes well under a minute. From the repository root:

    .venv/bin/python scripts/train_classifier.py
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from fewstep.metrics.features import WEIGHTS_PATH, DigitsNet, load_digits_net
from fewstep.models.digits_data import digits_data

SEED = 0
EPOCHS = 60
BATCH = 64
LR = 3e-3
WEIGHT_DECAY = 5e-2


def random_shift(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Shifts each ``[N, 1, 8, 8]`` image by -1..1 pixels per axis, filling with background -1."""
    n = x.shape[0]
    padded = F.pad(x, (1, 1, 1, 1), value=-1.0)
    dy, dx = torch.randint(0, 3, (2, n), generator=generator)
    rows = (dy[:, None] + torch.arange(8))[:, :, None].expand(n, 8, 8)
    cols = (dx[:, None] + torch.arange(8))[:, None, :].expand(n, 8, 8)
    batch = torch.arange(n)[:, None, None].expand(n, 8, 8)
    return padded[batch, 0, rows, cols][:, None]


def accuracy(net: DigitsNet, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.inference_mode():
        return (net(x).argmax(1) == y).double().mean().item()


def train(epochs: int, seed: int) -> tuple[DigitsNet, float]:
    """Adam with a cosine learning-rate decay and +-1 pixel shift augmentation."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    x_train, y_train = digits_data("train")
    x_train = x_train.reshape(-1, 1, 8, 8)
    x_held, y_held = digits_data("heldout")
    x_held = x_held.reshape(-1, 1, 8, 8)

    net = DigitsNet()
    opt = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    steps_per_epoch = -(-len(x_train) // BATCH)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    for epoch in range(epochs):
        net.train()
        perm = torch.randperm(len(x_train), generator=generator)
        total = 0.0
        for idx in perm.split(BATCH):
            xb = random_shift(x_train[idx], generator)
            loss = F.cross_entropy(net(xb), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        if (epoch + 1) % 10 == 0 or epoch == 0:
            net.eval()
            print(
                f"epoch {epoch + 1:3d}  loss {total / len(x_train):.4f}  "
                f"train acc {accuracy(net, x_train, y_train):.4f}  "
                f"held-out acc {accuracy(net, x_held, y_held):.4f}"
            )
    net.eval()
    return net, accuracy(net, x_held, y_held)


def save_weights(state: dict[str, torch.Tensor], info: dict, out: Path) -> str:
    """Writes safetensors; returns the digest to commit in ``fewstep._verify.BUNDLED_SHA256``.

    The metadata is one JSON string with sorted keys: safetensors writes a multi-key metadata map
    in an arbitrary order, which would make the file bytes (and so the checksum) vary by run.
    """
    from safetensors.torch import save_file

    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out), metadata={"fewstep": json.dumps(info, sort_keys=True)})
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    return digest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=WEIGHTS_PATH, help="output .safetensors path")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()

    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    start = time.perf_counter()
    net, held_acc = train(args.epochs, args.seed)
    seconds = time.perf_counter() - start

    state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    info = {
        "model": "fewstep.metrics.features.DigitsNet",
        "input": "[N,1,8,8] digits scaled p/8-1",
        "seed": args.seed,
        "epochs": args.epochs,
        "heldout_accuracy": round(held_acc, 4),
        "torch": torch.__version__.split("+")[0],
    }
    digest = save_weights(state, info, args.out)
    reloaded = load_digits_net(args.out)  # round trip through the verified loader
    x_held, y_held = digits_data("heldout")
    if accuracy(reloaded, x_held.reshape(-1, 1, 8, 8), y_held) != held_acc:
        raise RuntimeError(f"reloaded weights from {args.out} do not reproduce the trained net")
    n_params = sum(v.numel() for v in state.values())
    print(f"held-out accuracy {held_acc:.4f} on {len(y_held)} images")
    print(f"{n_params} parameters, {args.out.stat().st_size} bytes, sha256 {digest}")
    print(f"training time {seconds:.1f} s on {torch.get_num_threads()} CPU threads")


if __name__ == "__main__":
    main()
