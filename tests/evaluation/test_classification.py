"""Classification metrics on small hand examples (values derived in the comments)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medjax.evaluation import classification as cls


def test_auroc_binary_hand_example():
    # positives {0.35, 0.8}, negatives {0.1, 0.4}: pairs won 0.35>0.1, 0.8>0.1, 0.8>0.4 -> 3/4
    assert cls.auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert cls.auroc([0.1, 0.2, 0.3, 0.4], [0, 0, 1, 1]) == 1.0
    assert cls.auroc([0.4, 0.3, 0.2, 0.1], [0, 0, 1, 1]) == 0.0


def test_auroc_ties_count_half():
    # positives {0.5, 0.9}, negatives {0.5, 0.5}: 0.5 vs 0.5 twice (1/2 each) + 0.9 beats both -> 3/4
    assert cls.auroc([0.5, 0.5, 0.5, 0.9], [0, 1, 0, 1]) == pytest.approx(0.75)
    assert cls.auroc([0.3] * 6, [0, 1, 0, 1, 1, 0]) == pytest.approx(0.5)


def test_auroc_two_column_scores_average_both_classes():
    # softmax columns: both one-vs-rest AUROCs are the binary AUROC 0.75
    s = np.array([[0.9, 0.1], [0.6, 0.4], [0.65, 0.35], [0.2, 0.8]])
    assert cls.auroc(s, [0, 0, 1, 1]) == pytest.approx(0.75)
    np.testing.assert_allclose(cls.auroc(s, [0, 0, 1, 1], average=None), [0.75, 0.75])
    # logits: class 1 on column 1: positives {0.35, 0.8} vs negatives {0.1, 0.4}: 3 of 4 pairs -> 0.75;
    # class 0 on column 0: positives {0.0, 0.5} vs negatives {0.9, 0.1}: 1 of 4 pairs -> 0.25; macro 0.5
    logits = np.array([[0.0, 0.1], [0.5, 0.4], [0.9, 0.35], [0.1, 0.8]])
    np.testing.assert_allclose(cls.auroc(logits, [0, 0, 1, 1], average=None), [0.25, 0.75])
    assert cls.auroc(logits, [0, 0, 1, 1]) == pytest.approx(0.5)
    assert cls.auroc(logits, [0, 0, 1, 1], average="weighted") == pytest.approx(0.5)


def test_auroc_multi_label_targets():
    # 3 labels; column c of the targets against column c of the scores
    y = np.array([[1, 0, 1], [0, 1, 1], [1, 1, 0], [0, 0, 0]])
    s = np.array([[0.9, 0.2, 0.7], [0.3, 0.8, 0.6], [0.6, 0.4, 0.65], [0.1, 0.5, 0.2]])
    # label 0: positives {0.9, 0.6} vs {0.3, 0.1}: 4/4; label 1: {0.8, 0.4} vs {0.2, 0.5}: 3/4;
    # label 2: {0.7, 0.6} vs {0.65, 0.2}: 3/4
    np.testing.assert_allclose(cls.auroc(s, y, average=None), [1.0, 0.75, 0.75])
    assert cls.auroc(s, y) == pytest.approx(2.5 / 3)
    assert cls.auroc(s, y, average="weighted") == pytest.approx((2 * 1.0 + 2 * 0.75 + 2 * 0.75) / 6)
    with pytest.raises(ValueError, match="only 0 and 1"):
        cls.auroc(s, y * 2)
    with pytest.raises(ValueError, match="one column per score column"):
        cls.auroc(s, y[:, :2])
    with pytest.raises(ValueError, match="average must be"):
        cls.auroc(s, y, average="samples")


def test_auroc_matches_sklearn():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for trial in range(40):
        n, k = int(rng.integers(12, 60)), int(rng.integers(2, 6))
        logits = np.round(rng.normal(size=(n, k)), 1)  # rounding makes ties
        probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        labels = np.concatenate([np.arange(k), rng.integers(0, k, n - k)])
        if k == 2:
            for s in (probs, logits):  # sklearn scores a binary problem per column
                per = [sk.roc_auc_score(labels == c, s[:, c]) for c in range(2)]
                assert cls.auroc(s, labels) == pytest.approx(np.mean(per), abs=1e-12)
            assert cls.auroc(probs[:, 1], labels) == pytest.approx(sk.roc_auc_score(labels, probs[:, 1]), abs=1e-12)
        else:
            for avg in ("macro", "weighted"):
                ref = sk.roc_auc_score(labels, probs, multi_class="ovr", average=avg)
                assert cls.auroc(probs, labels, average=avg) == pytest.approx(ref, abs=1e-12), (trial, avg)
        multi = (rng.random((n, k)) < 0.4).astype(int)
        multi[0], multi[1] = 1, 0  # every label has a positive and a negative
        for avg in ("macro", "weighted", "micro", None):
            ref = sk.roc_auc_score(multi, logits, average=avg)
            np.testing.assert_allclose(cls.auroc(logits, multi, average=avg), ref, atol=1e-12, err_msg=str(avg))


def test_auroc_one_class_absent_is_nan_with_warning():
    with pytest.warns(RuntimeWarning, match="only one class"):
        assert math.isnan(cls.auroc([0.1, 0.2, 0.3], [1, 1, 1]))


def test_auroc_multiclass_one_vs_rest():
    labels = [0, 0, 1, 1, 2, 2]
    scores = np.array([
        [0.9, 0.05, 0.05],
        [0.8, 0.10, 0.10],
        [0.1, 0.70, 0.20],
        [0.2, 0.20, 0.60],
        [0.3, 0.30, 0.40],
        [0.1, 0.60, 0.30],
    ])
    # class 0: positives {0.9, 0.8} beat every negative -> 1.0
    # class 1: positives {0.7, 0.2} vs negatives {0.05, 0.1, 0.3, 0.6}: 4 + 2 wins -> 6/8
    # class 2: positives {0.4, 0.3} vs negatives {0.05, 0.1, 0.2, 0.6}: 3 + 3 wins -> 6/8
    np.testing.assert_allclose(cls.auroc(scores, labels, average=None), [1.0, 0.75, 0.75])
    assert cls.auroc(scores, labels) == pytest.approx(2.5 / 3)


def test_auroc_multiclass_absent_class_left_out():
    scores = np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.8, 0.1]])
    with pytest.warns(RuntimeWarning, match=r"classes \[2\]"):
        per = cls.auroc(scores, [0, 1, 0, 1], average=None)
    assert per[0] == 1.0 and per[1] == 1.0 and math.isnan(per[2])
    with pytest.warns(RuntimeWarning):
        assert cls.auroc(scores, [0, 1, 0, 1]) == 1.0


def test_binary_sensitivity_specificity_accuracy():
    pred = [1, 1, 0, 0, 1, 0, 0]
    labels = [1, 0, 0, 1, 1, 0, 0]
    # TP = 2 (idx 0, 4), FN = 1 (idx 3), FP = 1 (idx 1), TN = 3 (idx 2, 5, 6)
    assert cls.sensitivity(pred, labels) == pytest.approx(2 / 3)
    assert cls.specificity(pred, labels) == pytest.approx(3 / 4)
    assert cls.accuracy(pred, labels) == pytest.approx(5 / 7)
    np.testing.assert_array_equal(cls.confusion_matrix(pred, labels), [[3, 1], [1, 2]])


def test_multiclass_macro_sensitivity_specificity():
    pred = [0, 1, 2, 2, 1, 0]
    labels = [0, 1, 2, 1, 1, 2]
    # rows = true class: 0 -> {0}; 1 -> {1, 2, 1}; 2 -> {2, 0}
    np.testing.assert_array_equal(cls.confusion_matrix(pred, labels), [[1, 0, 0], [0, 2, 1], [1, 0, 1]])
    # recall: 1/1, 2/3, 1/2 -> macro 13/18
    assert cls.sensitivity(pred, labels) == pytest.approx((1 + 2 / 3 + 1 / 2) / 3)
    # specificity: class 0: 4/5 (idx 5 wrongly 0); class 1: 3/3; class 2: 3/4 (idx 3 wrongly 2)
    assert cls.specificity(pred, labels) == pytest.approx((0.8 + 1.0 + 0.75) / 3)
    assert cls.accuracy(pred, labels) == pytest.approx(4 / 6)


def test_undefined_sensitivity_warns():
    with pytest.warns(RuntimeWarning, match="sensitivity is undefined"):
        assert math.isnan(cls.sensitivity([0, 1], [0, 0]))
    with pytest.warns(RuntimeWarning, match="specificity is undefined"):
        assert math.isnan(cls.specificity([0, 1], [1, 1]))


def test_input_errors():
    with pytest.raises(ValueError, match="num_classes"):
        cls.confusion_matrix([0, 3], [0, 1], num_classes=3)
    with pytest.raises(ValueError, match="rows"):
        cls.auroc([0.1, 0.2], [0, 1, 1])
    with pytest.raises(ValueError, match="binary"):
        cls.auroc([0.1, 0.2, 0.3], [0, 1, 2])
