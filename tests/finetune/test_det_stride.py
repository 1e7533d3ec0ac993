"""The detection grid's stride: targets made on a grid of 8, 4, 2 or 1 voxels per cell decode back to the exact
boxes (voxel and world coordinates), and finetune.det_stride is checked with an error naming the key."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medjax.errors import ConfigError
from medjax.finetune.predict import voxel_boxes_to_world
from medjax.finetune.tasks import detection_grid, detection_targets, label_objects
from medjax.models.heads.detection import decode_boxes, detection_stride
from tests.finetune.conftest import tiny


def _lesions() -> np.ndarray:
    """A 32^3 label map of five small objects (balls of radius 1-3 voxels, a 1x2x3 bar, a single voxel), each in
    its own 8^3 cell so that even the patch grid gives every object its own centre cell."""
    lab = np.zeros((32, 32, 32), np.uint8)
    g = np.stack(np.meshgrid(*[np.arange(32)] * 3, indexing="ij"), -1).astype(np.float64)
    for centre, r in [((3, 4, 5), 1.0), ((12, 20, 27), 2.0), ((27, 11, 19), 3.0)]:
        lab[np.linalg.norm(g - np.asarray(centre), axis=-1) <= r] = 1
    lab[18:19, 2:4, 10:13] = 1  # centre (18, 2.5, 11): on a voxel boundary along y
    lab[29, 29, 4] = 1
    return lab


@pytest.mark.parametrize("stride", [8, 4, 2, 1])
def test_targets_decode_to_the_exact_boxes(stride):
    lab = _lesions()
    boxes, classes = label_objects(lab, min_voxels=1)
    assert len(boxes) == 5
    grid = (32 // stride,) * 3
    t = detection_targets(boxes, grid, (stride,) * 3, classes=classes)
    assert t["heatmap"].shape == (*grid, 1) and t["offset"].shape == t["log_size"].shape == (*grid, 3)
    assert t["center_mask"].sum() == 5 and (t["heatmap"] == 1).sum() == 5
    assert np.all((t["offset"] >= 0) & (t["offset"] < 1))
    # the model output that the targets describe: confident peaks at the centre cells, logits of the offsets
    off = np.clip(t["offset"], 1e-7, 1 - 1e-7)
    outputs = {"heatmap": jnp.where(jnp.asarray(t["heatmap"]) == 1, 8.0, -8.0),
               "size": jnp.asarray(t["log_size"])[None], "offset": jnp.asarray(np.log(off / (1 - off)))[None]}
    outputs["heatmap"] = outputs["heatmap"][None]
    got, scores, cls = jax.jit(decode_boxes, static_argnums=(1, 2))(outputs, (stride,) * 3, 6)
    got, scores = np.asarray(got[0], np.float64), np.asarray(scores[0])
    assert np.all(scores[:5] > 0.99) and scores[5] < 0.01 and np.all(np.asarray(cls) == 0)
    order = lambda b: b[np.lexsort(b.T[::-1])]  # noqa: E731
    np.testing.assert_allclose(order(got[:5]), order(boxes), atol=1e-4 * stride)
    # world boxes of an oblique, anisotropic grid: the same whatever the stride
    affine = np.array([[0.0, -1.5, 0.2, 10.0], [2.0, 0.0, 0.0, -5.0], [0.0, 0.3, 3.0, 7.0], [0, 0, 0, 1]])
    np.testing.assert_allclose(order(voxel_boxes_to_world(got[:5], affine)),
                               order(voxel_boxes_to_world(boxes, affine)), atol=1e-3)


def test_detection_stride_and_its_config_key():
    assert detection_stride((8, 8, 8), None) == detection_stride((8, 8, 8), 0) == (8, 8, 8)
    assert detection_stride((8, 8, 8), 16) == (8, 8, 8)
    assert detection_stride((16, 16, 8), 4) == (4, 4, 4)
    assert detection_stride((16, 16, 4), 8) == (8, 8, 4)  # an axis whose patch is already finer keeps it
    with pytest.raises(ValueError, match="power of two"):
        detection_stride((8, 8, 8), 3)
    cfg = tiny("detection", num_classes=1, det_stride=2)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, crop_size=(16,)))
    assert detection_grid(cfg) == ((2, 2, 2), (8, 8, 8))  # Mu/4: 4-voxel patches, 16^3 crops
    bad = dataclasses.replace(cfg, finetune=dataclasses.replace(cfg.finetune, det_stride=6))
    with pytest.raises(ConfigError, match=r"finetune.det_stride=6: .*power of two"):
        detection_grid(bad)
