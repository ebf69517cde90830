"""The small convolutional U-Net shared by the bundled digits models (``fewstep.models.trained``).

One architecture serves all three parameterisations (EDM ``F``, flow velocity, DDPM eps): a
U-Net (Ronneberger et al. 2015, arXiv 1505.04597) in the style of DDPM (Ho et al., arXiv
2006.11239): residual blocks with GroupNorm and SiLU, a sinusoidal time embedding fed to every
block as a per-channel scale and shift (the adaptive GroupNorm of Dhariwal & Nichol, arXiv
2105.05233), and zero-initialised output convolutions so each block starts as the identity.

The images are 8x8, so the levels run 8x8 -> 4x4 -> 2x2; the 2x2 level gives every pixel a
receptive field that covers the whole digit.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["UNetConfig", "DigitsUNet", "SinusoidalEmbedding"]

Tensor = torch.Tensor
# Every bundled network is called on at least this many rows (fewstep.diffusion.adapters.call_net): CPU kernels
# pick other algorithms below 8 rows (2 threads) or 16 (1 thread), so a sample would depend on its batch.
MIN_BATCH = 16


@dataclass(frozen=True)
class UNetConfig:
    """The hyper-parameters of a ``DigitsUNet``; round-trips through ``asdict`` / ``UNetConfig(**d)``.

    Attributes:
        channels: channels per level; level ``i`` works at resolution ``8 / 2**i``.
        blocks: residual blocks per level on each side of the U.
        emb_dim: width of the time embedding.
        time_scale: the time input ``t`` is embedded as ``sin/cos(time_scale * t * freq)``; choose
            it so that ``time_scale * t`` spans about [0, 1000] (DDPM's timestep range).
        groups: GroupNorm groups.
    """

    channels: tuple[int, ...] = (32, 64, 128)
    blocks: int = 1
    emb_dim: int = 128
    time_scale: float = 1.0
    groups: int = 8

    def __post_init__(self):
        ch = tuple(int(c) for c in self.channels)
        object.__setattr__(self, "channels", ch)
        if not 1 <= len(ch) <= 4:
            raise ValueError(f"channels must list 1 to 4 levels (8x8 down to 1x1); got {ch}")
        if any(c <= 0 or c % self.groups for c in ch):
            raise ValueError(f"every channel count must be a positive multiple of groups={self.groups}; got {ch}")
        if self.blocks < 1:
            raise ValueError(f"blocks must be >= 1; got {self.blocks}")
        if self.emb_dim < 2 or self.emb_dim % 2:
            raise ValueError(f"emb_dim must be an even number >= 2; got {self.emb_dim}")
        if not (math.isfinite(self.time_scale) and self.time_scale > 0):
            raise ValueError(f"time_scale must be positive and finite; got {self.time_scale}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d


class SinusoidalEmbedding(nn.Module):
    """Transformer positional encoding of a scalar time (Vaswani et al. 2017; as in DDPM).

    ``emb(t) = [cos(s t f_k), sin(s t f_k)]`` with ``f_k = 10000^(-k / (dim/2))``, ``s = scale``.
    """

    def __init__(self, dim: int, scale: float = 1.0, max_period: float = 10_000.0):
        super().__init__()
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float64) / half)
        self.register_buffer("freqs", (freqs * scale).float(), persistent=False)

    def forward(self, t: Tensor) -> Tensor:
        arg = t.to(self.freqs.dtype)[:, None] * self.freqs[None, :]
        return torch.cat([torch.cos(arg), torch.sin(arg)], dim=1)


class ResBlock(nn.Module):
    """GN-SiLU-conv, adaptive GN (scale/shift from the embedding), SiLU, conv; plus a skip."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * c_out)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(F.silu(h))
        return self.skip(x) + h


class DigitsUNet(nn.Module):
    """``net(x, t) -> y``, all ``[B, 1, 8, 8]``; ``t`` is ``[B]`` (or a scalar) in the model's own time.

    The output means whatever the net was trained to predict (EDM ``F``, velocity or eps).
    """

    def __init__(self, config: UNetConfig | None = None, **kw):
        super().__init__()
        if config is None:
            config = UNetConfig(**kw)
        elif kw:
            raise TypeError(f"give either a UNetConfig or keywords, not both; got extra {sorted(kw)}")
        self.config = config
        ch, g, e = config.channels, config.groups, config.emb_dim
        self.time = SinusoidalEmbedding(e, config.time_scale)
        self.time_mlp = nn.Sequential(nn.Linear(e, e), nn.SiLU(), nn.Linear(e, e))
        self.conv_in = nn.Conv2d(1, ch[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        self.downsample = nn.ModuleList()
        c_prev = ch[0]
        for i, c in enumerate(ch):
            self.down_blocks.append(nn.ModuleList(
                ResBlock(c_prev if b == 0 else c, c, e, g) for b in range(config.blocks)))
            c_prev = c
            if i + 1 < len(ch):
                self.downsample.append(nn.Conv2d(c, ch[i + 1], 3, stride=2, padding=1))
                c_prev = ch[i + 1]
        self.mid = ResBlock(ch[-1], ch[-1], e, g)
        self.up_blocks = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i in reversed(range(len(ch))):
            c = ch[i]
            self.up_blocks.append(nn.ModuleList(
                ResBlock(2 * c if b == 0 else c, c, e, g) for b in range(config.blocks)))
            if i > 0:
                self.upsample.append(nn.Conv2d(c, ch[i - 1], 3, padding=1))
        self.norm_out = nn.GroupNorm(g, ch[0])
        self.conv_out = nn.Conv2d(ch[0], 1, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.trunk(x, self.embed_time(self.check_inputs(x, t)))

    @staticmethod
    def check_inputs(x: Tensor, t: Tensor) -> Tensor:
        """Validate ``x`` ``[B, 1, 8, 8]`` and return ``t`` as ``[B]`` in ``x``'s dtype and device."""
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, 8, 8):
            raise ValueError(f"x must have shape [B, 1, 8, 8]; got {tuple(x.shape)}")
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must be a scalar or have shape [B] = [{x.shape[0]}]; got {tuple(t.shape)}")
        return t

    def embed_time(self, t: Tensor) -> Tensor:
        """The time embedding ``[B, emb_dim]`` that every residual block is modulated by."""
        return self.time_mlp(self.time(t).to(self.conv_in.weight.dtype))

    def trunk(self, x: Tensor, emb: Tensor) -> Tensor:
        """The U-Net proper, ``[B, 1, 8, 8] -> [B, 1, 8, 8]``, given an embedding ``[B, emb_dim]``.

        Subclasses that add a condition to the embedding call this with their own ``emb``.
        """
        h = self.conv_in(x)
        skips = []
        for i, blocks in enumerate(self.down_blocks):
            for block in blocks:
                h = block(h, emb)
            skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
        h = self.mid(h, emb)
        for j, blocks in enumerate(self.up_blocks):
            h = torch.cat([h, skips.pop()], dim=1)
            for block in blocks:
                h = block(h, emb)
            if j < len(self.upsample):
                h = self.upsample[j](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
