"""Optimizer: AdamW with warm-up + cosine decay, global-norm clipping, a weight-decay mask and layer-wise LR decay.

Parameters are plain nested dicts of arrays (``nnx.State.to_pure_dict()``), so every rule here works on
parameter *paths* such as ``"encoder/blocks/3/attn/qkv/kernel"``.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from medjax.config.schema import TrainConfig
from medjax.errors import ConfigError
from medjax.parallel.sharding import path_str  # one definition of key-path strings
from medjax.training.gated_adamw import GatedTransformation, clip_by_global_norm, gated_adamw

# Path fragments (lower-case) of parameters that get no weight decay: normalisation scales and biases, the
# CLS token, position embeddings and MAE mask tokens. Vectors (ndim <= 1) are never decayed either.
_NO_DECAY = ("norm", "bias", "cls", "pos_embed", "pos_emb", "mask_token")
# Path fragments that belong to the patch/token embedding (layer 0 for layer-wise LR decay).

_EMBED = ("patch_embed", "patch", "cls", "pos_embed", "pos_emb", "embed_tokens", "stem", "mask_token")
_BLOCK_INDEX = re.compile(r"(?:^|/)(?:blocks?|layers?|encoder_blocks?)(?:/|_)(\d+)(?:/|$)")


def make_schedule(train: TrainConfig) -> optax.Schedule:
    """Learning rate per optimizer step: linear warm-up 0 -> ``lr`` over ``warmup_steps``, then cosine to ``min_lr``
    at ``steps``. Returns a function ``step (int) -> lr (float)``."""
    if train.steps < 1:
        raise ConfigError(f"train.steps={train.steps}: must be at least 1")
    warmup = max(0, min(train.warmup_steps, train.steps - 1))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=train.lr,
        warmup_steps=warmup,
        decay_steps=max(train.steps, warmup + 1),
        end_value=train.min_lr,
    )


def decay_mask(params) -> Any:
    """Pytree of bools like ``params``: True where weight decay applies (matrices/kernels), False for norms, biases,
    CLS/position embeddings, mask tokens and any parameter with ``ndim <= 1``."""

    def rule(path, leaf):
        name = path_str(path).lower()
        if jnp.ndim(leaf) <= 1:
            return False
        return not any(frag in name for frag in _NO_DECAY)

    return jax.tree_util.tree_map_with_path(rule, params)


def layer_id(path: str, num_layers: int) -> int:
    """Depth of a parameter for layer-wise LR decay: 0 for embeddings, ``i + 1`` for transformer block ``i``,
    ``num_layers + 1`` for everything after the blocks (final norm, heads)."""
    low = path.lower()
    if "decoder" in low:
        return num_layers + 1
    m = _BLOCK_INDEX.search(low)
    if m:
        return min(int(m.group(1)) + 1, num_layers)
    if any(frag in low for frag in _EMBED):
        return 0
    return num_layers + 1


def layerwise_lr_decay(params, decay: float, num_layers: int, *, root: str = "encoder") -> Any:
    """LR multipliers for fine-tuning (BEiT/MAE recipe): ``decay ** (num_layers + 1 - layer_id(path))``.

    Args:
      params: parameter pytree (nested dicts of arrays, or abstract shapes).
      decay: per-layer factor in (0, 1]; 1 disables the decay.
      num_layers: number of transformer blocks in the encoder.
      root: top-level key of the encoder. When ``params`` has it, the decay applies to that subtree only
        (paths read relative to it) and every other top-level subtree (heads, decoders, a UNETR's ``stem`` or
        ``ups/0/block``) gets 1.0, whatever its parameter names; without it ``params`` is taken to be the
        encoder itself (or a tree whose paths :func:`layer_id` reads directly).
    Returns:
      A pytree of python floats with the structure of ``params``; heads get 1.0, the embedding ``decay**(L+1)``.
    """
    if not 0.0 < decay <= 1.0:
        raise ConfigError(f"layer-wise lr decay={decay}: must be in (0, 1]")

    def rule(path, _):
        return float(decay ** (num_layers + 1 - layer_id(path_str(path), num_layers)))

    if isinstance(params, dict) and root in params:
        return {k: (jax.tree_util.tree_map_with_path(rule, v) if k == root else jax.tree.map(lambda _: 1.0, v))
                for k, v in params.items()}
    return jax.tree_util.tree_map_with_path(rule, params)


def scale_by_tree(multipliers) -> optax.GradientTransformation:
    """Multiply each update by the matching scalar of ``multipliers`` (e.g. from :func:`layerwise_lr_decay`)."""

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        del params
        return jax.tree.map(lambda u, m: u * jnp.asarray(m, u.dtype), updates, multipliers), state

    return optax.GradientTransformation(init_fn, update_fn)


def make_optimizer(
    train: TrainConfig, *, lr_multipliers=None, schedule: Callable | None = None
) -> optax.GradientTransformation:
    """AdamW(``b1``, ``b2``, decoupled ``weight_decay`` masked by :func:`decay_mask`) after global-norm clipping
    (``grad_clip``; 0 disables), with the :func:`make_schedule` learning rate. ``lr_multipliers`` (a pytree of
    scalars, e.g. from :func:`layerwise_lr_decay`) scales the final updates per parameter.

    The result is a :class:`~medjax.training.gated_adamw.GatedTransformation`: ``update(..., apply=ok)`` keeps
    the state exactly when ``ok`` is False (the train step's non-finite guard), and its state is that of
    ``optax.chain(clip_by_global_norm, adamw)``."""
    schedule = schedule or make_schedule(train)
    parts = []
    if train.grad_clip and train.grad_clip > 0:
        parts.append(clip_by_global_norm(train.grad_clip))
    parts.append(gated_adamw(schedule, b1=train.b1, b2=train.b2, weight_decay=train.weight_decay, mask=decay_mask))
    if lr_multipliers is not None:
        parts.append(scale_by_tree(lr_multipliers))
    tx = optax.chain(*parts)
    return GatedTransformation(tx.init, tx.update)
