"""The demo set split into simulated hospital sites: geometry kept in world space, disjoint complete split,
sites that differ by scanner, spacing, orientation and case mix, determinism, and the CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medjax.data.demo import build_demo
from medjax.data.demo_sites import assign_sites, scanner_profiles, site_geometry, split_demo_sites
from medjax.data.io_nifti import read_nifti
from medjax.data.sources import load_records
from medjax.errors import ConfigError, DataError

SITES = 3


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    build_demo(out, subjects=6, seed=0, resolution_mm=4.0)
    return out


@pytest.fixture(scope="module")
def by_site(demo, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sites")
    paths = split_demo_sites(demo, out, SITES, "by-site", seed=5)
    assert paths == [out / f"site-{k}" for k in range(1, SITES + 1)]
    return out


def _site(out: Path, k: int) -> dict:
    return json.loads((out / f"site-{k}" / "site.json").read_text())


def _by_id(folder: Path) -> dict[str, dict]:
    return {r["id"]: r for r in load_records(folder)}


def _world_centroid(array: np.ndarray, affine: np.ndarray, weights: bool = False) -> np.ndarray:
    w = array.astype(np.float64) if weights else (array > 0).astype(np.float64)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in array.shape], indexing="ij"), -1).reshape(-1, 3)
    c = (idx * w.reshape(-1, 1)).sum(0) / w.sum()
    return (affine @ np.append(c, 1.0))[:3]


def _nearest_source(src: np.ndarray, src_affine: np.ndarray, shape, affine: np.ndarray) -> np.ndarray:
    """``src`` sampled by nearest neighbour at the world positions of every voxel of the grid ``(shape, affine)``."""
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    x = (np.linalg.inv(src_affine) @ affine @ np.c_[idx, np.ones(len(idx))].T)[:3]
    near = np.clip(np.floor(x + 0.5), 0, np.array(src.shape)[:, None] - 1).astype(int)
    return src[tuple(near)].reshape(shape)


def test_site_geometry_keeps_a_landmarks_world_position():
    """A blob at a known world point stays there through reorientation (exactly) and resampling (to interpolation)."""
    shape = (40, 36, 30)
    affine = np.array([[-2.0, 0, 0, 40.0], [0, 0, 2.5, -60.0], [0, -1.5, 0, 30.0], [0, 0, 0, 1]])  # "LSP" storage
    centre = np.array([19.0, 17.0, 14.0])
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    mm = (grid - centre) * np.sqrt((affine[:3, :3] ** 2).sum(0))
    blob = np.exp(-(mm ** 2).sum(-1) / (2 * 5.0 ** 2)).astype(np.float32)
    mark = np.zeros(shape, np.uint8)
    mark[tuple(centre.astype(int))] = 1
    landmark = (affine @ np.append(centre, 1.0))[:3]
    blob_centre = _world_centroid(blob, affine, weights=True)  # the landmark, up to truncation at the edges
    np.testing.assert_allclose(blob_centre, landmark, atol=0.05)

    # reorientation alone: the marked voxel sits at the same world point, exactly
    src_spacing = [2.0, 2.5, 1.5]  # per world axis R, A, S of this grid (array axes j, k hold S, A)
    for code in ("RAS", "LPS", "PIR", "ASL"):
        (b, m), a = site_geometry([blob, mark], affine, src_spacing, code, [1, 0])
        assert "".join(nib.aff2axcodes(a)) == code
        hit = np.argwhere(m == 1)
        assert len(hit) == 1
        np.testing.assert_allclose((a @ np.append(hit[0], 1.0))[:3], landmark, atol=1e-9)
        np.testing.assert_allclose(_world_centroid(b, a, weights=True), blob_centre, atol=1e-6)
    # resampling to other spacings: the blob's centroid stays put (well within a tenth of a voxel)
    for spacing in ([1.0, 1.0, 1.0], [2.6, 2.6, 4.0], [3.0, 1.2, 1.7]):
        (b, m), a = site_geometry([blob, mark], affine, spacing, "PIR", [1, 0])
        assert b.dtype == np.float32 and m.dtype == np.uint8 and b.shape == m.shape
        np.testing.assert_allclose(sorted(np.sqrt((a[:3, :3] ** 2).sum(0))), sorted(spacing), rtol=1e-12)
        np.testing.assert_allclose(_world_centroid(b, a, weights=True), blob_centre, atol=0.1 * max(spacing))


def test_every_subject_lands_in_exactly_one_site(demo, by_site, tmp_path):
    source = _by_id(demo)
    for out in (by_site, tmp_path / "iid"):
        if not out.exists():
            split_demo_sites(demo, out, SITES, "iid", seed=5)
        seen = []
        for k in range(1, SITES + 1):
            records = load_records(out / f"site-{k}")  # a preset reads a site with --set data.dir=OUT/site-k
            ids = [r["id"] for r in records]
            assert ids == _site(out, k)["subjects"]
            seen += ids
            for r in records:  # image and masks side by side, on one grid
                img, lab, les = (read_nifti(r[key]) for key in ("image", "label", "lesion"))
                assert img.array.shape == lab.array.shape == les.array.shape
                np.testing.assert_array_equal(img.affine, lab.affine)
                np.testing.assert_array_equal(img.affine, les.affine)
        assert sorted(seen) == sorted(source)
        assert [len(_site(out, k)["subjects"]) for k in range(1, SITES + 1)] == [2, 2, 2]


def test_iid_keeps_volumes_unchanged(demo, tmp_path):
    split_demo_sites(demo, tmp_path, SITES, "iid", seed=1)
    source = _by_id(demo)
    for k in range(1, SITES + 1):
        assert _site(tmp_path, k)["scanner"] is None
        for r in load_records(tmp_path / f"site-{k}"):
            s = source[r["id"]]
            for key in ("image", "label", "lesion"):
                a, b = read_nifti(r[key]), read_nifti(s[key])
                np.testing.assert_array_equal(a.array, b.array)
                np.testing.assert_array_equal(a.affine, b.affine)
            assert r["boxes"] == s["boxes"] and r["class"] == s["class"]


def test_by_site_sites_differ_like_hospitals(demo, by_site):
    source = _by_id(demo)
    sites = [_site(by_site, k) for k in range(1, SITES + 1)]
    gains = []
    for k, site in enumerate(sites, start=1):
        scanner = site["scanner"]
        records = load_records(by_site / f"site-{k}")
        ratios = []
        for r in records:
            img, lab, les = (read_nifti(r[key]) for key in ("image", "label", "lesion"))
            # protocol: the site's spacing (per world axis) and orientation
            assert "".join(nib.aff2axcodes(img.affine)) == scanner["orientation"]
            axis_of = nib.orientations.io_orientation(img.affine)[:, 0].astype(int)
            spacing = np.sqrt((img.affine[:3, :3] ** 2).sum(0))
            np.testing.assert_allclose([spacing[list(axis_of).index(w)] for w in range(3)], scanner["spacing_mm"],
                                       rtol=1e-6)
            assert img.array.dtype == np.int16 and set(np.unique(lab.array)) <= {0, 1, 2, 3}
            assert set(np.unique(les.array)) <= {0, 1}
            # the masks moved with their image: every stored mask voxel holds the source's value at its world point
            s = source[r["id"]]
            for key, mask in (("label", lab), ("lesion", les)):
                src = read_nifti(s[key])
                assert np.array_equal(_nearest_source(src.array, src.affine, mask.array.shape, mask.affine), mask.array)
            # brain-median intensity relative to the source: the scanner's gain (scale x bias, plus offset)
            src = read_nifti(s["image"])
            src_lab = read_nifti(s["label"])
            ratios.append(np.median(img.array[lab.array > 0]) / np.median(src.array[src_lab.array > 0]))
        gains.append(float(np.mean(ratios)))
        assert gains[-1] == pytest.approx(scanner["intensity_scale"], rel=0.3)
    scales = [s["scanner"]["intensity_scale"] for s in sites]
    assert np.argsort(gains).tolist() == np.argsort(scales).tolist()
    assert min(abs(a / b - 1) for i, a in enumerate(gains) for b in gains[i + 1:]) > 0.15
    assert len({s["scanner"]["orientation"] for s in sites}) == SITES
    assert len({tuple(s["scanner"]["spacing_mm"]) for s in sites}) == SITES
    # case mix: sites sorted by lesion burden in the source
    burden = [sum(len(source[i]["boxes"] or []) for i in s["subjects"]) for s in sites]
    assert burden == sorted(burden) and burden[0] < burden[-1]
    # no paths or header text in the manifests
    for k in range(1, SITES + 1):
        text = (by_site / f"site-{k}" / "site.json").read_text()
        assert str(demo) not in text and "/" not in text


def test_by_site_boxes_describe_the_written_masks(by_site):
    from medjax.data.demo_lesions import voxel_box_to_world

    for k in range(1, SITES + 1):
        for r in load_records(by_site / f"site-{k}"):
            les = read_nifti(r["lesion"])
            assert r["class"] == int(les.array.any())
            assert len(r["boxes"]) == len(r["boxes_voxel"])
            covered = np.zeros(les.array.shape, bool)
            for bw, bv in zip(r["boxes"], r["boxes_voxel"]):
                assert bw == voxel_box_to_world(bv, les.affine)
                covered[bv[0]:bv[3], bv[1]:bv[4], bv[2]:bv[5]] = True
            assert not (les.array.astype(bool) & ~covered).any()


def test_deterministic_for_a_seed(demo, by_site, tmp_path):
    split_demo_sites(demo, tmp_path / "again", SITES, "by-site", seed=5)
    split_demo_sites(demo, tmp_path / "other", SITES, "by-site", seed=6)

    def digests(out: Path) -> dict[str, str]:
        return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(out.rglob("*")) if p.is_file()}

    assert digests(tmp_path / "again") == digests(by_site)
    assert digests(tmp_path / "other") != digests(by_site)


def test_assignment_and_bad_input(demo, tmp_path):
    records = [{"id": f"s{i}", "boxes": [[0] * 6] * (i % 4)} for i in range(10)]
    parts = assign_sites(records, 4, "by-site", seed=0)
    assert [len(p) for p in parts] == [3, 3, 2, 2]
    counts = [[len(r["boxes"]) for r in p] for p in parts]
    assert all(max(a) <= min(b) for a, b in zip(counts, counts[1:]))
    iid = assign_sites(records, 4, "iid", seed=0)
    assert sorted(r["id"] for p in iid for r in p) == sorted(r["id"] for r in records)
    assert iid != assign_sites(records, 4, "iid", seed=1)
    assert len({p["intensity_scale"] for p in scanner_profiles(5, 0, 2.0)}) == 5
    with pytest.raises(ConfigError, match="sites must be"):
        split_demo_sites(demo, tmp_path / "x", 7)
    with pytest.raises(ConfigError, match="partition"):
        split_demo_sites(demo, tmp_path / "x", 2, "random")
    with pytest.raises(DataError, match="no dataset.json"):
        split_demo_sites(tmp_path, tmp_path / "x", 2)
    (tmp_path / "y" / "site-1").mkdir(parents=True)
    (tmp_path / "y" / "site-1" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not written by demo-sites"):
        split_demo_sites(demo, tmp_path / "y", 2)


def test_cli_demo_sites(demo, tmp_path, capsys):
    from medjax.cli import main

    assert main(["data", "demo-sites", str(demo), str(tmp_path), "--sites", "2", "--partition", "iid"]) == 0
    printed = capsys.readouterr().out
    assert "site-1" in printed and "site-2" in printed and "iid" in printed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site-1", "site-2"]
    assert main(["data", "demo-sites", str(demo), str(tmp_path), "--sites", "9"]) == 2
