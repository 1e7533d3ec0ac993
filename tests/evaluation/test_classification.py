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


def test_auroc_two_column_scores_are_binary():
    s = np.array([[0.9, 0.1], [0.6, 0.4], [0.65, 0.35], [0.2, 0.8]])
    assert cls.auroc(s, [0, 0, 1, 1]) == pytest.approx(0.75)


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
