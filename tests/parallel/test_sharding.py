"""State/batch shardings, sharded creation and per-device memory on 8 fake CPU devices: the general helpers on
a small NNX model, and the train state pretraining builds (train_state_spec) on its MAE."""

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


# What pretraining uses: train_state_spec (logical names -> shardings_by_path -> jit(init, out_shardings)),
# batch_sharding and use_mesh, on the MAE of a tiny config.
PRETRAIN = """
import jax, numpy as np
from medjax.config import apply_overrides, get_preset
from medjax.parallel import batch_sharding, per_device_bytes, path_str
from medjax.training.state import train_state_spec

def specs(tree):
    return {path_str(p): [None if s is None else (list(s) if isinstance(s, tuple) else s) for s in sh.spec]
            for p, sh in jax.tree_util.tree_flatten_with_path(tree)[0]}

res = {}
base = ["model.variant=Mu/8", "model.decoder_width=32", "model.decoder_depth=1", "model.decoder_heads=2",
        "data.crop_size=16"]
for name, mesh in {"fsdp": ["mesh.data=1", "mesh.fsdp=-1"], "dp": ["mesh.data=-1"],
                   "tp": ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"]}.items():
    cfg = apply_overrides(get_preset("demo"), base + mesh)
    spec = train_state_spec(cfg)
    state = spec.init()
    res[name] = {"specs": specs(spec.shardings), "per_device": per_device_bytes(state),
                 "total": int(sum(x.nbytes for x in jax.tree.leaves(state))),
                 "placed": specs(jax.tree.map(lambda a: a.sharding, state)) == specs(spec.shardings),
                 "batch": specs({"b": batch_sharding(spec.mesh)})["b"]}
emit(res)
"""


@pytest.fixture(scope="module")
def pretrain8():
    return run_with_devices(PRETRAIN, devices=8)


def _find(specs, suffix, prefix=""):
    hits = [v for k, v in specs.items() if k.endswith(suffix) and k.startswith(prefix)]
    assert hits, f"no state leaf {prefix}...{suffix}"
    return hits


def test_pretraining_state_is_created_in_its_shardings(pretrain8):
    for name in ("fsdp", "dp", "tp"):
        assert pretrain8[name]["placed"], name
        assert pretrain8[name]["batch"] == [["data", "fsdp"]]


def test_pretraining_state_fsdp_specs_and_bytes(pretrain8):
    f = pretrain8["fsdp"]
    s = f["specs"]
    assert s["params/encoder/blocks/0/mlp/fc1/kernel"] == ["fsdp", "tensor"]
    assert s["params/encoder/blocks/0/mlp/fc2/kernel"] == ["tensor", "fsdp"]
    assert s["params/encoder/blocks/0/attn/q_kernel"] == ["fsdp", "tensor", None]
    assert s["step"] == [] and s["rng"] == [] and s["nonfinite_count"] == []
    # AdamW's moments (plain optax over a dict: no metadata) mirror their parameters by key path and shape
    for moment in _find(s, "/encoder/blocks/0/mlp/fc1/kernel", "opt_state"):
        assert moment == ["fsdp", "tensor"]
    # the 32-wide decoder and the 64-wide encoder split 8 ways: per device is a small fraction of the total
    assert f["per_device"] < f["total"] / 4


def test_pretraining_state_dp_and_tp(pretrain8):
    dp = pretrain8["dp"]
    assert dp["per_device"] == dp["total"]  # data parallel: every device holds the whole state
    tp = pretrain8["tp"]["specs"]
    assert tp["params/encoder/blocks/0/mlp/fc1/kernel"] == ["fsdp", "tensor"]
    assert tp["params/encoder/blocks/0/attn/q_kernel"] == ["fsdp", "tensor", None]  # 2 heads on tensor=2
    assert pretrain8["tp"]["per_device"] < pretrain8["tp"]["total"] / 2
