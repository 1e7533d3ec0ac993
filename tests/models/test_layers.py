"""Logical-axis helpers: rule translation, no-op without a mesh, and a sharded MAE on fake CPU devices."""

import os
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from medjax.models.layers import DropPath, compute_dtype, constrain, logical_to_spec

RULES = (("batch", ("data", "fsdp")), ("length", ()), ("embed", ("fsdp",)), ("mlp", ("tensor",)),
         ("heads", ("tensor",)), ("kv", ()))


def test_logical_to_spec():
    assert logical_to_spec(("embed", "mlp"), RULES) == P("fsdp", "tensor")
    assert logical_to_spec(("heads", "kv", "embed"), RULES) == P("tensor", None, "fsdp")
    # one translator for parameters and activations: a name without a rule is an error, not silently replicated
    from medjax.errors import ConfigError

    with pytest.raises(ConfigError, match="'unknown' has no rule"):
        logical_to_spec((None, "unknown"), RULES)
    # a mesh axis shards one dim only: activations (batch, length, embed) stay replicated over embed
    assert logical_to_spec(("batch", "length", "embed"), RULES) == P(("data", "fsdp"), None, None)


def test_constrain_is_noop_without_mesh():
    x = jnp.arange(6.0).reshape(1, 2, 3)
    assert constrain(x, ("batch", "length", "embed"), rules=RULES) is x
    with pytest.raises(ValueError, match="rank 3"):
        constrain(x, ("batch", "embed"))


def test_compute_dtype_and_drop_path():
    assert compute_dtype("bfloat16") == jnp.bfloat16
    with pytest.raises(ValueError, match="model.dtype='int8'"):
        compute_dtype("int8")
    from flax import nnx

    dp = DropPath(0.5, rngs=nnx.Rngs(dropout=0))
    x = jnp.ones((64, 3, 4))
    np.testing.assert_array_equal(dp(x), x)  # deterministic by default
    y = np.asarray(dp(x, deterministic=False))
    per_sample = y.reshape(64, -1)
    assert set(np.unique(per_sample)) <= {0.0, 2.0}
    assert np.all(per_sample.min(1) == per_sample.max(1))  # whole samples dropped or kept
    assert 0 < (per_sample[:, 0] == 0).sum() < 64


_SHARDED = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from flax import nnx
    from jax.sharding import NamedSharding
    from medjax.config.schema import MeshConfig, ModelConfig
    from medjax.models import MAE
    cfg = ModelConfig(variant="Mu/8", in_channels=1, decoder_width=32, decoder_depth=1, decoder_heads=2,
                      pos_embed="learned")
    x = jax.random.normal(jax.random.key(0), (4, 16, 16, 16, 1))
    ref, _ = MAE(cfg, spatial_dims=3, input_size=(16,), rngs=nnx.Rngs(0))(x, mask_key=jax.random.key(1))
    mesh = jax.make_mesh((2, 2, 1), ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3)
    with jax.set_mesh(mesh), nnx.logical_axis_rules(MeshConfig().rules):
        graphdef, state = jax.jit(lambda: nnx.split(MAE(cfg, spatial_dims=3, input_size=(16,), rngs=nnx.Rngs(0))))()
        q = state["encoder"]["blocks"][0]["attn"]["q_kernel"][...]
        assert q.sharding.spec == jax.P("fsdp"), q.sharding
        pos = state["encoder"]["pos_embed"][...]
        assert pos.sharding.spec in (jax.P(None, None, "fsdp"),), pos.sharding
        # eager construction (outside jit) shards parameters at creation too
        eager = MAE(cfg, spatial_dims=3, input_size=(16,), rngs=nnx.Rngs(0))
        assert eager.encoder.blocks[0].mlp.fc1.kernel[...].sharding.spec == jax.P("fsdp", "tensor")
        model = nnx.merge(graphdef, state)
        xs = jax.device_put(x, NamedSharding(mesh, jax.P(("data", "fsdp"))))
        loss, aux = nnx.jit(lambda m, x: m(x, mask_key=jax.random.key(1)))(model, xs)
        assert aux["pred"].sharding.spec[0] == ("data", "fsdp"), aux["pred"].sharding
    np.testing.assert_allclose(loss, ref, rtol=1e-5)
    print("SHARDED_OK")
""")


@pytest.mark.slow
def test_sharded_mae_on_fake_devices():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", _SHARDED], env=env, capture_output=True, text=True, timeout=500)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "SHARDED_OK" in out.stdout
