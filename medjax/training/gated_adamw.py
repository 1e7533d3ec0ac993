"""AdamW that skips a step exactly when told to, in one pass over parameters and moments.

The train step's non-finite guard must leave parameters and both AdamW moments bit for bit as they were on a
bad step. Selecting afterwards between the new and the old moments (``jnp.where(ok, new, old)`` over the
optimizer state) makes XLA copy every moment before updating it in place: the parameter update recomputes the
new moments from the old ones, which the in-place write has already overwritten. On the 3D bench shape
(27 M parameters) that was 534 copies, 2 × 27 M floats, every step. Here the skip is folded into the moment
update itself: on a skipped step the decay is 1, the gradient's weight is 0 and the gradient is replaced by 0,
so ``mu' = 0·0 + 1·mu = mu`` exactly, the step counters stay, and XLA updates the moments in place without
copies.

On an applied step the arithmetic is optax's own, expression for expression (``(1 - b) * g**k + b * m``, the
same bias correction and ``m̂ / (sqrt(v̂ + eps_root) + eps)``), and the state pytrees are optax's
(``ScaleByAdamState``, ``ScaleByScheduleState``), so runs and checkpoints made with ``optax.adamw`` continue
unchanged. The gate is the keyword ``apply`` (a scalar bool, traced or not) passed to ``update``; without it
every step applies.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax
from optax._src import numerics


class GatedTransformation(optax.GradientTransformationExtraArgs):
    """An optax transformation whose ``update(..., apply=ok)`` returns the unchanged state when ``ok`` is False.

    The train step (:mod:`medjax.training.steps`) recognises it and then selects only the parameters, not the
    optimizer state. The updates returned on a skipped step are meaningless (possibly not finite) and must not
    be applied.
    """


def _gate(extra: dict) -> jax.Array:
    apply = extra.get("apply")
    return jnp.asarray(True if apply is None else apply, dtype=bool)


def _moment(g: jax.Array, m: jax.Array, decay: float, order: int, on: jax.Array) -> jax.Array:
    """``(1 - decay) * g**order + decay * m`` when ``on``, else exactly ``m`` (``g`` may then be non-finite)."""
    w_g = jnp.where(on, 1 - decay, 0.0).astype(m.dtype)
    w_m = jnp.where(on, decay, 1.0).astype(m.dtype)
    g = jnp.where(on, g, jnp.zeros_like(g))
    return w_g * (g**order) + w_m * m


def gated_scale_by_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                        eps_root: float = 0.0) -> optax.GradientTransformationExtraArgs:
    """``optax.scale_by_adam`` (no Nesterov, moments in the parameters' dtype) with the ``apply`` gate."""
    base = optax.scale_by_adam(b1=b1, b2=b2, eps=eps, eps_root=eps_root)

    def update_fn(updates, state, params=None, **extra):
        del params
        on = _gate(extra)
        mu = jax.tree.map(lambda g, m: _moment(g, m, b1, 1, on), updates, state.mu)
        nu = jax.tree.map(lambda g, v: _moment(g, v, b2, 2, on), updates, state.nu)
        count = jnp.where(on, numerics.safe_increment(state.count), state.count)
        mu_hat = optax.tree.bias_correction(mu, b1, count)
        nu_hat = optax.tree.bias_correction(nu, b2, count)
        out = jax.tree.map(lambda m, v: m / (jnp.sqrt(v + eps_root) + eps), mu_hat, nu_hat)
        return out, optax.ScaleByAdamState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformationExtraArgs(base.init, update_fn)


def gated_scale_by_learning_rate(schedule: Callable) -> optax.GradientTransformationExtraArgs:
    """``optax.scale_by_learning_rate(schedule)`` (multiply by ``-schedule(count)``) whose count holds on a
    skipped step."""
    base = optax.scale_by_schedule(schedule)

    def update_fn(updates, state, params=None, **extra):
        del params
        on = _gate(extra)
        step_size = -1 * schedule(state.count)
        out = jax.tree.map(lambda g: jnp.array(step_size, dtype=g.dtype) * g, updates)
        count = jnp.where(on, numerics.safe_increment(state.count), state.count)
        return out, optax.ScaleByScheduleState(count=count)

    return optax.GradientTransformationExtraArgs(base.init, update_fn)


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """Scale the gradients by ``min(1, max_norm / ||g||)`` (global L2 norm), as ``optax.clip_by_global_norm``.

    It multiplies by one scalar instead of optax's per-element ``(g / ||g||) * max_norm``, so XLA folds the clip
    into each consumer of the gradient (the two moment updates) instead of writing the clipped gradients out
    first: one pass over the parameters fewer. The two agree to rounding (one multiply instead of a divide and
    a multiply).
    """

    def update_fn(updates, state, params=None):
        del params
        g_norm = optax.tree.norm(updates)
        scale = jnp.where(g_norm < max_norm, 1.0, max_norm / g_norm)
        return jax.tree.map(lambda t: t * scale.astype(t.dtype), updates), state

    return optax.GradientTransformation(optax.init_empty_state, update_fn)


def gated_adamw(schedule: Callable, *, b1: float, b2: float, weight_decay: float, mask,
                eps: float = 1e-8) -> optax.GradientTransformationExtraArgs:
    """``optax.adamw(schedule, b1, b2, eps, weight_decay, mask=mask)`` with the ``apply`` gate; the same state."""
    return optax.chain(
        gated_scale_by_adam(b1=b1, b2=b2, eps=eps),
        optax.add_decayed_weights(weight_decay, mask),
        gated_scale_by_learning_rate(schedule),
    )
