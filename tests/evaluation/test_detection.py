"""Box IoU, NMS, FROC and AP on constructed boxes (values derived in the comments)."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

from medjax.evaluation import detection as det

UNIT = [0, 0, 0, 1, 1, 1]


def test_iou3d_hand_values():
    a = np.array([UNIT, [0, 0, 0, 2, 2, 2]], float)
    b = np.array([UNIT, [0.5, 0, 0, 1.5, 1, 1], [5, 5, 5, 6, 6, 6]], float)
    iou = det.iou3d(a, b)
    assert iou.shape == (2, 3)
    # unit vs unit 1; unit vs half-shifted: 0.5 / 1.5; disjoint 0; 2-cube vs unit: 1/8; 2-cube vs shifted: 1/8
    np.testing.assert_allclose(iou, [[1.0, 1 / 3, 0.0], [1 / 8, 1 / 8, 0.0]])
    assert det.iou3d(np.zeros((0, 6)), b).shape == (0, 3)
    with pytest.raises(ValueError, match="x0 <= x1"):
        det.iou3d([[1, 0, 0, 0, 1, 1]], b)


# A (0.90) and B (0.80): B shifted 1 mm in x; IoU = 9*10*10 / (2000 - 900) = 0.818 -> B suppressed by A.
# C (0.70) far away -> kept. D (0.95) is the lower half of A: IoU(D, A) = 500/1000 = 0.5, not > 0.5 -> A kept;
# IoU(D, B) = 450 / 1050 = 0.43.
BOXES = np.array([
    [0, 0, 0, 10, 10, 10],
    [1, 0, 0, 11, 10, 10],
    [20, 20, 20, 30, 30, 30],
    [0, 0, 0, 10, 10, 5],
], float)
SCORES = np.array([0.9, 0.8, 0.7, 0.95])


def test_nms3d():
    np.testing.assert_array_equal(det.nms3d(BOXES, SCORES, 0.5), [3, 0, 2])
    # at 0.45, D suppresses A (0.5 > 0.45) but not B (0.43); B survives because A, which covered it, is gone
    np.testing.assert_array_equal(det.nms3d(BOXES, SCORES, 0.45), [3, 1, 2])
    assert det.nms3d(np.zeros((0, 6)), np.zeros(0)).size == 0


def test_nms3d_padded_matches_numpy_and_jits():
    fn = jax.jit(det.nms3d_padded, static_argnames=("iou_threshold", "max_output"))
    idx, valid = fn(BOXES, SCORES, iou_threshold=0.5, max_output=5)
    np.testing.assert_array_equal(np.asarray(idx), [3, 0, 2, -1, -1])
    np.testing.assert_array_equal(np.asarray(valid), [True, True, True, False, False])
    # padding entries (score -inf) are never kept; truncation to max_output keeps the best
    padded_scores = np.concatenate([SCORES, [-np.inf]])
    padded_boxes = np.concatenate([BOXES, [[40, 40, 40, 50, 50, 50]]])
    idx, valid = fn(padded_boxes, padded_scores, iou_threshold=0.5, max_output=2)
    np.testing.assert_array_equal(np.asarray(idx), [3, 0])
    rng = np.random.default_rng(0)
    lo = rng.uniform(0, 20, (30, 3))
    boxes = np.concatenate([lo, lo + rng.uniform(2, 10, (30, 3))], axis=1)
    scores = rng.random(30)
    ref = det.nms3d(boxes, scores, 0.3)
    idx, valid = fn(boxes, scores, iou_threshold=0.3, max_output=30)
    np.testing.assert_array_equal(np.asarray(idx)[np.asarray(valid)], ref)


R0 = [0, 0, 0, 10, 10, 10]
R1 = [50, 50, 50, 60, 60, 60]
R2 = [0, 0, 0, 10, 10, 10]
FAR = [[100, 100, 100, 110, 110, 110], [200, 200, 200, 210, 210, 210], [300, 300, 300, 310, 310, 310]]
# case 0: p0 = R0 (0.9), p1 FP (0.8), p2 = R1 (0.3), p3 duplicate on R0 (0.5; IoU 729/1271 = 0.57)
# case 1: p4 FP (0.6), p5 on R2 shifted 1 mm (0.2; IoU 900/1100 = 0.82), p6 FP (0.1)
PRED = [
    np.array([R0, FAR[0], R1, [1, 1, 1, 11, 11, 11]], float),
    np.array([FAR[1], [1, 0, 0, 11, 10, 10], FAR[2]], float),
]
PSCORES = [np.array([0.9, 0.8, 0.3, 0.5]), np.array([0.6, 0.2, 0.1])]
REF = [np.array([R0, R1], float), np.array([R2], float)]


def test_froc_hand_example():
    # 3 references, 2 cases. Lesion scores: R0 0.9, R1 0.3, R2 0.2. False positives: 0.8, 0.6, 0.1 (p3 hits R0
    # and is ignored). Operating points (threshold: sensitivity, FP/case): 0.9: 1/3, 0; 0.8: 1/3, 0.5;
    # 0.6: 1/3, 1.0; 0.3: 2/3, 1.0; 0.2: 1, 1.0; 0.1: 1, 1.5.
    # Best sensitivity with FP/case <= r: r in {1/8, 1/4, 1/2} -> 1/3; r in {1, 2, 4, 8} -> 1.
    out = det.froc(PRED, PSCORES, REF)
    np.testing.assert_allclose(out["sensitivity"], [1 / 3] * 3 + [1.0] * 4)
    assert out["score"] == pytest.approx(5 / 7)
    assert out["fps_per_case"] == [0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0]
    assert out["num_refs"] == 3 and out["num_cases"] == 2
    # at IoU 0.9 the duplicate p3 (0.57) and p5 (0.82) hit nothing: false positives 0.8, 0.6, 0.5, 0.2, 0.1;
    # lesions R0 0.9, R1 0.3, R2 missed. Operating points: 0.6: 1/3 at 2/2 = 1.0 FP/case; 0.3: 2/3 at 1.5;
    # 0.2: 2/3 at 2.0 -> r=1: 1/3, r=2: 2/3
    strict = det.froc(PRED, PSCORES, REF, iou_threshold=0.9, fps_per_case=(1.0, 2.0))
    np.testing.assert_allclose(strict["sensitivity"], [1 / 3, 2 / 3])


def test_average_precision_hand_example():
    # by score: p0 TP, p1 FP, p4 FP, p3 FP (R0 taken), p2 TP, p5 TP, p6 FP
    # recall    1/3, 1/3, 1/3, 1/3, 2/3, 1, 1; precision 1, 1/2, 1/3, 1/4, 2/5, 1/2, 3/7
    # envelope at the recall steps: 1 (1/3), 1/2 (2/3), 1/2 (1) -> AP = (1 + 0.5 + 0.5) / 3 = 2/3
    assert det.average_precision(PRED, PSCORES, REF, 0.5) == pytest.approx(2 / 3)
    # at IoU 0.9, p5 (0.82) is a FP: steps at recall 1/3 (precision 1) and 2/3 (2/5) -> (1 + 0.4) / 3
    assert det.average_precision(PRED, PSCORES, REF, 0.9) == pytest.approx(1.4 / 3)
    m = det.mean_ap(PRED, PSCORES, REF, iou_thresholds=(0.5, 0.9))
    assert m["AP"] == {0.5: pytest.approx(2 / 3), 0.9: pytest.approx(1.4 / 3)}
    assert m["mAP"] == pytest.approx((2 / 3 + 1.4 / 3) / 2)


def test_perfect_detection_and_no_references():
    assert det.average_precision([np.array([R0], float)], [[0.5]], [np.array([R0], float)]) == 1.0
    out = det.froc([np.array([R0], float)], [[0.5]], [np.array([R0], float)])
    assert out["sensitivity"] == [1.0] * 7
    with pytest.warns(RuntimeWarning, match="without reference boxes"):
        assert math.isnan(det.average_precision([np.array([R0], float)], [[0.5]], [np.zeros((0, 6))]))
    with pytest.warns(RuntimeWarning, match="without reference boxes"):
        assert math.isnan(det.froc([np.array([R0], float)], [[0.5]], [np.zeros((0, 6))])["score"])


def test_case_count_mismatch():
    with pytest.raises(ValueError, match="one entry per case"):
        det.froc(PRED, PSCORES, REF[:1])
    with pytest.raises(ValueError, match="scores"):
        det.average_precision(PRED, [PSCORES[0], PSCORES[1][:2]], REF)
