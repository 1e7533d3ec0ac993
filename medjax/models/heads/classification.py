"""Classification head on a ViT encoder: pooled tokens -> (optional parameter-free BatchNorm) -> Linear.

Two recipes from the MAE paper:

- **Full fine-tuning**: global average pool of the patch tokens (or the CLS token when ``pool="cls"``, or the
  per-feature maximum over the patch tokens when ``pool="max"``, which keeps the evidence of an object that
  covers one patch of many, e.g. "is there a lesion anywhere in this crop"), then a Linear layer; the whole network trains (with layer-wise LR decay, see :mod:`medjax.finetune`).
- **Linear probing**: the encoder is frozen and a BatchNorm *without affine parameters* normalises the pooled
  features before the Linear layer (``probe_norm=True``). With a frozen encoder the normalisation statistics are
  a fixed property of the data: during training each batch is normalised with its own statistics, and the
  running statistics used at inference are set from the training features afterwards
  (:meth:`FeatureNorm.set_statistics`, "precise BN").
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from medjax.models.layers import Dense
from medjax.models.vit import ViT

_POOLS = ("mean", "max", "cls")


class FeatureNorm(nnx.Module):
    """BatchNorm over the batch axis of features (B, D) without scale or shift (no trainable parameters).

    ``deterministic=False`` normalises with the batch mean/variance; ``deterministic=True`` with the stored
    statistics ``mean``/``var`` (``nnx.BatchStat``, (D,) float32; initially 0 and 1, i.e. the identity).
    """

    def __init__(self, width: int, *, epsilon: float = 1e-6):
        self.epsilon = float(epsilon)
        self.mean = nnx.BatchStat(jnp.zeros((width,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((width,), jnp.float32))

    def __call__(self, x: jax.Array, *, deterministic: bool = True) -> jax.Array:
        x = x.astype(jnp.float32)
        if deterministic:
            mean, var = self.mean[...], self.var[...]
        else:
            mean, var = x.mean(axis=0), x.var(axis=0)
        return (x - mean) * jax.lax.rsqrt(var + self.epsilon)

    def set_statistics(self, mean: jax.Array, var: jax.Array) -> None:
        """Store the population statistics (D,) used at inference."""
        self.mean[...] = jnp.asarray(mean, jnp.float32)
        self.var[...] = jnp.asarray(var, jnp.float32)


class ViTClassifier(nnx.Module):
    """ViT encoder + classification head for 2D slices or 3D volumes.

    Args:
      cfg: ``ModelConfig`` of the encoder (as :class:`~medjax.models.vit.ViT`).
      spatial_dims: 2 or 3.
      input_size: spatial size (pixels/voxels) of the inputs (int or 1-tuple broadcast).
      num_classes: output logits K (classes for softmax; labels for multi-label sigmoid).
      pool: ``"mean"`` (average of the patch tokens), ``"max"`` (per-feature maximum over the patch tokens) or
        ``"cls"`` (the CLS token; needs ``cfg.cls_token``).
      probe_norm: put a :class:`FeatureNorm` (BatchNorm without affine) before the Linear layer (linear probing).
      rngs: ``nnx.Rngs``.

    Call: images (B, *S, C) -> logits (B, K) float32. ``features(images)`` gives the pooled (B, D) float32.
    """

    def __init__(self, cfg, *, spatial_dims: int, input_size: Sequence[int] | int, num_classes: int,
                 pool: str = "mean", probe_norm: bool = False, rngs: nnx.Rngs):
        if pool not in _POOLS:
            raise ValueError(f"classification pool={pool!r}: use one of {_POOLS}")
        if pool == "cls" and not cfg.cls_token:
            raise ValueError("classification pool='cls' needs model.cls_token=true")
        if num_classes < 1:
            raise ValueError(f"num_classes={num_classes} must be >= 1")
        self.encoder = ViT(cfg, spatial_dims=spatial_dims, input_size=input_size, rngs=rngs)
        self.pool = pool
        self.num_classes = int(num_classes)
        d = self.encoder.width
        self.probe_norm = FeatureNorm(d) if probe_norm else None
        self.head = Dense(d, self.num_classes, names=("embed", None), rngs=rngs)
        # small head init (MAE: trunc_normal std 2e-5 for fine-tuning, 0.01 for probing): start near uniform
        self.head.kernel[...] = self.head.kernel[...] * 0.01

    def features(self, images: jax.Array, *, deterministic: bool = True) -> jax.Array:
        """Pooled encoder features (B, D) float32 (before the probe norm)."""
        tokens = self.encoder(images, deterministic=deterministic)
        p = self.encoder.num_prefix_tokens
        if self.pool == "cls":
            return tokens[:, 0].astype(jnp.float32)
        patches = tokens[:, p:].astype(jnp.float32)
        return patches.max(axis=1) if self.pool == "max" else patches.mean(axis=1)

    def classify(self, feats: jax.Array, *, deterministic: bool = True) -> jax.Array:
        """Pooled features (B, D) -> logits (B, K) float32."""
        if self.probe_norm is not None:
            feats = self.probe_norm(feats, deterministic=deterministic)
        return self.head(feats).astype(jnp.float32)

    def __call__(self, images: jax.Array, *, deterministic: bool = True, frozen_encoder: bool = False) -> jax.Array:
        """Logits (B, K) float32 of images (B, *S, C). ``frozen_encoder`` stops gradients into the encoder."""
        feats = self.features(images, deterministic=deterministic)
        if frozen_encoder:
            feats = jax.lax.stop_gradient(feats)
        return self.classify(feats, deterministic=deterministic)
