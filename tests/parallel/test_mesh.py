"""Mesh sizing, rules and logical->physical specs."""

from __future__ import annotations

import pytest
from jax.sharding import PartitionSpec as P

from medjax.config.schema import MeshConfig
from medjax.errors import ConfigError
from medjax.parallel.mesh import mesh_shape
from medjax.parallel.rules import (
    constrain,
    logical_rules,
    logical_to_spec,
    normalize_rules,
)
from medjax.parallel.testing import run_with_devices


@pytest.mark.parametrize(
    "cfg, n, expected",
    [
        (MeshConfig(), 8, (8, 1, 1)),
        (MeshConfig(data=1, fsdp=-1), 8, (1, 8, 1)),
        (MeshConfig(data=-1, fsdp=2, tensor=2), 8, (2, 2, 2)),
        (MeshConfig(data=2, fsdp=2, tensor=2), 8, (2, 2, 2)),
        (MeshConfig(data=-1, tensor=4), 4, (1, 1, 4)),
        (MeshConfig(), 1, (1, 1, 1)),
    ],
)
def test_mesh_shape_resolves_minus_one(cfg, n, expected):
    assert mesh_shape(cfg, n) == expected


@pytest.mark.parametrize(
    "cfg, n, needle",
    [
        (MeshConfig(data=2, fsdp=2, tensor=1), 8, "mesh.data=2 * mesh.fsdp=2 * mesh.tensor=1 = 4 devices"),
        (MeshConfig(data=-1, fsdp=3), 8, "not divisible by 3"),
        (MeshConfig(data=-1, fsdp=-1), 8, "mesh.data and mesh.fsdp are both -1"),
        (MeshConfig(data=0), 8, "mesh.data=0"),
        (MeshConfig(tensor=-2), 8, "mesh.tensor=-2"),
    ],
)
def test_mesh_shape_errors_name_the_keys(cfg, n, needle):
    with pytest.raises(ConfigError, match=None) as err:
        mesh_shape(cfg, n)
    assert needle in str(err.value)


class _FakeMesh:
    def __init__(self, **shape):
        self.shape = shape


def test_logical_to_spec_maps_names_and_drops_reused_axes():
    rules = logical_rules(MeshConfig())
    assert logical_to_spec(("embed", "mlp"), rules) == P("fsdp", "tensor")
    assert logical_to_spec(("batch", "length", "embed"), rules) == P(("data", "fsdp"), None, None)
    assert logical_to_spec((None, "heads", "kv"), rules) == P(None, "tensor", None)


def test_logical_to_spec_keeps_indivisible_dims_replicated():
    mesh = _FakeMesh(data=2, fsdp=4, tensor=1)
    rules = logical_rules(MeshConfig())
    assert logical_to_spec(("embed", "vocab"), rules, shape=(16, 3), mesh=mesh) == P("fsdp", None)
    assert logical_to_spec(("embed",), rules, shape=(6,), mesh=mesh) == P(None)
    # batch 2 divides data=2 but not data*fsdp=8: keep only the leading axis
    assert logical_to_spec(("batch", None), rules, shape=(2, 5), mesh=mesh) == P("data", None)
    assert logical_to_spec(("batch", None), rules, shape=(16, 5), mesh=mesh) == P(("data", "fsdp"), None)


def test_logical_to_spec_errors():
    rules = logical_rules(MeshConfig())
    with pytest.raises(ConfigError, match="'nope' has no rule in mesh.rules"):
        logical_to_spec(("nope",), rules)
    with pytest.raises(ConfigError, match="name 2 dims but the array has shape"):
        logical_to_spec(("embed", "mlp"), rules, shape=(4,))


def test_rules_validation():
    assert normalize_rules([("embed", "fsdp"), ("kv", None)]) == (("embed", ("fsdp",)), ("kv", ()))
    with pytest.raises(ConfigError, match="unknown mesh axes \\['model'\\]"):
        logical_rules(MeshConfig(rules=(("embed", ("model",)),)))
    with pytest.raises(ConfigError, match="appears twice"):
        normalize_rules([("embed", ()), ("embed", ("fsdp",))])


def test_constrain_is_identity_without_mesh():
    import numpy as np

    x = np.ones((2, 3))
    assert constrain(x, ("batch", "embed")) is x


def test_make_mesh_on_eight_devices():
    out = run_with_devices(
        """
        from medjax.config.schema import MeshConfig
        from medjax.errors import ConfigError
        from medjax.parallel import make_mesh
        res = {}
        for name, cfg in {"dp": MeshConfig(), "fsdp": MeshConfig(data=1, fsdp=-1),
                          "mix": MeshConfig(data=2, fsdp=2, tensor=2)}.items():
            m = make_mesh(cfg)
            res[name] = [list(m.axis_names), [int(v) for v in m.devices.shape],
                         sorted(int(d.id) for d in m.devices.flat), [str(t) for t in m.axis_types]]
        m4 = make_mesh(MeshConfig(data=-1, fsdp=2), devices=__import__("jax").devices()[:4])
        res["sub"] = [int(v) for v in m4.devices.shape]
        try:
            make_mesh(MeshConfig(data=3))
        except ConfigError as e:
            res["err"] = str(e)
        emit(res)
        """,
        devices=8,
    )
    assert out["dp"][0] == ["data", "fsdp", "tensor"]
    assert out["dp"][1] == [8, 1, 1]
    assert out["fsdp"][1] == [1, 8, 1]
    assert out["mix"][1] == [2, 2, 2]
    assert out["mix"][2] == list(range(8))
    assert all("Auto" in t for t in out["mix"][3])
    assert out["sub"] == [2, 2, 1]
    assert "8 are available" in out["err"] and "mesh.data=3" in out["err"]


def test_activation_rules_override_parameter_rules_for_activations_only():
    from medjax.parallel.rules import activation_spec

    mesh = _FakeMesh(data=1, fsdp=8, tensor=1)
    rules = logical_rules(MeshConfig()) + (("activation_embed", ()),)
    # a batch of 4 cannot split 8 ways: without an activation rule the freed fsdp axis lands on embed ...
    assert activation_spec(("batch", "length", "embed"), logical_rules(MeshConfig()), shape=(4, 9, 64),
                           mesh=mesh) == P("data", None, "fsdp")
    # ... with ("activation_embed", ()) the residual stream stays whole, while embed parameters still shard
    assert activation_spec(("batch", "length", "embed"), rules, shape=(4, 9, 64), mesh=mesh) == P("data", None, None)
    assert logical_to_spec(("embed", "mlp"), rules, shape=(64, 128), mesh=mesh) == P("fsdp", "tensor")
    with pytest.raises(ConfigError, match="'nope' has no rule"):
        activation_spec(("nope",), rules)


def test_parameters_and_activations_share_the_translator_on_eight_devices():
    out = run_with_devices(
        """
        import jax, jax.numpy as jnp
        from medjax.config.schema import MeshConfig
        from medjax.parallel import logical_rules, make_mesh, use_mesh
        from medjax.models.layers import Dense, constrain
        from flax import nnx
        cfg = MeshConfig(data=4, tensor=2)
        mesh, rules = make_mesh(cfg), logical_rules(cfg)
        with use_mesh(mesh, rules):
            d = Dense(8, 3, names=("embed", "heads"), rngs=nnx.Rngs(0))   # 3 outputs: indivisible by tensor=2
            e = Dense(8, 4, names=("embed", "heads"), rngs=nnx.Rngs(0))
            y = jax.jit(lambda x: constrain(x, ("batch", "heads")))(jnp.ones((8, 3)))
            z = jax.jit(lambda x: constrain(x, ("batch", "heads")))(jnp.ones((8, 4)))
        shard = lambda a: list(a.sharding.shard_shape(a.shape))  # the block each device holds
        emit({"d": shard(d.kernel[...]), "e": shard(e.kernel[...]), "y": shard(y), "z": shard(z)})
        """,
        devices=8,
    )
    assert out["d"] == [8, 3] and out["y"] == [2, 3]  # 3 heads: kept whole in the parameter and the activation
    assert out["e"] == [8, 2] and out["z"] == [2, 2]  # 4 heads: split over tensor=2 in both
