"""Validation: in-memory checks, the bad corpus through check_dataset, and `medjax data check`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from medjax.cli import main
from medjax.data.image import Image
from medjax.data.testing import make_bad_corpus, make_label, make_volume, write_tiny_dataset
from medjax.data.validate import CheckResult, check_dataset, check_file, check_image, check_pair
from medjax.errors import DataError


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    return str(root), make_bad_corpus(root)


def _img(array, affine=None, **kw) -> Image:
    return Image(array=np.asarray(array), affine=np.eye(4) if affine is None else np.asarray(affine, float),
                 path="mem.nii", **kw)


def test_check_image_accepts_valid_volumes():
    vol = make_volume((8, 7, 6), seed=0)
    check_image(vol)
    check_image(_img(np.random.default_rng(0).random((5, 4, 3, 2)), has_channels=True))
    check_image(_img(np.random.default_rng(0).random((5, 4))))
    check_image(make_label((8, 7, 6)), is_label=True)
    check_image(_img(np.zeros((4, 4, 4), np.uint8)), is_label=True)  # a label without foreground is fine


@pytest.mark.parametrize(
    "image, reason",
    [
        (_img(np.ones((2, 2, 2, 2, 2)), has_channels=True), "5D"),
        (_img(np.arange(5.0)), "1D"),
        (_img(np.arange(24.0).reshape(2, 3, 4) * np.array([1, 1, np.nan, 1])[None, None]), "non-finite"),
        (_img(np.arange(8.0).reshape(2, 2, 2), np.diag([1.0, 0.0, 1.0, 1.0])), "zero spacing"),
        (_img(np.arange(8.0).reshape(2, 2, 2), [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]), "singular"),
        (_img(np.arange(8.0).reshape(2, 2, 2), np.diag([1.0, np.inf, 1.0, 1.0])), "non-finite values"),
        (_img(np.zeros((3, 3, 3), np.int16)), "constant volume"),
    ],
)
def test_check_image_rejects(image, reason):
    with pytest.raises(DataError, match=reason) as exc:
        check_image(image)
    assert exc.value.path == "mem.nii"


def test_check_image_label_rules():
    with pytest.raises(DataError, match="non-integer"):
        check_image(_img(np.full((3, 3, 3), 0.5, np.float32)), is_label=True)
    with pytest.raises(DataError, match="channel axis"):
        check_image(_img(np.zeros((3, 3, 3, 2), np.uint8), has_channels=True), is_label=True)


def test_check_pair():
    vol = make_volume((8, 7, 6), seed=0)
    lab = make_label((8, 7, 6))
    lab.path = "lab.nii.gz"
    check_pair(vol, lab)
    near = Image(lab.array, lab.affine + 5e-4 * np.eye(4) * [1, 1, 1, 0], path="lab.nii.gz")
    check_pair(vol, near)
    with pytest.raises(DataError, match="label shape") as exc:
        check_pair(vol, Image(lab.array[:, :, :5], lab.affine, path="lab.nii.gz"))
    assert exc.value.path == "lab.nii.gz"
    moved = lab.affine.copy()
    moved[2, 3] += 0.01
    with pytest.raises(DataError, match="label affine differs"):
        check_pair(vol, Image(lab.array, moved, path="lab.nii.gz"))


@pytest.mark.timeout(120)
def test_bad_corpus_every_file_reported_with_its_reason(corpus):
    root, expected = corpus
    results = check_dataset(root)
    by_rel = {os.path.relpath(r.path, root): r for r in results}
    assert set(expected) <= set(by_rel), set(expected) - set(by_rel)
    for rel, substring in expected.items():
        r = by_rel[rel]
        assert not r.ok and substring in r.reason, (rel, r.reason)
        assert root not in r.reason or rel.startswith("labels/")  # the path is in r.path, not repeated
    good = {rel for rel, r in by_rel.items() if r.ok}
    assert good == {"pair_shape.nii.gz", "pair_affine.nii.gz"}


def test_check_file(corpus, tmp_path):
    root, _ = corpus
    bad = check_file(os.path.join(root, "nan.nii.gz"))
    assert isinstance(bad, CheckResult) and not bad.ok and "non-finite" in bad.reason
    path = write_tiny_dataset(tmp_path, n=1, layout="folder")
    ok = check_file(os.path.join(path, "case_000.nii.gz"))
    assert ok.ok and ok.reason == ""
    assert check_file(os.path.join(path, "labels", "case_000.nii.gz"), is_label=True).ok


def test_cli_json_on_bad_corpus(corpus, capsys):
    root, expected = corpus
    rc = main(["data", "check", root, "--json"])
    out = capsys.readouterr().out
    rows = json.loads(out)
    assert rc == 1
    assert {tuple(sorted(r)) for r in rows} == {("ok", "path", "reason")}
    rel = {os.path.relpath(r["path"], root): r for r in rows}
    for name, substring in expected.items():
        assert rel[name]["ok"] is False and substring in rel[name]["reason"]
    assert rel["pair_shape.nii.gz"]["ok"] is True


def test_cli_text_output_and_exit_codes(corpus, tmp_path, capsys):
    root, expected = corpus
    assert main(["data", "check", root]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == f"checked {len(expected) + 2} files: 2 good, {len(expected)} bad"
    assert len(out) == len(expected) + 1
    assert any(line.startswith(os.path.join(root, "two_series") + ": ") for line in out)
    good = write_tiny_dataset(tmp_path, n=2, layout="csv")
    assert main(["data", "check", good]) == 0
    assert capsys.readouterr().out.strip() == "checked 4 files: 4 good, 0 bad"
    assert main(["data", "check", str(tmp_path / "missing")]) == 2
    assert "dataset path not found" in capsys.readouterr().err


def test_cli_entry_point_subprocess(tmp_path):
    path = write_tiny_dataset(tmp_path, n=1, layout="json")
    proc = subprocess.run([sys.executable, "-m", "medjax", "data", "check", path, "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [r["ok"] for r in rows] == [True, True] and proc.stderr == ""


# ---------------------------------------------------------------------------------------------------------------
# Unknown geometry and the 5-D vector layout


def _no_geometry(path, zooms, dims=3):
    import nibabel as nib

    arr = np.arange(6 * 5 * 4, dtype=np.float32).reshape(6, 5, 4)
    img = nib.Nifti1Image(arr, None)
    img.header["qform_code"] = img.header["sform_code"] = 0
    img.header["pixdim"][1:4] = zooms
    nib.save(img, path)
    return str(path)


def test_zero_voxel_size_without_qform_sform_is_unknown_geometry(tmp_path, capsys):
    from medjax.data.io import read_geometry, read_image

    path = _no_geometry(tmp_path / "nogeom.nii.gz", (0.0, 0.0, 0.0))
    res = check_file(path)
    assert not res.ok and res.path == path
    assert "geometry unknown" in res.reason and "qform_code = sform_code = 0" in res.reason and "[0.0, 0.0, 0.0]" in res.reason
    for read in (read_image, read_geometry):  # training and prediction refuse it too, not only the checker
        with pytest.raises(DataError, match="geometry unknown") as err:
            read(path)
        assert err.value.path == path
    # one zero axis is enough; positive voxel sizes without qform/sform are accepted (spacing known)
    assert "axis [1]" in check_file(_no_geometry(tmp_path / "one.nii", (1.0, 0.0, 2.0))).reason
    assert check_file(_no_geometry(tmp_path / "analyze.nii.gz", (1.0, 1.5, 2.0))).ok
    assert main(["data", "check", path]) == 1
    assert "geometry unknown" in capsys.readouterr().out


def test_five_d_vector_layout_reads_as_channels(tmp_path):
    """(X, Y, Z, 1, C) is the NIfTI vector layout: read as channels-last (X, Y, Z, C), component c = channel c."""
    import nibabel as nib

    from medjax.data.io import read_image
    from medjax.data.pipeline import read_sample

    rng = np.random.default_rng(0)
    data = rng.normal(size=(6, 5, 4, 1, 3)).astype(np.float32)
    affine = np.diag([1.5, 2.0, 2.5, 1.0])
    path = str(tmp_path / "vector.nii.gz")
    nib.save(nib.Nifti1Image(data, affine), path)
    img = read_image(path)
    assert img.has_channels and img.array.shape == (6, 5, 4, 3) and img.spatial_shape == (6, 5, 4)
    np.testing.assert_array_equal(img.array, data[:, :, :, 0, :])
    np.testing.assert_array_equal(img.affine, affine)
    assert check_file(path).ok
    assert read_sample({"id": "v", "image": path})["image"].shape == (6, 5, 4, 3)
    # a time axis longer than one is not a vector image: refused with the shape named
    nib.save(nib.Nifti1Image(np.ones((6, 5, 4, 2, 3), np.float32), affine), tmp_path / "series.nii.gz")
    res = check_file(str(tmp_path / "series.nii.gz"))
    assert not res.ok and "unsupported 5D data of shape (6, 5, 4, 2, 3)" in res.reason
