"""Per-task targets, losses and train steps; linear probing leaves the encoder untouched."""

import jax
import numpy as np
import pytest

from medjax.finetune.loop import make_finetune_optimizer
from medjax.finetune.tasks import build_task_model, detection_targets, loss_for, object_boxes, prepare_batch
from medjax.training.optim import make_schedule
from medjax.training.state import init_train_state, split_model
from medjax.training.steps import train_step_fn


def _batch(task, rng):
    image = rng.normal(size=(2, 8, 8, 8, 1)).astype(np.float32)
    label = np.zeros((2, 8, 8, 8), np.int32)
    label[0, 1:4, 2:5, 3:7] = 1
    label[1, 5:8, 0:2, 0:3] = 2
    return {"image": image, "label": label, "class": np.array([1, 0], np.int32)}


def test_object_boxes_and_targets():
    lab = np.zeros((8, 8, 8), np.int32)
    lab[1:4, 2:5, 3:7] = 1
    lab[6, 6, 6] = 1  # one-voxel speck, below min_voxels
    boxes = object_boxes(lab, min_voxels=2)
    np.testing.assert_array_equal(boxes, [[0.5, 1.5, 2.5, 3.5, 4.5, 6.5]])
    t = detection_targets(boxes, (2, 2, 2), (4, 4, 4))
    # centre (2, 3, 4.5): cell floor((c + 0.5) / 4) = (0, 0, 1), offset (c + 0.5) / 4 - cell
    assert t["center_mask"].sum() == 1 and t["center_mask"][0, 0, 1] == 1
    assert t["heatmap"][0, 0, 1, 0] == 1.0 and t["heatmap"].max() == 1.0
    np.testing.assert_allclose(t["offset"][0, 0, 1], [0.625, 0.875, 0.25])
    np.testing.assert_allclose(np.exp(t["log_size"][0, 0, 1]), [3, 3, 4])


def test_class_from_label(tiny_cfg):
    cfg = tiny_cfg("classification", class_from_label=True, min_object_voxels=5)
    b = _batch("classification", np.random.default_rng(0))
    np.testing.assert_array_equal(prepare_batch(cfg, b)["class"], [1, 1])
    b["label"][1] = 0
    np.testing.assert_array_equal(prepare_batch(cfg, b)["class"], [1, 0])


@pytest.mark.slow
@pytest.mark.parametrize("task,mode", [("segmentation", "full"), ("classification", "full"),
                                       ("classification", "linear"), ("detection", "full")])
def test_train_steps_lower_loss_and_linear_probe_freezes_encoder(tiny_cfg, task, mode):
    cfg = tiny_cfg(task, mode=mode, **({"class_weights": (1.0, 3.0)} if task == "classification" else {}))
    model = build_task_model(cfg)
    _, params, _ = split_model(model)
    schedule = make_schedule(cfg.train)
    tx = make_finetune_optimizer(cfg, params, schedule)
    model_def, state = init_train_state(model, tx, seed=0)
    step = jax.jit(train_step_fn(model_def, tx, schedule, loss_fn=loss_for(cfg)))
    batch = prepare_batch(cfg, _batch(task, np.random.default_rng(1)))
    before = jax.device_get(state.params)
    losses = []
    for _ in range(4):
        state, m = step(state, batch)
        losses.append(float(m["loss"]))
    after = jax.device_get(state.params)
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    enc_same = jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), before["encoder"],
                                            after["encoder"]))
    head = {k: v for k, v in before.items() if k != "encoder"}
    head_same = jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), head,
                                             {k: after[k] for k in head}))
    assert not all(head_same)
    if mode == "linear":
        assert all(enc_same)  # frozen: no update, no weight decay
    else:
        assert not all(enc_same)
