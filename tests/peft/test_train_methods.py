"""Every method trains a few steps with the shared pure step: the parameters it trains change, every frozen
parameter keeps its exact bits, the loss goes down, and the optimizer holds state only for trainable parameters."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from medjax.finetune.loop import make_finetune_optimizer
from medjax.finetune.tasks import build_task_model, loss_for
from medjax.peft import is_added, resolve_method, trainable_mask
from medjax.training.digest import count_params
from medjax.training.optim import make_schedule
from medjax.training.state import init_train_state
from medjax.training.steps import make_train_step
from tests.peft.conftest import tiny_method

CASES = [  # (task, method, extra settings); each compiles a train step, so the set is kept small
    ("segmentation", "linear", {}),
    ("segmentation", "bitfit", {}),
    ("segmentation", "lora", {"lora_targets": ("q", "k", "v", "out", "mlp"), "lora_dropout": 0.1}),
    ("segmentation", "adapter", {"adapter_mode": "parallel"}),
    ("segmentation", "prompt", {"prompt_deep": True}),
    ("classification", "linear", {}),
    ("classification", "lora", {"lora_targets": ("q", "v")}),
    ("classification", "adapter", {"adapter_mode": "serial"}),
    ("classification", "prompt", {}),
]
FAST = {("segmentation", "lora"), ("classification", "adapter")}


def _batch(cfg, rng):
    size = (8, 8, 8) if cfg.data.spatial_dims == 3 else (16, 16)
    image = rng.normal(size=(2, *size, 1)).astype(np.float32)
    if cfg.task == "segmentation":
        label = (image[..., 0] > 0).astype(np.int32) + (image[..., 0] > 1).astype(np.int32)
        return {"image": image, "label": label}
    return {"image": image + np.arange(2, dtype=np.float32).reshape(2, *([1] * (len(size) + 1))),
            "class": np.array([0, 1], np.int32)}


def _train(cfg, steps=3):
    model = build_task_model(cfg)
    from medjax.training.state import split_model

    abstract = jax.eval_shape(lambda: split_model(build_task_model(cfg))[1])
    schedule = make_schedule(cfg.train)
    tx = make_finetune_optimizer(cfg, abstract, schedule)
    method = resolve_method(cfg.finetune)
    mask = None if method == "full" else trainable_mask(method, abstract)
    model_def, state = init_train_state(model, tx, cfg.train.seed)
    before = jax.tree.map(np.asarray, state.params)
    step = make_train_step(model_def, tx, schedule, loss_fn=loss_for(cfg), donate=False, trainable=mask)
    batch = _batch(cfg, np.random.default_rng(0))
    losses = []
    for _ in range(steps):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    return state, before, losses, trainable_mask(method, abstract)


@pytest.mark.parametrize("task,method,extra", [
    pytest.param(t, m, e, id=f"{t}-{m}", marks=() if (t, m) in FAST else pytest.mark.slow) for t, m, e in CASES])
def test_method_trains_only_its_parameters(task, method, extra):
    cfg = tiny_method(task, method, **extra)
    state, before, losses, mask = _train(cfg)
    after = jax.tree.map(np.asarray, state.params)
    flat_mask = jax.tree_util.tree_leaves_with_path(mask)
    changed, frozen_same = 0, 0
    for (path, train), b, a in zip(flat_mask, jax.tree.leaves(before), jax.tree.leaves(after)):
        if train:
            changed += int(not np.array_equal(a, b))
        else:
            assert a.tobytes() == b.tobytes(), f"{method}: frozen parameter {jax.tree_util.keystr(path)} changed"
            frozen_same += 1
    n_train = sum(bool(t) for _, t in flat_mask)
    # LoRA's A matrices get no gradient while B is still zero at the first step; everything else moves
    assert changed >= n_train // 2 and changed > 0
    if method != "full":
        assert frozen_same > 0
        added = [path for path, _ in flat_mask if is_added(path)]
        assert all(dict(flat_mask)[p] for p in added)  # every added parameter trains
    assert losses[-1] < losses[0], losses


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "prompt"])
def test_method_trains_in_2d(method):
    cfg = tiny_method("classification", method, spatial_dims=2)
    _, _, losses, _ = _train(cfg, steps=3)
    assert losses[-1] < losses[0]


def _opt_floats(opt_state) -> int:
    return count_params([x for x in jax.tree.leaves(opt_state) if getattr(x, "ndim", 0) > 0])


def test_optimizer_state_shrinks_with_the_trainable_share():
    sizes = {}
    for method in ("full", "lora", "bitfit", "linear"):
        cfg = tiny_method("segmentation", method)
        model = build_task_model(cfg)
        from medjax.training.state import split_model

        _, params, _ = split_model(model)
        tx = make_finetune_optimizer(cfg, params, make_schedule(cfg.train))
        mask = trainable_mask(resolve_method(cfg.finetune), params)
        n_train = sum(int(np.prod(p.shape)) for p, t in zip(jax.tree.leaves(params), jax.tree.leaves(mask)) if t)
        # AdamW: exactly two moments per trainable scalar, none for frozen parameters
        assert _opt_floats(tx.init(params)) == 2 * n_train, method
        sizes[method] = (n_train, count_params(params))
    assert sizes["full"][0] == sizes["full"][1]
    assert sizes["linear"][0] < sizes["bitfit"][0] < sizes["full"][0]
    assert sizes["lora"][0] < sizes["lora"][1]
