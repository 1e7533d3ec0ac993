import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from medjax.config.schema import TrainConfig
from medjax.errors import ConfigError
from medjax.training.optim import decay_mask, layer_id, layerwise_lr_decay, make_optimizer, make_schedule

PARAMS = {
    "encoder": {
        "patch_embed": {"kernel": jnp.ones((8, 4)), "bias": jnp.ones((4,))},
        "pos_embed": jnp.ones((1, 9, 4)),
        "cls_token": jnp.ones((1, 1, 4)),
        "blocks": {
            0: {"attn": {"qkv": {"kernel": jnp.ones((4, 12))}}, "norm1": {"scale": jnp.ones((4,))}},
            1: {"mlp": {"fc1": {"kernel": jnp.ones((4, 8)), "bias": jnp.ones((8,))}}},
        },
        "norm": {"scale": jnp.ones((4,)), "bias": jnp.ones((4,))},
    },
    "decoder": {"mask_token": jnp.ones((1, 1, 4)), "pred": {"kernel": jnp.ones((4, 8))}},
}


def test_schedule_warmup_peak_and_cosine_end():
    t = TrainConfig(steps=100, lr=1e-3, min_lr=1e-5, warmup_steps=10)
    s = make_schedule(t)
    assert float(s(0)) == 0.0
    np.testing.assert_allclose(float(s(5)), 5e-4, rtol=1e-6)
    np.testing.assert_allclose(float(s(10)), 1e-3, rtol=1e-6)
    np.testing.assert_allclose(float(s(100)), 1e-5, rtol=1e-5)
    assert float(s(50)) < 1e-3 and float(s(50)) > 1e-5


def test_schedule_rejects_zero_steps():
    with pytest.raises(ConfigError, match="train.steps"):
        make_schedule(TrainConfig(steps=0))


def test_decay_mask_skips_norms_biases_embeddings_tokens():
    m = decay_mask(PARAMS)
    assert m["encoder"]["patch_embed"]["kernel"] is True
    assert m["encoder"]["blocks"][0]["attn"]["qkv"]["kernel"] is True
    assert m["encoder"]["blocks"][1]["mlp"]["fc1"]["kernel"] is True
    assert m["decoder"]["pred"]["kernel"] is True
    for off in (m["encoder"]["patch_embed"]["bias"], m["encoder"]["pos_embed"], m["encoder"]["cls_token"],
                m["encoder"]["blocks"][0]["norm1"]["scale"], m["encoder"]["norm"]["scale"],
                m["decoder"]["mask_token"], m["encoder"]["blocks"][1]["mlp"]["fc1"]["bias"]):
        assert off is False


def test_weight_decay_applies_only_where_masked():
    t = TrainConfig(steps=10, lr=0.1, warmup_steps=0, weight_decay=0.5, grad_clip=0.0)
    tx = make_optimizer(t)
    params = {"w": jnp.ones((2, 2)), "bias": jnp.ones((2,))}
    grads = jax.tree.map(jnp.zeros_like, params)
    upd, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(np.asarray(upd["w"]), -0.1 * 0.5 * np.ones((2, 2)), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(upd["bias"]), 0.0)


def test_clipping_bounds_global_norm():
    # a gradient of norm 500 clipped to norm 1 must drive AdamW exactly like the pre-clipped gradient
    params = {"w": jnp.zeros((3,))}
    big, unit = {"w": jnp.array([300.0, 400.0, 0.0])}, {"w": jnp.array([0.6, 0.8, 0.0])}
    clip = make_optimizer(TrainConfig(steps=10, lr=1.0, warmup_steps=0, weight_decay=0.0, grad_clip=1.0))
    ref = make_optimizer(TrainConfig(steps=10, lr=1.0, warmup_steps=0, weight_decay=0.0, grad_clip=0.0))
    s1, s2 = clip.init(params), ref.init(params)
    for g_clip, g_ref in ((big, unit), (unit, unit)):
        u1, s1 = clip.update(g_clip, s1, params)
        u2, s2 = ref.update(g_ref, s2, params)
        np.testing.assert_allclose(np.asarray(u1["w"]), np.asarray(u2["w"]), rtol=1e-5, atol=1e-7)
    # without clipping the big gradient would change the second-moment history
    s3 = ref.init(params)
    _, s3 = ref.update(big, s3, params)
    u3, _ = ref.update(unit, s3, params)
    assert not np.allclose(np.asarray(u3["w"]), np.asarray(u2["w"]), rtol=1e-3)


def test_layer_ids_and_lr_decay():
    assert layer_id("encoder/patch_embed/kernel", 2) == 0
    assert layer_id("encoder/blocks/0/attn/qkv/kernel", 2) == 1
    assert layer_id("encoder/blocks/1/mlp/fc1/kernel", 2) == 2
    assert layer_id("encoder/norm/scale", 2) == 3
    assert layer_id("head/kernel", 2) == 3
    mult = layerwise_lr_decay(PARAMS, 0.5, num_layers=2)
    assert mult["encoder"]["patch_embed"]["kernel"] == 0.125
    assert mult["encoder"]["blocks"][0]["attn"]["qkv"]["kernel"] == 0.25
    assert mult["encoder"]["blocks"][1]["mlp"]["fc1"]["kernel"] == 0.5
    assert mult["encoder"]["norm"]["scale"] == 1.0
    with pytest.raises(ConfigError):
        layerwise_lr_decay(PARAMS, 0.0, 2)


def test_lr_multipliers_scale_updates():
    t = TrainConfig(steps=10, lr=0.1, warmup_steps=0, weight_decay=0.0, grad_clip=0.0)
    params = {"a": jnp.ones((2, 2)), "b": jnp.ones((2, 2))}
    tx = make_optimizer(t, lr_multipliers={"a": 1.0, "b": 0.25})
    grads = {"a": jnp.ones((2, 2)), "b": jnp.ones((2, 2))}
    upd, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(np.asarray(upd["b"]), 0.25 * np.asarray(upd["a"]), rtol=1e-6)
