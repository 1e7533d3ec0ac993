"""Predictions go back to the input's original space: exact shape and affine, labels in the right voxels."""

import numpy as np
import pytest

from medjax.config.schema import DataConfig
from medjax.data.testing import make_label, make_volume
from medjax.data.transforms.recipes import preprocess
from medjax.finetune.predict import (
    labels_to_original,
    probs_to_original,
    voxel_boxes_to_world,
    world_boxes_to_voxel,
)


def _sample(orientation, spacing, shape=(20, 24, 18)):
    img = make_volume(shape=shape, spacing=spacing, orientation=orientation, seed=1)
    lab = make_label(shape=shape, spacing=spacing, orientation=orientation, seed=1)
    return {"image": img.array, "label": lab.array, "affine": img.affine, "id": "x"}


@pytest.mark.parametrize("orientation", ["LPS", "PIR", "RAS"])
def test_reorient_only_roundtrip_is_exact(orientation):
    s = _sample(orientation, (1.5, 1.5, 2.0))
    cfg = DataConfig(spatial_dims=3, crop_size=(8,), spacing=(), orientation="RAS", crop_foreground=False)
    p = preprocess(s, cfg)
    k = int(p["label"].max()) + 1
    probs = np.eye(k, dtype=np.float32)[p["label"].astype(int)]
    back = probs_to_original(probs, p["affine"], p["orig_shape"], p["orig_affine"])
    assert back.shape[:3] == s["label"].shape
    np.testing.assert_array_equal(back.argmax(-1), s["label"])
    np.testing.assert_array_equal(labels_to_original(p["label"], p["affine"], p["orig_shape"], p["orig_affine"]),
                                  s["label"])


@pytest.mark.parametrize("orientation,spacing", [("LPS", (1.2, 1.5, 2.5)), ("PIR", (2.0, 1.0, 1.3))])
def test_resampled_and_cropped_roundtrip(orientation, spacing):
    s = _sample(orientation, spacing)
    cfg = DataConfig(spatial_dims=3, crop_size=(8,), spacing=(1.7, 1.7, 1.7), orientation="RAS",
                     crop_foreground=True)
    p = preprocess(s, cfg)
    assert p["label"].shape != s["label"].shape
    k = int(p["label"].max()) + 1
    probs = np.eye(k, dtype=np.float32)[p["label"].astype(int)]
    back = probs_to_original(probs, p["affine"], p["orig_shape"], p["orig_affine"]).argmax(-1)
    near = labels_to_original(p["label"], p["affine"], p["orig_shape"], p["orig_affine"])
    assert back.shape == near.shape == s["label"].shape
    # resampling twice blurs edges only: the bulk of the voxels keep their label
    assert (back == s["label"]).mean() > 0.9
    assert (near == s["label"]).mean() > 0.9
    fg, pb = s["label"] > 0, back > 0
    assert 2 * (fg & pb).sum() / (fg.sum() + pb.sum()) > 0.8  # small blob resampled there and back


@pytest.mark.parametrize("orientation", ["PIR", "LAS"])
def test_foreground_crop_and_pad_roundtrip_is_exact(orientation):
    s = _sample(orientation, (1.7, 1.7, 1.7))
    cfg = DataConfig(spatial_dims=3, crop_size=(32,), spacing=(1.7, 1.7, 1.7), crop_foreground=True)
    p = preprocess(s, cfg)
    assert p["label"].shape == (32, 32, 32)  # cropped to the foreground, then padded to the crop size
    k = int(p["label"].max()) + 1
    probs = np.eye(k, dtype=np.float32)[p["label"].astype(int)]
    back = probs_to_original(probs, p["affine"], p["orig_shape"], p["orig_affine"]).argmax(-1)
    np.testing.assert_array_equal(back, s["label"])


def test_box_world_voxel_roundtrip():
    aff = np.array([[0, 0, -2.0, 10], [1.5, 0, 0, -5], [0, 1.0, 0, 3], [0, 0, 0, 1]])
    boxes = np.array([[1.0, 2.0, 3.0, 4.0, 6.0, 5.5]])
    world = voxel_boxes_to_world(boxes, aff)
    assert np.all(world[:, 3:] > world[:, :3])
    np.testing.assert_allclose(world_boxes_to_voxel(world, aff), boxes, atol=1e-9)
