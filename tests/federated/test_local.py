"""The FedProx step: medjax's pure train step with ``mu/2 ||w - anchor||^2`` added inside the jitted loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from medjax.federated.local import prox_step
from medjax.training.state import init_train_state
from medjax.training.steps import train_step_fn
from tests.training.conftest import TinyMaskedAE


def test_fedprox_step_adds_the_proximal_term_and_pulls_towards_the_anchor():
    lr, mu = 0.1, 0.5
    tx = optax.sgd(lr)
    model_def, state = init_train_state(TinyMaskedAE(64, rngs=nnx.Rngs(0)), tx, seed=0)
    batch = {"image": jax.random.normal(jax.random.key(1), (4, 4, 4, 4, 1))}
    shift = jax.tree.map(lambda p: jnp.full_like(p, 0.01), state.params)
    anchor = jax.tree.map(jnp.add, state.params, shift)

    plain, m_plain = jax.jit(train_step_fn(model_def, tx, lambda s: lr))(state, batch)
    fresh = jax.tree.map(jnp.copy, state)
    prox, m_prox = prox_step(model_def, tx, lambda s: lr, mu)(fresh, batch, anchor)

    sq = sum(float(jnp.sum(d ** 2)) for d in jax.tree.leaves(shift))
    np.testing.assert_allclose(float(m_prox["loss"]), float(m_plain["loss"]) + 0.5 * mu * sq, rtol=1e-6)
    # SGD: w - lr * (g + mu * (w - anchor)) = plain step + lr * mu * shift
    for a, b in zip(jax.tree.leaves(prox.params), jax.tree.leaves(plain.params)):
        np.testing.assert_allclose(np.asarray(a - b), lr * mu * 0.01, atol=2e-7)
    # with the anchor at the current parameters the term and its gradient vanish: the plain step exactly
    same, _ = prox_step(model_def, tx, lambda s: lr, mu)(jax.tree.map(jnp.copy, state), batch, state.params)
    for a, b in zip(jax.tree.leaves(same.params), jax.tree.leaves(plain.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_fedprox_term_covers_only_the_named_parameters_of_a_task_loss():
    from medjax.federated.arrays import flatten

    lr, mu = 0.1, 0.5
    tx = optax.sgd(lr)
    model_def, state = init_train_state(TinyMaskedAE(64, rngs=nnx.Rngs(0)), tx, seed=0)
    batch = {"image": jax.random.normal(jax.random.key(1), (4, 4, 4, 4, 1))}

    def task_loss(model, b, key):  # any task's (model, batch, key) -> (loss, aux)
        del key
        return jnp.mean(jnp.square(model.dec(model.enc(b["image"].reshape(4, -1)[:, :64])))), {}

    names = sorted(flatten(state.params))
    covered = names[:1]  # e.g. a personalised run: the others stay local and are not pulled
    shift = jax.tree.map(lambda p: jnp.full_like(p, 0.01), state.params)
    anchor = jax.tree.map(jnp.add, state.params, shift)
    _, m_plain = jax.jit(train_step_fn(model_def, tx, lambda s: lr, loss_fn=task_loss))(jax.tree.map(jnp.copy, state),
                                                                                        batch)
    new, m = prox_step(model_def, tx, lambda s: lr, mu, loss_fn=task_loss, names=covered)(
        jax.tree.map(jnp.copy, state), batch, anchor)
    sq = float(np.sum(np.square(flatten(shift)[covered[0]])))
    np.testing.assert_allclose(float(m["loss"]), float(m_plain["loss"]) + 0.5 * mu * sq, rtol=1e-6)
    assert set(flatten(new.params)) == set(names)
