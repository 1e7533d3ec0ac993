"""Periventricular demo lesions: placement beside the ventricles, orientation along the wall normal, T1 contrast."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from medjax.data.demo import _VENTRICLE_BOX_MM, build_demo
from medjax.data.demo_lesions import place_lesions, place_periventricular_lesions, render_lesions


def _phantom(spacing=(1.0, 1.0, 1.0), shape=(64, 64, 64)):
    """A white-matter ball of radius 28 mm with a spherical ventricle of radius 8 mm at its centre."""
    grid = np.stack(np.meshgrid(*[(np.arange(n) - n // 2) * s for n, s in zip(shape, spacing)], indexing="ij"))
    r = np.sqrt((grid**2).sum(0))
    label = np.where(r <= 28.0, 3, 0).astype(np.uint8)
    ventricles = r <= 8.0
    label[ventricles] = 1
    return label, label > 0, ventricles, np.array([n // 2 for n in shape])


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (1.0, 1.0, 2.0)])
def test_periventricular_lesions_point_away_from_the_ventricle(spacing):
    label, brain, ventricles, middle = _phantom(spacing)
    rng = np.random.default_rng(0)
    lesions = []
    for _ in range(6):
        lesions += place_periventricular_lesions(rng, label, brain, ventricles, spacing, count=3)
    assert len(lesions) >= 12
    for e in lesions:
        offset = (e.centre - middle) * np.asarray(spacing)
        wall_distance = np.linalg.norm(offset) - 8.0
        long, short = e.radii_mm[0], e.radii_mm[1:]
        assert 4.0 <= long <= 11.0 and ((3.0 <= short) & (short <= 5.0)).all()
        assert long >= 1.4 * short.max() - 1e-9
        # the centre is 0.6-1.1 long semi-axes from the wall (to within a voxel of the distance map)
        assert 0.6 * long - max(spacing) <= wall_distance <= 1.1 * long + max(spacing), (wall_distance, long)
        # the long axis is the radial direction (the wall's normal), up to the gradient's discretisation
        radial = offset / np.linalg.norm(offset)
        assert abs(float(e.rotation[:, 0] @ radial)) > 0.9
        np.testing.assert_allclose(e.rotation.T @ e.rotation, np.eye(3), atol=1e-9)
        assert np.linalg.det(e.rotation) == pytest.approx(1.0)
        assert 0.25 <= e.intensity <= 0.45
        assert label[tuple(e.centre)] == 3


def test_periventricular_lesions_do_not_overlap_and_stay_out_of_the_ventricle():
    label, brain, ventricles, _ = _phantom()
    lesions = place_periventricular_lesions(np.random.default_rng(3), label, brain, ventricles, (1, 1, 1), count=3)
    image = np.where(label == 3, 0.85, 0.2).astype(np.float32)
    index = render_lesions(image, brain, (1, 1, 1), lesions)
    assert sorted(np.unique(index).tolist()) == list(range(len(lesions) + 1))
    for k in range(1, len(lesions) + 1):
        assert ventricles[index == k].mean() <= 0.2
        assert image[index == k].mean() < 0.6  # T1-dark against white matter at 0.85


def test_without_ventricles_the_placement_falls_back_to_anywhere():
    label, brain, _, _ = _phantom()
    none = np.zeros_like(brain)
    a = place_periventricular_lesions(np.random.default_rng(1), label, brain, none, (1, 1, 1), count=2)
    b = place_lesions(np.random.default_rng(1), label, brain, (1, 1, 1), count=2)
    assert [e.centre.tolist() for e in a] == [e.centre.tolist() for e in b]


@pytest.fixture(scope="module")
def periventricular(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_pv")
    build_demo(out, subjects=4, seed=0, resolution_mm=2.0, lesion_prior="periventricular")
    return out


def test_demo_periventricular_lesions_sit_deep_beside_the_ventricles(periventricular):
    data = json.loads((periventricular / "dataset.json").read_text())
    assert data["medjax_demo"]["lesion_prior"] == "periventricular"
    entries = data["training"]
    assert [e["class"] for e in entries].count(1) == 2  # one subject of each pair
    box = np.array(_VENTRICLE_BOX_MM)
    lesions = 0
    for e in entries:
        img = nib.load(str(periventricular / e["image"]))
        image = np.asarray(img.dataobj).astype(np.float64)
        label = np.asarray(nib.load(str(periventricular / e["label"])).dataobj)
        lesion_index, count = ndimage.label(np.asarray(nib.load(str(periventricular / e["lesion"])).dataobj))
        assert set(np.unique(label).tolist()) == {0, 1, 2, 3}  # the atlas-only ventricle value is not written
        spacing = np.sqrt((img.affine[:3, :3] ** 2).sum(0))
        depth = ndimage.distance_transform_edt(label > 0, sampling=spacing)  # mm inside the brain
        csf_distance = ndimage.distance_transform_edt(label != 1, sampling=spacing)
        wm = image[label == 3].mean()
        for k in range(1, count + 1):
            voxels = lesion_index == k
            lesions += 1
            centroid = np.argwhere(voxels).mean(0)
            world = img.affine[:3, :3] @ centroid + img.affine[:3, 3]
            # within the ventricles' MNI box, widened by the subject warp and the lesion's own reach
            assert ((world >= box[:, 0] - 20) & (world <= box[:, 1] + 20)).all(), world
            assert depth[tuple(np.round(centroid).astype(int))] >= 10.0  # deep white matter, not cortex
            assert csf_distance[voxels].min() <= 4.0  # it reaches to within a few mm of the ventricle
            assert image[voxels].mean() < 0.8 * wm  # T1-dark
    assert lesions == sum(len(e["boxes"]) for e in entries) > 0


def test_cli_lesions_option(tmp_path, capsys):
    from medjax.cli import main
    from medjax.errors import ConfigError

    assert main(["data", "demo", str(tmp_path / "pv"), "--subjects", "2", "--lesions", "periventricular"]) == 0
    assert "(periventricular)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["data", "demo", str(tmp_path / "bad"), "--lesions", "everywhere"])
    with pytest.raises(ConfigError, match="lesion_prior"):
        build_demo(tmp_path / "bad", subjects=1, lesion_prior="everywhere")
