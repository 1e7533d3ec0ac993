"""Dataset sources: folder, MSD dataset.json, CSV and JSON manifests; sorting, pairing and error messages."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from medjax.data.io import read_image, write_dicom_series, write_nifti
from medjax.data.sources import available_splits, load_records
from medjax.data.testing import make_volume, write_tiny_dataset
from medjax.errors import DataError

IDS = ["case_000", "case_001", "case_002"]


@pytest.mark.parametrize("layout", ["folder", "msd", "csv", "json"])
def test_tiny_dataset_layouts(tmp_path, layout):
    path = write_tiny_dataset(tmp_path, n=3, layout=layout)
    recs = load_records(path)
    assert [r["id"] for r in recs] == IDS
    for r in recs:
        assert os.path.isabs(r["image"]) and os.path.isfile(r["image"])
        assert os.path.isfile(r["label"]) and os.path.basename(r["label"]) == r["id"] + ".nii.gz"
        assert set(r) >= {"id", "image", "label", "class", "boxes"}
    if layout == "folder":
        assert all(r["class"] is None and r["boxes"] is None for r in recs)
    else:
        assert [r["class"] for r in recs] == [0, 1, 0]
        box = recs[1]["boxes"]
        assert len(box) == 1 and len(box[0]) == 6 and all(isinstance(v, float) for v in box[0])
        assert box[0][0] < box[0][3] and box[0][1] < box[0][4] and box[0][2] < box[0][5]
    img = read_image(recs[0]["image"])
    assert img.spatial_shape == (24, 28, 20)


def test_tiny_dataset_without_labels(tmp_path):
    for layout in ("folder", "csv"):
        recs = load_records(write_tiny_dataset(tmp_path / layout, n=2, layout=layout, with_labels=False))
        assert [r["label"] for r in recs] == [None, None]


def test_msd_splits_and_extra_keys(tmp_path):
    root = write_tiny_dataset(tmp_path, n=2, layout="msd")
    assert available_splits(root) == ["training", "test"]
    test = load_records(root, split="test")
    assert [r["id"] for r in test] == ["case_test_000"] and test[0]["label"] is None
    meta = json.loads((tmp_path / "dataset.json").read_text())
    meta["training"][0]["lesion"] = "left"
    meta["training"].reverse()  # order in the manifest must not matter
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    recs = load_records(root)
    assert [r["id"] for r in recs] == ["case_000", "case_001"]
    assert recs[0]["lesion"] == "left" and "lesion" not in recs[1]
    with pytest.raises(DataError, match="no 'validation' list") as exc:
        load_records(root, split="validation")
    assert exc.value.path.endswith("dataset.json")


def test_folder_with_dicom_series_and_sibling_labels(tmp_path):
    images, labels = tmp_path / "images", tmp_path / "labels"
    vol = make_volume((6, 5, 4), seed=0)
    write_nifti(images / "b_case.nii.gz", vol)
    write_nifti(images / "a_case.nii", vol)
    write_nifti(labels / "a_case.nii.gz", (vol.array > 150).astype(np.uint8), vol.affine)
    write_dicom_series(images / "patient1" / "ct", np.zeros((6, 5, 4), np.int16), vol.affine, modality="CT")
    write_nifti(labels / "patient1_ct.nii.gz", np.zeros((6, 5, 4), np.uint8), vol.affine)
    (images / ".hidden.nii.gz").write_bytes(b"")
    (images / "notes.txt").write_text("ignored")
    recs = load_records(images)
    assert [r["id"] for r in recs] == ["a_case", "b_case", "patient1_ct"]
    assert recs[0]["label"] == str(labels / "a_case.nii.gz")
    assert recs[1]["label"] is None
    assert recs[2]["image"] == str(images / "patient1" / "ct")
    assert recs[2]["label"] == str(labels / "patient1_ct.nii.gz")
    # the parent folder with images/ + labels/ subfolders gives the same records
    assert load_records(tmp_path) == recs
    # a DICOM series folder or a single file is a one-record dataset
    assert [r["id"] for r in load_records(images / "patient1" / "ct")] == ["ct"]
    assert [r["id"] for r in load_records(images / "a_case.nii")] == ["a_case"]


def test_duplicate_ids_and_missing_files(tmp_path):
    vol = make_volume((6, 5, 4), seed=0)
    write_nifti(tmp_path / "d" / "x.nii", vol)
    write_nifti(tmp_path / "d" / "x.nii.gz", vol)
    with pytest.raises(DataError, match="share the id 'x'"):
        load_records(tmp_path / "d")
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps([{"image": "nope.nii.gz"}]))
    with pytest.raises(DataError, match="not found") as exc:
        load_records(manifest)
    assert exc.value.path == str(tmp_path / "nope.nii.gz") and str(manifest) in exc.value.reason
    assert load_records(manifest, must_exist=False)[0]["image"] == str(tmp_path / "nope.nii.gz")
    with pytest.raises(DataError, match="not found"):
        load_records(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .nii"):
        load_records(tmp_path / "empty")


def test_csv_manifest_errors_name_line_and_column(tmp_path):
    write_nifti(tmp_path / "a.nii.gz", make_volume((6, 5, 4), seed=0))
    m = tmp_path / "m.csv"
    m.write_text("image,class,boxes\na.nii.gz,1,\na.nii.gz,abc,\n")
    with pytest.raises(DataError) as exc:
        load_records(m, must_exist=False)
    assert exc.value.path == str(m) and "line 3" in exc.value.reason and "'class'" in exc.value.reason
    m.write_text('image,boxes\na.nii.gz,"[[1,2,3]]"\n')
    with pytest.raises(DataError, match="line 2: 'boxes'"):
        load_records(m)
    m.write_text("path,label\na.nii.gz,\n")
    with pytest.raises(DataError, match="needs an 'image' column"):
        load_records(m)
    m.write_text('image,class,extra\na.nii.gz,"[0, 1, 1]",note\n')
    rec = load_records(m)[0]
    assert rec["class"] == [0, 1, 1] and rec["extra"] == "note" and rec["label"] is None


def test_json_manifest_forms_and_errors(tmp_path):
    write_nifti(tmp_path / "img" / "a.nii.gz", make_volume((6, 5, 4), seed=0))
    m = tmp_path / "m.json"
    m.write_text(json.dumps({"training": ["img/a.nii.gz"]}))
    assert load_records(m)[0]["id"] == "a"
    m.write_text(json.dumps({"training": [{"image": "img/a.nii.gz"}, {"label": "x.nii.gz"}]}))
    with pytest.raises(DataError, match=r"training\[1\]: entry has no 'image' key"):
        load_records(m)
    m.write_text(json.dumps([{"image": "img/a.nii.gz", "class": True}]))
    with pytest.raises(DataError, match=r"entry 0: 'class'"):
        load_records(m)
    m.write_text('[{"image": "img/a.nii.gz",}]')
    with pytest.raises(DataError, match="invalid JSON at line 1"):
        load_records(m)
    m.write_text(json.dumps([{"image": "img/a.nii.gz", "id": "custom", "boxes": [[0, 0, 0, 1, 1, 1]]}]))
    rec = load_records(m)[0]
    assert rec["id"] == "custom" and rec["boxes"] == [[0.0, 0.0, 0.0, 1.0, 1.0, 1.0]]


def test_extra_path_keys_are_resolved_against_the_manifest(tmp_path):
    import json as _json

    from medjax.data.sources import load_records

    (tmp_path / "dataset.json").write_text(_json.dumps({"training": [
        {"image": "./imagesTr/a.nii.gz", "lesion": "./lesionsTr/a.nii.gz", "note": "keep me"}]}))
    rec = load_records(str(tmp_path / "dataset.json"), must_exist=False)[0]
    assert rec["lesion"] == str(tmp_path / "lesionsTr" / "a.nii.gz")
    assert rec["note"] == "keep me"
