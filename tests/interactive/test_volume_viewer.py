"""VolumeViewer: display orientation from any stored orientation, window/level math, overlays, static PNG."""

from __future__ import annotations

import base64

import nibabel as nib
import numpy as np
import pytest

from medjax.data.image import Image
from medjax.data.testing import make_label, make_volume
from medjax.data.transforms import reorient
from medjax.errors import DataError
from medjax.interactive import render
from medjax.interactive.volume_viewer import VolumeViewer

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _stored(img: Image, code: str) -> Image:
    arr, aff = reorient(np.asarray(img.array), img.affine, code, has_channels=False)
    return Image(np.ascontiguousarray(arr), aff)


@pytest.fixture(scope="module")
def ras():
    return make_volume((12, 14, 10), spacing=(1.5, 1.0, 2.0), orientation="RAS", seed=3)


@pytest.mark.parametrize("code", ["LPS", "PIR", "ASL"])
def test_same_display_whatever_the_stored_orientation(ras, code, tmp_path):
    other = _stored(ras, code)
    assert "".join(nib.aff2axcodes(other.affine)) == code
    path = tmp_path / f"vol_{code}.nii.gz"
    nib.save(nib.Nifti1Image(other.array, other.affine), str(path))
    a = VolumeViewer(ras, interactive=False)
    b = VolumeViewer(str(path), interactive=False)
    assert b.stored_orientation == code and a.stored_orientation == "RAS"
    assert a.shape == b.shape == (12, 14, 10)
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-9)
    for plane in render.PLANES:
        for index in (0, a.shape[render.FIXED_AXIS[plane]] // 2):
            np.testing.assert_array_equal(a.slice_image(plane, index), b.slice_image(plane, index))
            assert a.slice_mm(plane, index) == pytest.approx(b.slice_mm(plane, index))


def test_orientation_letters_match_the_anatomy():
    """A marker in the patient's right-anterior-superior corner shows where the letters say."""
    shape = (8, 9, 7)
    vol = np.zeros(shape, np.float32)
    vol[-1, -1, -1] = 1.0  # RAS-stored: largest x = most Right, largest y = most Anterior, largest z = Superior
    from medjax.data.testing import orientation_affine

    ras_img = Image(vol, orientation_affine(shape, 1.0, "RAS"))
    lps_img = _stored(ras_img, "LPS")
    assert lps_img.array[0, 0, -1] == 1.0  # stored LPS: the RAS corner is at index 0 along x and y
    for img in (ras_img, lps_img):
        v = VolumeViewer(img, interactive=False)
        ax = v.slice_image("axial", shape[2] - 1)
        assert v.letters("axial") == ("A", "P", "R", "L")
        assert ax[0, 0] == 1.0  # top-left: Anterior (top) and Right (left, radiological)
        cor = v.slice_image("coronal", shape[1] - 1)
        assert v.letters("coronal") == ("S", "I", "R", "L")
        assert cor[0, 0] == 1.0
        sag = v.slice_image("sagittal", shape[0] - 1)
        assert v.letters("sagittal") == ("S", "I", "A", "P")
        assert sag[0, 0] == 1.0
    neuro = VolumeViewer(ras_img, interactive=False, convention="neurological")
    assert neuro.letters("axial") == ("A", "P", "L", "R")
    assert neuro.slice_image("axial", shape[2] - 1)[0, -1] == 1.0


def test_slice_extent_is_in_world_mm():
    from medjax.data.testing import orientation_affine

    shape = (10, 12, 8)
    aff = orientation_affine(shape, (2.0, 1.0, 3.0), "LPS")
    v = VolumeViewer(np.zeros(shape), affine=aff, interactive=False)
    left, right, bottom, top = render.slice_extent(v.affine, v.shape, "axial")
    # x: 10 voxels of 2 mm centred on 0 -> edges at +-10 mm; radiological: Right (+x) on the left
    assert (left, right) == pytest.approx((10.0, -10.0))
    assert (bottom, top) == pytest.approx((-6.0, 6.0))
    assert v.slice_mm("axial", 0) == pytest.approx(-10.5)  # z of the most inferior slice centre


def test_window_level_math():
    x = np.array([-100.0, 0.0, 40.0, 80.0, 500.0])
    np.testing.assert_allclose(render.window_level(x, 80, 40), [0.0, 0.0, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(render.window_level(x, 1500, -600), np.clip((x + 1350) / 1500, 0, 1), rtol=1e-6)
    assert render.resolve_window("lung", x) == (1500.0, -600.0)
    assert render.resolve_window("bone", x) == (1800.0, 400.0)
    assert render.resolve_window("soft tissue", x) == (400.0, 40.0)
    assert render.resolve_window((10, 3), x) == (10.0, 3.0)
    with pytest.raises(ValueError, match="width must be > 0"):
        render.window_level(x, 0, 0)
    # MRI: percentiles of the non-zero voxels
    mri = np.concatenate([np.zeros(1000), np.arange(1, 101, dtype=float)])
    w, lvl = render.auto_window(mri, 0, 100)
    assert (w, lvl) == pytest.approx((99.0, 50.5))
    # CT is recognised by air at -1000 HU (or the modality) and gets the brain window by default
    ct = np.full((6, 6, 6), -1000.0)
    ct[2:4, 2:4, 2:4] = 40
    assert VolumeViewer(ct, interactive=False).window == (80.0, 40.0)
    assert render.looks_like_ct(mri) is False
    assert render.looks_like_ct(mri, "CT") is True


def test_overlays_follow_the_volume_and_reject_other_grids(ras, tmp_path):
    lab = make_label((12, 14, 10), spacing=(1.5, 1.0, 2.0), orientation="RAS", seed=3)
    lps, lab_lps = _stored(ras, "LPS"), _stored(lab, "LPS")
    heat = np.linspace(0, 1, lab_lps.array.size).reshape(lab_lps.array.shape)
    v = VolumeViewer(lps, label=lab_lps, mask=lab_lps.array > 1, overlay=heat, interactive=False)
    ref = VolumeViewer(ras, label=lab, interactive=False)
    for plane in render.PLANES:
        np.testing.assert_array_equal(v.slice_layer("label", plane), ref.slice_layer("label", plane))
    assert v.slice_layer("overlay", "axial").dtype == np.float32
    panels = v.panels()
    assert [len(p.overlays) for p in panels] == [3, 3, 3]
    assert panels[0].overlays[0].shape == panels[0].gray.shape + (4,)
    with pytest.raises(DataError, match="not on the volume's voxel grid"):
        v.set_layer("label", np.zeros((3, 3, 3)))
    with pytest.raises(DataError, match="not on the volume's voxel grid"):
        v.set_layer("label", Image(lab_lps.array, lab.affine))  # same shape, other affine


def test_widget_png_changes_with_controls_and_mimebundle_has_static_png(ras, tmp_path):
    path = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(ras.array), ras.affine), str(path))
    v = VolumeViewer(str(path))
    first = bytes(v.image.value)
    assert first.startswith(PNG_MAGIC)
    v._sliders["axial"].value = 1  # what a browser slider drag does
    assert v.index["axial"] == 1 and bytes(v.image.value) != first
    second = bytes(v.image.value)
    v.set_window("bone")
    assert v._preset.value == "bone" and v.window == (1800.0, 400.0) and bytes(v.image.value) != second
    v._width.value = 50.0
    assert v._preset.value == "custom" and v.window[0] == 50.0
    bundle = v._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    png = base64.b64decode(bundle["image/png"])
    assert png.startswith(PNG_MAGIC) and png == v.to_png()
    assert bundle["text/plain"].startswith("VolumeViewer(v.nii.gz")


def test_2d_input_shows_one_plane():
    img = np.random.default_rng(0).random((16, 12)).astype(np.float32)
    v = VolumeViewer(img, interactive=False)
    assert v.planes == ("axial",)
    assert v.slice_image("axial", 0).shape == (12, 16)
