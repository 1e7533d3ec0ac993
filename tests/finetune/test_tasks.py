"""Per-task targets, losses and train steps; linear probing leaves the encoder untouched."""

import jax
import numpy as np
import pytest

from medjax.finetune.loop import make_finetune_optimizer
from medjax.errors import ConfigError
from medjax.finetune.tasks import (
    build_task_model,
    detection_targets,
    focal_heatmap_loss,
    label_objects,
    loss_for,
    object_boxes,
    prepare_batch,
)
from medjax.training.optim import make_schedule
from medjax.training.state import init_train_state, split_model
from medjax.training.steps import train_step_fn


def _batch(task, rng, nd: int = 3):
    image = rng.normal(size=(2,) + (8,) * nd + (1,)).astype(np.float32)
    label = np.zeros((2,) + (8,) * nd, np.int32)
    label[(0, slice(1, 4), slice(2, 5), slice(3, 7))[: nd + 1]] = 1
    label[(1, slice(5, 8), slice(0, 2), slice(0, 3))[: nd + 1]] = 2
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


def test_two_detection_classes_each_get_their_own_targets(tiny_cfg):
    """Label values are class ids with num_classes > 1: every heat-map channel gets its peaks, and the loss pulls
    each channel's logit up at its own objects' centres and down at the other class's."""
    import jax.numpy as jnp

    lab = np.zeros((8, 8, 8), np.int32)
    lab[1:4, 2:5, 3:7] = 1  # class 0, centre cell (0, 0, 1)
    lab[5:8, 5:8, 0:3] = 2  # class 1, centre cell (1, 1, 0)
    lab[4, 2:5, 3:7] = 2  # touches the class-0 object: a separate class-1 object, not merged with it
    boxes, classes = label_objects(lab, num_classes=2)
    assert sorted(classes.tolist()) == [0, 1, 1]
    np.testing.assert_array_equal(boxes[classes == 0], [[0.5, 1.5, 2.5, 3.5, 4.5, 6.5]])
    assert len(object_boxes(lab)) == 2  # one class: touching objects are one component
    t = detection_targets(boxes, (2, 2, 2), (4, 4, 4), num_classes=2, classes=classes)
    assert t["heatmap"][0, 0, 1, 0] == 1.0 and t["heatmap"][1, 1, 0, 1] == 1.0
    assert (t["heatmap"][..., 0] == 1).sum() == 1 and (t["heatmap"][..., 1] == 1).sum() >= 1
    grad = jax.grad(lambda z: focal_heatmap_loss(z, jnp.asarray(t["heatmap"])))(jnp.zeros((2, 2, 2, 2)))
    assert grad[0, 0, 1, 0] < 0 and grad[1, 1, 0, 1] < 0  # each channel pulled up at its own centre
    assert grad[1, 1, 0, 0] > 0  # and down where only the other class sits

    cfg = tiny_cfg("detection", num_classes=2)
    batch = prepare_batch(cfg, {"image": np.zeros((1, 8, 8, 8, 1), np.float32), "label": lab[None]})
    peaks = (batch["heatmap"] == 1).reshape(-1, 2).sum(0)
    assert peaks[0] >= 1 and peaks[1] >= 1
    with pytest.raises(ConfigError, match=r"values \[3\] but finetune.num_classes=2"):
        label_objects(np.where(lab == 2, 3, lab), num_classes=2)
    with pytest.raises(ValueError, match="classes"):
        detection_targets(boxes, (2, 2, 2), (4, 4, 4), num_classes=1, classes=classes)


def test_class_from_label(tiny_cfg):
    cfg = tiny_cfg("classification", class_from_label=True, min_object_voxels=5)
    b = _batch("classification", np.random.default_rng(0))
    np.testing.assert_array_equal(prepare_batch(cfg, b)["class"], [1, 1])
    b["label"][1] = 0
    np.testing.assert_array_equal(prepare_batch(cfg, b)["class"], [1, 0])


@pytest.mark.slow
# segmentation trains in 2D here, the other tasks in 3D: 3D segmentation training runs end to end in
# tests/integration/test_finetune_seg.py, so each path is compiled once in the suite
@pytest.mark.parametrize("task,mode,nd", [("segmentation", "full", 2), ("classification", "full", 3),
                                          ("classification", "linear", 3), ("detection", "full", 3)])
def test_train_steps_lower_loss_and_linear_probe_freezes_encoder(tiny_cfg, task, mode, nd):
    import dataclasses

    # detection on the patch grid (det_stride=0): the upsampling neck (det_stride=2) trains end to end in
    # tests/integration/test_finetune_cls_det.py (demo_det), so it is not compiled a second time here
    extra = {"classification": {"class_weights": (1.0, 3.0)}}.get(task, {})
    cfg = tiny_cfg(task, mode=mode, **extra)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, spatial_dims=nd))
    model = build_task_model(cfg)
    _, params, _ = split_model(model)
    schedule = make_schedule(cfg.train)
    tx = make_finetune_optimizer(cfg, params, schedule)
    model_def, state = init_train_state(model, tx, seed=0)
    step = jax.jit(train_step_fn(model_def, tx, schedule, loss_fn=loss_for(cfg)))
    batch = prepare_batch(cfg, _batch(task, np.random.default_rng(1), nd))
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


def test_layer_decay_is_anchored_to_the_encoder(tiny_cfg):
    """Head parameters whose names look like encoder parts (a UNETR's ``stem`` conv, its ``ups/<i>`` blocks) keep
    the full learning rate; only the encoder's embedding and blocks are decayed."""
    from flax import nnx

    from medjax.training.optim import layerwise_lr_decay

    cfg = tiny_cfg("segmentation")
    params = nnx.to_pure_dict(nnx.split(nnx.eval_shape(lambda: build_task_model(cfg)), nnx.Param, ...)[1])
    mult = layerwise_lr_decay(params, 0.5, num_layers=2)
    enc = mult["encoder"]
    assert jax.tree.leaves(enc["patch_embed"]) == [0.125] * len(jax.tree.leaves(enc["patch_embed"]))
    assert set(jax.tree.leaves(enc["blocks"][0])) == {0.25} and set(jax.tree.leaves(enc["blocks"][1])) == {0.5}
    heads = [v for k, v in mult.items() if k != "encoder"]
    assert "stem" in mult and "ups" in mult
    assert set(jax.tree.leaves(heads)) == {1.0}


def test_window_classes_count_label_voxels_inside_each_window():
    from medjax.finetune.evaluate import window_classes

    label = np.zeros((10, 8, 8), np.uint8)
    label[7:10, 0:2, 0:2] = 1  # 12 voxels: 4 of them in the window at x = 4 (x 4..7), all 12 in the one at x = 6
    positions = [(0, (0, 0, 0)), (0, (4, 0, 0)), (0, (6, 0, 0)), (0, (6, 4, 4))]
    np.testing.assert_array_equal(window_classes(label, positions, (4, 4, 4), 4), [0, 1, 1, 0])
    np.testing.assert_array_equal(window_classes(label[..., None], positions, (4, 4, 4), 12), [0, 0, 1, 0])
    np.testing.assert_array_equal(window_classes(label, positions, (4, 4, 4), 13), [0, 0, 0, 0])
    # 2D models see slices along slice_axis: window (n, (x, y)) of slice z = n
    positions2d = [(0, (6, 0)), (5, (6, 0))]
    np.testing.assert_array_equal(window_classes(label, positions2d, (4, 4), 4, spatial_dims=2), [1, 0])
