"""The gated AdamW: optax's AdamW on applied steps, the state kept bit for bit on skipped ones, and no copies of
the moments in the compiled update (the reason it exists)."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from medjax.config.schema import TrainConfig
from medjax.training.gated_adamw import GatedTransformation
from medjax.training.optim import decay_mask, make_optimizer

B1, B2, WD, CLIP = 0.9, 0.95, 0.05, 1.0


def _schedule(count):
    return 1e-2 * jnp.minimum(1.0, (count + 1) / 3.0)


def _params():
    rng = np.random.default_rng(0)
    return {"dense": {"kernel": jnp.asarray(rng.standard_normal((64, 32)), jnp.float32),
                      "bias": jnp.asarray(rng.standard_normal(32), jnp.float32)},
            "norm": {"scale": jnp.ones(32, jnp.float32)}}


def _grads(seed, scale=1.0):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: jnp.asarray(scale * rng.standard_normal(p.shape), jnp.float32), _params())


def _gated():  # medjax's optimizer, as every run builds it
    tx = make_optimizer(TrainConfig(b1=B1, b2=B2, weight_decay=WD, grad_clip=CLIP), schedule=_schedule)
    assert isinstance(tx, GatedTransformation)
    return tx


def _reference():
    return optax.chain(optax.clip_by_global_norm(CLIP),
                       optax.adamw(_schedule, b1=B1, b2=B2, weight_decay=WD, mask=decay_mask))


def test_applied_steps_match_optax_adamw_and_the_state_has_its_layout():
    gated, ref = _gated(), _reference()
    p_g = p_r = _params()
    s_g, s_r = gated.init(p_g), ref.init(p_r)
    assert jax.tree.structure(s_g) == jax.tree.structure(s_r)  # checkpoints of either restore into the other
    for i in range(6):
        g = _grads(i, scale=3.0 if i % 2 else 0.1)  # clipped and unclipped steps
        u_g, s_g = gated.update(g, s_g, p_g, apply=jnp.asarray(True))
        u_r, s_r = ref.update(g, s_r, p_r)
        p_g, p_r = optax.apply_updates(p_g, u_g), optax.apply_updates(p_r, u_r)
    for a, b in zip(jax.tree.leaves((p_g, s_g)), jax.tree.leaves((p_r, s_r))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-6, atol=1e-8)
    assert int(s_g[1][0].count) == 6 and int(s_g[1][2].count) == 6


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_skipped_step_keeps_the_state_bit_for_bit(bad):
    gated = _gated()
    p = _params()
    s = gated.init(p)
    _, s = gated.update(_grads(0), s, p, apply=True)  # moments and counts away from their initial values
    g = jax.tree.map(lambda x: x.at[..., 0].set(bad), _grads(1))
    _, s_skip = jax.jit(lambda g, s, p: gated.update(g, s, p, apply=jnp.asarray(False)))(g, s, p)
    for a, b in zip(jax.tree.leaves(s_skip), jax.tree.leaves(s)):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


def _moment_copies(tx, gated: bool) -> int:
    """Entry-level copies of a moment buffer in the compiled, donated update-with-guard."""

    def step(p, s, g, ok):
        if gated:
            u, s2 = tx.update(g, s, p, apply=ok)
        else:
            u, s2 = tx.update(g, s, p)
            s2 = jax.tree.map(lambda n, o: jnp.where(ok, n, o), s2, s)
        p2 = jax.tree.map(lambda n, o: jnp.where(ok, n, o), optax.apply_updates(p, u), p)
        return p2, s2

    p = _params()
    s = tx.init(p)
    text = jax.jit(step, donate_argnums=(0, 1)).lower(p, s, _grads(0), jnp.asarray(True)).compile().as_text()
    entry = text[text.index("ENTRY"):]
    return len(re.findall(r"= f32\[[\d,]+\]\{[\d,]*\} copy\(", entry))


def test_the_gated_update_copies_no_moment_where_the_select_does():
    assert _moment_copies(_gated(), gated=True) == 0
    # the select after the update is what made XLA copy the moments (the baseline this module replaces)
    assert _moment_copies(_reference(), gated=False) > 0
