"""Resharding restore: a checkpoint written with FSDP on 8 devices resumes on 4 devices and on 1 device with the
same parameter values (digest) and keeps training."""

from __future__ import annotations

import numpy as np
import pytest

from medjax.parallel.testing import run_with_devices, spawn_with_devices

pytestmark = pytest.mark.slow  # three subprocesses, each compiling a tiny MAE (~1 min in all on 2 cores)

TINY = [
    "model.variant=Mu/8", "model.decoder_width=32", "model.decoder_depth=1", "model.decoder_heads=2",
    "data.crop_size=16", "data.spacing=2.0,2.0,2.0", "data.samples_per_volume=2", "data.workers=0",
    "train.batch_size=8", "train.warmup_steps=1", "train.lr=2e-3", "train.log_every=1", "train.steps=4",
    "checkpoint.every_steps=2", "checkpoint.keep=5",
]

COMMON = """
import json, shutil, jax, numpy as np
from medjax.config import apply_overrides, get_preset
from medjax.training.checkpoint import Checkpointer
from medjax.training.digest import params_digest
from medjax.training.logging import read_metrics
from medjax.training.pretraining import pretrain
from medjax.training.state import state_to_dict, train_state_spec

TINY, DATA, WORK = {tiny!r}, {data!r}, {work!r}
def config(*extra):
    return apply_overrides(get_preset("demo"), TINY + ["data.dir=" + DATA, *extra])
def spec_of(sharding):
    return [None if s is None else s if isinstance(s, str) else list(s) for s in sharding.spec]
from medjax.parallel.sharding import path_str
def kernel(params):  # (64, 128), logical axes ("embed", "mlp")
    leaves = dict((path_str(p), x) for p, x in jax.tree_util.tree_flatten_with_path(params)[0])
    return leaves["encoder/blocks/0/mlp/fc1/kernel"]
"""

WRITE = """
cfg = config("train.steps=2", "mesh.data=1", "mesh.fsdp=8")
s = pretrain(cfg, WORK, progress=False)
state, _, _ = Checkpointer(WORK, read_only=True).restore(
    2, abstract_state=state_to_dict(train_state_spec(cfg).abstract_with_shardings()))
k = kernel(state["params"])
emit({"digest": s["params_digest"], "step": s["step"], "spec": spec_of(k.sharding),
      "shard_shape": list(k.addressable_shards[0].data.shape), "shape": list(k.shape),
      "opt_digest": params_digest(state["opt_state"])})
"""

RESUME = """
cfg = config(*MESH)
mine = WORK + "-" + str(jax.device_count())
shutil.copytree(WORK, mine)  # each resume runs in its own copy
spec = train_state_spec(cfg)
state, data_state, _ = Checkpointer(mine, read_only=True).restore(
    2, abstract_state=state_to_dict(spec.abstract_with_shardings()))
k = kernel(state["params"])
out = {"digest": params_digest(state["params"]), "opt_digest": params_digest(state["opt_state"]),
       "spec": spec_of(k.sharding), "shard_shape": list(k.addressable_shards[0].data.shape),
       "devices": len(k.sharding.device_set)}
del state
s = pretrain(cfg, mine, progress=False)
out.update(resumed_from=s["resumed_from"], step=s["step"],
           steps=[r["step"] for r in read_metrics(mine + "/metrics.jsonl")],
           losses=[r["loss"] for r in read_metrics(mine + "/metrics.jsonl")])
emit(out)
"""


def test_fsdp8_checkpoint_resumes_on_4_and_1_devices(tmp_path):
    from medjax.data.testing import write_tiny_dataset

    data = write_tiny_dataset(tmp_path / "data", n=4, layout="folder", with_labels=False)
    common = COMMON.format(tiny=TINY, data=data, work=str(tmp_path / "run"))
    w = run_with_devices(common + WRITE, 8)
    assert w["step"] == 2 and w["spec"][0] == "fsdp" and w["shape"][0] == 8 * w["shard_shape"][0]

    pending = {n: spawn_with_devices(common + f"MESH = {mesh!r}" + RESUME, n)
               for n, mesh in ((4, ["mesh.data=1", "mesh.fsdp=4"]), (1, ["mesh.data=-1"]))}
    got = {n: p.result(400) for n, p in pending.items()}
    four, one = got[4], got[1]
    for r in (four, one):  # the same values, whatever the layout
        assert r["digest"] == w["digest"] and r["opt_digest"] == w["opt_digest"]
        assert r["resumed_from"] == 2 and r["step"] == 4 and r["steps"] == [1, 2, 3, 4]
        assert np.all(np.isfinite(r["losses"]))
    assert four["devices"] == 4 and four["spec"][0] == "fsdp" and four["shard_shape"][0] == w["shape"][0] // 4
    assert one["devices"] == 1 and one["shard_shape"] == w["shape"]
    # steps 1-2 are the writer's; 3-4 continue from the same data position, and both layouts agree
    np.testing.assert_allclose(four["losses"], one["losses"], rtol=1e-5)
