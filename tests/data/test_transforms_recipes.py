"""preprocess / random_crops recipes: geometry, dtypes, fixed shapes, memmaps, determinism."""

from __future__ import annotations

import dataclasses

import nibabel as nib
import numpy as np
import pytest

from medjax.config.schema import DataConfig
from medjax.data.transforms import crop_window, preprocess, random_crop_slices, random_crops
from medjax.errors import ConfigError, DataError


def world(affine, idx):
    idx = np.asarray(idx, dtype=np.float64)
    return idx @ affine[:3, :3].T + affine[:3, 3]


def lps_sample(shape=(30, 24, 12), spacing=(1.0, 1.25, 3.0), ct=False):
    """An LPS, anisotropic volume with a bright ellipsoid (label 1) and a smaller inner one (label 2)."""
    aff = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    aff[:3, 3] = (25.0, 40.0, -18.0)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    centre = np.array(shape) * np.array([0.43, 0.46, 0.5])
    r_mm = np.linalg.norm((grid - centre) * spacing, axis=-1)
    label = (r_mm < 9).astype(np.int16) + (r_mm < 4).astype(np.int16)
    rng = np.random.default_rng(0)
    if ct:
        image = np.where(label > 0, 40.0 + 10 * rng.standard_normal(shape), -1000.0).astype(np.int16)
    else:
        image = np.where(label > 0, 200.0 + 30 * rng.random(shape), 0.0).astype(np.float32)
    return {"id": "case7", "image": image[..., None], "label": label, "affine": aff, "class": 1,
            "boxes": [[-5.0, -5.0, -5.0, 5.0, 5.0, 5.0]]}, world(aff, centre)


def label_centroid_world(s, value=None):
    mask = s["label"] > 0 if value is None else s["label"] == value
    return world(s["affine"], np.argwhere(mask).mean(0))


def test_preprocess_lps_anisotropic_to_ras_at_spacing():
    sample, centre_w = lps_sample()
    cfg = DataConfig(spacing=(1.5,), orientation="RAS", intensity="mri", crop_foreground=True, crop_size=(16,))
    out = preprocess(sample, cfg)
    assert "".join(nib.aff2axcodes(out["affine"])) == "RAS"
    np.testing.assert_allclose(np.linalg.norm(out["affine"][:3, :3], axis=0), 1.5, rtol=1e-12)
    img, lab = out["image"], out["label"]
    assert img.dtype == np.float32 and img.ndim == 4 and img.shape[-1] == 1 and img.flags.c_contiguous
    assert lab.dtype == np.int16 and lab.shape == img.shape[:3]
    assert all(s >= 16 for s in img.shape[:3])
    assert set(np.unique(lab)) == {0, 1, 2}
    # the structure sits where it was in the world (within half a voxel)
    assert np.linalg.norm(label_centroid_world(out) - centre_w) < 0.75
    # MRI z-score over foreground; background 0
    fg = img[..., 0] != 0
    assert abs(img[..., 0][fg].mean()) < 1e-3 and abs(img[..., 0][fg].std() - 1) < 1e-3
    # original geometry and passthrough
    np.testing.assert_array_equal(out["orig_affine"], sample["affine"])
    assert out["orig_shape"] == (30, 24, 12)
    assert out["id"] == "case7" and out["class"] == 1 and out["boxes"] == sample["boxes"]
    # input not modified
    assert sample["image"].shape == (30, 24, 12, 1)


def test_preprocess_ct_window_crop_and_no_resample():
    sample, centre_w = lps_sample(ct=True)
    cfg = DataConfig(spacing=(), intensity="ct", ct_window=(-200.0, 200.0), crop_foreground=True, crop_size=(8,))
    out = preprocess(sample, cfg)
    np.testing.assert_allclose(np.linalg.norm(out["affine"][:3, :3], axis=0), (1.0, 1.25, 3.0))
    assert out["image"].min() >= 0 and out["image"].max() <= 1
    # cropped to the body (HU above the window floor), nothing of the structure lost
    assert out["image"].shape[:3] < (30, 24, 12)
    assert (out["label"] > 0).sum() == (sample["label"] > 0).sum()
    np.testing.assert_allclose(label_centroid_world(out), label_centroid_world(sample), atol=1e-6)
    assert np.linalg.norm(label_centroid_world(out) - centre_w) < 0.5


def test_preprocess_2d_pads_in_plane_only_and_keeps_geometry_without_crop():
    sample, centre_w = lps_sample(shape=(10, 8, 5))
    cfg = DataConfig(spatial_dims=2, crop_size=(16, 12), spacing=(), crop_foreground=False, intensity="none",
                     slice_axis=2)
    out = preprocess(sample, cfg)
    assert out["image"].shape == (16, 12, 5, 1)
    assert (out["label"] > 0).sum() == (sample["label"] > 0).sum()
    np.testing.assert_allclose(label_centroid_world(out, 2), label_centroid_world(sample, 2), atol=1e-6)
    cfg = dataclasses.replace(cfg, slice_axis=0, spacing=(0.5, 1.5))  # 2 entries: in-plane spacing
    out = preprocess(sample, cfg)
    np.testing.assert_allclose(np.linalg.norm(out["affine"][:3, :3], axis=0), (1.0, 0.5, 1.5))
    assert out["image"].shape[0] == 10 and out["image"].shape[1] >= 16 and out["image"].shape[2] >= 12


def test_preprocess_errors_name_the_key():
    sample, _ = lps_sample(shape=(6, 6, 6))
    with pytest.raises(ConfigError, match="data.intensity"):
        preprocess(sample, DataConfig(intensity="pet"))
    with pytest.raises(ConfigError, match="data.orientation"):
        preprocess(sample, DataConfig(orientation="RAR"))
    with pytest.raises(ConfigError, match="data.crop_size"):
        preprocess(sample, DataConfig(crop_size=(8, 8)))
    with pytest.raises(DataError, match="case7.*label shape"):
        preprocess(dict(sample, label=sample["label"][:-1]), DataConfig())


def memmap_sample(tmp_path, shape=(20, 18, 14), channels=2):
    rng = np.random.default_rng(4)
    img = np.lib.format.open_memmap(tmp_path / "img.npy", mode="w+", dtype=np.float32, shape=shape + (channels,))
    img[:] = rng.random(shape + (channels,), dtype=np.float32)
    lab = np.lib.format.open_memmap(tmp_path / "lab.npy", mode="w+", dtype=np.int16, shape=shape)
    lab[:] = 0
    lab[3:6, 4:8, 2:5] = 3
    img.flush(), lab.flush()
    img = np.load(tmp_path / "img.npy", mmap_mode="r")
    lab = np.load(tmp_path / "lab.npy", mmap_mode="r")
    return {"image": img, "label": lab, "class": [1, 0, 1], "id": "m"}


@pytest.mark.parametrize("dims,crop,axis", [(3, (8, 6, 10), 2), (3, (8,), 2), (2, (12, 12), 2), (2, (10, 6), 0)])
def test_random_crops_memmap_fixed_shapes_and_determinism(tmp_path, dims, crop, axis):
    sample = memmap_sample(tmp_path)
    assert isinstance(sample["image"], np.memmap)
    cfg = DataConfig(spatial_dims=dims, crop_size=crop, samples_per_volume=5, augment=True, slice_axis=axis)
    want = tuple(crop) * (dims if len(crop) == 1 else 1)
    a = random_crops(sample, cfg, np.random.default_rng(1))
    b = random_crops(sample, cfg, np.random.default_rng(1))
    assert len(a) == 5
    for x, y in zip(a, b):
        assert x["image"].shape == want + (2,) and x["image"].dtype == np.float32
        assert x["label"].shape == want and x["label"].dtype == np.int32
        assert not isinstance(x["image"], np.memmap)
        assert set(np.unique(x["label"])) <= {0, 3}
        np.testing.assert_array_equal(x["class"], [1, 0, 1])
        assert x["class"].dtype == np.int32
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])
    c = random_crops(sample, cfg, np.random.default_rng(2))
    assert any(not np.array_equal(x["image"], z["image"]) for x, z in zip(a, c))


def test_random_crops_without_augment_are_exact_windows(tmp_path):
    sample = memmap_sample(tmp_path)
    sample = {"image": sample["image"]}  # unlabelled: uniform windows
    cfg = DataConfig(spatial_dims=3, crop_size=(8, 6, 10), samples_per_volume=3, augment=False)
    crops = random_crops(sample, cfg, np.random.default_rng(5))
    rng = np.random.default_rng(5)
    for c in crops:
        box = random_crop_slices((20, 18, 14), crop_window(cfg), rng)
        np.testing.assert_array_equal(c["image"], sample["image"][box])
        assert set(c) == {"image"}
    cfg2 = dataclasses.replace(cfg, spatial_dims=2, crop_size=(8, 10), slice_axis=1)
    assert crop_window(cfg2) == (8, 1, 10)
    crops = random_crops(sample, cfg2, np.random.default_rng(6))
    rng = np.random.default_rng(6)
    for c in crops:
        box = random_crop_slices((20, 18, 14), (8, 1, 10), rng)
        np.testing.assert_array_equal(c["image"], sample["image"][box][:, 0])


def test_random_crops_balanced_aligned_and_padded():
    label = np.zeros((40, 40, 6), np.int16)
    label[2:4, 30:32, 1:3] = 1
    image = (label.astype(np.float32) * 5 + 1)[..., None]
    cfg = DataConfig(spatial_dims=3, crop_size=(8, 8, 8), samples_per_volume=40, augment=True)
    crops = random_crops({"image": image, "label": label}, cfg, np.random.default_rng(0))
    hits = 0
    for c in crops:
        img, lab = c["image"][..., 0], c["label"]
        assert img.shape == (8, 8, 8)  # z (6) zero-padded to 8
        # label and image moved together: the brightest intensity (label 1, jittered) exactly where label == 1
        if (lab == 1).any():
            np.testing.assert_array_equal(np.isclose(img, img.max(), rtol=1e-6), lab == 1)
            hits += 1
        assert len(np.unique(img)) <= 3  # zero pad, background, structure: each one jittered value
    assert hits >= 12  # label-balanced (~half); uniform 8x8 windows would contain it ~5% of the time



def test_random_crops_accepts_channelless_image_and_precomputed_foreground():
    label = np.zeros((16, 16, 16), np.int16)
    label[12:14, 1:3, 5:7] = 4
    image = label.astype(np.float32)
    cfg = DataConfig(spatial_dims=3, crop_size=(6,), samples_per_volume=6, augment=False)
    fg = np.argwhere(label > 0)
    a = random_crops({"image": image, "label": label}, cfg, np.random.default_rng(3))
    b = random_crops({"image": image, "label": label, "foreground": fg}, cfg, np.random.default_rng(3))
    for x, y in zip(a, b):
        assert x["image"].shape == (6, 6, 6, 1)
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["image"][..., 0], x["label"])


def test_preprocess_multichannel_mri_zscores_each_channel():
    sample, _ = lps_sample(shape=(12, 10, 6))
    t1 = sample["image"][..., 0]
    sample["image"] = np.stack([t1, t1 * 7.0 + (t1 > 0) * 50.0], axis=-1)
    out = preprocess(sample, DataConfig(spacing=(), crop_size=(4,), intensity="mri"))
    assert out["image"].shape[-1] == 2
    for c in range(2):
        ch = out["image"][..., c]
        fg = ch != 0
        assert abs(ch[fg].mean()) < 1e-4 and abs(ch[fg].std() - 1) < 1e-4
    np.testing.assert_allclose(out["image"][..., 0], out["image"][..., 1], atol=1e-4)


def test_random_crops_same_with_flat_or_memmapped_foreground_and_augmentation(tmp_path):
    rng = np.random.default_rng(0)
    label = (rng.random((20, 18, 16)) > 0.97).astype(np.uint8)
    image = rng.normal(size=(20, 18, 16, 1)).astype(np.float32)
    np.save(tmp_path / "fg.npy", np.argwhere(label > 0).astype(np.int32))
    fg_map = np.load(tmp_path / "fg.npy", mmap_mode="r")
    cfg = DataConfig(spatial_dims=3, crop_size=(8,), samples_per_volume=5, augment=True)
    runs = [random_crops(dict(base, image=image, label=label), cfg, np.random.default_rng(9))
            for base in ({}, {"foreground": fg_map}, {"foreground": np.flatnonzero(label)})]
    for crops in runs[1:]:
        for x, y in zip(runs[0], crops):
            assert y["image"].flags.c_contiguous and y["label"].flags.c_contiguous
            np.testing.assert_array_equal(x["image"], y["image"])
            np.testing.assert_array_equal(x["label"], y["label"])


def test_preprocess_resample_matches_resample_d_on_fortran_flipped_volumes():
    from medjax.data.transforms import dictionary as d

    rng = np.random.default_rng(1)
    image = np.asfortranarray(rng.normal(100, 10, (21, 17, 13)).astype(np.int16))[::-1, :, ::-1]
    label = np.asfortranarray((rng.random((21, 17, 13)) > 0.5).astype(np.uint8))[::-1, :, ::-1]
    aff = np.diag([-1.0, 1.3, 2.0, 1.0])
    cfg = DataConfig(spacing=(1.7, 1.1, 2.5), orientation="LPS", intensity="none", crop_foreground=False,
                     crop_size=(4,))
    out = preprocess({"image": image[..., None], "label": label, "affine": aff, "id": "f"}, cfg)
    ref = d.resample_d(d.reorient_d({"image": image[..., None], "label": label, "affine": aff}, "LPS"),
                       (1.7, 1.1, 2.5))
    np.testing.assert_array_equal(out["image"], ref["image"])
    np.testing.assert_array_equal(out["label"], ref["label"])
    np.testing.assert_array_equal(out["affine"], ref["affine"])
