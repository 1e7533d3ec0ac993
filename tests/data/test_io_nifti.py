"""NIfTI reading/writing: real nibabel test files, round trips, lazy size checks, privacy of headers."""

from __future__ import annotations

import gzip
import os

import nibabel as nib
import numpy as np
import pytest

from medjax.data.io import read_geometry, read_image, write_nifti
from medjax.data.testing import make_label, make_volume
from medjax.errors import DataError

NIB_DATA = os.path.join(os.path.dirname(nib.__file__), "tests", "data")


def test_example4d_is_channels_last():
    path = os.path.join(NIB_DATA, "example4d.nii.gz")
    img = read_image(path)
    ref = nib.load(path)
    assert img.array.shape == (128, 96, 24, 2)
    assert img.has_channels and img.spatial_shape == (128, 96, 24) and img.spatial_dims == 3
    assert img.array.dtype == np.int16
    np.testing.assert_array_equal(img.array, np.asarray(ref.dataobj))
    np.testing.assert_allclose(img.affine, ref.affine)
    assert img.orientation == "LAS"
    assert img.path == path


def test_big_endian_file_comes_back_native_and_equal():
    path = os.path.join(NIB_DATA, "anatomical.nii")
    img = read_image(path)
    assert img.array.shape == (33, 41, 25) and not img.has_channels
    assert img.array.dtype == np.int16 and img.array.dtype.isnative
    np.testing.assert_array_equal(img.array, nib.load(path).get_fdata().astype(np.int16))
    assert img.spacing == pytest.approx((2.0, 2.0, 2.0))


def test_float64_file_becomes_float32():
    img = read_image(os.path.join(NIB_DATA, "functional.nii"))
    assert img.array.dtype == np.float32
    assert img.array.shape == (17, 21, 3, 20) and img.has_channels


def test_standard_and_nifti2():
    img = read_image(os.path.join(NIB_DATA, "standard.nii.gz"))
    assert img.array.shape == (4, 5, 7) and img.array.dtype == np.uint8
    assert img.spacing == pytest.approx((1.0, 3.0, 2.0))
    img2 = read_image(os.path.join(NIB_DATA, "example_nifti2.nii.gz"))
    assert img2.array.shape == (32, 20, 12, 2) and img2.has_channels


def test_read_geometry_matches_read_image():
    for name in ("example4d.nii.gz", "anatomical.nii", "standard.nii.gz"):
        path = os.path.join(NIB_DATA, name)
        shape, affine = read_geometry(path)
        img = read_image(path)
        assert shape == img.spatial_shape
        np.testing.assert_array_equal(affine, img.affine)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("orientation", ["RAS", "LPS", "PIR"])
def test_write_read_roundtrip(tmp_path, suffix, orientation):
    vol = make_volume((12, 10, 8), spacing=(1.5, 0.8, 2.5), orientation=orientation, seed=1)
    path = tmp_path / f"v{suffix}"
    write_nifti(path, vol)
    back = read_image(path)
    np.testing.assert_array_equal(back.array, vol.array)
    assert back.array.dtype == np.float32
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-5)
    assert back.orientation == orientation
    hdr = nib.load(str(path)).header
    assert int(hdr["qform_code"]) == 1 and int(hdr["sform_code"]) == 1
    np.testing.assert_allclose(nib.load(str(path)).header.get_qform(), vol.affine, atol=1e-5)


def test_write_keeps_integer_labels_and_casts_unsupported(tmp_path):
    lab = make_label((12, 10, 8), seed=2)
    write_nifti(tmp_path / "l.nii.gz", lab)
    back = read_image(tmp_path / "l.nii.gz", is_label=True)
    assert back.array.dtype == np.uint8
    np.testing.assert_array_equal(back.array, lab.array)
    write_nifti(tmp_path / "b.nii", lab.array > 0, lab.affine)
    assert read_image(tmp_path / "b.nii", is_label=True).array.dtype == np.uint8
    write_nifti(tmp_path / "i64.nii", lab.array.astype(np.int64), lab.affine)
    assert read_image(tmp_path / "i64.nii", is_label=True).array.dtype == np.int32
    with pytest.raises(ValueError, match=".nii"):
        write_nifti(tmp_path / "x.img", lab)
    with pytest.raises(ValueError, match="affine"):
        write_nifti(tmp_path / "x.nii", lab.array)


def test_write_never_copies_identifying_header_fields(tmp_path):
    vol = make_volume((8, 8, 8), seed=0)
    src = nib.Nifti1Image(vol.array, vol.affine)
    src.header["descrip"] = b"DOE^JOHN 1970"
    src.header["db_name"] = b"SECRETDB"
    src.header["aux_file"] = b"SECRETAUX"
    nib.save(src, str(tmp_path / "src.nii"))
    img = read_image(tmp_path / "src.nii")
    assert img.extra == {}
    write_nifti(tmp_path / "out.nii", img)
    hdr = nib.load(str(tmp_path / "out.nii")).header
    assert hdr["descrip"].item() == b"" and hdr["db_name"].item() == b"" and hdr["aux_file"].item() == b""
    raw = (tmp_path / "out.nii").read_bytes()
    assert b"DOE" not in raw and b"SECRET" not in raw


def test_scaled_integers_become_float32(tmp_path):
    arr = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    img = nib.Nifti1Image(arr, np.eye(4))
    img.header.set_slope_inter(0.5, -10.0)
    nib.save(img, str(tmp_path / "s.nii.gz"))
    back = read_image(tmp_path / "s.nii.gz")
    assert back.array.dtype == np.float32
    np.testing.assert_allclose(back.array, arr * 0.5 - 10.0)


def test_2d_and_singleton_layouts(tmp_path):
    write_nifti(tmp_path / "2d.nii", np.arange(12, dtype=np.float32).reshape(3, 4), np.eye(4))
    img = read_image(tmp_path / "2d.nii")
    assert img.spatial_shape == (3, 4) and img.spatial_dims == 2 and not img.has_channels
    write_nifti(tmp_path / "t1.nii", np.random.default_rng(0).random((3, 4, 5, 1), np.float32), np.eye(4))
    img = read_image(tmp_path / "t1.nii")
    assert img.array.shape == (3, 4, 5) and not img.has_channels
    write_nifti(tmp_path / "vec.nii", np.random.default_rng(0).random((3, 4, 5, 1, 2), np.float32), np.eye(4))
    img = read_image(tmp_path / "vec.nii")
    assert img.array.shape == (3, 4, 5, 2) and img.has_channels


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_header_claiming_huge_data_fails_before_reading(tmp_path, suffix):
    """A header claiming petabytes must be rejected from the file size, never allocated."""
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(np.float32)
    hdr.set_data_shape((30000, 30000, 30000))
    hdr["vox_offset"] = 352
    blob = hdr.binaryblock + b"\0" * 4 + np.ones(64, np.float32).tobytes()
    path = tmp_path / f"huge{suffix}"
    path.write_bytes(gzip.compress(blob) if suffix.endswith("gz") else blob)
    with pytest.raises(DataError, match="header claims 30000x30000x30000") as exc:
        read_image(path)
    assert exc.value.path == str(path)
    # the header alone is fine: geometry comes back without touching the voxels
    shape, _ = read_geometry(path)
    assert shape == (30000, 30000, 30000)


def test_multi_member_gzip_reads(tmp_path):
    vol = make_volume((10, 9, 8), seed=4)
    write_nifti(tmp_path / "v.nii", vol)
    raw = (tmp_path / "v.nii").read_bytes()
    cut = len(raw) // 3
    (tmp_path / "mm.nii.gz").write_bytes(gzip.compress(raw[:cut]) + gzip.compress(raw[cut:]))
    np.testing.assert_array_equal(read_image(tmp_path / "mm.nii.gz").array, vol.array)


def test_truncated_and_non_nifti_files(tmp_path):
    write_nifti(tmp_path / "t.nii.gz", make_volume((16, 16, 16), seed=0))
    data = (tmp_path / "t.nii.gz").read_bytes()
    (tmp_path / "t.nii.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated"):
        read_image(tmp_path / "t.nii.gz")
    (tmp_path / "text.nii").write_text("hello\n" * 100)
    with pytest.raises(DataError, match="not a readable NIfTI") as exc:
        read_image(tmp_path / "text.nii")
    assert str(tmp_path) not in exc.value.reason
    (tmp_path / "garbage.nii.gz").write_bytes(b"not gzip at all" * 10)
    with pytest.raises(DataError, match="corrupt gzip"):
        read_image(tmp_path / "garbage.nii.gz")
    with pytest.raises(DataError, match="file not found"):
        read_image(tmp_path / "missing.nii.gz")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="unsupported file type"):
        read_image(tmp_path / "notes.txt")


def test_check_false_returns_invalid_data(tmp_path):
    arr = np.full((4, 4, 4), 3.0, np.float32)
    write_nifti(tmp_path / "c.nii", arr, np.eye(4))
    with pytest.raises(DataError, match="constant"):
        read_image(tmp_path / "c.nii")
    np.testing.assert_array_equal(read_image(tmp_path / "c.nii", check=False).array, arr)
