"""Checkpointer: round trips, keep-K, atomicity, resharding across device counts, digest and `checkpoint info`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medjax.errors import CheckpointError
from medjax.parallel.testing import run_with_devices
from medjax.training.checkpoint import Checkpointer, read_data_state, read_meta
from medjax.training.digest import count_params, params_digest


def _state(seed: int = 0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return {
        "params": {"enc": {"kernel": jax.random.normal(k1, (8, 4)), "bias": jnp.arange(4.0)}},
        "opt_state": {"mu": {"enc": {"kernel": jnp.zeros((8, 4)), "bias": jnp.zeros(4)}}, "count": jnp.array(3)},
        "step": jnp.array(seed, jnp.int32),
        "rng": jax.random.key(seed + 100),
    }


def _abstract(state):
    dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=dev), state)


def _equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_state_data_and_meta(tmp_path):
    ck = Checkpointer(tmp_path, keep=3)
    state = _state(1)
    data = {"next_index": 12, "epoch": 1, "nested": {"ids": ["a", "b"]}}
    meta = {"config": {"name": "demo", "crop": (32, 32, 32)}, "num_params": np.int64(36)}
    assert ck.save(5, state, data_state=data, meta=meta)
    ck.wait()
    restored, data2, meta2 = ck.restore(abstract_state=_abstract(state))
    _equal(restored, state)
    assert restored["rng"].dtype == state["rng"].dtype  # typed key comes back typed
    assert data2 == data
    assert meta2 == {"config": {"name": "demo", "crop": [32, 32, 32]}, "num_params": 36}
    assert read_meta(tmp_path) == meta2
    assert read_data_state(tmp_path, 5) == data
    assert ck.latest_step() == 5 and ck.all_steps() == [5]


def test_every_steps_force_keep_and_duplicates(tmp_path):
    ck = Checkpointer(tmp_path, keep=2, every_steps=10)
    state = _state()
    assert not ck.save(5, state)  # not a multiple of 10
    assert ck.save(10, state)
    ck.wait()
    assert not ck.save(10, state, force=True)  # already on disk
    assert ck.save(13, state, force=True)  # e.g. SIGTERM-time save
    ck.wait()
    assert ck.save(20, state)
    ck.wait()
    assert ck.all_steps() == [13, 20]
    assert sorted(p.name for p in ck.directory.iterdir() if p.name.isdigit()) == ["13", "20"]
    restored, data, meta = ck.restore(13, abstract_state=_abstract(state))
    assert data is None and meta is None
    _equal(restored, state)


def test_half_written_checkpoint_is_ignored_and_cleaned(tmp_path):
    ck = Checkpointer(tmp_path, keep=3)
    ck.save(1, _state(1), data_state={"i": 1})
    ck.wait()
    ck.close()
    tmp = ck.directory / "2.orbax-checkpoint-tmp-1700000000000000"
    (tmp / "state").mkdir(parents=True)
    (tmp / "state" / "junk").write_bytes(b"\0" * 64)
    assert Checkpointer(tmp_path, read_only=True).latest_step() == 1  # never listed
    assert read_data_state(tmp_path) == {"i": 1}
    ck2 = Checkpointer(tmp_path, keep=3)  # a writable open cleans it up
    assert not tmp.exists()
    assert ck2.latest_step() == 1


def test_killed_mid_save_keeps_last_complete_step(tmp_path):
    code = f"""
import os, jax, jax.numpy as jnp
from medjax.training.checkpoint import Checkpointer
ck = Checkpointer({str(tmp_path)!r})
ck.save(1, {{"w": jnp.ones((4,))}}, data_state={{"i": 1}})
ck.wait()
ck.save(2, {{"w": jnp.zeros((4096, 1024))}}, data_state={{"i": 2}})  # 16 MiB, written in the background
os._exit(17)  # die before the save is committed
"""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 17, proc.stderr[-2000:]
    ck = Checkpointer(tmp_path)
    assert ck.latest_step() == 1
    assert not [p for p in ck.directory.iterdir() if ".orbax-checkpoint-tmp" in p.name]
    state, data, _ = ck.restore(abstract_state=_abstract({"w": jnp.ones((4,))}))
    np.testing.assert_array_equal(np.asarray(state["w"]), np.ones(4))
    assert data == {"i": 1}


def test_errors_name_directory_and_fix(tmp_path):
    ck = Checkpointer(tmp_path)
    with pytest.raises(CheckpointError, match="no checkpoint in .*checkpoints; run without --restart"):
        ck.restore(abstract_state=_abstract(_state()))
    ck.save(1, _state())
    ck.wait()
    with pytest.raises(CheckpointError, match=r"no checkpoint at step 7 .* available steps: \[1\]"):
        ck.restore(7, abstract_state=_abstract(_state()))
    wrong = _state()
    wrong["params"]["enc"]["kernel"] = jnp.zeros((8, 5))
    with pytest.raises(CheckpointError, match=r"key params/enc/kernel shape \(8, 4\) \(saved\) vs \(8, 5\)"):
        ck.restore(abstract_state=_abstract(wrong))
    extra = _state()
    extra["params"]["dec"] = jnp.zeros(2)
    with pytest.raises(CheckpointError, match="the model has keys the checkpoint lacks: \\['params/dec'\\]"):
        ck.restore(abstract_state=_abstract(extra))
    unsharded = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _state())
    with pytest.raises(CheckpointError, match="has no sharding"):
        ck.restore(abstract_state=unsharded)
    with pytest.raises(CheckpointError, match="no checkpoint directory"):
        read_meta(tmp_path / "elsewhere")


def test_digest_is_stable_and_sensitive():
    from flax import nnx

    params = _state(0)["params"]
    d = params_digest(params)
    assert d == params_digest(jax.tree.map(np.asarray, params))
    assert len(d) == 64
    changed = jax.tree.map(lambda x: x, params)
    changed["enc"]["bias"] = params["enc"]["bias"].at[0].add(1e-6)
    assert params_digest(changed) != d
    renamed = {"enc": {"w": params["enc"]["kernel"], "bias": params["enc"]["bias"]}}
    assert params_digest(renamed) != d
    assert params_digest({"a": jnp.zeros(2, jnp.float32)}) != params_digest({"a": jnp.zeros(2, jnp.int32)})
    assert count_params(params) == 36
    # nnx.State (leaves under .value) and its pure dict give the same digest
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    st = nnx.state(model, nnx.Param)
    assert params_digest(st) == params_digest(nnx.to_pure_dict(st))
    assert count_params(st) == 8


@pytest.mark.slow  # two multi-device subprocesses (~15 s on 2 cores)
def test_save_fsdp8_restore_on_4_and_1_devices(tmp_path):
    model = """
import jax, jax.numpy as jnp, numpy as np, optax
from flax import nnx
from medjax.config.schema import MeshConfig
from medjax.parallel import *
from medjax.training.checkpoint import Checkpointer
from medjax.training.digest import params_digest

def _init(names):
    return nnx.with_partitioning(nnx.initializers.lecun_normal(), names)

class Tiny(nnx.Module):
    def __init__(self, rngs):
        self.up = nnx.Linear(32, 64, kernel_init=_init(("embed", "mlp")), rngs=rngs)
        self.down = nnx.Linear(64, 32, kernel_init=_init(("mlp", "embed")), rngs=rngs)

def init(seed):
    m = Tiny(nnx.Rngs(seed))
    opt = nnx.Optimizer(m, optax.adamw(1e-3), wrt=nnx.Param)
    return {"params": nnx.state(m, nnx.Param), "opt": nnx.state(opt), "rng": jax.random.key(seed)}
"""
    saved = run_with_devices(
        model
        + f"""
cfg = MeshConfig(data=1, fsdp=-1)
mesh, rules = make_mesh(cfg), logical_rules(cfg)
state = create_sharded(lambda: init(1), mesh, rules)
ck = Checkpointer({str(tmp_path)!r})
ck.save(3, state, data_state={{"next_index": 40}}, meta={{"config": {{"name": "tiny", "task": "mae"}}}}, force=True)
ck.wait()
spec = state["params"]["up"]["kernel"].value.sharding.spec
emit({{"digest": params_digest(state["params"]), "spec": [str(s) for s in spec]}})
""",
        devices=8,
    )
    assert saved["spec"] == ["fsdp", "tensor"]  # tensor has size 1 here
    restored = run_with_devices(
        model
        + f"""
res = {{}}
for n, cfg in ((4, MeshConfig(data=1, fsdp=-1)), (1, MeshConfig()), (2, MeshConfig(data=1, fsdp=1, tensor=2))):
    mesh, rules = make_mesh(cfg, jax.devices()[:n]), logical_rules(cfg)
    with use_mesh(mesh, rules):
        abstract = jax.eval_shape(lambda: init(0))
    abstract = with_shardings(abstract, state_shardings(abstract, mesh, rules))
    state, data, meta = Checkpointer({str(tmp_path)!r}).restore(abstract_state=abstract)
    k = state["params"]["up"]["kernel"].value
    res[str(n)] = {{"digest": params_digest(state["params"]), "data": data, "name": meta["config"]["name"],
                   "shards": len(k.addressable_shards), "shard_shape": list(k.addressable_shards[0].data.shape),
                   "rng": np.asarray(jax.random.key_data(state["rng"])).tolist()}}
emit(res)
""",
        devices=4,
    )
    for n in ("4", "1", "2"):
        assert restored[n]["digest"] == saved["digest"]
        assert restored[n]["data"] == {"next_index": 40}
        assert restored[n]["name"] == "tiny"
    assert restored["4"]["shard_shape"] == [8, 64]  # 32 rows over 4 devices: never whole on one device
    assert restored["2"]["shard_shape"] == [32, 32]  # tensor-parallel: columns split 2 ways
    assert restored["1"]["shard_shape"] == [32, 64]
    assert restored["4"]["rng"] == np.asarray(jax.random.key_data(jax.random.key(1))).tolist()

    # `medjax checkpoint info` on this (single-device) process reads the same digest without the model
    proc = subprocess.run(
        [sys.executable, "-m", "medjax", "checkpoint", "info", str(tmp_path), "--json"],
        capture_output=True, text=True, timeout=120, env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["latest_step"] == 3 and info["steps"] == [3]
    assert info["params_digest"] == saved["digest"]
    assert info["num_params"] == 32 * 64 + 64 + 64 * 32 + 32
    assert info["config"] == {"name": "tiny", "task": "mae"}
    assert info["data_state"] == {"next_index": 40}
    assert info["bytes"]["3"] > 4 * info["num_params"]


def test_cli_info_table_and_missing(tmp_path, capsys):
    from medjax.cli import main

    ck = Checkpointer(tmp_path)
    ck.save(2, _state(), data_state={"next_index": 9}, meta={"config": {"name": "demo", "task": "mae"}, "note": "x"})
    ck.wait()
    assert main(["checkpoint", "info", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "latest step" in out and "demo (task mae)" in out and '{"next_index": 9}' in out
    assert params_digest(_state()["params"]) in out
    assert main(["checkpoint", "info", str(tmp_path / "none")]) == 2
    assert "no checkpoint directory" in capsys.readouterr().err


def test_key_impl_names_every_builtin_prng():
    import jax

    from medjax.errors import CheckpointError
    from medjax.training.checkpoint import _key_impl

    for impl in ("threefry2x32", "rbg", "unsafe_rbg"):
        key = jax.random.key(0, impl=impl)
        assert _key_impl(key.dtype) == impl
        assert jax.random.key_impl(jax.random.wrap_key_data(jax.random.key_data(key), impl=_key_impl(key.dtype))) \
            == jax.random.key_impl(key)
    with pytest.raises(CheckpointError, match="key<nope>"):
        _key_impl("key<nope>")
