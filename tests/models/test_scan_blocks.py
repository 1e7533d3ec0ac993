"""model.scan_blocks runs the encoder and decoder blocks as one lax.scan over stacked parameters: the same loss,
gradients and parameter layout as the loop; UNETR-style returned layers still come out; blocks a scan cannot
express (increasing drop-path rates) fall back to the loop."""

import dataclasses

import jax
import numpy as np
from flax import nnx

from medjax.config.schema import ModelConfig
from medjax.models.mae import MAE
from medjax.models.vit import ViT

CFG = dataclasses.replace(ModelConfig(variant="Mu/8"), decoder_width=32, decoder_depth=2, decoder_heads=2)


def _mae_loss_and_grads(scan: bool, deterministic: bool = False, **model):
    cfg = dataclasses.replace(CFG, scan_blocks=scan, **model)
    mae = MAE(cfg, spatial_dims=3, input_size=(16,), rngs=nnx.Rngs(0, dropout=3))
    images = jax.random.normal(jax.random.key(1), (2, 16, 16, 16, 1))
    graphdef, params, rest = nnx.split(mae, nnx.Param, ...)

    def loss(p):
        return nnx.merge(graphdef, p, rest)(images, mask_key=jax.random.key(2), deterministic=deterministic)[0]

    fn = jax.value_and_grad(loss)
    jaxpr = str(jax.make_jaxpr(fn)(params))
    value, grads = jax.jit(fn)(params)
    return float(value), grads, params, jaxpr


def test_scanned_blocks_give_the_loop_s_loss_and_gradients():
    l0, g0, p0, t0 = _mae_loss_and_grads(False)
    l1, g1, p1, t1 = _mae_loss_and_grads(True)
    assert jax.tree.structure(p1) == jax.tree.structure(p0)  # checkpoints and weight files see no difference
    np.testing.assert_allclose(l1, l0, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert "scan[" in t1 and "scan[" not in t0


def test_drop_path_schedules_fall_back_to_the_loop():
    # increasing drop-path rates make the blocks differ: no scan, and the values still match the loop
    l0, _, _, _ = _mae_loss_and_grads(False, deterministic=True, drop_path=0.2)
    l1, _, _, t1 = _mae_loss_and_grads(True, deterministic=True, drop_path=0.2)
    assert l1 == l0
    assert t1.count("scan[") == 2  # the decoder (no drop path) scans, forward and backward; the encoder loops


def test_returned_layers_come_out_of_the_scanned_segments():
    x = jax.random.normal(jax.random.key(4), (2, 16, 16, 16, 1))
    out = {}
    for scan in (False, True):
        cfg = dataclasses.replace(ModelConfig(variant="Mu/8"), scan_blocks=scan)
        vit = ViT(cfg, spatial_dims=3, input_size=(16,), rngs=nnx.Rngs(0))
        depth = len(vit.blocks)
        out[scan] = vit(x, return_layers=(1, depth // 2, depth))
    tokens0, layers0 = out[False]
    tokens1, layers1 = out[True]
    np.testing.assert_allclose(tokens1, tokens0, rtol=1e-5, atol=1e-6)
    assert len(layers1) == len(layers0) == 3
    for a, b in zip(layers1, layers0):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
