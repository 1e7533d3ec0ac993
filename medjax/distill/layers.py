"""Which student blocks learn which teacher blocks (``distill.layers``) and the token/attention matching between
them, for representation distillation on intermediate layers and attention maps.

Blocks are numbered from 1 (as :class:`~medjax.models.vit.ViT`'s ``return_layers``). An entry ``"S:T"`` pairs
student block S with teacher block T; an entry ``"S"`` maps it evenly: ``T = round(S * depth_t / depth_s)``
(clipped to 1..depth_t), so ``"1,2,3"`` for a 3-block student of a 12-block teacher means blocks 4, 8 and 12.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from medjax.errors import ConfigError


def layer_pairs(spec, student_depth: int, teacher_depth: int) -> tuple[tuple[int, int], ...]:
    """``((S, T), ...)`` 1-based block pairs from ``distill.layers`` entries (see the module doc).

    Raises ConfigError naming ``distill.layers`` for an entry that is not ``S`` or ``S:T`` or is out of range.
    """
    pairs = []
    for entry in spec:
        text = str(entry).strip()
        try:
            parts = [int(p) for p in text.split(":")]
        except ValueError:
            parts = []
        if len(parts) not in (1, 2):
            raise ConfigError(f"distill.layers entry {text!r}: use a student block 'S' (teacher block mapped evenly) "
                              "or a pair 'S:T' (1-based), e.g. distill.layers=1,2,3 or distill.layers=1:4,3:12")
        s = parts[0]
        t = parts[1] if len(parts) == 2 else min(teacher_depth, max(1, round(s * teacher_depth / student_depth)))
        if not 1 <= s <= student_depth or not 1 <= t <= teacher_depth:
            raise ConfigError(f"distill.layers entry {text!r}: the student has blocks 1..{student_depth} and the "
                              f"teacher 1..{teacher_depth}")
        pairs.append((s, t))
    return tuple(pairs)


def match_indices(ps: int, pt: int, num_patches: int, ids_keep: jax.Array | None):
    """Token indices ``(s_idx (K',), t_idx (B, K'))`` that put the student's and the teacher's tokens side by side:
    the CLS token when both have one, then the patches the student sees (all, or ``ids_keep`` (B, K) under masking).
    ``ps``/``pt``: the student's / teacher's prefix (CLS) token counts."""
    cls = ps > 0 and pt > 0
    if ids_keep is None:
        patches = jnp.arange(num_patches)[None]
    else:
        patches = ids_keep.astype(jnp.int32)
    k = patches.shape[1]
    s_idx = jnp.concatenate([jnp.zeros((1,), jnp.int32)] * cls + [ps + jnp.arange(k, dtype=jnp.int32)])
    t_idx = pt + patches
    if cls:
        t_idx = jnp.concatenate([jnp.zeros((t_idx.shape[0], 1), jnp.int32), t_idx], axis=1)
    return s_idx, t_idx


def take_tokens(tokens: jax.Array, idx: jax.Array) -> jax.Array:
    """Tokens (B, T, D) at ``idx`` ((K,) shared or (B, K) per sample) -> (B, K, D)."""
    if idx.ndim == 1:
        return tokens[:, idx]
    if idx.shape[0] != tokens.shape[0]:
        idx = jnp.broadcast_to(idx, (tokens.shape[0], idx.shape[1]))
    return jnp.take_along_axis(tokens, idx[:, :, None], axis=1)


def take_attention(attn: jax.Array, idx: jax.Array, full: bool) -> jax.Array:
    """Attention (B, H, T, T) restricted to queries and keys ``idx`` ((K,) or (B, K)), rows renormalised to sum to 1
    over the kept keys unless ``full`` (every token kept: the rows already sum to 1)."""
    if full:
        return attn
    if idx.ndim == 1:
        a = attn[:, :, idx][:, :, :, idx]
    else:
        if idx.shape[0] != attn.shape[0]:
            idx = jnp.broadcast_to(idx, (attn.shape[0], idx.shape[1]))
        rows = jnp.take_along_axis(attn, idx[:, None, :, None], axis=2)
        a = jnp.take_along_axis(rows, idx[:, None, None, :], axis=3)
    return a / jnp.maximum(jnp.sum(a, axis=-1, keepdims=True), 1e-12)


def normalize_tokens(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """Parameter-free LayerNorm over the last axis (float32): intermediate tokens (before the final norm) of two
    networks compared on one scale."""
    x = x.astype(jnp.float32)
    mu = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mu), axis=-1, keepdims=True)
    return (x - mu) * jax.lax.rsqrt(var + eps)
