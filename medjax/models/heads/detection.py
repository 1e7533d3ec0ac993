"""CenterNet-style detection on the ViT patch grid or, through a light upsampling neck, on a finer grid (2D or 3D).

Every cell of the output grid predicts, per object class, a centre heat-map logit, plus the object's size and the
position of its centre inside the cell. The output grid has a *stride* ``s`` (voxels per cell along each axis):
the patch itself (no neck, one cell per token) or a power of two below it. Coordinates are *continuous voxel
indices* of the model input (voxel ``i`` covers ``[i - 0.5, i + 0.5]``); cell ``g`` covers
``[g s - 0.5, (g + 1) s - 0.5)``.

- ``heatmap``: (B, *out_grid, K) logits; the target is a Gaussian peak (1 at the cell holding an object's centre).
- ``size``: (B, *out_grid, n) log of the box side lengths in voxels.
- ``offset``: (B, *out_grid, n) logits of the centre's fractional position in its cell, ``sigmoid(offset) in (0, 1)``.

The neck (:class:`DetectionNeck`) is the top of the UNETR decoder (:mod:`medjax.models.heads.unetr`): the last
encoder tokens on the patch grid, then one :class:`~medjax.models.heads.unetr.UpBlock` per factor of 2 down to the
stride, the last one concatenating low-level features of the image itself (the image folded space-to-depth to the
stride, then a :class:`~medjax.models.heads.unetr.ConvBlock`), since a lesion of 1-3 voxels is a contrast a
ViT patch token of 8^3 voxels barely keeps.

:func:`decode_boxes` turns outputs into the top-scoring boxes ``[lo_1..lo_n, hi_1..hi_n]`` (voxel coordinates,
``n`` = spatial dims, so ``[x0, y0, z0, x1, y1, z1]`` in 3D) after a 3x3(x3) max-pool peak test.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from medjax.models.heads.unetr import ConvBlock, UpBlock, _conv1, _levels, _stride
from medjax.models.layers import Dense
from medjax.models.vit import ViT

HEATMAP_PRIOR = 0.01  # initial centre probability of every cell (focal-loss bias init, as in CenterNet/RetinaNet)


def detection_stride(patch: Sequence[int], stride: int | None) -> tuple[int, ...]:
    """Voxels per output cell along each axis for a requested ``stride``: ``min(stride, p)`` per patch side ``p``;
    ``None`` or 0 means the patch itself (no neck).

    Raises:
      ValueError: ``stride`` is not a power of two, or a patch side is not a power of two while a finer stride is
        asked for (the neck halves the grid per stage).
    """
    patch = tuple(int(p) for p in patch)
    if not stride:
        return patch
    s = int(stride)
    if s < 1 or s & (s - 1):
        raise ValueError(f"detection stride {stride} must be a power of two (1, 2, 4, ...) or 0 for the patch grid")
    if s >= max(patch):
        return patch
    _levels(patch)  # power-of-two patch sides, or a ValueError naming them
    return tuple(min(s, p) for p in patch)


def _space_to_depth(x: jax.Array, factor: Sequence[int]) -> jax.Array:
    """(B, *S, C) -> (B, *(S / factor), prod(factor) * C): every ``factor`` block of voxels becomes one cell."""
    b, sp, c = x.shape[0], x.shape[1:-1], x.shape[-1]
    nd = len(sp)
    y = x.reshape(b, *[a for s, f in zip(sp, factor) for a in (s // f, f)], c)
    perm = (0, *[1 + 2 * i for i in range(nd)], *[2 + 2 * i for i in range(nd)], 1 + 2 * nd)
    return jnp.transpose(y, perm).reshape(b, *[s // f for s, f in zip(sp, factor)], math.prod(factor) * c)


class DetectionNeck(nnx.Module):
    """Patch-grid tokens + image -> features at the detection stride (UNETR decoder blocks, see module doc).

    Args:
      width: encoder width D.
      in_channels: image channels C.
      patch: the encoder's patch (power-of-two sides).
      stride: output stride per axis (from :func:`detection_stride`, finer than the patch on some axis).
      features: channels at full resolution; level ``j`` (stride ``2**j``) has ``features * 2**j`` (capped at 512),
        as in the UNETR decoder.

    Call: ``(tokens (B, *grid, D), images (B, *S, C)) -> (B, *S / stride, features * 2**m)`` float32 with
    ``2**m = max(stride)``.
    """

    def __init__(self, width: int, in_channels: int, patch: Sequence[int], stride: Sequence[int], features: int,
                 *, rngs: nnx.Rngs):
        n, m = _levels(patch), _levels(stride)
        nd = len(patch)
        ch = [min(512, int(features) * 2**j) for j in range(n + 1)]
        factor = [tuple(s1 // s0 for s0, s1 in zip(_stride(patch, j), _stride(patch, j + 1))) for j in range(n)]
        self.stride = tuple(int(s) for s in stride)
        self.channels = ch[m]
        self.bottom = nnx.Conv(width, ch[n], (1,) * nd, rngs=rngs)
        # the image, folded to the output stride: the low-level skip of the last stage
        self.stem = ConvBlock(in_channels * math.prod(self.stride), ch[m], nd, rngs=rngs)
        self.ups = nnx.List([UpBlock(ch[j + 1], ch[m] if j == m else 0, ch[j], factor[j], rngs=rngs)
                             for j in range(n - 1, m - 1, -1)])

    def __call__(self, tokens: jax.Array, images: jax.Array) -> jax.Array:
        x = _conv1(self.bottom, tokens.astype(jnp.float32))
        skip = self.stem(_space_to_depth(images.astype(jnp.float32), self.stride))
        last = len(self.ups) - 1
        for i, up in enumerate(self.ups):
            x = up(x, skip if i == last else None)
        return x


class ViTDetector(nnx.Module):
    """ViT encoder + detection head: a per-cell MLP on the patch-grid tokens, or on the features of a
    :class:`DetectionNeck` when ``stride`` is finer than the patch.

    Args:
      cfg: ``ModelConfig`` of the encoder.
      spatial_dims: 2 or 3.
      input_size: spatial size of the inputs (int or 1-tuple broadcast).
      num_classes: object classes K.
      hidden: width of the head's hidden layer.
      stride: voxels per output cell (power of two; ``None``/0 or >= the patch: the patch grid, no neck).
      features: the neck's channels at full resolution (see :class:`DetectionNeck`).
      rngs: ``nnx.Rngs``.

    Attributes: ``patch``, ``grid`` (the encoder's), ``stride`` (per axis), ``out_grid`` (input size / stride).

    Call: images (B, *S, C) -> dict ``heatmap`` (B, *out_grid, K), ``size`` (B, *out_grid, n), ``offset``
    (B, *out_grid, n), all float32.
    """

    def __init__(self, cfg, *, spatial_dims: int, input_size: Sequence[int] | int, num_classes: int = 1,
                 hidden: int = 128, stride: int | None = None, features: int = 16, rngs: nnx.Rngs):
        self.encoder = ViT(cfg, spatial_dims=spatial_dims, input_size=input_size, rngs=rngs)
        enc = self.encoder
        d = enc.width
        n = int(spatial_dims)
        self.spatial_dims = n
        self.num_classes = int(num_classes)
        self.patch = enc.patch
        self.grid = enc.grid
        self.stride = detection_stride(self.patch, stride)
        self.out_grid = tuple(g * p // s for g, p, s in zip(self.grid, self.patch, self.stride))
        if self.stride == tuple(self.patch):
            self.neck = None
        else:
            self.neck = DetectionNeck(d, enc.in_channels, self.patch, self.stride, features, rngs=rngs)
            d = self.neck.channels
        self.fc = Dense(d, hidden, names=("embed" if self.neck is None else None, "mlp"), rngs=rngs)
        self.heatmap = Dense(hidden, self.num_classes, names=("mlp", None), rngs=rngs)
        self.heatmap.bias[...] = jnp.full((self.num_classes,), math.log(HEATMAP_PRIOR / (1 - HEATMAP_PRIOR)))
        self.box = Dense(hidden, 2 * n, names=("mlp", None), rngs=rngs)

    def __call__(self, images: jax.Array, *, deterministic: bool = True) -> dict[str, jax.Array]:
        tokens = self.encoder(images, deterministic=deterministic)
        p = self.encoder.num_prefix_tokens
        b = images.shape[0]
        tokens = tokens[:, p:]
        if self.neck is not None:
            tokens = self.neck(tokens.reshape(b, *self.grid, tokens.shape[-1]), images)
        h = jax.nn.gelu(self.fc(tokens).astype(jnp.float32), approximate=False)
        heat = self.heatmap(h).astype(jnp.float32).reshape(b, *self.out_grid, self.num_classes)
        box = self.box(h).astype(jnp.float32).reshape(b, *self.out_grid, 2 * self.spatial_dims)
        n = self.spatial_dims
        return {"heatmap": heat, "size": box[..., :n], "offset": box[..., n:]}


def _peaks(prob: jax.Array) -> jax.Array:
    """Keep cells equal to their 3-neighbourhood maximum (B, *grid, K); others become 0."""
    nd = prob.ndim - 2
    window = (1,) + (3,) * nd + (1,)
    pooled = jax.lax.reduce_window(prob, -jnp.inf, jax.lax.max, window, (1,) * prob.ndim, "SAME")
    return jnp.where(prob >= pooled, prob, 0.0)


def decode_boxes(outputs: dict, stride: Sequence[int], top_k: int = 20):
    """Top-``top_k`` detections per image from :class:`ViTDetector` outputs on a grid of ``stride`` voxels per
    cell (the model's ``stride``: its patch without a neck).

    Returns ``(boxes, scores, classes)``: boxes (B, top_k, 2n) float32 continuous voxel coordinates
    ``[lo..., hi...]``, scores (B, top_k) in [0, 1] (peak heat-map probabilities; 0 for padding), classes
    (B, top_k) int32.
    """
    heat = jax.nn.sigmoid(outputs["heatmap"])
    b, *grid, k = heat.shape
    n = len(grid)
    stride_arr = jnp.asarray(stride, jnp.float32)
    flat = _peaks(heat).reshape(b, -1)
    top_k = min(int(top_k), flat.shape[1])
    scores, idx = jax.lax.top_k(flat, top_k)
    cell, cls = jnp.divmod(idx, k)
    coords = jnp.stack(jnp.unravel_index(cell, tuple(grid)), axis=-1).astype(jnp.float32)  # (B, top_k, n)
    size = outputs["size"].reshape(b, -1, n)
    offset = jax.nn.sigmoid(outputs["offset"]).reshape(b, -1, n)
    size = jnp.take_along_axis(size, cell[..., None], axis=1)
    offset = jnp.take_along_axis(offset, cell[..., None], axis=1)
    centre = (coords + offset) * stride_arr - 0.5
    side = jnp.exp(jnp.clip(size, -5.0, 8.0))
    boxes = jnp.concatenate([centre - side / 2, centre + side / 2], axis=-1)
    return boxes, scores, cls.astype(jnp.int32)
