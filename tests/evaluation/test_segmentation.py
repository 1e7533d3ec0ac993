"""Segmentation metrics on hand-built masks whose values are derived by hand in the comments."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medjax.evaluation import segmentation as seg


def _cube(shape, lo, size=3):
    m = np.zeros(shape, dtype=bool)
    m[tuple(slice(a, a + size) for a in lo)] = True
    return m


# Two 3x3x3 cubes, the reference shifted by +2 voxels along x: pred x in {2,3,4}, ref x in {4,5,6}.
# Surfaces (face-connectivity erosion): each cube has 26 surface voxels (all but its centre).
# pred -> ref: the ref face x=4 covers every (y, z) of the cube, so a pred surface voxel at x is 4-x voxels
# away along x: face x=2 (9 voxels) at 2*sx, layer x=3 (8 surface voxels) at sx, face x=4 (9) at 0.
# ref -> pred is the mirror image. Sorted distances: 9 x 0, 8 x sx, 9 x 2sx; the 95th percentile sits at
# position 0.95 * 25 = 23.75, between entries 23 and 24, both 2*sx, so HD95 = 2*sx.
SHAPE = (8, 8, 8)
PRED_X = _cube(SHAPE, (2, 2, 2))
REF_X = _cube(SHAPE, (4, 2, 2))


def test_surface_voxels_of_cubes_and_border():
    assert seg.surface_voxels(_cube(SHAPE, (2, 2, 2))).sum() == 26  # 27 minus the centre
    assert seg.surface_voxels(_cube(SHAPE, (1, 1, 1), size=5)).sum() == 125 - 27
    # voxels outside the array are background, so a full array is all surface except its 2x2x2 interior
    assert seg.surface_voxels(np.ones((4, 4, 4), bool)).sum() == 64 - 8
    assert seg.surface_voxels(np.zeros((4, 4), bool)).sum() == 0


@pytest.mark.parametrize("spacing, expected", [((1.0, 1.0, 1.0), 2.0), ((1.5, 1.0, 3.0), 3.0), (2.5, 5.0)])
def test_hd95_cube_shift_x(spacing, expected):
    # HD95 = 2 * sx (see module comment): 2.0 isotropic, 3.0 for sx = 1.5, 5.0 for a scalar 2.5 mm spacing
    assert seg.hd95(PRED_X, REF_X, spacing) == pytest.approx(expected, abs=1e-12)
    assert seg.hd95(REF_X, PRED_X, spacing) == pytest.approx(expected, abs=1e-12)
    assert seg.hausdorff(PRED_X, REF_X, spacing) == pytest.approx(expected, abs=1e-12)  # max is also 2*sx


def test_surface_distance_distribution_cube_shift_x():
    d_pr, d_rp = seg.surface_distances(PRED_X, REF_X, (1.5, 1.0, 3.0))
    expected = np.array([0.0] * 9 + [1.5] * 8 + [3.0] * 9)
    np.testing.assert_allclose(np.sort(d_pr), expected, atol=1e-12)
    np.testing.assert_allclose(np.sort(d_rp), expected, atol=1e-12)


def test_hd95_cube_shift_z_anisotropic():
    # Shift by +1 voxel along z with spacing (1.5, 1, 3): pred z in {2,3,4}, ref z in {3,4,5}.
    # pred face z=2 (9 voxels): nearest ref surface is its face z=3, 1 voxel along z -> 3.0 mm.
    # pred layer z=3 (8 surface voxels): lie on the ref face z=3 -> 0.
    # pred face z=4 (9): 8 lie on ref surface voxels -> 0; (3,3,4) is the ref's centre (interior); its nearest
    # ref surface voxel is one voxel along y -> 1.0 mm (x: 1.5, z: 3.0).
    # Sorted: 16 x 0, 1 x 1.0, 9 x 3.0 (same for ref->pred by symmetry). p95 at 23.75 -> 3.0 mm.
    # With 1 mm spacing it would be 1.0: the anisotropic spacing is what makes it 3.0.
    pred, ref = _cube(SHAPE, (2, 2, 2)), _cube(SHAPE, (2, 2, 3))
    assert seg.hd95(pred, ref, (1.5, 1.0, 3.0)) == pytest.approx(3.0)
    assert seg.hd95(pred, ref) == pytest.approx(1.0)
    # the 62nd percentile sits at 0.62 * 25 = 15.5, halfway between entry 15 (0.0) and 16 (1.0): 0.5
    assert seg.hausdorff(pred, ref, (1.5, 1.0, 3.0), percentile=62) == pytest.approx(0.5)


@pytest.mark.parametrize("tol, expected", [(1.49, 18 / 52), (1.5, 34 / 52), (2.9, 34 / 52), (3.0, 1.0)])
def test_nsd_cube_shift_x(tol, expected):
    # 26 + 26 = 52 surface voxels; per side 9 at 0, 8 at 1.5 mm, 9 at 3.0 mm (spacing (1.5, 1, 3)).
    assert seg.nsd(PRED_X, REF_X, (1.5, 1.0, 3.0), tol) == pytest.approx(expected)


def test_dice_cube_shift_and_identity():
    # overlap is the x=4 layer: 9 voxels; |P| = |R| = 27 -> 2*9/54 = 1/3
    assert seg.dice(PRED_X, REF_X) == pytest.approx(1 / 3)
    assert seg.dice(PRED_X, PRED_X) == 1.0
    assert seg.hd95(PRED_X, PRED_X, (1.5, 1.0, 3.0)) == 0.0
    assert seg.nsd(PRED_X, PRED_X, (1.5, 1.0, 3.0), 0.0) == 1.0


def test_global_dice_pools_voxels_over_cases():
    empty = np.zeros_like(PRED_X)
    # case 1: 9 of 27 voxels overlap (Dice 1/3); case 2: nothing to find, 27 false positives (Dice 0);
    # case 3: both empty (Dice 1). Pooled: 2*9 / (27 + 27 + 27 + 0) = 2/9, unlike the per-case mean 4/9.
    pairs = [(PRED_X, REF_X), (PRED_X, empty), (empty, empty)]
    assert seg.overlap_counts(PRED_X, REF_X) == (9, 27, 27)
    assert seg.global_dice(pairs) == pytest.approx(2 / 9)
    assert np.mean([seg.dice(p, r) for p, r in pairs]) == pytest.approx(4 / 9)
    assert seg.global_dice([(empty, empty)]) == 1.0 and np.isnan(seg.global_dice([(empty, empty)], empty="nan"))


def test_2d_squares_shift_y():
    # 3x3 squares, ref shifted +2 along y, spacing (0.5, 2.0) mm. 8 surface pixels each (centre interior).
    # pred -> ref: row y=2 (3 px) at 2*sy = 4.0, y=3 (2 px) at 2.0, y=4 (3 px) at 0. p95 at 0.95*7 = 6.65,
    # entries 6 and 7 are both 4.0 -> HD95 4.0. Dice: 3 shared pixels -> 6/18. NSD(2.0) = (5+5)/16.
    pred, ref = _cube((8, 8), (2, 2)), _cube((8, 8), (2, 4))
    assert seg.hd95(pred, ref, (0.5, 2.0)) == pytest.approx(4.0)
    assert seg.dice(pred, ref) == pytest.approx(1 / 3)
    assert seg.nsd(pred, ref, (0.5, 2.0), 2.0) == pytest.approx(10 / 16)
    d_pr, _ = seg.surface_distances(pred, ref, (0.5, 2.0))
    np.testing.assert_allclose(np.sort(d_pr), [0, 0, 0, 2, 2, 4, 4, 4])


@pytest.mark.parametrize("ndim", [2, 3])
def test_empty_masks(ndim):
    shape = (6,) * ndim
    empty = np.zeros(shape, bool)
    full = _cube(shape, (1,) * ndim)
    # both empty: perfect agreement
    assert seg.dice(empty, empty) == 1.0
    assert seg.hd95(empty, empty, 1.0) == 0.0
    assert seg.nsd(empty, empty, 1.0, 1.0) == 1.0
    # exactly one empty: no overlap, infinite distance, no matched surface
    for a, b in ((empty, full), (full, empty)):
        assert seg.dice(a, b) == 0.0
        assert math.isinf(seg.hd95(a, b, 1.0))
        assert seg.nsd(a, b, 1.0, 5.0) == 0.0
    with pytest.raises(ValueError, match="empty"):
        seg.surface_distances(empty, full)


def test_surface_distances_match_brute_force_on_random_masks():
    # the EDT on the cropped union box must give the exact nearest-surface distances
    rng = np.random.default_rng(0)
    spacing = (0.7, 1.3, 2.1)
    pred = rng.random((9, 11, 7)) > 0.6
    ref = rng.random((9, 11, 7)) > 0.7
    pred[0] = False
    ref[:, -1] = False
    d_pr, d_rp = seg.surface_distances(pred, ref, spacing)
    sp = np.argwhere(seg.surface_voxels(pred)) * spacing
    sr = np.argwhere(seg.surface_voxels(ref)) * spacing
    pair = np.sqrt(((sp[:, None, :] - sr[None, :, :]) ** 2).sum(-1))
    np.testing.assert_allclose(d_pr, pair.min(axis=1), rtol=1e-12)
    np.testing.assert_allclose(d_rp, pair.min(axis=0), rtol=1e-12)
    assert seg.hd95(pred, ref, spacing) == pytest.approx(
        max(np.percentile(pair.min(axis=1), 95), np.percentile(pair.min(axis=0), 95)))


def test_per_label_and_foreground_labels():
    pred = np.zeros((8, 8, 8), np.int16)
    ref = np.zeros((8, 8, 8), np.int16)
    pred[PRED_X] = 1
    ref[REF_X] = 1
    ref[6:8, 6:8, 6:8] = 3  # label 3 missing from pred
    assert seg.foreground_labels(ref) == [1, 3]
    assert seg.foreground_labels(pred, ref) == [1, 3]
    d = seg.per_label(seg.dice, pred, ref, [1, 3])
    assert d == {1: pytest.approx(1 / 3), 3: 0.0}
    h = seg.per_label(seg.hd95, pred, ref, [1, 3], spacing=(1.5, 1.0, 3.0))
    assert h[1] == pytest.approx(3.0) and math.isinf(h[3])


def test_input_errors():
    with pytest.raises(ValueError, match="differs"):
        seg.dice(np.zeros((3, 3)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="spacing"):
        seg.hd95(PRED_X, REF_X, (1.0, 1.0))
    with pytest.raises(ValueError, match="positive"):
        seg.hd95(PRED_X, REF_X, (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="2D"):
        seg.dice(np.zeros(5), np.zeros(5))


def test_dice_accepts_label_values_as_foreground():
    a = np.zeros((4, 4), np.uint8)
    b = np.zeros((4, 4), np.uint8)
    a[:2] = 7
    b[:1] = 1
    # |A| = 8, |B| = 4, overlap 4 -> 8/12
    assert seg.dice(a, b) == pytest.approx(8 / 12)
    assert seg.foreground_labels(a, b) == [1, 7]


def test_real_brain_mask_shifted_by_one_voxel():
    # MNI152 brain mask (2 mm isotropic) against itself shifted one voxel along x. Every surface voxel's
    # shifted copy is a surface voxel of the other mask, sx = 2 mm away, so no surface distance exceeds 2 mm:
    # Hausdorff <= 2 mm and NSD at 2 mm tolerance is exactly 1.
    from nilearn.datasets import load_mni152_brain_mask

    from medjax.data.image import spacing_from_affine

    img = load_mni152_brain_mask(resolution=2)
    mask = np.asarray(img.dataobj) > 0
    spacing = spacing_from_affine(img.affine)
    assert spacing == (2.0, 2.0, 2.0)
    assert not mask[0].any() and not mask[-1].any()  # the roll below does not wrap brain voxels around
    shifted = np.roll(mask, 1, axis=0)
    assert 0.0 < seg.hausdorff(mask, shifted, spacing) <= 2.0
    assert 0.0 < seg.hd95(mask, shifted, spacing) <= 2.0
    assert seg.nsd(mask, shifted, spacing, 2.0) == 1.0
    assert seg.nsd(mask, shifted, spacing, 1.9) < 1.0
    overlap = np.logical_and(mask, shifted).sum()
    assert seg.dice(mask, shifted) == pytest.approx(overlap / mask.sum())


@pytest.mark.parametrize("bad", [float("nan"), -0.5, float("inf"), "1", None, True, [1.0]])
def test_nsd_rejects_invalid_tolerance(bad):
    with pytest.raises(ValueError, match="tolerance_mm"):
        seg.nsd(PRED_X, REF_X, 1.0, bad)
    with pytest.raises(ValueError, match="tolerance_mm"):
        seg.nsd(PRED_X, REF_X, 1.0, bad, surface="area")
    assert seg.nsd(PRED_X, REF_X, 1.0, np.float32(0.0)) == pytest.approx(18 / 52)  # numpy numbers are fine


@pytest.mark.parametrize("ndim", [2, 3])
def test_empty_convention_nan(ndim):
    shape = (6,) * ndim
    empty = np.zeros(shape, bool)
    full = _cube(shape, (1,) * ndim)
    # both empty: undefined under "nan"
    assert math.isnan(seg.dice(empty, empty, empty="nan"))
    assert math.isnan(seg.hd95(empty, empty, 1.0, empty="nan"))
    assert math.isnan(seg.hausdorff(empty, empty, 1.0, empty="nan"))
    for surface in seg.SURFACES:
        assert math.isnan(seg.nsd(empty, empty, 1.0, 1.0, surface=surface, empty="nan"))
        assert seg.nsd(empty, empty, 1.0, 1.0, surface=surface) == 1.0
    # exactly one empty is the same under both conventions
    for a, b in ((empty, full), (full, empty)):
        assert seg.dice(a, b, empty="nan") == 0.0
        assert math.isinf(seg.hd95(a, b, 1.0, empty="nan"))
        assert seg.nsd(a, b, 1.0, 5.0, surface="area", empty="nan") == 0.0
    # non-empty masks do not depend on the convention
    assert seg.dice(full, full, empty="nan") == 1.0
    with pytest.raises(ValueError, match="empty='zero'"):
        seg.dice(empty, empty, empty="zero")
    with pytest.raises(ValueError, match="empty="):
        seg.hd95(full, full, empty="NaN")
    with pytest.raises(ValueError, match="surface='mesh'"):
        seg.nsd(full, full, surface="mesh")


def _box(shape, lo, size):
    m = np.zeros(shape, dtype=bool)
    m[tuple(slice(a, a + n) for a, n in zip(lo, size))] = True
    return m


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.7, 1.9, 3.1)])
def test_nsd_area_identical_masks_is_one(spacing):
    rng = np.random.default_rng(3)
    m = rng.random((9, 8, 7)) < 0.4
    assert seg.nsd(m, m, spacing, 0.0, surface="area") == 1.0
    assert seg.nsd(m[..., 3], m[..., 3], spacing[:2], 0.0, surface="area") == 1.0


def test_nsd_area_shifted_rectangle_2d_analytic():
    # An n x m rectangle of pixels; its contour runs through the 2x2 neighbourhoods between pixel centres:
    # n-1 segments of length s0 along each side parallel to axis 0, m-1 of length s1 along the others, and four
    # corner diagonals d = |s| / 2; total L = 4d + 2(n-1)s0 + 2(m-1)s1. Shifting by k pixels along axis 0, with a
    # tolerance below the grid step, matches exactly the coinciding elements: on each of the two axis-0 sides
    # n-k segments plus one corner, so NSD = 2((n-k)s0 + d) / L.
    n, m, k, s = 6, 4, 2, (0.5, 2.0)
    ref = _box((14, 10), (2, 3), (n, m))
    pred = _box((14, 10), (2 + k, 3), (n, m))
    d = 0.5 * math.hypot(*s)
    total = 4 * d + 2 * (n - 1) * s[0] + 2 * (m - 1) * s[1]
    expected = 2 * ((n - k) * s[0] + d) / total
    assert seg.nsd(pred, ref, s, 0.1, surface="area") == pytest.approx(expected, rel=1e-12)
    # boundary voxels weigh alike: 2n + 2(m-2) = 16 per rectangle, of which the 2(n-k) = 8 pixels of the two
    # axis-0 sides inside the overlap are boundary pixels of both -> 8/16
    assert seg.nsd(pred, ref, s, 0.1, surface="voxels") == pytest.approx(8 / 16)
    assert abs(expected - 8 / 16) > 0.2


def test_nsd_area_shifted_box_3d_analytic():
    # An n x m x l box shifted by k voxels along axis 0; tolerance below the grid step. In the surface model the
    # box has flat faces (one element per neighbourhood, area s_i s_j), edge strips (two inside corners: a strip
    # of length s_a and width |(s_b, s_c)| / 2) and corner triangles (|(s1 s2, s0 s2, s0 s1)| / 8).
    # A "ring" slice at an interior x position holds 2(l-1) faces s0 s2, 2(m-1) faces s0 s1 and 4 axis-0 edges;
    # the two end slices hold their faces (m-1)(l-1) s1 s2, edges along axes 1 and 2, and 4 corners.
    # Coinciding with the shifted box: the n-k interior rings from x = k - 1/2 on and the ring of the far end
    # slice (edges and corners), on both boxes alike.
    n, m, l, k = 5, 4, 3, 2
    s0, s1, s2 = 0.8, 1.3, 2.6
    ring_a = 2 * (l - 1) * s0 * s2 + 2 * (m - 1) * s0 * s1 + 4 * s0 * 0.5 * math.hypot(s1, s2)
    corner = math.sqrt((s1 * s2) ** 2 + (s0 * s2) ** 2 + (s0 * s1) ** 2) / 8
    ring_b = 2 * (m - 1) * s1 * 0.5 * math.hypot(s0, s2) + 2 * (l - 1) * s2 * 0.5 * math.hypot(s0, s1) + 4 * corner
    end_faces = (m - 1) * (l - 1) * s1 * s2
    total = (n - 1) * ring_a + 2 * (ring_b + end_faces)
    expected = ((n - k) * ring_a + ring_b) / total
    ref = _box((12, 8, 7), (2, 2, 2), (n, m, l))
    pred = _box((12, 8, 7), (2 + k, 2, 2), (n, m, l))
    got = seg.nsd(pred, ref, (s0, s1, s2), 0.2, surface="area")
    assert got == pytest.approx(expected, rel=1e-12)
    assert abs(got - seg.nsd(pred, ref, (s0, s1, s2), 0.2, surface="voxels")) > 0.05


def test_nsd_area_differs_from_voxels_only_through_anisotropy():
    # a sphere against a copy shifted one voxel: at isotropic spacing both definitions are close; stretching
    # axis 2 changes the element areas (faces normal to axis 2 grow less than those along it), so area
    # weighting moves the score while the voxel count barely moves.
    g = np.indices((21, 21, 21)) - 10
    ball = (g ** 2).sum(0) <= 36
    moved = np.roll(ball, 1, axis=0)
    iso_a = seg.nsd(ball, moved, (1.0, 1.0, 1.0), 0.5, surface="area")
    iso_v = seg.nsd(ball, moved, (1.0, 1.0, 1.0), 0.5, surface="voxels")
    an_a = seg.nsd(ball, moved, (1.0, 1.0, 4.0), 0.5, surface="area")
    an_v = seg.nsd(ball, moved, (1.0, 1.0, 4.0), 0.5, surface="voxels")
    assert an_v == pytest.approx(iso_v)  # the matched voxel set is the same: distances along axis 0 only
    assert abs(an_a - iso_a) > 0.02 and abs(an_a - an_v) > 0.02


def test_nsd_reproduces_monai_surface_dice_hand_cases():
    """MONAI tests/metrics/test_surface_dice.py (boundary-voxel definition), values derived there."""
    pred = np.zeros((10, 10), bool)
    ref = np.zeros((10, 10), bool)
    pred[1:4, 1] = True
    ref[5:8, 6] = True
    # foreground: distances sqrt(29), sqrt(34), sqrt(41) both ways
    assert seg.nsd(pred, ref, 1.0, 0.0) == 0.0
    assert seg.nsd(pred, ref, 1.0, 5.5) == pytest.approx(1 - 4 / 6)
    assert seg.nsd(pred, ref, 1.0, 6.0) == pytest.approx(1 - 2 / 6)
    # background: 36 border pixels at distance 0 on both sides, 8 + 4 more at distances 1..sqrt(13)
    assert seg.nsd(~pred, ~ref, 1.0, 0.0) == pytest.approx(1 - 12 / 84)
    assert seg.nsd(~pred, ~ref, 1.0, 2.8) == pytest.approx(1 - 3 / 84)
    assert seg.nsd(~pred, ~ref, 1.0, 3.0) == pytest.approx(1 - 1 / 84)
    # half planes 10 pixels apart at spacing (0.85, 1.2), tolerance 0
    p = np.zeros((480, 640), bool)
    r = np.zeros((480, 640), bool)
    p[:, 50:] = True
    r[:, 60:] = True
    expected_fg = 1 - (478 + 480 + 9 * 2) / (480 * 4 + 588 * 2 + 578 * 2)
    expected_bg = 1 - (478 + 480 + 9 * 2) / (480 * 4 + 48 * 2 + 58 * 2)
    assert seg.nsd(p, r, (0.85, 1.2), 0.0) == pytest.approx(expected_fg)
    assert seg.nsd(~p, ~r, (0.85, 1.2), 0.0) == pytest.approx(expected_bg)
