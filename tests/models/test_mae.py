"""MAE: masking counts, per-sample masks, loss on masked patches only, targets, reconstruction, bf16, reuse."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from medjax.config.schema import ModelConfig
from medjax.models import MAE, ViT, masked_mse, num_visible, patchify, random_masking

MU3D = ModelConfig(variant="Mu/8", in_channels=2, decoder_width=32, decoder_depth=1, decoder_heads=2)
MU2D = dataclasses.replace(MU3D, variant="Mu/4", in_channels=3, cls_token=False, pos_embed="learned")


@nnx.jit(static_argnames=("mask_ratio",))
def _forward(model, images, key, mask_ratio=None):
    return model(images, mask_key=key, mask_ratio=mask_ratio)


@pytest.fixture(scope="module")
def mae3d():
    return MAE(MU3D, spatial_dims=3, input_size=(16,), rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def images3d():
    return jax.random.normal(jax.random.key(7), (3, 16, 16, 16, 2))


def test_shapes_and_visible_count_3d(mae3d, images3d):
    loss, aux = _forward(mae3d, images3d, jax.random.key(0))
    assert loss.shape == () and loss.dtype == jnp.float32 and np.isfinite(loss)
    assert aux["pred"].shape == aux["target"].shape == (3, 8, 8 ** 3 * 2)
    assert aux["mask"].shape == (3, 8)
    np.testing.assert_array_equal(aux["mask"].sum(1), 8 - num_visible(8, 0.75))  # 6 masked, 2 visible each
    np.testing.assert_array_equal(np.unique(aux["mask"]), [0.0, 1.0])


def test_shapes_2d_and_call_time_ratio():
    mae = MAE(MU2D, spatial_dims=2, input_size=(32,), rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    loss, aux = _forward(mae, x, jax.random.key(0), mask_ratio=0.5)
    assert aux["pred"].shape == (2, 64, 4 * 4 * 3)
    np.testing.assert_array_equal(aux["mask"].sum(1), [32, 32])
    _, aux = _forward(mae, x, jax.random.key(0))
    np.testing.assert_array_equal(aux["mask"].sum(1), [48, 48])  # cfg ratio 0.75


def test_masks_per_sample_and_key():
    m1 = random_masking(jax.random.key(0), 4, 64, 0.75)
    m2 = random_masking(jax.random.key(1), 4, 64, 0.75)
    m1b = random_masking(jax.random.key(0), 4, 64, 0.75)
    np.testing.assert_array_equal(m1.mask, m1b.mask)
    assert not np.array_equal(m1.mask, m2.mask)
    assert len({tuple(np.asarray(r)) for r in m1.mask}) == 4  # every sample its own mask
    np.testing.assert_array_equal(m1.mask.sum(1), 48)
    # ids_keep are the visible patches, ids_restore unshuffles
    for b in range(4):
        np.testing.assert_array_equal(np.sort(np.asarray(m1.ids_keep[b])), np.flatnonzero(np.asarray(m1.mask[b]) == 0))
        shuffled = np.argsort(np.asarray(m1.ids_restore[b]))
        np.testing.assert_array_equal(shuffled[:16], m1.ids_keep[b])


def test_num_visible_rounding_and_errors():
    assert num_visible(8, 0.75) == 2 and num_visible(10, 0.75) == 2 and num_visible(6, 0.75) == 2
    assert num_visible(216, 0.75) == 54 and num_visible(8, 0.0) == 8
    for bad in (1.0, -0.1, 0.99):
        with pytest.raises(ValueError, match="mask_ratio"):
            num_visible(8, bad)


def test_loss_ignores_visible_targets():
    key = jax.random.key(3)
    pred = jax.random.normal(key, (2, 8, 5))
    target = jax.random.normal(jax.random.key(4), (2, 8, 5))
    mask = jnp.array([[1, 0, 1, 1, 0, 0, 1, 1], [0, 0, 0, 1, 1, 1, 1, 1]], jnp.float32)
    loss = masked_mse(pred, target, mask)
    manual = (((pred - target) ** 2).mean(-1) * mask).sum() / mask.sum()
    np.testing.assert_allclose(loss, manual, rtol=1e-6)
    visible_perturbed = target + 100.0 * (1.0 - mask)[:, :, None]
    np.testing.assert_allclose(masked_mse(pred, visible_perturbed, mask), loss, rtol=1e-6)
    masked_perturbed = target + 1.0 * mask[:, :, None]
    assert abs(float(masked_mse(pred, masked_perturbed, mask)) - float(loss)) > 1e-3


def test_encoder_sees_only_visible_patches(mae3d, images3d):
    key = jax.random.key(5)
    loss, aux = _forward(mae3d, images3d, key)
    mask_vox = mae3d.reconstruct(images3d, aux["pred"], aux["mask"])
    masked_region = np.asarray(mask_vox["masked"]) == 0  # zeroed voxels = masked patches
    noise = 3.0 * jax.random.normal(jax.random.key(6), images3d.shape)
    # change only masked-patch pixels: the prediction is unchanged, the loss (its target) changes
    loss_m, aux_m = _forward(mae3d, jnp.where(masked_region, images3d + noise, images3d), key)
    np.testing.assert_allclose(aux_m["pred"], aux["pred"], atol=1e-5)
    changed = np.abs(np.asarray(aux_m["target"] - aux["target"])).max(-1) > 1e-2
    np.testing.assert_array_equal(changed, np.asarray(aux["mask"]) == 1)  # targets moved exactly where masked
    assert abs(float(loss_m) - float(loss)) > 1e-5  # normalised targets keep the loss near 1; it still moves
    # change only visible-patch pixels: the prediction changes
    _, aux_v = _forward(mae3d, jnp.where(masked_region, images3d, images3d + noise), key)
    assert np.abs(np.asarray(aux_v["pred"] - aux["pred"])).max() > 1e-3


def test_norm_pix_target(mae3d, images3d):
    target = mae3d.target(images3d * 5.0 + 2.0)
    np.testing.assert_allclose(target.mean(-1), 0.0, atol=1e-4)
    np.testing.assert_allclose(target.std(-1), 1.0, atol=1e-3)
    raw = MAE(dataclasses.replace(MU3D, norm_pix_loss=False), spatial_dims=3, input_size=(16,), rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(raw.target(images3d), patchify(images3d, (8, 8, 8)))


def test_reconstruct_inverts_normalisation(mae3d, images3d):
    images = images3d * 50.0 + 10.0
    mask = jnp.array([[1, 0, 1, 1, 0, 0, 1, 1]] * 3, jnp.float32)
    perfect = mae3d.target(images)
    out = mae3d.reconstruct(images, perfect, mask)
    assert {k: v.shape for k, v in out.items()} == {k: images.shape for k in ("masked", "recon", "recon_only")}
    np.testing.assert_allclose(out["recon"], images, atol=1e-3)
    np.testing.assert_allclose(out["recon_only"], images, atol=1e-3)
    zeros = mae3d.reconstruct(images, jnp.zeros_like(perfect), mask)
    patches_masked = patchify(zeros["masked"], (8, 8, 8))
    np.testing.assert_array_equal(patches_masked[:, 0], 0.0)
    np.testing.assert_array_equal(patches_masked[:, 1], patchify(images, (8, 8, 8))[:, 1])
    recon_patches = patchify(zeros["recon"], (8, 8, 8))
    mean = patchify(images, (8, 8, 8))[:, 0].mean(-1)
    np.testing.assert_allclose(recon_patches[:, 0], np.broadcast_to(mean[:, None], recon_patches[:, 0].shape),
                               rtol=1e-5, atol=1e-4)  # zero prediction -> the patch mean
    np.testing.assert_array_equal(recon_patches[:, 1], patchify(images, (8, 8, 8))[:, 1])


@pytest.mark.slow
def test_bfloat16_train_step_finite():
    mae = MAE(dataclasses.replace(MU3D, dtype="bfloat16", drop_path=0.1, dropout=0.1), spatial_dims=3,
              input_size=(16,), rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 16, 16, 16, 2))

    @nnx.jit
    def step(model, x, key):
        def loss_fn(m):
            return m(x, mask_key=key, deterministic=False)[0]
        return nnx.value_and_grad(loss_fn)(model)

    loss, grads = step(mae, x, jax.random.key(2))
    assert loss.dtype == jnp.float32 and np.isfinite(loss)
    leaves = jax.tree.leaves(grads)
    assert all(leaf.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(leaf))) for leaf in leaves)
    assert float(jnp.abs(grads["encoder"]["patch_embed"]["proj"]["kernel"][...]).max()) > 0


def test_encoder_is_a_reusable_vit(mae3d, images3d):
    assert type(mae3d.encoder) is ViT
    vit = ViT(MU3D, spatial_dims=3, input_size=(16,), rngs=nnx.Rngs(123))
    nnx.update(vit, nnx.state(mae3d.encoder))
    np.testing.assert_allclose(vit(images3d), mae3d.encoder(images3d), atol=1e-6)


def test_param_count_b16_3d_96():
    cfg = ModelConfig(variant="B/16", in_channels=1)
    abstract = nnx.eval_shape(lambda: MAE(cfg, spatial_dims=3, input_size=(96,), rngs=nnx.Rngs(0)))
    enc = sum(math.prod(p.shape) for p in jax.tree.leaves(nnx.state(abstract.encoder, nnx.Param)))
    total = sum(math.prod(p.shape) for p in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    print(f"MAE B/16 3D 96^3: encoder {enc / 1e6:.2f}M, total {total / 1e6:.2f}M parameters")
    # 12 blocks of 12*768^2 + 13*768 params, patch embed 4096*768+768, CLS and final LN
    assert enc == 12 * (12 * 768 ** 2 + 13 * 768) + 4096 * 768 + 768 + 768 + 2 * 768
