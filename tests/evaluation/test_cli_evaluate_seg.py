"""`medjax evaluate-seg` on tiny NIfTI files written to tmp_path."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from medjax.cli import main

AFFINE = np.diag([1.5, 1.0, 3.0, 1.0])  # spacing (1.5, 1, 3) mm
AFFINE[:3, 3] = [-10.0, 5.0, 2.0]


def _write(path, arr, affine=AFFINE, dtype=np.uint8):
    img = nib.Nifti1Image(np.asarray(arr, dtype=dtype), affine)
    nib.save(img, str(path))


def _cube(lo, size, label=1, shape=(10, 10, 10)):
    m = np.zeros(shape, np.uint8)
    m[tuple(slice(a, a + size) for a in lo)] = label
    return m


@pytest.fixture
def folders(tmp_path):
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    pred.mkdir()
    ref.mkdir()
    # case1: label 1 is a 3x3x3 cube shifted 2 voxels in x (dice 1/3, hd95 = 2 * 1.5 mm = 3.0 mm, NSD(1.5 mm)
    # = 34/52); label 2 is identical in both.
    _write(ref / "case1.nii.gz", _cube((2, 2, 2), 3) + _cube((7, 7, 7), 2, 2))
    _write(pred / "case1.nii.gz", _cube((4, 2, 2), 3) + _cube((7, 7, 7), 2, 2))
    # case2: label 1 identical; label 2 absent from the reference and predicted as a false positive
    _write(ref / "case2.nii", _cube((1, 1, 1), 4))
    _write(pred / "case2.nii", _cube((1, 1, 1), 4) + _cube((7, 7, 7), 2, 2), dtype=np.float32)
    return pred, ref


def _json(capsys, *argv):
    assert main(["evaluate-seg", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_scores(folders, capsys):
    pred, ref = folders
    out = _json(capsys, "--pred", str(pred), "--ref", str(ref), "--tolerance-mm", "1.5")
    assert out["labels"] == [1, 2]  # union of the non-zero labels of the references
    rows = {(c["case"], c["label"]): c for c in out["cases"]}
    assert set(rows) == {("case1.nii.gz", 1), ("case1.nii.gz", 2), ("case2.nii", 1), ("case2.nii", 2)}
    r = rows[("case1.nii.gz", 1)]
    assert r["dice"] == pytest.approx(1 / 3)
    assert r["hd95"] == pytest.approx(3.0)  # spacing read from the affine
    assert r["nsd"] == pytest.approx(34 / 52)
    assert rows[("case1.nii.gz", 2)] == {"case": "case1.nii.gz", "label": 2, "dice": 1.0, "hd95": 0.0, "nsd": 1.0}
    # a false-positive structure: dice 0, hd95 infinite -> null with a flag, nsd 0
    fp = rows[("case2.nii", 2)]
    assert fp["dice"] == 0.0 and fp["hd95"] is None and fp["hd95_infinite"] is True and fp["nsd"] == 0.0
    mean = out["mean"]
    assert mean["dice"] == pytest.approx((1 / 3 + 1 + 1 + 0) / 4)
    assert mean["hd95"] == pytest.approx(3.0 / 3)  # finite values only
    assert mean["n_hd95_infinite"] == 1 and mean["n_cases"] == 2
    assert out["per_label"]["1"]["dice"] == pytest.approx((1 / 3 + 1) / 2)
    # label 2: finite HD95 0 in case1, infinite in case2 -> mean over the finite one, one infinite counted
    assert out["per_label"]["2"] == {"dice": 0.5, "hd95": 0.0, "nsd": 0.5, "n_hd95_infinite": 1,
                                     "n_both_empty_excluded": 0}
    assert out["empty"] == "perfect" and out["nsd_surface"] == "voxels"  # the defaults, stated


def test_labels_option_and_table(folders, capsys):
    pred, ref = folders
    out = _json(capsys, "--pred", str(pred), "--ref", str(ref), "--labels", "1")
    assert {c["label"] for c in out["cases"]} == {1}
    assert out["mean"]["dice"] == pytest.approx((1 / 3 + 1) / 2)
    assert main(["evaluate-seg", "--pred", str(pred), "--ref", str(ref)]) == 0
    text = capsys.readouterr().out
    assert "case1.nii.gz" in text and "inf" in text and "3.0000" in text


def test_missing_reference_names_the_file(folders, capsys):
    pred, ref = folders
    _write(pred / "case3.nii.gz", _cube((1, 1, 1), 2))
    assert main(["evaluate-seg", "--pred", str(pred), "--ref", str(ref)]) == 2
    err = capsys.readouterr().err
    assert "reference missing" in err and "case3.nii.gz" in err


def test_missing_prediction_names_the_file(folders, capsys):
    pred, ref = folders
    (pred / "case2.nii").unlink()
    assert main(["evaluate-seg", "--pred", str(pred), "--ref", str(ref)]) == 2
    err = capsys.readouterr().err
    assert "prediction missing" in err and "case2.nii" in err


def test_affine_mismatch_names_both_files(folders, capsys):
    pred, ref = folders
    shifted = AFFINE.copy()
    shifted[0, 3] += 2.0
    _write(pred / "case1.nii.gz", _cube((4, 2, 2), 3), affine=shifted)
    assert main(["evaluate-seg", "--pred", str(pred), "--ref", str(ref)]) == 2
    err = capsys.readouterr().err
    assert "affine differs" in err and str(pred / "case1.nii.gz") in err and str(ref / "case1.nii.gz") in err


def test_shape_mismatch_and_bad_values(folders, capsys):
    pred, ref = folders
    _write(pred / "case1.nii.gz", np.zeros((10, 10, 9), np.uint8))
    assert main(["evaluate-seg", "--pred", str(pred), "--ref", str(ref)]) == 2
    assert "shape (10, 10, 9) differs" in capsys.readouterr().err
    _write(pred / "case1.nii.gz", np.full((10, 10, 10), 0.5), dtype=np.float32)
    assert main(["evaluate-seg", "--pred", str(pred), "--ref", str(ref)]) == 2
    assert "non-integer" in capsys.readouterr().err
    assert main(["evaluate-seg", "--pred", str(pred), "--ref", str(ref), "--labels", "a,b"]) == 2
    assert "--labels" in capsys.readouterr().err


def test_2d_files(tmp_path, capsys):
    # (X, Y, 1) files are scored as 2D: 3x3 squares shifted 2 pixels along y with spacing (0.5, 2.0) -> 4.0 mm
    pred, ref = tmp_path / "p", tmp_path / "r"
    pred.mkdir()
    ref.mkdir()
    aff = np.diag([0.5, 2.0, 5.0, 1.0])
    _write(ref / "s.nii.gz", _cube((2, 2, 0), 3, shape=(8, 8, 1)), affine=aff)
    _write(pred / "s.nii.gz", _cube((2, 4, 0), 3, shape=(8, 8, 1)), affine=aff)
    out = _json(capsys, "--pred", str(pred), "--ref", str(ref))
    assert out["cases"][0]["hd95"] == pytest.approx(4.0)
    assert out["cases"][0]["dice"] == pytest.approx(1 / 3)


def test_trailing_channel_axis_is_dropped(tmp_path, capsys):
    # a (X, Y, Z, 1) prediction scores against a (X, Y, Z) reference
    pred, ref = tmp_path / "p", tmp_path / "r"
    pred.mkdir()
    ref.mkdir()
    _write(ref / "v.nii.gz", _cube((2, 2, 2), 3))
    _write(pred / "v.nii.gz", _cube((4, 2, 2), 3)[..., None])
    out = _json(capsys, "--pred", str(pred), "--ref", str(ref))
    assert out["cases"][0]["hd95"] == pytest.approx(3.0) and out["cases"][0]["dice"] == pytest.approx(1 / 3)


def test_empty_convention_and_nsd_surface_flags(folders, capsys):
    pred, ref = folders
    # label 3 is in no file: empty in prediction and reference of both cases
    args = ["--pred", str(pred), "--ref", str(ref), "--labels", "1,3"]
    perfect = _json(capsys, *args)
    rows = {(c["case"], c["label"]): c for c in perfect["cases"]}
    assert rows[("case1.nii.gz", 3)] == {"case": "case1.nii.gz", "label": 3, "dice": 1.0, "hd95": 0.0, "nsd": 1.0}
    assert perfect["mean"]["dice"] == pytest.approx((1 / 3 + 1 + 1 + 1) / 4)
    nan = _json(capsys, *args, "--empty", "nan")
    assert nan["empty"] == "nan"
    rows = {(c["case"], c["label"]): c for c in nan["cases"]}
    assert rows[("case2.nii", 3)] == {"case": "case2.nii", "label": 3, "dice": None, "hd95": None, "nsd": None}
    assert nan["mean"]["dice"] == pytest.approx((1 / 3 + 1) / 2)  # the two both-empty rows left out
    assert nan["mean"]["n_both_empty_excluded"] == 2 and nan["per_label"]["3"]["n_both_empty_excluded"] == 2
    area = _json(capsys, *args, "--nsd-surface", "area", "--tolerance-mm", "1.5")
    assert area["nsd_surface"] == "area"
    from medjax.evaluation.segmentation import nsd

    p1 = nib.load(str(pred / "case1.nii.gz")).get_fdata() == 1
    r1 = nib.load(str(ref / "case1.nii.gz")).get_fdata() == 1
    case1 = {(c["case"], c["label"]): c for c in area["cases"]}[("case1.nii.gz", 1)]
    assert case1["nsd"] == pytest.approx(nsd(p1, r1, (1.5, 1.0, 3.0), 1.5, surface="area"))
    assert case1["nsd"] != pytest.approx(34 / 52)  # the boundary-voxel value
    assert main(["evaluate-seg", *args, "--empty", "nan", "--nsd-surface", "area"]) == 0
    text = capsys.readouterr().out
    assert "both-empty convention 'nan'" in text and "2 case-label(s) empty in both" in text
    assert "NSD surface 'area' (surface elements weighted by area)" in text
    assert main(["evaluate-seg", "--pred", str(pred), "--ref", str(ref)]) == 0
    text = capsys.readouterr().out
    assert "both-empty convention 'perfect'" in text and "NSD surface 'voxels'" in text
    for bad in ("nan", "inf", "-1"):
        assert main(["evaluate-seg", "--pred", str(pred), "--ref", str(ref), "--tolerance-mm", bad]) == 2
        assert "--tolerance-mm" in capsys.readouterr().err
