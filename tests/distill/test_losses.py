"""Distillation losses: exact values where defined, zero for identical inputs, the documented gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medjax.distill.losses import cosine_distance, feature_loss, smooth_l1, soft_target_kl


def test_smooth_l1_values():
    s = jnp.array([[0.0, 0.5, 3.0]])
    t = jnp.zeros((1, 3))
    # 0, 0.5 * 0.25 / 1, 3 - 0.5 -> mean
    assert float(smooth_l1(s, t, 1.0)) == pytest.approx((0.0 + 0.125 + 2.5) / 3, abs=1e-7)
    # beta=2: 0.5 e^2 / 2 below 2, e - 1 above
    assert float(smooth_l1(s, t, 2.0)) == pytest.approx((0.0 + 0.0625 + 2.0) / 3, abs=1e-7)
    with pytest.raises(ValueError, match="beta"):
        smooth_l1(s, t, 0.0)


def test_cosine_distance_scale_invariant_and_orthogonal():
    t = jnp.array([[[1.0, 2.0, -1.0], [0.0, 1.0, 0.0]]])
    assert float(cosine_distance(3.0 * t, t)) == pytest.approx(0.0, abs=1e-6)
    s = jnp.array([[[0.0, 0.5, 1.0], [1.0, 0.0, 0.0]]])  # orthogonal token by token
    assert float(cosine_distance(s, t)) == pytest.approx(1.0, abs=1e-6)
    assert float(cosine_distance(-t, t)) == pytest.approx(2.0, abs=1e-6)


def test_feature_loss_zero_for_equal_tokens_and_no_teacher_gradient():
    x = jax.random.normal(jax.random.key(0), (2, 5, 8))
    for kind in ("smooth_l1", "cosine"):
        assert float(feature_loss(x, x, kind)) == pytest.approx(0.0, abs=1e-6)
    g = jax.grad(lambda t: feature_loss(x + 1.0, t))(x)
    assert not np.any(np.asarray(g))
    with pytest.raises(ValueError, match="distill.loss"):
        feature_loss(x, x, "l2")
    with pytest.raises(ValueError, match="width"):
        feature_loss(x, x[..., :4])


def test_soft_target_kl_zero_for_equal_logits_and_gradient():
    s = jax.random.normal(jax.random.key(1), (4, 3))
    assert float(soft_target_kl(s, s, 2.0)) == pytest.approx(0.0, abs=1e-6)
    t = jax.random.normal(jax.random.key(2), (4, 3))
    temp = 2.0
    p = jax.nn.softmax(t / temp)
    q = jax.nn.softmax(s / temp)
    expected = temp ** 2 * np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=-1))
    assert float(soft_target_kl(s, t, temp)) == pytest.approx(float(expected), rel=1e-5)
    # the documented gradient: T (q - p) / N, and none for the teacher
    gs, gt = jax.grad(soft_target_kl, argnums=(0, 1))(s, t, temp)
    np.testing.assert_allclose(np.asarray(gs), temp * (np.asarray(q) - np.asarray(p)) / 4, atol=1e-6)
    assert not np.any(np.asarray(gt))
    # the temperature changes the loss as defined (T^2 KL of the softened distributions)
    assert float(soft_target_kl(s, t, 1.0)) != pytest.approx(float(soft_target_kl(s, t, 4.0)))
    with pytest.raises(ValueError, match="temperature"):
        soft_target_kl(s, t, 0.0)
