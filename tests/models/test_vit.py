"""ViT encoder: shapes in 2D/3D, CLS, intermediate layers, attention maps, logical-axis metadata, bf16."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from medjax.config.schema import ModelConfig
from medjax.models import ViT

MU = ModelConfig(variant="Mu/8", in_channels=2, decoder_width=32, decoder_depth=1, decoder_heads=2)


@pytest.fixture(scope="module")
def vit3d():
    return ViT(MU, spatial_dims=3, input_size=(16,), rngs=nnx.Rngs(0))


def test_attributes(vit3d):
    assert vit3d.grid == (2, 2, 2) and vit3d.num_patches == 8 and vit3d.num_prefix_tokens == 1
    vit2d = ViT(dataclasses.replace(MU, variant="Mu/4", cls_token=False), spatial_dims=2, input_size=(32, 16),
                rngs=nnx.Rngs(0))
    assert vit2d.grid == (8, 4) and vit2d.num_patches == 32 and vit2d.num_prefix_tokens == 0


def test_outputs_3d(vit3d):
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 16, 2))
    tokens, attn, layers = vit3d(x, return_attention=True, return_layers=(2, 1))
    assert tokens.shape == (2, 9, 64) and tokens.dtype == jnp.float32
    assert len(attn) == 2 and attn[0].shape == (2, 2, 9, 9)
    np.testing.assert_allclose(attn[1].sum(-1), 1.0, atol=1e-5)
    assert [l.shape for l in layers] == [(2, 9, 64)] * 2
    np.testing.assert_allclose(vit3d.norm(layers[0]), tokens, atol=1e-5)  # block 2 output, normed = tokens
    plain = vit3d(x)
    np.testing.assert_allclose(plain, tokens, atol=1e-5)
    only_layers = vit3d(x, return_layers=(1,))
    assert isinstance(only_layers, tuple) and len(only_layers) == 2
    np.testing.assert_allclose(only_layers[1][0], layers[1], atol=1e-6)


def test_visible_ids_select_patches(vit3d):
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 16, 2))
    full = vit3d.embed(x)
    ids = jnp.array([[5, 0, 3], [7, 6, 1]])
    part = vit3d.embed(x, ids)
    assert part.shape == (2, 4, 64)
    np.testing.assert_allclose(part[:, 0], full[:, 0])
    np.testing.assert_allclose(part[1, 1:], full[1, 1 + np.array([7, 6, 1])], atol=1e-6)


def test_2d_learned_multichannel():
    cfg = dataclasses.replace(MU, variant="Mu/4", in_channels=3, pos_embed="learned")
    vit = ViT(cfg, spatial_dims=2, input_size=(32,), rngs=nnx.Rngs(0))
    assert vit.pos_embed[...].shape == (1, 65, 64)
    assert vit(jnp.ones((2, 32, 32, 3))).shape == (2, 65, 64)


def test_bfloat16_params_stay_float32():
    vit = ViT(dataclasses.replace(MU, dtype="bfloat16"), spatial_dims=3, input_size=(16,), rngs=nnx.Rngs(0))
    dtypes = {p.dtype for p in jax.tree.leaves(nnx.state(vit, nnx.Param))}
    assert dtypes == {jnp.dtype(jnp.float32)}
    out = vit(jnp.ones((1, 16, 16, 16, 2)))
    assert out.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out)))


def test_logical_axis_metadata(vit3d):
    state = nnx.state(vit3d, nnx.Param)
    names = {"/".join(map(str, path)): var.get_metadata().get("out_sharding")
             for path, var in nnx.to_flat_state(state)}
    assert all(v is not None for v in names.values()), [k for k, v in names.items() if v is None]
    assert names["patch_embed/proj/kernel"] == ("patch", "embed")
    assert names["cls_token"] == (None, None, "embed")
    assert names["blocks/0/attn/q_kernel"] == ("embed", "heads", "kv")
    assert names["blocks/0/attn/out_kernel"] == ("heads", "kv", "embed")
    assert names["blocks/0/mlp/fc1/kernel"] == ("embed", "mlp")
    assert names["blocks/0/mlp/fc2/kernel"] == ("mlp", "embed")
    assert names["blocks/1/norm1/scale"] == ("embed",)
    for path, var in nnx.to_flat_state(state):
        assert len(var.get_metadata()["out_sharding"]) == var[...].ndim, path
    with nnx.logical_axis_rules((("embed", "fsdp"), ("heads", "tensor"), ("kv", None))):
        spec = nnx.get_partition_spec(state)["blocks"][0]["attn"]["q_kernel"].get_value()
    assert tuple(spec) == ("fsdp", "tensor", None)


def test_errors():
    with pytest.raises(ValueError, match=r"\(20, 20, 20\).*\(8, 8, 8\)"):
        ViT(MU, spatial_dims=3, input_size=(20,), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="return_layers"):
        ViT(MU, spatial_dims=3, input_size=(16,), rngs=nnx.Rngs(0))(jnp.ones((1, 16, 16, 16, 2)), return_layers=(3,))
    with pytest.raises(ValueError, match="pos_embed"):
        ViT(dataclasses.replace(MU, pos_embed="rope"), spatial_dims=3, input_size=(16,), rngs=nnx.Rngs(0))
