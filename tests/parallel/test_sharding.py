"""State/batch shardings, sharded creation and per-device memory on 8 fake CPU devices."""

from __future__ import annotations

import pytest

from medjax.parallel.testing import run_with_devices

pytestmark = pytest.mark.slow  # one 8-device subprocess compiling several meshes (~20 s on 2 cores)

# A tiny stand-in model: two Linear layers naming logical axes, plus a 3-way head that cannot split 8 ways.
MODEL = """
import jax, jax.numpy as jnp, numpy as np, optax
from flax import nnx
from medjax.parallel import *

def _init(names):
    return nnx.with_partitioning(nnx.initializers.lecun_normal(), names)

def _zeros(names):
    return nnx.with_partitioning(nnx.initializers.zeros, names)

class Tiny(nnx.Module):
    def __init__(self, rngs, width=64, hidden=256):
        self.up = nnx.Linear(width, hidden, kernel_init=_init(("embed", "mlp")), bias_init=_zeros(("mlp",)), rngs=rngs)
        self.down = nnx.Linear(hidden, width, kernel_init=_init(("mlp", "embed")), bias_init=_zeros(("embed",)), rngs=rngs)
        self.head = nnx.Linear(width, 3, kernel_init=_init(("embed", "vocab")), bias_init=_zeros(("vocab",)), rngs=rngs)

    def __call__(self, x):
        h = constrain(self.up(x), ("batch", "mlp"))
        return self.head(constrain(self.down(h), ("batch", "embed")))

def specs(tree):
    return {path_str(p): [None if s is None else (list(s) if isinstance(s, tuple) else s) for s in a.sharding.spec]
            for p, a in jax.tree_util.tree_flatten_with_path(tree)[0]}
"""


@pytest.fixture(scope="module")
def fsdp8():
    return run_with_devices(
        MODEL
        + """
from medjax.config.schema import MeshConfig
res = {}
for name, cfg in {"fsdp": MeshConfig(data=1, fsdp=-1), "tp": MeshConfig(data=2, fsdp=2, tensor=2),
                  "dp": MeshConfig()}.items():
    mesh, rules = make_mesh(cfg), logical_rules(cfg)
    model = create_sharded(lambda: Tiny(nnx.Rngs(0)), mesh, rules)
    params = nnx.state(model, nnx.Param)
    res[name] = {"specs": specs(params), "per_device": per_device_bytes(params),
                 "total": int(sum(x.nbytes for x in jax.tree.leaves(params))),
                 "by_device": sorted(device_bytes(params).values())}
    if name == "fsdp":
        # optimizer built with the model: moments carry the parameters' metadata
        def both():
            m = Tiny(nnx.Rngs(0))
            return m, nnx.Optimizer(m, optax.adamw(1e-3), wrt=nnx.Param)
        _, opt = create_sharded(both, mesh, rules)
        res["opt_specs"] = specs(nnx.state(opt))
        # plain optax over a pure dict: moments mirror their parameters by key path
        tx = optax.adam(1e-3)
        def pure():
            p = nnx.state(Tiny(nnx.Rngs(0)), nnx.Param)
            return {"params": p, "opt_state": tx.init(nnx.to_pure_dict(p))}
        with use_mesh(mesh, rules):
            abstract = jax.eval_shape(pure)
        res["pure_specs"] = {k: v for k, v in specs(with_shardings(abstract, state_shardings(abstract, mesh, rules))).items()}
        # forward pass: batch sharded, activation constraints applied inside use_mesh
        x = jax.device_put(jnp.ones((16, 64), jnp.float32), batch_sharding(mesh))
        with use_mesh(mesh, rules):
            f = jax.jit(lambda m, x: m(x))
            y = f(model, x)
            hlo = jax.jit(lambda m, x: m(x)).lower(model, x).as_text()
        res["x_spec"] = specs({"x": x})["x"]
        res["y_shape"] = list(y.shape)
        res["constraints"] = hlo.count("sharding_constraint") + hlo.count("@Sharding")  # Shardy or GSPMD form
        # numerics equal to the unsharded model
        host = jax.tree.map(lambda a: jax.device_put(np.asarray(a), jax.devices()[0]), nnx.state(model))
        gd = nnx.graphdef(model)
        ref_model = nnx.merge(gd, host)
        res["max_err"] = float(jnp.max(jnp.abs(np.asarray(y) - np.asarray(ref_model(jnp.ones((16, 64)))))))
emit(res)
""",
        devices=8,
    )


def test_fsdp_shards_embed_over_eight_devices(fsdp8):
    s = fsdp8["fsdp"]["specs"]
    assert s["up/kernel/value"] == ["fsdp", "tensor"]
    assert s["down/kernel/value"] == ["tensor", "fsdp"]
    assert s["down/bias/value"] == ["fsdp"]
    assert s["head/kernel/value"] == ["fsdp", None]
    assert s["head/bias/value"] == [None]  # 3 classes do not divide 8 devices: replicated


def test_fsdp_per_device_bytes_is_about_an_eighth(fsdp8):
    f = fsdp8["fsdp"]
    # everything but the 3-float head bias and the 256-float up bias (mlp -> tensor of size 1) splits 8 ways
    replicated = (3 + 256) * 4
    assert f["per_device"] == (f["total"] - replicated) // 8 + replicated
    assert f["by_device"][0] == f["by_device"][-1]
    assert f["per_device"] < f["total"] / 6


def test_tensor_and_data_parallel_specs(fsdp8):
    tp = fsdp8["tp"]["specs"]
    assert tp["up/kernel/value"] == ["fsdp", "tensor"]
    assert tp["up/bias/value"] == ["tensor"]
    assert fsdp8["tp"]["per_device"] < fsdp8["tp"]["total"] / 3
    dp = fsdp8["dp"]
    assert dp["per_device"] == dp["total"]  # fsdp=tensor=1: parameters replicated


def test_optimizer_moments_mirror_params(fsdp8):
    o = fsdp8["opt_specs"]
    assert o["opt_state/0/mu/up/kernel/value"] == ["fsdp", "tensor"]
    assert o["opt_state/0/nu/down/kernel/value"] == ["tensor", "fsdp"]
    assert o["opt_state/0/count/value"] == []
    p = fsdp8["pure_specs"]
    # plain optax moments carry no metadata: they mirror the parameter with the same key path and shape
    assert p["params/up/kernel/value"] == ["fsdp", "tensor"]
    assert p["opt_state/0/mu/up/kernel"] == ["fsdp", "tensor"]
    assert p["opt_state/0/nu/head/kernel"] == ["fsdp", None]
    assert p["opt_state/0/count"] == []


def test_batch_sharding_and_forward(fsdp8):
    f = fsdp8
    assert f["x_spec"] == [["data", "fsdp"]]
    assert f["y_shape"] == [16, 3]
    assert f["constraints"] >= 2  # the two constrain() calls in Tiny.__call__
    assert f["max_err"] < 1e-5
