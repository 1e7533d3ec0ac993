"""LoRA on an FSDP mesh (4 CPU devices): the frozen base stays sharded and bit-identical, the trainable
parameters move, and the optimizer state holds only the trainable parameters' moments, sharded like them."""

from __future__ import annotations

import os

import pytest

from medjax.parallel.testing import run_with_devices

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CODE = """
import dataclasses, sys
sys.path.insert(0, {root!r})
import jax, numpy as np
from medjax.config.schema import MeshConfig
from medjax.finetune.loop import make_finetune_optimizer
from medjax.finetune.tasks import build_task_model, loss_for
from medjax.parallel.rules import use_mesh
from medjax.parallel.sharding import batch_sharding
from medjax.peft import trainable_mask
from medjax.training.optim import make_schedule
from medjax.training.state import split_model, train_state_spec
from medjax.training.steps import make_train_step
from tests.peft.conftest import tiny_method

cfg = tiny_method("segmentation", "lora", lora_targets=("q", "v", "mlp"))
cfg = dataclasses.replace(cfg, mesh=MeshConfig(data=1, fsdp=4, tensor=1),
                          train=dataclasses.replace(cfg.train, batch_size=4))
factory = lambda: build_task_model(cfg)
abstract = jax.eval_shape(lambda: split_model(factory())[1])
schedule = make_schedule(cfg.train)
tx = make_finetune_optimizer(cfg, abstract, schedule)
mask = trainable_mask("lora", abstract)
spec = train_state_spec(cfg, tx=tx, model_factory=factory)
state = spec.init()
before = jax.tree.map(lambda x: np.asarray(jax.device_get(x)), state.params)
bsh = batch_sharding(spec.mesh)
with use_mesh(spec.mesh, spec.rules):
    step = make_train_step(spec.model_def, tx, schedule, state_shardings=spec.shardings, batch_sharding=bsh,
                           loss_fn=loss_for(cfg), trainable=mask)
rng = np.random.default_rng(0)
image = rng.normal(size=(4, 8, 8, 8, 1)).astype(np.float32)
batch = {{"image": jax.device_put(image, bsh), "label": jax.device_put((image[..., 0] > 0).astype(np.int32), bsh)}}
losses = []
for _ in range(3):
    state, m = step(state, batch)
    losses.append(float(m["loss"]))
after = jax.tree.map(lambda x: np.asarray(jax.device_get(x)), state.params)
flags = jax.tree.leaves(mask)
same = [a.tobytes() == b.tobytes() for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(before))]
fc1 = state.params["encoder"]["blocks"][0]["mlp"]["fc1"]["kernel"]
opt = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.opt_state) if x.ndim)
n_train = sum(int(np.prod(x.shape)) for x, f in zip(jax.tree.leaves(state.params), flags) if f)
emit({{"frozen_same": all(s for s, f in zip(same, flags) if not f),
      "moved": sum(not s for s, f in zip(same, flags) if f),
      "n_trainable_leaves": sum(flags), "losses": losses, "opt": opt, "n_train": n_train,
      "fc1_shards": len({{str(s.index) for s in fc1.addressable_shards}})}})
"""


@pytest.mark.slow
def test_lora_on_fsdp_mesh_keeps_frozen_base_and_shards():
    out = run_with_devices(CODE.format(root=ROOT), 4, timeout=600)
    assert out["frozen_same"]
    assert out["moved"] >= out["n_trainable_leaves"] // 2
    assert out["opt"] == 2 * out["n_train"]
    assert out["fc1_shards"] > 1  # the frozen MLP kernel stays sharded over the fsdp axis
    assert out["losses"][-1] < out["losses"][0]
