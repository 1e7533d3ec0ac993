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


# MONAI tests/test_compute_froc.py cases 4 and 5: false positives 0.8, 0.6 over 2 images; 4 lesions detected at
# 1, 1, 0.8, 0.8. Curve: (0, 0) -> t=1: (0, 1/2) -> t=0.8: (1/2, 1) -> t=0.6: (1, 1). At 1/4 FP per image the
# interpolation between (0, 1/2) and (1/2, 1) gives 3/4 (a step function gives 1/2).
MONAI_FP, MONAI_DET = [0.8, 0.6], [1.0, 1.0, 0.8, 0.8]


def test_froc_curve_and_interpolation_reproduce_monai_cases():
    fps, sens, thr = det.froc_curve(MONAI_FP, MONAI_DET, num_cases=2)
    np.testing.assert_allclose(fps, [0, 0, 0.5, 1.0])
    np.testing.assert_allclose(sens, [0, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(thr, [np.inf, 1.0, 0.8, 0.6])
    assert np.mean(det.froc_sensitivity(fps, sens, (0.25, 0.5, 1, 2, 4, 8))) == pytest.approx(0.95833333, abs=1e-7)
    np.testing.assert_allclose(det.froc_sensitivity(fps, sens, (0.25,)), [0.75])
    # vertical segments: at exactly 0 FP the top (1/2) counts; past the curve's end the last value stays
    np.testing.assert_allclose(det.froc_sensitivity(fps, sens, (0.0, 0.1, 100.0)), [0.5, 0.6, 1.0])


def _monai_boxes():
    """MONAI's FROC case as boxes: case 0 has lesions A, B (hit at 1.0 and 0.8) and an FP at 0.8; case 1 has
    lesions C, D (hit at 1.0 and 0.8) and an FP at 0.6."""
    a, b, c = [0, 0, 0, 10, 10, 10], [20, 0, 0, 30, 10, 10], FAR[0]
    pred = [np.array([a, b, c], float), np.array([a, b, c], float)]
    scores = [np.array([1.0, 0.8, 0.8]), np.array([1.0, 0.8, 0.6])]
    ref = [np.array([a, b], float), np.array([a, b], float)]
    return pred, scores, ref


def test_froc_boxes_interpolate_like_luna16_and_monai():
    pred, scores, ref = _monai_boxes()
    out = det.froc(pred, scores, ref, fps_per_case=(0.25, 0.5, 1, 2, 4, 8))
    assert out["score"] == pytest.approx(0.95833333, abs=1e-7)  # the step function gave 0.9167
    assert det.froc(pred, scores, ref, fps_per_case=(0.25,))["score"] == pytest.approx(0.75)  # step: 0.5
    with pytest.raises(ValueError, match="finite false positives per case >= 0"):
        det.froc(pred, scores, ref, fps_per_case=(-1.0,))


def test_froc_matches_luna16_evaluation_on_random_boxes():
    """LUNA16's noduleCADEvaluation: candidates labelled 1 (best hit of a nodule) or 0 (no nodule hit), other
    hits excluded; fps = fpr * negatives / scans, sens = tpr * detected / nodules from scikit-learn's roc_curve,
    then np.interp at the rates."""
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    rates = det.DEFAULT_FPS_PER_CASE
    for trial in range(60):
        n_cases = int(rng.integers(1, 6))
        pred, scores, ref = [], [], []
        for _ in range(n_cases):
            lo = rng.integers(0, 40, size=(int(rng.integers(0, 4)), 3)).astype(float)
            r = np.concatenate([lo, lo + rng.integers(4, 10, size=lo.shape)], axis=1)
            jitter = rng.integers(-2, 3, size=(r.shape[0], 6)).astype(float)
            hits = (r + jitter)[rng.random(r.shape[0]) < 0.8]
            far = rng.integers(60, 200, size=(int(rng.integers(0, 5)), 3)).astype(float)
            p = np.concatenate([hits, np.concatenate([far, far + 5], axis=1)])
            p[:, 3:] = np.maximum(p[:, 3:], p[:, :3])
            pred.append(p)
            scores.append(rng.choice(np.linspace(0.05, 1.0, 20), size=p.shape[0]))
            ref.append(r)
        n_refs = sum(r.shape[0] for r in ref)
        if n_refs == 0:
            continue
        labels, probs = [], []
        n_detected = 0
        for p, s, r in zip(pred, scores, ref):
            hit = det.iou3d(p, r) >= 0.1
            labels += [0] * int((~hit.any(axis=1)).sum())
            probs += list(s[~hit.any(axis=1)])
            for j in range(r.shape[0]):
                if hit[:, j].any():
                    labels.append(1)
                    probs.append(float(s[hit[:, j]].max()))
                    n_detected += 1
        if 0 < n_detected < len(labels):
            fpr, tpr, _ = sk.roc_curve(labels, probs)
            fps = fpr * (len(labels) - n_detected) / n_cases
            sens_curve = tpr * n_detected / n_refs
            expected = np.interp(rates, fps, sens_curve)
        elif n_detected == 0:
            expected = np.zeros(len(rates))
        else:  # no false positives: the whole curve sits at 0 FP per scan
            expected = np.full(len(rates), n_detected / n_refs)
        out = det.froc(pred, scores, ref, 0.1, rates)
        np.testing.assert_allclose(out["sensitivity"], expected, atol=1e-12, err_msg=str(trial))
