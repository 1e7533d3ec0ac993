"""Random and label-balanced crop windows."""

from __future__ import annotations

import numpy as np
import pytest

from medjax.data.transforms import balanced_crop_slices, centred_crop_slices, foreground_voxels, random_crop_slices


@pytest.mark.parametrize("shape,crop", [((20, 30), (8,)), ((20, 30, 12), (8, 16, 12))])
def test_random_crop_slices_fit_and_are_deterministic(shape, crop):
    n = len(shape)
    want = crop * n if len(crop) == 1 else crop
    boxes = [random_crop_slices(shape, crop, np.random.default_rng(7)) for _ in range(2)]
    assert boxes[0] == boxes[1]
    rng = np.random.default_rng(0)
    starts = []
    for _ in range(300):
        box = random_crop_slices(shape, crop, rng)
        assert len(box) == n
        for s, size, c in zip(box, shape, want):
            assert s.stop - s.start == c and 0 <= s.start and s.stop <= size
        starts.append([s.start for s in box])
    starts = np.array(starts)
    # uniform: every possible start is reached on the first axis
    assert set(starts[:, 0]) == set(range(shape[0] - want[0] + 1))


def test_random_crop_slices_rejects_too_large_crop():
    with pytest.raises(ValueError, match="pad the volume first"):
        random_crop_slices((10, 10, 4), (8, 8, 8), np.random.default_rng(0))


def test_centred_crop_slices_clamped():
    assert centred_crop_slices((10, 10), (4, 4), (5, 5)) == (slice(3, 7), slice(3, 7))
    assert centred_crop_slices((10, 10), (4, 4), (0, 9)) == (slice(0, 4), slice(6, 10))


@pytest.mark.parametrize("n", [2, 3])
def test_balanced_crops_hit_foreground_at_the_requested_rate(n):
    shape = (40, 40, 40)[:n]
    label = np.zeros(shape, np.int16)
    label[(slice(30, 33),) * n] = 2
    rng = np.random.default_rng(3)
    fg = foreground_voxels(label)
    assert fg.shape == (27 if n == 3 else 9, n)
    hits = 0
    trials = 400
    for _ in range(trials):
        box = balanced_crop_slices(label, (8,), rng, pos_fraction=0.5, foreground=fg)
        assert all(s.stop - s.start == 8 and 0 <= s.start and s.stop <= 40 for s in box)
        hits += bool(label[box].any())
    # a uniform crop would contain foreground ~ (10/33)^n of the time; balanced: >= ~half
    assert 0.4 < hits / trials < 0.75
    always = [bool(label[balanced_crop_slices(label, (8,), rng, pos_fraction=1.0)].any()) for _ in range(50)]
    assert all(always)


def test_balanced_crops_fall_back_and_are_deterministic():
    empty = np.zeros((12, 12, 12), np.uint8)
    box = balanced_crop_slices(empty, (4,), np.random.default_rng(0), pos_fraction=1.0)
    assert all(s.stop - s.start == 4 for s in box)
    full = np.ones((12, 12, 12), np.uint8)
    box = balanced_crop_slices(full, (4,), np.random.default_rng(0), pos_fraction=0.0)
    assert all(s.stop - s.start == 4 for s in box)
    lab = (np.random.default_rng(5).random((16, 16, 16)) > 0.9).astype(np.int16)
    a = [balanced_crop_slices(lab, (6,), np.random.default_rng(11)) for _ in range(3)]
    assert a[0] == a[1] == a[2]


def test_foreground_position_centre_or_anywhere_in_the_crop():
    label = np.zeros((60, 60), np.int16)
    label[30, 30] = 1  # one foreground voxel, far from the borders
    def where(position, seed):  # the voxel's position inside the crop
        box = balanced_crop_slices(label, (8,), np.random.default_rng(seed), pos_fraction=1.0,
                                   foreground_position=position)
        return tuple(30 - s.start for s in box)

    assert {where("centre", s) for s in range(50)} == {(4, 4)}  # always mid-crop
    seen = {where("anywhere", s) for s in range(2000)}
    assert seen == {(i, j) for i in range(8) for j in range(8)}  # every position of the 8x8 crop is reached
    # "centre" draws exactly as the function always did: same boxes for the same generator state
    rng_a, rng_b = np.random.default_rng(9), np.random.default_rng(9)
    lab = (np.random.default_rng(5).random((16, 16, 16)) > 0.9).astype(np.int16)
    assert [balanced_crop_slices(lab, (6,), rng_a) for _ in range(20)] == \
        [balanced_crop_slices(lab, (6,), rng_b, foreground_position="centre") for _ in range(20)]
    with pytest.raises(ValueError, match="use one of"):
        balanced_crop_slices(lab, (6,), rng_a, foreground_position="edge")
