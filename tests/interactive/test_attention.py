"""Pure attention mapping: token -> voxel placement, rollout, head fusion, CLS / query attention."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medjax.interactive.attention import (
    attention_to_volume,
    cls_attention,
    fuse_heads,
    patch_index,
    query_attention,
    received_attention,
    rollout,
)


def _random_attention(rng, heads, tokens):
    logits = rng.normal(size=(heads, tokens, tokens))
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("grid,patch", [((3, 4), (2, 5)), ((2, 3, 4), (4, 2, 3))])
@pytest.mark.parametrize("num_prefix", [0, 1])
def test_one_hot_token_lands_on_its_patch(grid, patch, num_prefix):
    length = math.prod(grid)
    for t in (0, length // 2, length - 1):
        weights = np.zeros(num_prefix + length)
        weights[num_prefix + t] = 1.0
        if num_prefix:
            weights[0] = 7.0  # the prefix weight must be dropped, not mapped anywhere
        vol = attention_to_volume(weights, grid, patch, num_prefix)
        assert vol.shape == tuple(g * p for g, p in zip(grid, patch))
        assert vol.dtype == np.float32
        cell = np.unravel_index(t, grid)
        expected = np.zeros(vol.shape, dtype=bool)
        expected[tuple(slice(c * p, (c + 1) * p) for c, p in zip(cell, patch))] = True
        np.testing.assert_array_equal(vol > 0, expected)
        np.testing.assert_array_equal(vol[expected], 1.0)
        # the same patch is found back from any of its voxels
        corner = [c * p + p - 1 for c, p in zip(cell, patch)]
        assert patch_index(corner, patch, grid) == t


def test_token_order_matches_patchify():
    """Token i of the models' patchify is the patch attention_to_volume puts token i on."""
    import jax.numpy as jnp
    from medjax.models import patchify

    grid, patch = (2, 3, 2), (2, 2, 3)
    shape = tuple(g * p for g, p in zip(grid, patch))
    vol = np.arange(math.prod(shape), dtype=np.float32).reshape(shape)
    tokens = np.asarray(patchify(jnp.asarray(vol)[None, ..., None], patch))[0]  # (L, prod(patch))
    for t in range(tokens.shape[0]):
        onehot = np.zeros(tokens.shape[0])
        onehot[t] = 1
        where = attention_to_volume(onehot, grid, patch) > 0
        np.testing.assert_array_equal(np.sort(vol[where]), np.sort(tokens[t]))


def test_linear_upsampling_keeps_constants_and_patch_centres():
    grid, patch = (3, 4, 2), (4, 4, 2)
    const = attention_to_volume(np.full(math.prod(grid), 0.25), grid, patch, mode="linear")
    np.testing.assert_allclose(const, 0.25, rtol=1e-6)
    ramp = np.arange(math.prod(grid), dtype=float)
    vol = attention_to_volume(ramp, grid, patch, mode="linear")
    near = attention_to_volume(ramp, grid, patch, mode="nearest")
    assert vol.shape == near.shape
    # between two patch centres along the last axis the map is the average of the two tokens
    # (patch 2 along z: voxels 1 and 2 straddle the centres of cells 0 and 1 at 0.5 and 2.5)
    assert vol.min() >= ramp.min() and vol.max() <= ramp.max()
    np.testing.assert_allclose(vol[1, 1, 1] + vol[1, 1, 2], near[1, 1, 1] + near[1, 1, 2], rtol=1e-6)


def test_attention_to_volume_rejects_wrong_length():
    with pytest.raises(ValueError, match="do not match"):
        attention_to_volume(np.ones(13), (3, 4), (2, 2), num_prefix=0)


def test_rollout_of_identity_is_identity():
    eye = np.broadcast_to(np.eye(5), (3, 5, 5))
    np.testing.assert_allclose(rollout([eye, eye, eye]), np.eye(5))
    np.testing.assert_allclose(rollout([eye, eye], add_residual=False), np.eye(5))


def test_rollout_rows_sum_to_one_and_match_manual_product():
    rng = np.random.default_rng(0)
    layers = [_random_attention(rng, 4, 7) for _ in range(3)]
    r = rollout(layers)
    np.testing.assert_allclose(r.sum(-1), 1.0, atol=1e-12)
    assert (r >= 0).all()
    manual = np.eye(7)
    for a in layers:
        a = 0.5 * (a.mean(0) + np.eye(7))
        manual = (a / a.sum(-1, keepdims=True)) @ manual
    np.testing.assert_allclose(r, manual, atol=1e-12)
    # max fusion rows are renormalised too
    np.testing.assert_allclose(rollout(layers, head_fusion="max").sum(-1), 1.0, atol=1e-12)
    # a batch-of-one layout is accepted
    np.testing.assert_allclose(rollout([a[None] for a in layers]), r)


def test_head_fusion_and_cls_query_received():
    rng = np.random.default_rng(1)
    a = _random_attention(rng, 3, 6)  # 1 CLS + 5 patches
    np.testing.assert_allclose(fuse_heads(a, "mean"), a.mean(0))
    np.testing.assert_allclose(fuse_heads(a, -1), a[2])
    np.testing.assert_allclose(cls_attention(a), a.mean(0)[0, 1:])
    np.testing.assert_allclose(cls_attention(a, head=1), a[1, 0, 1:])
    assert cls_attention(a).shape == (5,)
    np.testing.assert_allclose(query_attention(a, 2, head=0, num_prefix=1), a[0, 3, 1:])
    np.testing.assert_allclose(received_attention(a, num_prefix=1), a.mean(0)[1:, 1:].mean(0))
    with pytest.raises(ValueError, match="head 3 out of range"):
        fuse_heads(a, 3)
    with pytest.raises(ValueError, match="CLS"):
        cls_attention(a, num_prefix=0)
