"""Mesh sizing, rules and logical->physical specs."""

from __future__ import annotations

import pytest
from jax.sharding import PartitionSpec as P

from medjax.config.schema import MeshConfig
from medjax.errors import ConfigError
from medjax.parallel.mesh import mesh_shape
from medjax.parallel.rules import (
    RULES_DP,
    RULES_FSDP,
    RULES_TP,
    constrain,
    logical_rules,
    logical_to_spec,
    mesh_config_for,
    normalize_rules,
    rules_for,
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


def test_presets_select_strategies():
    assert rules_for("dp") is RULES_DP and rules_for("fsdp") is RULES_FSDP and rules_for("tp") is RULES_TP
    assert logical_to_spec(("embed", "mlp"), RULES_DP) == P(None, None)
    assert logical_to_spec(("embed", "mlp"), RULES_FSDP) == P("fsdp", None)
    assert logical_to_spec(("embed", "mlp"), RULES_TP) == P("fsdp", "tensor")
    assert mesh_shape(mesh_config_for("fsdp"), 8) == (1, 8, 1)
    assert mesh_shape(mesh_config_for("tp", tensor=2), 8) == (4, 1, 2)
    with pytest.raises(ConfigError, match="unknown parallel strategy 'zero'"):
        rules_for("zero")


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
