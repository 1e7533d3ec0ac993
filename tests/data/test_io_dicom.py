"""DICOM reading and writing: pydicom's shipped files, MNI152 written as a series and read back, oblique and
shuffled series, multi-frame files, malformed series, and no patient tag ever leaking out."""

from __future__ import annotations

import os
import shutil
import warnings

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from medjax.data.io import read_geometry, read_image, write_dicom_series, write_nifti
from medjax.data.testing import make_volume, orientation_affine, write_dicom_multiframe
from medjax.errors import DataError


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _int_volume(shape=(9, 7, 6), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1000, 2000, size=shape).astype(np.int16)


@pytest.fixture(scope="module")
def mni(tmp_path_factory):
    """MNI152 (2 mm) as int16, written both as NIfTI and as a CT DICOM series."""
    from nilearn.datasets import load_mni152_template

    tpl = load_mni152_template(resolution=2)
    arr = np.round(np.asarray(tpl.get_fdata()) * 1000).astype(np.int16)
    root = tmp_path_factory.mktemp("mni")
    write_nifti(root / "mni.nii.gz", arr, tpl.affine)
    paths = write_dicom_series(root / "series", arr, tpl.affine, modality="CT")
    return arr, np.asarray(tpl.affine), root, paths


def test_ct_small_geometry_and_hounsfield_units():
    path = get_testdata_file("CT_small.dcm")
    img = read_image(path)
    ds = pydicom.dcmread(path)
    assert img.array.shape == (128, 128, 1) and img.array.dtype == np.int16
    np.testing.assert_array_equal(img.array[:, :, 0], ds.pixel_array.T.astype(np.int32) - 1024)
    assert img.extra == {"modality": "CT"}
    assert img.orientation == "LPS"
    np.testing.assert_allclose(img.affine[:3, 3], [158.135803, 179.035797, -75.699997], atol=1e-6)
    assert img.spacing == pytest.approx((0.661468, 0.661468, 5.0))
    shape, affine = read_geometry(path)
    assert shape == (128, 128, 1)
    np.testing.assert_array_equal(affine, img.affine)


def test_mr_small_without_rescale_keeps_values():
    path = get_testdata_file("MR_small.dcm")
    img = read_image(path)
    np.testing.assert_array_equal(img.array[:, :, 0], pydicom.dcmread(path).pixel_array.T)
    assert img.extra == {"modality": "MR"}


def test_legacy_multiframe_rtdose_uses_grid_offsets():
    img = read_image(get_testdata_file("rtdose.dcm"))
    ds = pydicom.dcmread(get_testdata_file("rtdose.dcm"))
    assert img.array.shape == (10, 10, 15) and img.array.dtype == np.float32
    assert img.spacing == pytest.approx((10.0, 10.0, 5.0))
    np.testing.assert_allclose(img.array[:, :, 3], ds.pixel_array[3].T * 1e-6, rtol=1e-6)


def test_mni_series_round_trip(mni):
    arr, affine, root, paths = mni
    assert len(paths) == arr.shape[2]
    ds = pydicom.dcmread(paths[0])
    assert float(ds.RescaleIntercept) == -1024 and ds.PixelRepresentation == 0
    assert "PatientBirthDate" not in ds
    img = read_image(root / "series")
    np.testing.assert_array_equal(img.array, arr)
    assert img.array.dtype == np.int16
    np.testing.assert_allclose(img.affine, affine, atol=1e-4)
    assert img.orientation == "RAS"
    shape, geo = read_geometry(root / "series")
    assert shape == arr.shape
    np.testing.assert_allclose(geo, affine, atol=1e-4)


def test_nifti_and_dicom_agree_on_world_coordinates(mni):
    arr, _, root, _ = mni
    nii, dcm = read_image(root / "mni.nii.gz"), read_image(root / "series")
    np.testing.assert_array_equal(nii.array, dcm.array)
    for voxel in ([0, 0, 0], [10, 57, 33], [98, 116, 94]):
        v = np.array(voxel + [1.0])
        np.testing.assert_allclose(nii.affine @ v, dcm.affine @ v, atol=1e-4)


def test_shuffled_file_names_still_sort_by_position(mni, tmp_path):
    arr, affine, _, paths = mni
    order = np.random.default_rng(0).permutation(len(paths))
    folder = tmp_path / "shuffled"
    folder.mkdir()
    for new, old in enumerate(order):
        shutil.copy(paths[old], folder / f"IM{new:05d}")  # names carry no order and no extension
    img = read_image(folder)
    np.testing.assert_array_equal(img.array, arr)
    np.testing.assert_allclose(img.affine, affine, atol=1e-4)


@pytest.mark.parametrize("angles", [(0.3, -0.2, 0.5), (np.pi / 2, 0.1, 0.0), (0.0, 0.0, np.pi)])
def test_oblique_round_trip(tmp_path, angles):
    affine = np.eye(4)
    affine[:3, :3] = _rotation(*angles) @ np.diag([1.2, 0.9, 2.5])
    affine[:3, 3] = [-40.5, 12.25, 88.0]
    arr = _int_volume()
    write_dicom_series(tmp_path / "s", arr, affine, modality="MR")
    img = read_image(tmp_path / "s")
    np.testing.assert_array_equal(img.array, arr)
    np.testing.assert_allclose(img.affine, affine, atol=1e-4)
    assert img.spacing == pytest.approx((1.2, 0.9, 2.5), abs=1e-5)


def test_gantry_tilt_slice_step_comes_from_positions(tmp_path):
    affine = np.diag([0.8, 0.8, 3.0, 1.0])
    affine[1, 2] = 0.5  # slices shift along y as they advance: the stack is sheared
    arr = _int_volume((6, 5, 4))
    write_dicom_series(tmp_path / "s", arr, affine)
    img = read_image(tmp_path / "s")
    np.testing.assert_allclose(img.affine, affine, atol=1e-4)
    np.testing.assert_array_equal(img.array, arr)


def test_negative_determinant_keeps_world_geometry(tmp_path):
    affine = orientation_affine((6, 5, 4), (1.0, 1.5, 2.0), "LAS")
    arr = _int_volume((6, 5, 4))
    write_dicom_series(tmp_path / "s", arr, affine)
    img = read_image(tmp_path / "s")
    # slices come back sorted along the slice normal: same voxels at the same world points
    np.testing.assert_array_equal(img.array, arr[:, :, ::-1])
    for i, j, k in [(0, 0, 0), (5, 4, 3), (2, 1, 1)]:
        np.testing.assert_allclose(img.affine @ [i, j, 3 - k, 1], affine @ [i, j, k, 1], atol=1e-4)


def test_enhanced_multiframe_sorted_by_per_frame_positions(tmp_path):
    vol = make_volume((7, 6, 5), spacing=(1.1, 1.3, 2.0), orientation="LPS", seed=2)
    arr = np.round(vol.array).astype(np.int16)
    path = write_dicom_multiframe(tmp_path / "mf.dcm", arr, vol.affine, frame_order=[3, 0, 4, 1, 2])
    img = read_image(path)
    np.testing.assert_array_equal(img.array, arr)
    np.testing.assert_allclose(img.affine, vol.affine, atol=1e-4)
    # a folder holding just that file reads the same way
    img2 = read_image(tmp_path)
    np.testing.assert_array_equal(img2.array, arr)


def test_series_of_interleaved_multiframe_files(tmp_path):
    vol = make_volume((5, 6, 5), seed=5)
    arr = np.round(vol.array).astype(np.int16)
    write_dicom_multiframe(tmp_path / "s" / "odd.dcm", arr, vol.affine, frame_order=[3, 1], series_uid="1.2.3.4")
    write_dicom_multiframe(tmp_path / "s" / "even.dcm", arr, vol.affine, frame_order=[4, 0, 2], series_uid="1.2.3.4")
    img = read_image(tmp_path / "s")
    np.testing.assert_array_equal(img.array, arr)
    np.testing.assert_allclose(img.affine, vol.affine, atol=1e-4)


def test_float_rescale_gives_float32(tmp_path):
    arr = _int_volume((4, 3, 3))
    for p in write_dicom_series(tmp_path / "s", arr, np.eye(4)):
        ds = pydicom.dcmread(p)
        ds.RescaleSlope, ds.RescaleIntercept = "0.5", "1.25"
        ds.save_as(p)
    img = read_image(tmp_path / "s")
    assert img.array.dtype == np.float32
    np.testing.assert_allclose(img.array, arr * 0.5 + 1.25)


def test_two_series_in_one_folder(tmp_path):
    (tmp_path / "mixed").mkdir()
    for part in ("a", "b"):
        for p in write_dicom_series(tmp_path / part, _int_volume((4, 4, 3)), np.eye(4)):
            shutil.move(p, tmp_path / "mixed" / f"{part}{os.path.basename(p)}")
    with pytest.raises(DataError, match="2 DICOM series") as exc:
        read_image(tmp_path / "mixed")
    assert exc.value.path == str(tmp_path / "mixed")


def test_uneven_spacing_missing_position_duplicates_and_empty(tmp_path):
    paths = write_dicom_series(tmp_path / "gap", _int_volume((4, 4, 5)), np.eye(4))
    os.remove(paths[2])
    with pytest.raises(DataError, match="uneven slice spacing"):
        read_image(tmp_path / "gap")

    paths = write_dicom_series(tmp_path / "nopos", _int_volume((4, 4, 3)), np.eye(4))
    ds = pydicom.dcmread(paths[1])
    del ds.ImagePositionPatient
    ds.save_as(paths[1])
    with pytest.raises(DataError, match="missing ImagePositionPatient"):
        read_image(tmp_path / "nopos")

    paths = write_dicom_series(tmp_path / "dup", _int_volume((4, 4, 3)), np.eye(4))
    ds = pydicom.dcmread(paths[1])
    ds.ImagePositionPatient = pydicom.dcmread(paths[0]).ImagePositionPatient
    ds.save_as(paths[1])
    with pytest.raises(DataError, match="share a position"):
        read_image(tmp_path / "dup")

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match="no DICOM image files"):
        read_image(tmp_path / "empty")


def test_colour_truncated_and_unplaceable_files_are_rejected():
    with pytest.raises(DataError, match="pixel data is truncated"):
        read_image(get_testdata_file("MR_truncated.dcm"))
    with pytest.raises(DataError, match="not a DICOM file"):
        read_image(get_testdata_file("no_meta.dcm"))
    with pytest.raises(DataError, match="colour"):
        read_image(get_testdata_file("SC_rgb_small_odd.dcm"))
    with pytest.raises(DataError, match="missing ImagePositionPatient"):
        read_image(get_testdata_file("JPEG2000.dcm"))


def test_patient_tags_never_leak(tmp_path, capsys):
    from medjax.cli import main

    arr = _int_volume((5, 4, 4))
    good = write_dicom_series(tmp_path / "data" / "good", arr, np.eye(4), patient_name="DOE^JOHN",
                              patient_id="SECRET-ID-42")
    bad = write_dicom_series(tmp_path / "data" / "bad", arr, np.eye(4), patient_name="DOE^JOHN",
                             patient_id="SECRET-ID-42")
    assert pydicom.dcmread(good[0]).PatientName == "DOE^JOHN"
    os.remove(bad[1])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        img = read_image(tmp_path / "data" / "good")
        assert img.extra == {"modality": "MR"}
        with pytest.raises(DataError) as exc:
            read_image(tmp_path / "data" / "bad")
    texts = [repr(img.extra), str(exc.value), repr(img)] + [str(w.message) for w in caught]
    rc = main(["data", "check", str(tmp_path / "data"), "--json"])
    out = capsys.readouterr()
    assert rc == 1
    texts += [out.out, out.err]
    for text in texts:
        assert "DOE" not in text and "JOHN" not in text and "SECRET-ID" not in text
