"""Dict wrappers apply one op to image (linear) and label (nearest) and keep the affine right."""

from __future__ import annotations

import numpy as np
import pytest

from medjax.data import transforms as T


def make_sample(shape=(8, 9, 10)):
    rng = np.random.default_rng(0)
    img = rng.random(shape + (2,)).astype(np.float32)
    lab = (img[..., 0] > 0.5).astype(np.int16)
    aff = np.array([[-1.0, 0, 0, 20], [0, 0, -2.0, 5], [0, 1.5, 0, -7], [0, 0, 0, 1]])  # "LIA"-like
    return {"image": img, "label": lab, "affine": aff, "id": "case0", "boxes": [[0, 0, 0, 1, 1, 1]]}


def aligned(s):
    return np.array_equal(s["label"], (s["image"][..., 0] > 0.5).astype(np.int16))


@pytest.mark.parametrize(
    "op,pure",
    [
        (lambda s: T.reorient_d(s, "RAS"), lambda a, aff: T.reorient(a, aff, "RAS")),
        (lambda s: T.crop_d(s, (slice(1, 5), slice(2, 8))), lambda a, aff: T.crop(a, aff, (slice(1, 5), slice(2, 8)))),
        (lambda s: T.pad_to_d(s, (12,)), lambda a, aff: T.pad_to(a, aff, (12,))),
        (lambda s: T.slice_d(s, 4, axis=1), lambda a, aff: T.slice_from_volume(a, aff, 4, 1)),
    ],
)
def test_geometric_wrappers_match_pure_functions(op, pure):
    s = make_sample()
    before = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in s.items()}
    out = op(s)
    img, aff = pure(s["image"], s["affine"])
    np.testing.assert_array_equal(out["image"], img)
    np.testing.assert_allclose(out["affine"], aff)
    assert aligned(out) and out["id"] == "case0" and out["boxes"] == s["boxes"]
    for k, v in before.items():  # input untouched
        np.testing.assert_array_equal(s[k], v)


def test_flip_rot90_wrappers_update_affine():
    s = make_sample((6, 6, 4))
    for out, aff in [
        (T.flip_d(s, (0, 2)), T.flip_affine(s["affine"], (0, 2), (6, 6, 4))),
        (T.rot90_d(s, 1, (0, 1)), T.rot90_affine(s["affine"], 1, (0, 1), (6, 6, 4))),
    ]:
        assert aligned(out)
        np.testing.assert_allclose(out["affine"], aff)
    np.testing.assert_array_equal(T.rot90_d(s, 3)["image"], np.rot90(s["image"], 3, axes=(0, 1)))


def test_resample_and_crop_foreground_wrappers():
    s = make_sample()
    out = T.resample_d(s, (0.75,))
    img, aff = T.resample(s["image"], s["affine"], (0.75,), order=1)
    lab, _ = T.resample(s["label"], s["affine"], (0.75,), order=0, has_channels=False)
    np.testing.assert_allclose(out["image"], img)
    np.testing.assert_array_equal(out["label"], lab)
    np.testing.assert_allclose(out["affine"], aff)
    assert out["label"].dtype == np.int16 and set(np.unique(out["label"])) == {0, 1}
    z = dict(s, image=np.pad(s["image"], ((2, 2), (0, 0), (1, 0), (0, 0))), label=None)
    out = T.crop_foreground_d(z)
    assert out["image"].shape == s["image"].shape and out["label"] is None


def test_random_wrappers_share_one_draw():
    s = make_sample((6, 6, 6))
    for fn in (T.random_flip_d, T.random_rot90_d):
        for seed in range(6):
            out = fn(s, np.random.default_rng(seed))
            assert aligned(out)
            np.testing.assert_array_equal(out["image"], fn(s, np.random.default_rng(seed))["image"])
    out = T.random_affine_d(s, np.random.default_rng(3))
    m = T.draw_affine(np.random.default_rng(3), 3)
    np.testing.assert_allclose(out["image"], T.warp_affine(s["image"], m), atol=1e-6)
    np.testing.assert_array_equal(out["label"], T.warp_affine(s["label"], m, order=0, has_channels=False))
    np.testing.assert_allclose(out["affine"], s["affine"] @ T.warp_affine_matrix(m, (6, 6, 6)))


def test_intensity_wrapper_only_touches_image():
    s = make_sample()
    out = T.intensity_d(s, T.ct_window, 0.0, 0.5)
    np.testing.assert_allclose(out["image"], T.ct_window(s["image"], 0.0, 0.5))
    assert out["label"] is s["label"] and out["affine"] is s["affine"]
