"""Representation distillation on an FSDP mesh (2 CPU devices): teacher and student parameters are sharded over
``fsdp``, the teacher keeps its bits, and the losses equal those of the data-parallel mesh (replicated
parameters) on the same batches."""

from __future__ import annotations

import os

import pytest

from medjax.parallel.testing import run_with_devices

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CODE = """
import sys, tempfile, pathlib
sys.path.insert(0, {root!r})
import jax, numpy as np
from medjax.config.distill_schema import DistillConfig
from medjax.config.overrides import to_dict
from medjax.config.schema import CheckpointConfig, Config, DataConfig, MeshConfig, ModelConfig, TrainConfig
from medjax.distill.step import make_distill_step
from medjax.distill.student import build_student
from medjax.distill.teacher import load_teacher
from medjax.parallel.mesh import make_mesh
from medjax.parallel.rules import logical_rules, use_mesh
from medjax.parallel.sharding import batch_sharding
from medjax.training.checkpoint import Checkpointer
from medjax.training.optim import make_optimizer, make_schedule
from medjax.training.state import state_to_dict, train_state_spec

def cfg_for(mesh):
    return Config(data=DataConfig(spatial_dims=3, crop_size=(16,)),
                  model=ModelConfig(variant="Mu/8", decoder_width=32, decoder_depth=1, decoder_heads=2),
                  train=TrainConfig(steps=2, batch_size=2, lr=1e-3, warmup_steps=0), mesh=mesh,
                  checkpoint=CheckpointConfig(), distill=DistillConfig(mask_ratio=0.5))

root = pathlib.Path(tempfile.mkdtemp())
single = cfg_for(MeshConfig(data=2, fsdp=1))
with Checkpointer(root / "teacher") as ckpt:
    ckpt.save(0, state_to_dict(train_state_spec(single).init()), meta={{"config": to_dict(single)}}, force=True)
    ckpt.wait()
image = np.random.default_rng(0).normal(size=(2, 16, 16, 16, 1)).astype(np.float32)
out = {{}}
for name, mesh_cfg in (("dp", MeshConfig(data=2, fsdp=1)), ("fsdp", MeshConfig(data=1, fsdp=2))):
    cfg = cfg_for(mesh_cfg)
    mesh, rules = make_mesh(cfg.mesh), logical_rules(cfg.mesh)
    t = load_teacher(str(root / "teacher"), cfg, mesh, rules)
    before = jax.tree.map(lambda x: np.asarray(jax.device_get(x)), t.params)
    schedule = make_schedule(cfg.train)
    tx = make_optimizer(cfg.train, schedule=schedule)
    spec = train_state_spec(cfg, mesh, tx=tx, model_factory=lambda: build_student(cfg, t.width, seed=0))
    state = spec.init()
    bsh = batch_sharding(mesh)
    with use_mesh(mesh, spec.rules):
        step = make_distill_step(spec.model_def, tx, schedule, t, cfg.distill, state_shardings=spec.shardings,
                                 batch_sharding=bsh)
        losses = []
        for _ in range(2):
            state, m = step(state, {{"image": jax.device_put(image, bsh)}})
            losses.append(float(m["loss"]))
    after = jax.tree.map(lambda x: np.asarray(jax.device_get(x)), t.params)
    fc1 = t.params["encoder"]["blocks"][0]["mlp"]["fc1"]["kernel"]
    sfc1 = state.params["encoder"]["blocks"][0]["mlp"]["fc1"]["kernel"]
    out[name] = {{"losses": losses,
                 "teacher_same": all(a.tobytes() == b.tobytes() for a, b in zip(jax.tree.leaves(after),
                                                                                jax.tree.leaves(before))),
                 "teacher_shards": len({{str(s.index) for s in fc1.addressable_shards}}),
                 "student_shards": len({{str(s.index) for s in sfc1.addressable_shards}})}}
emit(out)
"""


@pytest.mark.slow  # two meshes compiled in a subprocess: ~40 s of CPU
def test_distill_step_under_fsdp_matches_data_parallel():
    out = run_with_devices(CODE.format(root=ROOT), devices=2, timeout=600)
    dp, fsdp = out["dp"], out["fsdp"]
    assert dp["teacher_same"] and fsdp["teacher_same"]
    assert fsdp["teacher_shards"] == 2 and fsdp["student_shards"] == 2  # sharded over fsdp
    assert dp["teacher_shards"] == 1 and dp["student_shards"] == 1  # replicated under pure data parallelism
    assert all(0 < v for v in fsdp["losses"])
    for a, b in zip(dp["losses"], fsdp["losses"]):
        assert abs(a - b) <= 1e-5 * max(1.0, abs(a))
