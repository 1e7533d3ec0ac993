"""Per-sample random patch masking for MAE and the masked reconstruction loss."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Masking(NamedTuple):
    ids_keep: jax.Array  # (B, K) int32: indices of the visible patches, in shuffle order
    ids_restore: jax.Array  # (B, L) int32: position of each patch in the shuffled order (unshuffles)
    mask: jax.Array  # (B, L) float32: 1 = masked (hidden from the encoder), 0 = visible


def num_visible(num_patches: int, mask_ratio: float) -> int:
    """Visible patches K = round(L * (1 - mask_ratio)); ValueError unless 0 <= mask_ratio < 1 and K >= 1."""
    mask_ratio = float(mask_ratio)
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio={mask_ratio} must be in [0, 1)")
    keep = int(round(num_patches * (1.0 - mask_ratio)))
    if keep < 1:
        raise ValueError(f"mask_ratio={mask_ratio} leaves no visible patch out of {num_patches}; lower it")
    return min(keep, num_patches)


def random_masking(key: jax.Array, batch: int, num_patches: int, mask_ratio: float) -> Masking:
    """Draw an independent random mask per sample: uniform noise -> argsort -> keep the first K.

    Every sample has exactly K = :func:`num_visible` visible patches. ``mask_ratio`` is a static Python float.
    """
    keep = num_visible(num_patches, mask_ratio)
    noise = jax.random.uniform(key, (batch, num_patches))
    ids_shuffle = jnp.argsort(noise, axis=1).astype(jnp.int32)
    ids_restore = jnp.argsort(ids_shuffle, axis=1).astype(jnp.int32)
    ids_keep = ids_shuffle[:, :keep]
    # rank < keep <=> visible
    mask = (ids_restore >= keep).astype(jnp.float32)
    return Masking(ids_keep=ids_keep, ids_restore=ids_restore, mask=mask)


def patch_norm_stats(patches: jax.Array, eps: float = 1e-6, ddof: int = 0) -> tuple[jax.Array, jax.Array]:
    """Per-patch mean and std sqrt(var + eps) over the last axis of (B, L, P); each (B, L, 1) float32.

    ``ddof=1`` gives the unbiased variance (the MAE reference implementation and Hugging Face ViTMAE)."""
    patches = patches.astype(jnp.float32)
    mean = patches.mean(axis=-1, keepdims=True)
    var = patches.var(axis=-1, keepdims=True, ddof=ddof)
    return mean, jnp.sqrt(var + eps)


def masked_mse(pred: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
    """MSE averaged over each patch's P values, then over masked patches (mask == 1) only; float32 scalar.

    pred, target (B, L, P); mask (B, L). Returns 0 when nothing is masked.
    """
    per_patch = jnp.mean(jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32)), axis=-1)
    mask = mask.astype(jnp.float32)
    return jnp.sum(per_patch * mask) / jnp.maximum(jnp.sum(mask), 1.0)
