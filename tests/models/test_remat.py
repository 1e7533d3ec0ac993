"""model.remat recomputes block activations in the backward pass: same loss, gradients and parameters; every
block runs under jax.checkpoint; unknown names are errors naming the setting."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from medjax.config.schema import ModelConfig
from medjax.models.block import Block
from medjax.models.mae import MAE

CFG = dataclasses.replace(ModelConfig(variant="Mu/8"), decoder_width=32, decoder_depth=2, decoder_heads=2)


def _loss_and_grads(remat):
    model = MAE(dataclasses.replace(CFG, remat=remat), spatial_dims=3, input_size=(16,), rngs=nnx.Rngs(0))
    images = jax.random.normal(jax.random.key(1), (2, 16, 16, 16, 1))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(p):
        return nnx.merge(graphdef, p, rest)(images, mask_key=jax.random.key(2))[0]

    fn = jax.value_and_grad(loss)
    jaxpr = str(jax.make_jaxpr(fn)(params))
    l, g = jax.jit(fn)(params)
    return float(l), g, params, jaxpr


def test_remat_keeps_values_and_parameters():
    l0, g0, p0, t0 = _loss_and_grads("none")
    for policy in ("full", "dots", "dots_no_batch"):
        l1, g1, p1, t1 = _loss_and_grads(policy)
        assert jax.tree.structure(p1) == jax.tree.structure(p0)
        np.testing.assert_allclose(l1, l0, rtol=1e-6)
        for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
        # every block (1 encoder + 2 decoder) runs under jax.checkpoint; none without remat
        assert t1.count("checkpoint[") + t1.count("remat2[") >= 3
    assert "checkpoint[" not in t0 and "remat2[" not in t0


def test_unknown_remat_is_an_error():
    with pytest.raises(ValueError, match="model.remat='some'"):
        Block(16, 2, 32, remat="some", rngs=nnx.Rngs(0))
