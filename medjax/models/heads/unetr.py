"""UNETR-style segmentation: a ViT encoder and a convolutional decoder over features from several encoder depths.

For a patch of ``p = 2**n`` voxels the decoder works on ``n + 1`` resolution levels: level 0 is the input
resolution, level ``n`` the patch grid. Level ``j`` (``1 <= j < n``) gets a skip connection from the tokens of
encoder block ``round(depth * j / n)`` (1/4, 2/4, 3/4 of the depth for 16-voxel patches, as in UNETR),
reshaped to the grid and brought up to level ``j`` by ``n - j`` transposed convolutions; level 0 gets a
convolution of the input image; the last encoder output starts the decoder at level ``n``. Each decoder stage
upsamples by 2 (transposed convolution), concatenates the skip and applies a residual convolution block.
Non-cubic patches (``16x16x8``) work too: an axis whose patch is already reached is no longer upsampled.

2D and 3D share one code path (convolutions with ``spatial_dims`` kernel axes), channels last.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from medjax.models.vit import ViT


def _levels(patch: Sequence[int]) -> int:
    """``n`` with ``max(patch) == 2**n``; ValueError unless every patch side is a power of two."""
    for p in patch:
        if p < 1 or p & (p - 1):
            raise ValueError(f"UNETR needs power-of-two patch sizes, got patch {tuple(patch)}")
    return int(math.log2(max(patch)))


def _stride(patch: Sequence[int], level: int) -> tuple[int, ...]:
    """Voxels per feature-map cell at ``level`` along each axis (``min(2**level, p)``)."""
    return tuple(min(2**level, int(p)) for p in patch)


def skip_layers(depth: int, patch: Sequence[int]) -> tuple[int, ...]:
    """1-based encoder blocks feeding the skip connections of levels ``1 .. n-1`` (see module doc)."""
    n = _levels(patch)
    return tuple(max(1, min(depth, round(depth * j / n))) for j in range(1, n))


def _norm(channels: int, rngs: nnx.Rngs) -> nnx.GroupNorm:
    groups = math.gcd(channels, 8)
    return nnx.GroupNorm(channels, num_groups=groups, epsilon=1e-5, rngs=rngs)


class ConvBlock(nnx.Module):
    """Residual block: conv3 -> GroupNorm -> LeakyReLU -> conv3 -> GroupNorm, plus a 1x1 projection shortcut."""

    def __init__(self, cin: int, cout: int, spatial_dims: int, *, rngs: nnx.Rngs):
        k3, k1 = (3,) * spatial_dims, (1,) * spatial_dims
        self.conv1 = nnx.Conv(cin, cout, k3, padding="SAME", use_bias=False, rngs=rngs)
        self.norm1 = _norm(cout, rngs)
        self.conv2 = nnx.Conv(cout, cout, k3, padding="SAME", use_bias=False, rngs=rngs)
        self.norm2 = _norm(cout, rngs)
        self.proj = nnx.Conv(cin, cout, k1, use_bias=False, rngs=rngs) if cin != cout else None

    def __call__(self, x: jax.Array) -> jax.Array:
        h = jax.nn.leaky_relu(self.norm1(self.conv1(x)), 0.01)
        h = self.norm2(self.conv2(h))
        res = self.proj(x) if self.proj is not None else x
        return jax.nn.leaky_relu(h + res, 0.01)


class UpBlock(nnx.Module):
    """Transposed convolution by ``factor`` per axis (kernel = stride), optional skip concat, then a ConvBlock."""

    def __init__(self, cin: int, cskip: int, cout: int, factor: Sequence[int], *, rngs: nnx.Rngs):
        nd = len(factor)
        self.factor = tuple(int(f) for f in factor)
        self.up = nnx.ConvTranspose(cin, cout, self.factor, strides=self.factor, padding="VALID", rngs=rngs)
        self.block = ConvBlock(cout + cskip, cout, nd, rngs=rngs)

    def __call__(self, x: jax.Array, skip: jax.Array | None = None) -> jax.Array:
        h = self.up(x)
        if skip is not None:
            h = jnp.concatenate([h, skip.astype(h.dtype)], axis=-1)
        return self.block(h)


class _SkipPath(nnx.Module):
    """Grid-resolution tokens (B, *grid, D) -> level ``j`` features via ``n - j`` transposed convs + blocks."""

    def __init__(self, width: int, channels: int, factors: list[tuple[int, ...]], *, rngs: nnx.Rngs):
        nd = len(factors[0])
        self.ups = nnx.List([
            nnx.ConvTranspose(width if i == 0 else channels, channels, f, strides=f, padding="VALID", rngs=rngs)
            for i, f in enumerate(factors)
        ])
        self.convs = nnx.List([ConvBlock(channels, channels, nd, rngs=rngs) for _ in factors])

    def __call__(self, x: jax.Array) -> jax.Array:
        for up, block in zip(self.ups, self.convs):
            x = block(up(x))
        return x


class UNETR(nnx.Module):
    """ViT encoder + UNETR decoder: images (B, *S, C) -> logits (B, *S, K) float32.

    Args:
      cfg: ``ModelConfig`` of the encoder.
      spatial_dims: 2 or 3.
      input_size: spatial size of the inputs (int or 1-tuple broadcast); each side divides by the patch.
      num_classes: K output channels (labels including background).
      features: channels at level 0; level ``j`` has ``features * 2**j`` (capped at 512).
      rngs: ``nnx.Rngs``.

    Attributes: ``encoder`` (ViT), ``levels`` (n), ``skip_layers`` (encoder blocks used for skips).
    """

    def __init__(self, cfg, *, spatial_dims: int, input_size: Sequence[int] | int, num_classes: int,
                 features: int = 16, rngs: nnx.Rngs):
        self.encoder = ViT(cfg, spatial_dims=spatial_dims, input_size=input_size, rngs=rngs)
        enc = self.encoder
        patch = enc.patch
        n = _levels(patch)
        if n < 1:
            raise ValueError(f"UNETR needs a patch of at least 2 voxels, got {patch}")
        self.levels = n
        self.num_classes = int(num_classes)
        self.skip_layers = skip_layers(len(enc.blocks), patch)
        nd = int(spatial_dims)
        ch = [min(512, int(features) * 2**j) for j in range(n + 1)]
        factor = [tuple(s1 // s0 for s0, s1 in zip(_stride(patch, j), _stride(patch, j + 1))) for j in range(n)]
        d = enc.width
        self.stem = ConvBlock(enc.in_channels, ch[0], nd, rngs=rngs)  # level 0 skip from the image
        # level j skip: up from the grid (level n) to level j, one factor per level passed
        self.skips = nnx.List([
            _SkipPath(d, ch[j], [factor[i] for i in range(n - 1, j - 1, -1)], rngs=rngs) for j in range(1, n)
        ])
        self.bottom = nnx.Conv(d, ch[n], (1,) * nd, rngs=rngs)
        # decoder stage from level j+1 to level j (stored from the top: j = n-1 ... 0)
        self.ups = nnx.List([UpBlock(ch[j + 1], ch[j], ch[j], factor[j], rngs=rngs) for j in range(n - 1, -1, -1)])
        self.out = nnx.Conv(ch[0], self.num_classes, (1,) * nd, rngs=rngs)

    def _grid(self, tokens: jax.Array) -> jax.Array:
        """(B, P + L, D) tokens -> (B, *grid, D) float32 without the prefix tokens."""
        p = self.encoder.num_prefix_tokens
        return tokens[:, p:].astype(jnp.float32).reshape(tokens.shape[0], *self.encoder.grid, tokens.shape[-1])

    def __call__(self, images: jax.Array, *, deterministic: bool = True) -> jax.Array:
        tokens, hidden = self.encoder(images, deterministic=deterministic, return_layers=self.skip_layers or (1,))
        n = self.levels
        skips = [self.stem(images.astype(jnp.float32))]
        skips += [path(self._grid(h)) for path, h in zip(self.skips, hidden[: n - 1])]
        x = self.bottom(self._grid(tokens))
        for j, up in zip(range(n - 1, -1, -1), self.ups):
            x = up(x, skips[j])
        return self.out(x).astype(jnp.float32)
