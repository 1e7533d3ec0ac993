"""Accumulators agree with the pure functions; aggregates are means of the per-case rows."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from medjax.evaluation import accumulators as A
from medjax.evaluation import classification as cls
from medjax.evaluation import detection as det
from medjax.evaluation import segmentation as seg


def _label_map(shape, boxes):
    m = np.zeros(shape, np.int32)
    for lab, lo, size in boxes:
        m[tuple(slice(a, a + size) for a in lo)] = lab
    return m


def test_segmentation_accumulator_rows_and_means():
    spacing = (1.5, 1.0, 3.0)
    acc = A.SegmentationAccumulator(labels=[1, 2], tolerance_mm=1.5)
    # case a: label 1 shifted 2 voxels in x (dice 1/3, hd95 3.0 mm); label 2 identical
    ref_a = _label_map((10, 10, 10), [(1, (2, 2, 2), 3), (2, (6, 6, 6), 2)])
    pred_a = _label_map((10, 10, 10), [(1, (4, 2, 2), 3), (2, (6, 6, 6), 2)])
    # case b: label 1 identical; label 2 missing from the prediction (hd95 inf)
    ref_b = _label_map((10, 10, 10), [(1, (1, 1, 1), 4), (2, (7, 7, 7), 2)])
    pred_b = _label_map((10, 10, 10), [(1, (1, 1, 1), 4)])
    rows_a = acc.update(pred_a, ref_a, spacing, case_id="a")
    acc.update(pred_b, ref_b, spacing, case_id="b")
    assert [(r["case"], r["label"]) for r in acc.per_case()] == [("a", 1), ("a", 2), ("b", 1), ("b", 2)]
    assert rows_a[0]["dice"] == pytest.approx(1 / 3) and rows_a[0]["hd95"] == pytest.approx(3.0)
    rows = acc.per_case()
    for r in rows:
        p = {"a": pred_a, "b": pred_b}[r["case"]] == r["label"]
        q = {"a": ref_a, "b": ref_b}[r["case"]] == r["label"]
        assert r["dice"] == seg.dice(p, q)
        assert r["nsd"] == seg.nsd(p, q, spacing, 1.5)
    agg = acc.aggregate()
    assert agg["dice"] == pytest.approx(np.mean([r["dice"] for r in rows]))  # (1/3 + 1 + 1 + 0) / 4
    assert agg["dice"] == pytest.approx((1 / 3 + 2) / 4)
    assert agg["nsd"] == pytest.approx(np.mean([r["nsd"] for r in rows]))
    # the infinite HD95 (case b, label 2) is left out of the mean and counted
    assert agg["hd95"] == pytest.approx((3.0 + 0.0 + 0.0) / 3)
    assert agg["counts"]["hd95"] == {"n": 3, "n_inf": 1, "n_nan": 0}
    assert agg["n_cases"] == 2
    assert agg["per_label"][1]["dice"] == pytest.approx((1 / 3 + 1) / 2)
    assert agg["per_label"][2]["hd95"] == 0.0 and agg["per_label"][2]["counts"]["hd95"]["n_inf"] == 1
    acc.reset()
    assert acc.per_case() == []


def test_segmentation_accumulator_default_labels_from_reference():
    acc = A.SegmentationAccumulator()
    ref = _label_map((6, 6), [(3, (1, 1), 2)])
    pred = _label_map((6, 6), [(3, (1, 1), 2), (5, (4, 4), 1)])
    rows = acc.update(pred, ref)
    assert [r["label"] for r in rows] == [3] and rows[0]["case"] == "0"
    assert acc.update(pred, ref)[0]["case"] == "1"


def test_segmentation_accumulator_empty_convention_and_surface():
    # case a: label 1 shifted (scored in both conventions), label 2 absent from prediction and reference
    ref = _label_map((8, 8, 8), [(1, (1, 1, 1), 3)])
    pred = _label_map((8, 8, 8), [(1, (2, 1, 1), 3)])
    spacing = (0.8, 1.0, 2.5)
    perfect = A.SegmentationAccumulator(labels=[1, 2], tolerance_mm=0.5)
    nan = A.SegmentationAccumulator(labels=[1, 2], tolerance_mm=0.5, empty="nan", surface="area")
    for acc in (perfect, nan):
        acc.update(pred, ref, spacing, case_id="a")
        acc.update(ref, ref, spacing, case_id="b")
    p_agg, n_agg = perfect.aggregate(), nan.aggregate()
    d1 = seg.dice(pred == 1, ref == 1)
    # "perfect": the two empty label-2 rows count as Dice 1 in the mean of 4 rows
    assert p_agg["dice"] == pytest.approx((d1 + 1 + 1 + 1) / 4)
    assert p_agg["counts"]["dice"] == {"n": 4, "n_inf": 0, "n_nan": 0}
    assert p_agg["empty"] == "perfect" and p_agg["nsd_surface"] == "voxels" and p_agg["tolerance_mm"] == 0.5
    # "nan": they are NaN, left out of the mean of the 2 scored rows, and counted
    assert n_agg["dice"] == pytest.approx((d1 + 1) / 2)
    for m in ("dice", "hd95", "nsd"):
        assert n_agg["counts"][m] == {"n": 2, "n_inf": 0, "n_nan": 2}
    assert math.isnan(n_agg["per_label"][2]["dice"]) and n_agg["per_label"][2]["counts"]["dice"]["n_nan"] == 2
    assert n_agg["empty"] == "nan" and n_agg["nsd_surface"] == "area"
    rows = {(r["case"], r["label"]): r for r in nan.per_case()}
    assert rows[("a", 1)]["nsd"] == pytest.approx(seg.nsd(pred == 1, ref == 1, spacing, 0.5, surface="area"))
    assert rows[("a", 1)]["nsd"] != pytest.approx(perfect.per_case()[0]["nsd"])
    with pytest.raises(ValueError, match="tolerance_mm"):
        A.SegmentationAccumulator(tolerance_mm=float("nan"))
    with pytest.raises(ValueError, match="empty="):
        A.SegmentationAccumulator(empty="skip")
    with pytest.raises(ValueError, match="surface="):
        A.SegmentationAccumulator(surface="triangles")


def test_classification_accumulator_equals_functions():
    rng = np.random.default_rng(1)
    scores = rng.random((20, 3))
    labels = np.arange(20) % 3
    acc = A.ClassificationAccumulator(num_classes=3)
    for i in range(0, 20, 7):
        acc.update(scores[i:i + 7], labels[i:i + 7])
    agg = acc.aggregate()
    pred = scores.argmax(1)
    assert agg["auroc"] == pytest.approx(cls.auroc(scores, labels))
    assert agg["accuracy"] == pytest.approx(cls.accuracy(pred, labels))
    assert agg["sensitivity"] == pytest.approx(cls.sensitivity(pred, labels, 3))
    assert agg["specificity"] == pytest.approx(cls.specificity(pred, labels, 3))
    assert agg["confusion_matrix"] == cls.confusion_matrix(pred, labels, 3).tolist()
    assert agg["n"] == 20
    assert [r["case"] for r in acc.per_case()] == [str(i) for i in range(20)]


def test_classification_accumulator_binary_threshold():
    acc = A.ClassificationAccumulator(num_classes=2, threshold=0.5)
    acc.update([0.9, 0.2], [1, 0], case_ids=["p1", "p2"])
    acc.update([0.6, 0.4], [0, 1], case_ids=["p3", "p4"])
    agg = acc.aggregate()
    # preds 1, 0, 1, 0 vs labels 1, 0, 0, 1 -> TP 1, TN 1, FP 1, FN 1; AUROC: 0.9 beats 0.2, 0.6; 0.4 beats 0.2
    assert agg["accuracy"] == 0.5 and agg["sensitivity"] == 0.5 and agg["specificity"] == 0.5
    assert agg["auroc"] == pytest.approx(3 / 4)
    assert acc.per_case()[2] == {"case": "p3", "label": 0, "pred": 1, "score": 0.6}
    with pytest.raises(ValueError, match="columns"):
        acc.update(np.zeros((1, 3)), [0])


def test_detection_accumulator_equals_functions():
    rng = np.random.default_rng(2)
    preds, scores, refs = [], [], []
    acc = A.DetectionAccumulator(iou_thresholds=(0.1, 0.5))
    for case in range(4):
        lo = rng.uniform(0, 30, (5, 3))
        p = np.concatenate([lo, lo + rng.uniform(3, 8, (5, 3))], 1)
        r = p[:2] + rng.uniform(-1, 1, (2, 6)) * [0, 0, 0, 1, 1, 1]
        r[:, 3:] = np.maximum(r[:, 3:], r[:, :3] + 0.5)
        s = rng.random(5)
        preds.append(p), scores.append(s), refs.append(r)
        acc.update(p, s, r, case_id=f"c{case}")
    agg = acc.aggregate()
    assert agg["froc"] == det.froc(preds, scores, refs)
    m = det.mean_ap(preds, scores, refs, (0.1, 0.5))
    assert agg["mAP"] == pytest.approx(m["mAP"]) and agg["AP"] == m["AP"]
    assert [r["case"] for r in acc.per_case()] == ["c0", "c1", "c2", "c3"]
    assert all(r["num_pred"] == 5 and r["num_ref"] == 2 for r in acc.per_case())


def test_json_safe():
    obj = {"hd95": float("inf"), "nsd": float("nan"), "dice": np.float32(0.5), "n": np.int64(3),
           "rows": [{"hd95": 1.0}], 2: np.array([1.0, np.inf])}
    out = A.json_safe(obj)
    text = json.dumps(out, allow_nan=False)
    back = json.loads(text)
    assert back["hd95"] is None and back["hd95_infinite"] is True
    assert back["nsd"] is None and "nsd_infinite" not in back
    assert back["dice"] == 0.5 and back["n"] == 3 and back["rows"] == [{"hd95": 1.0}]
    assert back["2"] == [1.0, None]


def test_finite_mean():
    s = A.finite_mean([1.0, 3.0, math.inf, math.nan])
    assert s == {"mean": 2.0, "n": 2, "n_inf": 1, "n_nan": 1}
    assert A.finite_mean([math.inf, math.inf])["mean"] == math.inf  # never finite: reported as inf
    assert math.isnan(A.finite_mean([])["mean"]) and math.isnan(A.finite_mean([math.nan])["mean"])
