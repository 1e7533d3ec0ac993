"""medjax.training.restore: parts of a checkpoint read onto abstract targets, with their shardings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medjax.errors import CheckpointError
from medjax.training.checkpoint import Checkpointer
from medjax.training.restore import abstract_like, open_checkpoint, resolve_checkpoint, restore_arrays, restore_model


def _state():
    rng = np.random.default_rng(0)
    params = {"encoder": {"blocks": {"0": {"kernel": rng.normal(size=(4, 6)).astype(np.float32)}},
                          "pos_embed": rng.normal(size=(1, 9, 4)).astype(np.float32)},
              "decoder": {"kernel": rng.normal(size=(4, 2)).astype(np.float32)}}
    return {"params": params, "opt_state": {"mu": np.ones((64,), np.float32)}, "step": np.int32(7)}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("restore") / "run"
    state = _state()
    with Checkpointer(workdir, keep=2, async_save=False) as ck:
        ck.save(3, jax.tree.map(jnp.asarray, state), meta={"config": {"task": "mae"}}, force=True)
        ck.save(5, jax.tree.map(jnp.asarray, state), force=True)
        ck.wait()
    return workdir, state


def test_resolve_and_open(run, tmp_path):
    workdir, _ = run
    assert resolve_checkpoint(workdir) == (workdir, None)
    assert resolve_checkpoint(workdir / "checkpoints") == (workdir, None)
    assert resolve_checkpoint(workdir / "checkpoints" / "3") == (workdir, 3)
    with pytest.raises(CheckpointError, match="not a run directory"):
        resolve_checkpoint(tmp_path)
    latest = open_checkpoint(workdir)
    assert latest.step == 5 and latest.meta == {}
    first = open_checkpoint(workdir / "checkpoints" / "3")
    assert first.step == 3 and first.meta == {"config": {"task": "mae"}}
    assert first.arrays["params/encoder/pos_embed"][0] == (1, 9, 4)
    assert first.keys("params/encoder") == ["params/encoder/blocks/0/kernel", "params/encoder/pos_embed"]
    with pytest.raises(CheckpointError, match=r"no checkpoint at step 4 .*available steps: \[3, 5\]"):
        open_checkpoint(workdir, 4)


def test_restore_a_subtree_only(run):
    workdir, state = run
    saved = open_checkpoint(workdir)
    target = {"params": {"encoder": abstract_like(state["params"]["encoder"])}}
    out = restore_arrays(saved, target)
    assert set(out) == {"params"} and set(out["params"]) == {"encoder"}
    leaf = out["params"]["encoder"]["blocks"]["0"]["kernel"]
    assert isinstance(leaf, jax.Array) and leaf.sharding == jax.sharding.SingleDeviceSharding(jax.devices()[0])
    np.testing.assert_array_equal(leaf, state["params"]["encoder"]["blocks"]["0"]["kernel"])
    np.testing.assert_array_equal(out["params"]["encoder"]["pos_embed"], state["params"]["encoder"]["pos_embed"])
    # dtype follows the target
    half = {"params": {"decoder": {"kernel": jax.ShapeDtypeStruct((4, 2), jnp.bfloat16)}}}
    got = restore_arrays(saved, half)["params"]["decoder"]["kernel"]
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(got, np.float32), state["params"]["decoder"]["kernel"], rtol=1e-2)


def test_restore_errors_name_the_parameter(run):
    workdir, state = run
    saved = open_checkpoint(workdir)
    with pytest.raises(CheckpointError, match="lacks parameter 'params/encoder/cls'"):
        restore_arrays(saved, {"params": {"encoder": {"cls": jax.ShapeDtypeStruct((1, 1, 4), jnp.float32)}}})
    with pytest.raises(CheckpointError, match=r"'params/decoder/kernel' has shape \(4, 2\), the model expects \(4, 3\)"):
        restore_arrays(saved, {"params": {"decoder": {"kernel": jax.ShapeDtypeStruct((4, 3), jnp.float32)}}})
    enc_only = abstract_like({"encoder": state["params"]["encoder"]})
    with pytest.raises(CheckpointError, match=r"parameters the model lacks: \['params/decoder/kernel'\]"):
        restore_model(workdir, enc_only)
    params, model_state, _ = restore_model(workdir, abstract_like(state["params"]))
    assert model_state == {}
    np.testing.assert_array_equal(params["decoder"]["kernel"], state["params"]["decoder"]["kernel"])


def test_encoder_lands_in_the_target_shardings_on_a_mesh(tmp_path):
    """4 fake devices: the encoder is read into a model-parallel layout and a learned position embedding saved for
    a 2x2x2 grid is resized to 4x2x2 on the devices, in the target's sharding."""
    code = textwrap.dedent(f"""
        import json, numpy as np, jax, jax.numpy as jnp
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        from medjax.training.checkpoint import Checkpointer
        from medjax.finetune.init import load_encoder
        from medjax.models.posembed import resize_pos_embed
        rng = np.random.default_rng(1)
        enc = {{"kernel": rng.normal(size=(8, 4)).astype(np.float32),
                "pos_embed": rng.normal(size=(1, 9, 4)).astype(np.float32)}}
        with Checkpointer({str(tmp_path)!r}, async_save=False) as ck:
            ck.save(1, {{"params": {{"encoder": jax.tree.map(jnp.asarray, enc)}},
                         "opt_state": {{"nu": jnp.zeros(16)}}}},
                    meta={{"config": {{"data": {{"crop_size": [8]}}, "model": {{"variant": "Mu/4"}}}}}}, force=True)
            ck.wait()
        mesh = Mesh(np.array(jax.devices()).reshape(2, 2), ("data", "model"))
        kernel_s, pe_s = NamedSharding(mesh, P("model", None)), NamedSharding(mesh, P(None, None, "model"))
        params = {{"encoder": {{"kernel": jax.device_put(jnp.zeros((8, 4)), kernel_s),
                                "pos_embed": jax.device_put(jnp.zeros((1, 17, 4)), pe_s)}},
                   "head": jax.device_put(jnp.ones(3), NamedSharding(mesh, P()))}}
        new, report = load_encoder(params, {str(tmp_path)!r}, grid=(4, 2, 2), num_prefix=1, spatial_dims=3)
        k, pe = new["encoder"]["kernel"], new["encoder"]["pos_embed"]
        print(json.dumps({{
            "kernel_sharded": k.sharding == kernel_s, "pe_sharded": pe.sharding == pe_s,
            "kernel_equal": bool(np.array_equal(np.asarray(k), enc["kernel"])),
            "pe_close": float(np.abs(np.asarray(pe) - np.asarray(resize_pos_embed(enc["pos_embed"], (2, 2, 2),
                                                                                   (4, 2, 2)))).max()),
            "head_kept": new["head"] is params["head"], "resized": report["resized"], "step": report["step"]}}))
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["kernel_sharded"] and got["pe_sharded"] and got["kernel_equal"] and got["head_kept"]
    assert got["pe_close"] < 1e-6
    assert got["step"] == 1
    assert got["resized"] == [{"param": "encoder/pos_embed", "old_grid": [2, 2, 2], "new_grid": [4, 2, 2]}]


def test_read_arrays_without_a_model(run):
    from medjax.finetune.init import read_checkpoint
    from medjax.training.restore import read_arrays

    workdir, state = run
    trees, saved = read_arrays(workdir / "checkpoints" / "3")
    assert set(trees) == {"params"} and saved.step == 3
    got = trees["params"]["encoder"]["blocks"]["0"]["kernel"]
    assert isinstance(got, np.ndarray)
    np.testing.assert_array_equal(got, state["params"]["encoder"]["blocks"]["0"]["kernel"])
    np.testing.assert_array_equal(trees["params"]["decoder"]["kernel"], state["params"]["decoder"]["kernel"])
    st, meta, step = read_checkpoint(workdir / "checkpoints" / "3")
    assert step == 3 and meta == {"config": {"task": "mae"}} and "opt_state" not in st
    np.testing.assert_array_equal(st["params"]["encoder"]["pos_embed"], state["params"]["encoder"]["pos_embed"])


def test_a_training_checkpoint_restores_without_orbax_warnings(tmp_path, caplog):
    """A pretraining checkpoint also holds the data-loader item; reading its encoder must not make orbax warn
    (every probe and fine-tuning run would print the same warnings once per restore)."""
    import logging

    state = _state()
    with Checkpointer(tmp_path / "run", keep=1, async_save=False) as ck:
        ck.save(2, jax.tree.map(jnp.asarray, state), data_state={"epoch": 1}, meta={"loss": 0.5}, force=True)
        ck.wait()
    with caplog.at_level(logging.WARNING):
        saved = open_checkpoint(tmp_path / "run")
        out = restore_arrays(saved, {"params": {"encoder": abstract_like(state["params"]["encoder"])}})
    assert saved.meta == {"loss": 0.5}
    np.testing.assert_array_equal(out["params"]["encoder"]["pos_embed"], state["params"]["encoder"]["pos_embed"])
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
