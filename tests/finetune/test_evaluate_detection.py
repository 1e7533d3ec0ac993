"""Held-out detection evaluation with several classes: a prediction counts only against references of its class."""

import numpy as np
import pytest

from medjax.finetune import evaluate as ev_mod
from medjax.finetune.tasks import label_objects
from tests.finetune.conftest import tiny


def _label():
    lab = np.zeros((12, 12, 12), np.int32)
    lab[1:4, 1:4, 1:4] = 1  # class 0
    lab[7:11, 7:11, 7:11] = 2  # class 1
    return lab


@pytest.mark.parametrize("swap, expected", [(False, 1.0), (True, 0.0)])
def test_per_class_ap_matches_classes(monkeypatch, swap, expected):
    import medjax.finetune.predict as predict

    lab = _label()
    boxes, classes = label_objects(lab, num_classes=2)

    class FixedPredictor:  # the model's output replaced by the reference boxes with (possibly swapped) classes
        def __init__(self, *a, **k):
            pass

        def detect(self, image):
            return boxes.copy(), np.array([0.9, 0.8]), (1 - classes) if swap else classes.copy()

    monkeypatch.setattr(predict, "Predictor", FixedPredictor)
    monkeypatch.setattr(predict, "preprocess_record",
                        lambda cfg, r: {"image": np.zeros(lab.shape + (1,), np.float32), "label": lab,
                                        "affine": np.diag([2.0, 2.0, 2.0, 1.0])})
    cfg = tiny("detection", num_classes=2)
    out = ev_mod.evaluate_records(cfg, None, None, None, [{"id": "a"}, {"id": "b"}])
    assert set(out["per_class"]) == {"0", "1"}
    for k in ("0", "1"):
        assert out["per_class"][k]["reference"] == 2
        assert out["per_class"][k]["ap_iou0.1"] == pytest.approx(expected)
    assert out["ap_iou0.1"] == pytest.approx(expected)
