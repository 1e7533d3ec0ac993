"""The demo dataset built from nilearn's MNI152 templates: files, labels, lesions, boxes, geometry, determinism."""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medjax.data.demo import _reorient, build_demo, summarize_demo

ENTRY_KEYS = {"image", "label", "lesion", "class", "boxes", "boxes_voxel"}


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    path = build_demo(out, subjects=3, seed=0, resolution_mm=2.0)
    assert path == str(out / "dataset.json")
    return out


def _load(out: Path, rel: str) -> nib.Nifti1Image:
    return nib.load(str(out / rel))


def _arr(out: Path, rel: str) -> np.ndarray:
    return np.asarray(_load(out, rel).dataobj)


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes() + str((a.dtype, a.shape)).encode()).hexdigest()


def _entries(out: Path) -> list[dict]:
    return json.loads((out / "dataset.json").read_text())["training"]


def _world_box(box_voxel, affine) -> np.ndarray:
    """Independent reference: the 8 voxel-edge corners of a half-open voxel box through the affine."""
    lo = np.array(box_voxel[:3]) - 0.5
    hi = np.array(box_voxel[3:]) - 0.5
    corners = np.array(list(itertools.product(*zip(lo, hi))))
    xyz = corners @ affine[:3, :3].T + affine[:3, 3]
    return np.concatenate([xyz.min(0), xyz.max(0)])


def test_dataset_json_complete(demo):
    data = json.loads((demo / "dataset.json").read_text())
    assert data["name"] == "medjax-demo"
    assert data["description"]
    assert data["modality"] == {"0": "MRI T1"}
    assert data["labels"] == {"0": "background", "1": "CSF", "2": "grey matter", "3": "white matter"}
    assert data["numTraining"] == 3 and len(data["training"]) == 3
    assert data["test"] == []
    for i, e in enumerate(data["training"]):
        assert ENTRY_KEYS <= set(e)
        sid = f"sub-{i:03d}"
        assert e["image"] == f"./imagesTr/{sid}.nii.gz"
        assert e["label"] == f"./labelsTr/{sid}.nii.gz"
        assert e["lesion"] == f"./lesionsTr/{sid}.nii.gz"
        for key in ("image", "label", "lesion"):
            assert (demo / e[key]).is_file()
        assert e["class"] in (0, 1)
        assert len(e["boxes"]) == len(e["boxes_voxel"])


def test_arrays_types_and_labels(demo):
    for e in _entries(demo):
        img, lab, les = (_load(demo, e[k]) for k in ("image", "label", "lesion"))
        assert img.get_data_dtype() == np.int16
        assert lab.get_data_dtype() == np.uint8 and les.get_data_dtype() == np.uint8
        assert img.shape == lab.shape == les.shape and len(img.shape) == 3
        np.testing.assert_array_equal(lab.affine, img.affine)
        np.testing.assert_array_equal(les.affine, img.affine)
        label, lesion, image = (np.asarray(x.dataobj) for x in (lab, les, img))
        assert set(np.unique(label).tolist()) == {0, 1, 2, 3}
        assert set(np.unique(lesion).tolist()) <= {0, 1}
        # a brain, not noise: white matter brighter than grey matter, grey brighter than background
        means = [float(image[label == t].mean()) for t in (0, 2, 3)]
        assert means[0] < means[1] < means[2], means
        # brain occupies a plausible volume (mm^3): about 1.2-2.2 litres
        voxel_mm3 = float(np.prod(img.header.get_zooms()[:3]))
        assert 1.0e6 < (label > 0).sum() * voxel_mm3 < 2.4e6


def test_lesions_class_and_placement(demo):
    entries = _entries(demo)
    for e in entries:
        lesion = _arr(demo, e["lesion"])
        label = _arr(demo, e["label"])
        assert e["class"] == int(lesion.any())
        assert (len(e["boxes"]) > 0) == bool(e["class"])
        assert 0 <= len(e["boxes"]) <= 3
        assert (label[lesion > 0] > 0).all(), "lesions lie inside the brain mask"
    # one subject of the pair (sub-000, sub-001) has lesions
    assert entries[0]["class"] + entries[1]["class"] == 1


def test_lesion_contrast_visible(demo):
    """Lesion voxels differ from the surrounding tissue of the same subject (hyper- or hypo-intense)."""
    checked = 0
    for e in _entries(demo):
        if not e["class"]:
            continue
        checked += 1
        image = _arr(demo, e["image"]).astype(np.float64)
        lesion = _arr(demo, e["lesion"])
        label = _arr(demo, e["label"])
        for bv in e["boxes_voxel"]:
            sl = tuple(slice(bv[d], bv[d + 3]) for d in range(3))
            core = image[sl][lesion[sl] > 0].mean()
            wm = image[label == 3].mean()
            assert abs(core - wm) > 0.1 * wm
    assert checked > 0  # the demo set has subjects with lesions


def test_boxes_consistent_with_mask_and_affine(demo):
    rows = list(csv.DictReader(open(demo / "boxes.csv")))
    n_rows = 0
    for e in _entries(demo):
        if not e["class"]:
            continue
        img = _load(demo, e["lesion"])
        mask = np.asarray(img.dataobj) > 0
        boxes_v = np.array(e["boxes_voxel"])
        # union of the per-lesion voxel boxes is the mask's bounding box
        nz = np.nonzero(mask)
        bbox = [int(a.min()) for a in nz] + [int(a.max()) + 1 for a in nz]
        assert boxes_v[:, :3].min(0).tolist() == bbox[:3]
        assert boxes_v[:, 3:].max(0).tolist() == bbox[3:]
        for k, (bw, bv) in enumerate(zip(e["boxes"], e["boxes_voxel"])):
            assert all(bv[d] < bv[d + 3] for d in range(3))
            sub = mask[bv[0] : bv[3], bv[1] : bv[4], bv[2] : bv[5]]
            for d in range(3):  # tight: every face of the box touches the mask
                assert np.take(sub, 0, axis=d).any() and np.take(sub, -1, axis=d).any()
            np.testing.assert_allclose(bw, _world_box(bv, img.affine), atol=1e-3)
            assert bw[0] < bw[3] and bw[1] < bw[4] and bw[2] < bw[5]
            # at least one voxel wide; radii are at most 15 mm (plus one voxel of rasterisation)
            assert all(2.0 - 1e-3 <= bw[d + 3] - bw[d] <= 2 * (15.0 + 4.0) for d in range(3))
            row = rows[n_rows]
            n_rows += 1
            assert row["id"] == e["id"] and int(row["lesion"]) == k
            assert [float(row[c]) for c in ("x0", "y0", "z0", "x1", "y1", "z1")] == pytest.approx(bw)
            assert [int(row[c]) for c in ("i0", "j0", "k0", "i1", "j1", "k1")] == bv
    assert n_rows == len(rows) > 0


def test_geometry_and_orientation(demo):
    codes = []
    for e in _entries(demo):
        img = _load(demo, e["image"])
        a = img.affine
        assert abs(np.linalg.det(a[:3, :3])) > 1.0
        spacing = np.sqrt((a[:3, :3] ** 2).sum(0))
        assert ((spacing >= 2.0 - 1e-6) & (spacing <= 4.0 + 1e-6)).all()
        qform, qcode = img.get_qform(coded=True)
        sform, scode = img.get_sform(coded=True)
        assert qcode == 1 and scode == 1
        np.testing.assert_allclose(qform, a, atol=1e-4)
        np.testing.assert_allclose(sform, a, atol=1e-6)
        code = "".join(nib.aff2axcodes(a))
        assert code == e["orientation"]
        codes.append(code)
        # the brain centre stays near the MNI centre whatever the orientation
        label = np.asarray(_load(demo, e["label"]).dataobj)
        centroid = a[:3, :3] @ np.array([c.mean() for c in np.nonzero(label)]) + a[:3, 3]
        assert np.abs(centroid - np.array([0.0, -18.0, 8.0])).max() < 20.0, centroid
    assert len(set(codes)) > 1 and "RAS" in codes


@pytest.mark.parametrize("code", ["RAS", "LPS", "LAS", "PIR", "ASL", "SPL"])
def test_reorient_keeps_world_positions(code):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 1000, size=(4, 5, 6)).astype(np.int16)
    affine = np.diag([2.0, 3.0, 1.5, 1.0])
    affine[:3, 3] = [-10.0, 20.0, 5.0]
    new, new_aff = _reorient([arr], affine, code)
    assert "".join(nib.aff2axcodes(new_aff)) == code
    inv = np.linalg.inv(new_aff)
    for ijk in np.ndindex(arr.shape):
        world = affine @ np.array([*ijk, 1.0])
        n = np.rint(inv @ world)[:3].astype(int)
        assert new[tuple(n)] == arr[ijk]


def test_no_identifying_header_fields(demo):
    for e in _entries(demo):
        for key in ("image", "label", "lesion"):
            hdr = _load(demo, e[key]).header
            for field in ("descrip", "db_name", "aux_file", "intent_name"):
                assert hdr[field].item() == b"", (key, field)
            assert len(hdr.extensions) == 0


def test_deterministic_and_independent_of_subject_count(demo, tmp_path):
    build_demo(tmp_path, subjects=2, seed=0, resolution_mm=2.0)
    for e in _entries(tmp_path):
        for key in ("image", "label", "lesion"):
            a, b = _arr(demo, e[key]), _arr(tmp_path, e[key])
            assert _digest(a) == _digest(b), (e["id"], key)
            # gzip is written without timestamps: the files themselves are identical
            assert (demo / e[key]).read_bytes() == (tmp_path / e[key]).read_bytes()
    assert _entries(tmp_path) == _entries(demo)[:2]


def test_seed_changes_data(demo, tmp_path):
    build_demo(tmp_path, subjects=1, seed=1, resolution_mm=2.0)
    a = _arr(demo, "imagesTr/sub-000.nii.gz")
    b = _arr(tmp_path, "imagesTr/sub-000.nii.gz")
    assert a.shape != b.shape or _digest(a) != _digest(b)


def test_cli_no_reorient_matches_world_boxes(demo, tmp_path, capsys):
    """Storing RAS instead of the subject's orientation changes the arrays, not the anatomy or world boxes."""
    from medjax.cli import main

    assert main(["data", "demo", str(tmp_path), "--subjects", "2", "--no-reorient"]) == 0
    printed = capsys.readouterr().out
    assert "built 2 subjects" in printed and str(tmp_path / "dataset.json") in printed
    ras, orig = _entries(tmp_path), _entries(demo)[:2]
    assert [e["orientation"] for e in ras] == ["RAS", "RAS"]
    assert any(e["orientation"] != "RAS" for e in orig)
    for r, o in zip(ras, orig):
        np.testing.assert_allclose(np.array(r["boxes"]).reshape(-1, 6), np.array(o["boxes"]).reshape(-1, 6), atol=1e-3)
        a = nib.as_closest_canonical(_load(tmp_path, r["image"]))
        b = nib.as_closest_canonical(_load(demo, o["image"]))
        np.testing.assert_allclose(a.affine, b.affine, atol=1e-6)
        np.testing.assert_array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))


def test_summarize_demo(demo):
    s = summarize_demo(demo)
    entries = _entries(demo)
    assert s["dataset_json"] == str(demo / "dataset.json")
    assert s["subjects"] == 3
    assert sum(s["orientations"].values()) == 3
    assert s["lesion_subjects"] == sum(e["class"] for e in entries)
    assert s["lesions"] == sum(len(e["boxes"]) for e in entries)
    shapes = []
    for e in entries:  # reorder stored shapes to R, A, S axis order
        img = _load(demo, e["image"])
        order = nib.orientations.io_orientation(img.affine)[:, 0].astype(int)
        shapes.append([img.shape[int(np.nonzero(order == w)[0][0])] for w in range(3)])
    shapes = np.array(shapes)
    assert s["shape_min"] == shapes.min(0).tolist() and s["shape_max"] == shapes.max(0).tolist()
    assert 2.0 - 1e-6 <= s["spacing_min"] <= s["spacing_max"] <= 4.0 + 1e-6


def test_bad_arguments(tmp_path):
    from medjax.errors import ConfigError, DataError

    with pytest.raises(ConfigError, match="subjects"):
        build_demo(tmp_path, subjects=0)
    with pytest.raises(ConfigError, match="resolution_mm"):
        build_demo(tmp_path, resolution_mm=0.1)
    with pytest.raises(DataError, match="dataset.json"):
        summarize_demo(tmp_path / "missing")


@pytest.mark.slow
def test_parallel_workers_match_serial(demo, tmp_path):
    build_demo(tmp_path, subjects=2, seed=0, resolution_mm=2.0, workers=2)
    for e in _entries(tmp_path):
        for key in ("image", "label", "lesion"):
            assert (demo / e[key]).read_bytes() == (tmp_path / e[key]).read_bytes()
