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


def _group_norm(norm: nnx.GroupNorm, x: jax.Array) -> jax.Array:
    """``norm(x)`` for a channels-last ``nnx.GroupNorm`` (float32 inputs), with per-channel sums first.

    The group statistics are reduced over the voxels per channel, then over the channels of each group (two-pass
    variance), and the normalisation folds into one per-(sample, channel) scale and shift -- fewer passes over
    a full-resolution feature map than the generic implementation. Same maths (float summation order aside).
    """
    if (norm.axis_name is not None or norm.reduction_axes is not None or norm.dtype not in (None, jnp.float32)
            or x.dtype != jnp.float32):
        return norm(x)
    b, c, g = x.shape[0], x.shape[-1], norm.num_groups
    xr = x.reshape(b, -1, c)
    mean = jnp.repeat(jnp.mean(xr, axis=1).reshape(b, g, -1).mean(-1), c // g, axis=1)  # (B, C)
    d = xr - mean[:, None, :]
    var = jnp.mean(d * d, axis=1).reshape(b, g, -1).mean(-1)
    a = jnp.repeat(jax.lax.rsqrt(var + norm.epsilon), c // g, axis=1)
    if norm.scale is not None:
        a = a * norm.scale[...].astype(jnp.float32)
    shift = -mean * a
    if norm.bias is not None:
        shift = shift + norm.bias[...].astype(jnp.float32)
    bshape = (b,) + (1,) * (x.ndim - 2) + (c,)
    return x * a.reshape(bshape) + shift.reshape(bshape)


def _tup(v, nd: int) -> tuple:
    """A flax stride/dilation argument (None, int or sequence) as an ``nd``-tuple."""
    if v is None:
        return (1,) * nd
    return (int(v),) * nd if isinstance(v, int) else tuple(v)


def _plain(conv: nnx.Conv, padding: str | None = None) -> bool:
    """Whether ``conv`` is a stride-1, undilated, ungrouped convolution (with ``padding`` when given)."""
    nd = conv.kernel[...].ndim - 2
    return (all(s == 1 for s in _tup(conv.strides, nd)) and all(r == 1 for r in _tup(conv.input_dilation, nd))
            and all(r == 1 for r in _tup(conv.kernel_dilation, nd)) and conv.feature_group_count == 1
            and (padding is None or conv.padding == padding))


def _cpu_rewrites() -> bool:
    """Whether the CPU-specific convolution rewrites apply: only on XLA's CPU backend, where they were measured
    to help (3D and transposed convolutions take a slow generic path there); elsewhere the plain layers run
    (cuDNN / TPU convolutions are fast as they are)."""
    return jax.default_backend() == "cpu"


def _conv3(conv: nnx.Conv, x: jax.Array) -> jax.Array:
    """``conv(x)`` for a bias-free stride-1 ``SAME`` 3x3x3 ``nnx.Conv``, computed as 2D convolutions.

    Only on the CPU backend (:func:`_cpu_rewrites`). XLA's CPU backend runs 3D convolutions through a slow
    generic path; the same sum is cheaper as 2D
    convolutions over (H, W) with the depth folded into the batch: one per depth tap, or (for few input
    channels) one over the three depth taps stacked in the channel axis. Exactly the same maths (float
    summation order aside). Other kernels/dimensions fall back to ``conv(x)``.
    """
    kernel = conv.kernel[...]
    if (not _cpu_rewrites() or kernel.shape[:-2] != (3, 3, 3) or x.ndim != 5 or conv.bias is not None
            or not _plain(conv, "SAME")):
        return conv(x)
    dtype = jnp.result_type(x.dtype, kernel.dtype)
    x, kernel = x.astype(dtype), kernel.astype(dtype)
    b, d, h, w, c = x.shape
    o = kernel.shape[-1]
    dn = ("NHWC", "HWIO", "NHWC")
    xp = jnp.pad(x, ((0, 0), (1, 1), (0, 0), (0, 0), (0, 0)))
    if 3 * c <= 16:  # few channels: one 2D conv over the stacked depth taps
        xs = jnp.concatenate([xp[:, a:a + d] for a in range(3)], axis=-1).reshape(b * d, h, w, 3 * c)
        k2 = jnp.transpose(kernel, (1, 2, 0, 3, 4)).reshape(3, 3, 3 * c, o)
        y = jax.lax.conv_general_dilated(xs, k2, (1, 1), "SAME", dimension_numbers=dn)
        return y.reshape(b, d, h, w, o)
    # wide inputs into narrow outputs (a decoder stage's [upsampled, skip] concat) run faster as input-channel
    # chunks of ``o`` (XLA folds the slices of the concatenation back into its operands)
    step = o if (c > o and o <= 16 and c % o == 0) else c
    y = None
    for i in range(0, c, step):
        xc = xp if step == c else jnp.pad(x[..., i:i + step], ((0, 0), (1, 1), (0, 0), (0, 0), (0, 0)))
        for a in range(3):
            t = jax.lax.conv_general_dilated(xc[:, a:a + d].reshape(b * d, h, w, step),
                                             kernel[a, ..., i:i + step, :], (1, 1), "SAME", dimension_numbers=dn)
            y = t if y is None else y + t
    return y.reshape(b, d, h, w, o)


def _conv1(conv: nnx.Conv, x: jax.Array) -> jax.Array:
    """``conv(x)`` for a 1x1(x1) ``nnx.Conv``: a per-voxel matmul (+ bias)."""
    kernel = conv.kernel[...]
    if any(k != 1 for k in kernel.shape[:-2]) or not _plain(conv):
        return conv(x)
    dtype = jnp.result_type(x.dtype, kernel.dtype)
    y = x.astype(dtype) @ kernel.reshape(kernel.shape[-2], kernel.shape[-1]).astype(dtype)
    return y + conv.bias[...].astype(dtype) if conv.bias is not None else y


def _up(conv: nnx.ConvTranspose, x: jax.Array) -> jax.Array:
    """``conv(x)`` for an ``nnx.ConvTranspose`` with kernel size == stride and ``VALID`` padding.

    Such a transposed convolution never overlaps its kernel footprints: every input voxel writes its own
    ``k1 x ... x kn`` output block, ``out[s*i + a] = x[i] @ kernel[k-1-a]`` (lax.conv_transpose without
    ``transpose_kernel`` flips the kernel). That is a per-voxel Dense to ``prod(k) * C_out`` followed by a
    depth-to-space reshape/transpose -- much faster on XLA's CPU backend than its transposed convolution.
    Only on the CPU backend (:func:`_cpu_rewrites`).
    """
    kernel = conv.kernel[...]
    k = tuple(kernel.shape[:-2])
    nd = len(k)
    if (not _cpu_rewrites() or tuple(_tup(conv.strides, nd)) != k or conv.padding != "VALID"
            or conv.transpose_kernel or any(r != 1 for r in _tup(conv.kernel_dilation, nd))):
        return conv(x)
    cin, cout = kernel.shape[-2:]
    dtype = jnp.result_type(x.dtype, kernel.dtype)
    flipped = jnp.flip(kernel, axis=tuple(range(nd))).astype(dtype)
    w = jnp.moveaxis(flipped, nd, 0).reshape(cin, math.prod(k) * cout)
    batch, sp = x.shape[0], x.shape[1:-1]
    y = (x.astype(dtype).reshape(-1, cin) @ w).reshape(batch, *sp, *k, cout)
    # (B, s1..sn, k1..kn, C) -> (B, s1, k1, ..., sn, kn, C)
    perm = (0, *[a for i in range(nd) for a in (1 + i, 1 + nd + i)], 1 + 2 * nd)
    y = jnp.transpose(y, perm).reshape(batch, *[s * f for s, f in zip(sp, k)], cout)
    return y + conv.bias[...].astype(dtype) if conv.bias is not None else y


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
        h = jax.nn.leaky_relu(_group_norm(self.norm1, _conv3(self.conv1, x)), 0.01)
        h = _group_norm(self.norm2, _conv3(self.conv2, h))
        res = _conv1(self.proj, x) if self.proj is not None else x
        return jax.nn.leaky_relu(h + res, 0.01)


class UpBlock(nnx.Module):
    """Transposed convolution by ``factor`` per axis (kernel = stride), optional skip concat, then a ConvBlock."""

    def __init__(self, cin: int, cskip: int, cout: int, factor: Sequence[int], *, rngs: nnx.Rngs):
        nd = len(factor)
        self.factor = tuple(int(f) for f in factor)
        self.up = nnx.ConvTranspose(cin, cout, self.factor, strides=self.factor, padding="VALID", rngs=rngs)
        self.block = ConvBlock(cout + cskip, cout, nd, rngs=rngs)

    def __call__(self, x: jax.Array, skip: jax.Array | None = None) -> jax.Array:
        h = _up(self.up, x)
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
            x = block(_up(up, x))
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

    def __call__(self, images: jax.Array, *, deterministic: bool = True, return_features: bool = False):
        """Logits (B, *S, K) float32; with ``return_features`` also the last decoder stage's features
        (B, *S, features) float32 (the input of the 1x1 output convolution, e.g. for distillation)."""
        tokens, hidden = self.encoder(images, deterministic=deterministic, return_layers=self.skip_layers or (1,))
        n = self.levels
        skips = [self.stem(images.astype(jnp.float32))]
        skips += [path(self._grid(h)) for path, h in zip(self.skips, hidden[: n - 1])]
        x = _conv1(self.bottom, self._grid(tokens))
        for j, up in zip(range(n - 1, -1, -1), self.ups):
            x = up(x, skips[j])
        logits = _conv1(self.out, x).astype(jnp.float32)
        return (logits, x.astype(jnp.float32)) if return_features else logits
