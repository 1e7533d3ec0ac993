"""CenterNet-style detection on the ViT patch grid (2D or 3D).

Every patch-grid cell predicts, per object class, a centre heat-map logit, plus the object's size and the
position of its centre inside the cell. Coordinates are *continuous voxel indices* of the model input (voxel
``i`` covers ``[i - 0.5, i + 0.5]``); cell ``g`` of a patch ``p`` covers ``[g p - 0.5, (g + 1) p - 0.5)``.

- ``heatmap``: (B, *grid, K) logits; the target is a Gaussian peak (1 at the cell holding an object's centre).
- ``size``: (B, *grid, n) log of the box side lengths in voxels.
- ``offset``: (B, *grid, n) logits of the centre's fractional position in its cell, ``sigmoid(offset) in (0, 1)``.

:func:`decode_boxes` turns outputs into the top-scoring boxes ``[lo_1..lo_n, hi_1..hi_n]`` (voxel coordinates,
``n`` = spatial dims, so ``[x0, y0, z0, x1, y1, z1]`` in 3D) after a 3x3(x3) max-pool peak test.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from medjax.models.layers import Dense
from medjax.models.vit import ViT

HEATMAP_PRIOR = 0.01  # initial centre probability of every cell (focal-loss bias init, as in CenterNet/RetinaNet)


class ViTDetector(nnx.Module):
    """ViT encoder + per-cell detection head (LayerNorm-free MLP on each grid token).

    Args:
      cfg: ``ModelConfig`` of the encoder.
      spatial_dims: 2 or 3.
      input_size: spatial size of the inputs (int or 1-tuple broadcast).
      num_classes: object classes K.
      hidden: width of the head's hidden layer.
      rngs: ``nnx.Rngs``.

    Call: images (B, *S, C) -> dict ``heatmap`` (B, *grid, K), ``size`` (B, *grid, n), ``offset`` (B, *grid, n),
    all float32.
    """

    def __init__(self, cfg, *, spatial_dims: int, input_size: Sequence[int] | int, num_classes: int = 1,
                 hidden: int = 128, rngs: nnx.Rngs):
        self.encoder = ViT(cfg, spatial_dims=spatial_dims, input_size=input_size, rngs=rngs)
        d = self.encoder.width
        n = int(spatial_dims)
        self.spatial_dims = n
        self.num_classes = int(num_classes)
        self.patch = self.encoder.patch
        self.grid = self.encoder.grid
        self.fc = Dense(d, hidden, names=("embed", "mlp"), rngs=rngs)
        self.heatmap = Dense(hidden, self.num_classes, names=("mlp", None), rngs=rngs)
        self.heatmap.bias[...] = jnp.full((self.num_classes,), math.log(HEATMAP_PRIOR / (1 - HEATMAP_PRIOR)))
        self.box = Dense(hidden, 2 * n, names=("mlp", None), rngs=rngs)

    def __call__(self, images: jax.Array, *, deterministic: bool = True) -> dict[str, jax.Array]:
        tokens = self.encoder(images, deterministic=deterministic)
        p = self.encoder.num_prefix_tokens
        h = jax.nn.gelu(self.fc(tokens[:, p:]).astype(jnp.float32), approximate=False)
        b = images.shape[0]
        grid = self.grid
        heat = self.heatmap(h).astype(jnp.float32).reshape(b, *grid, self.num_classes)
        box = self.box(h).astype(jnp.float32).reshape(b, *grid, 2 * self.spatial_dims)
        n = self.spatial_dims
        return {"heatmap": heat, "size": box[..., :n], "offset": box[..., n:]}


def _peaks(prob: jax.Array) -> jax.Array:
    """Keep cells equal to their 3-neighbourhood maximum (B, *grid, K); others become 0."""
    nd = prob.ndim - 2
    window = (1,) + (3,) * nd + (1,)
    pooled = jax.lax.reduce_window(prob, -jnp.inf, jax.lax.max, window, (1,) * prob.ndim, "SAME")
    return jnp.where(prob >= pooled, prob, 0.0)


def decode_boxes(outputs: dict, patch: Sequence[int], top_k: int = 20):
    """Top-``top_k`` detections per image from :class:`ViTDetector` outputs.

    Returns ``(boxes, scores, classes)``: boxes (B, top_k, 2n) float32 continuous voxel coordinates
    ``[lo..., hi...]``, scores (B, top_k) in [0, 1] (peak heat-map probabilities; 0 for padding), classes
    (B, top_k) int32.
    """
    heat = jax.nn.sigmoid(outputs["heatmap"])
    b, *grid, k = heat.shape
    n = len(grid)
    patch_arr = jnp.asarray(patch, jnp.float32)
    flat = _peaks(heat).reshape(b, -1)
    top_k = min(int(top_k), flat.shape[1])
    scores, idx = jax.lax.top_k(flat, top_k)
    cell, cls = jnp.divmod(idx, k)
    coords = jnp.stack(jnp.unravel_index(cell, tuple(grid)), axis=-1).astype(jnp.float32)  # (B, top_k, n)
    size = outputs["size"].reshape(b, -1, n)
    offset = jax.nn.sigmoid(outputs["offset"]).reshape(b, -1, n)
    size = jnp.take_along_axis(size, cell[..., None], axis=1)
    offset = jnp.take_along_axis(offset, cell[..., None], axis=1)
    centre = (coords + offset) * patch_arr - 0.5
    side = jnp.exp(jnp.clip(size, -5.0, 8.0))
    boxes = jnp.concatenate([centre - side / 2, centre + side / 2], axis=-1)
    return boxes, scores, cls.astype(jnp.int32)
