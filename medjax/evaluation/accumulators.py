"""Metric accumulators: feed cases one at a time, read per-case rows and the aggregate.

Each accumulator wraps the pure functions of :mod:`~medjax.evaluation.segmentation`,
:mod:`~medjax.evaluation.classification` and :mod:`~medjax.evaluation.detection` (MONAI ``Cumulative`` style):
``update(...)`` per case or batch, ``per_case()`` rows, ``aggregate()`` summary, ``reset()``.

Aggregation of segmentation metrics: the mean over the finite values only (``inf`` if all are infinite); each
summary reports how many values were finite (``n``) and how many were left out as infinite or NaN (``n_inf``,
``n_nan``; an infinite HD95 means exactly one of prediction and reference was empty; NaN means both were empty
under the ``empty="nan"`` convention, see :mod:`~medjax.evaluation.segmentation`). :func:`json_safe` turns
non-finite floats into ``null`` for JSON and adds a ``<key>_infinite`` flag next to infinite values so they stay
distinguishable from NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from medjax.evaluation import classification as _cls
from medjax.evaluation import detection as _det
from medjax.evaluation import segmentation as _seg

__all__ = ["SegmentationAccumulator", "ClassificationAccumulator", "DetectionAccumulator", "json_safe",
           "finite_mean"]

SEG_METRICS = ("dice", "hd95", "nsd")


def finite_mean(values: Sequence[float]) -> dict:
    """Mean of the finite values with counts: ``{"mean", "n" (finite), "n_inf", "n_nan"}``.

    The mean is ``inf`` when every value is infinite (e.g. a structure never predicted), NaN when there are no
    values or only NaN.
    """
    v = np.asarray(list(values), dtype=np.float64)
    fin = np.isfinite(v)
    if fin.any():
        mean = float(v[fin].mean())
    elif np.isinf(v).any():
        mean = float("inf")
    else:
        mean = float("nan")
    return {
        "mean": mean,
        "n": int(fin.sum()),
        "n_inf": int(np.isinf(v).sum()),
        "n_nan": int(np.isnan(v).sum()),
    }


def json_safe(obj):
    """Copy of ``obj`` (dicts, lists, numbers) that ``json.dumps(allow_nan=False)`` accepts.

    Non-finite floats become ``None``; in a dict, a key whose value is infinite also gets ``"<key>_infinite":
    True`` (e.g. ``{"hd95": None, "hd95_infinite": True}``). numpy scalars and arrays become Python values; dict
    keys become strings.
    """
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out[str(k)] = json_safe(v)
            if isinstance(v, (float, np.floating)) and math.isinf(float(v)):
                out[f"{k}_infinite"] = True
        return out
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    return obj


class SegmentationAccumulator:
    """Dice, HD95 and NSD per case and label, and their means.

    Args:
      labels: label values to score; None scores the non-zero labels present in each case's reference (a label
        absent from a reference but present in the prediction is then not scored for that case: pass ``labels``
        to score false-positive structures).
      tolerance_mm: NSD tolerance in mm (finite, ``>= 0``).
      surface: NSD definition, ``"voxels"`` (boundary-voxel count) or ``"area"`` (surface elements weighted by
        area, DeepMind ``surface-distance``).
      empty: a label empty in both prediction and reference scores ``"perfect"`` (Dice 1, HD95 0, NSD 1, counted
        in the means) or ``"nan"`` (NaN, left out of the means and counted in ``n_nan``).
    """

    def __init__(self, labels: Sequence[int] | None = None, tolerance_mm: float = 1.0, *, surface: str = "voxels",
                 empty: str = "perfect"):
        self.labels = None if labels is None else [int(v) for v in labels]
        self.tolerance_mm = _seg.check_tolerance(tolerance_mm)
        self.surface = _seg.check_surface(surface)
        self.empty = _seg.check_empty(empty)
        self.reset()

    def reset(self) -> None:
        self._rows: list[dict] = []
        self._n_updates = 0

    def update(self, pred, ref, spacing=None, case_id: str | None = None) -> list[dict]:
        """Score one case.

        Args:
          pred, ref: integer label maps ``(X, Y)`` or ``(X, Y, Z)`` of the same shape (a binary mask is label 1).
          spacing: voxel size in mm per axis (None: 1 mm).
          case_id: name of the case in the rows (default: its running index).
        Returns:
          the new rows ``{"case", "label", "dice", "hd95", "nsd"}``, one per label.
        """
        p, r = np.asarray(pred), np.asarray(ref)
        if p.shape != r.shape:
            raise ValueError(f"case {case_id}: pred shape {p.shape} differs from ref shape {r.shape}")
        labels = self.labels if self.labels is not None else _seg.foreground_labels(r)
        case = str(case_id) if case_id is not None else str(self._n_updates)
        self._n_updates += 1
        rows = []
        for lab in labels:
            pm, rm = p == lab, r == lab
            rows.append({
                "case": case,
                "label": int(lab),
                "dice": _seg.dice(pm, rm, empty=self.empty),
                "hd95": _seg.hd95(pm, rm, spacing, empty=self.empty),
                "nsd": _seg.nsd(pm, rm, spacing, self.tolerance_mm, surface=self.surface, empty=self.empty),
            })
        self._rows.extend(rows)
        return rows

    def per_case(self) -> list[dict]:
        """All rows so far, in update order: ``{"case", "label", "dice", "hd95" (mm, may be inf), "nsd"}``."""
        return [dict(r) for r in self._rows]

    def aggregate(self) -> dict:
        """Means over all rows and per label.

        Returns:
          ``{"dice": mean, "hd95": mean, "nsd": mean, "counts": {metric: {"n", "n_inf", "n_nan"}},
          "n_cases": int, "per_label": {label: {"dice", "hd95", "nsd", "counts"}}, "empty": convention,
          "nsd_surface": definition, "tolerance_mm": float}``; means skip inf/NaN (the counts say how many).
        """

        def summary(rows):
            out, counts = {}, {}
            for m in SEG_METRICS:
                s = finite_mean([r[m] for r in rows])
                out[m] = s.pop("mean")
                counts[m] = s
            out["counts"] = counts
            return out

        result = summary(self._rows)
        result["n_cases"] = len({r["case"] for r in self._rows})
        labels = sorted({r["label"] for r in self._rows})
        result["per_label"] = {lab: summary([r for r in self._rows if r["label"] == lab]) for lab in labels}
        result.update(empty=self.empty, nsd_surface=self.surface, tolerance_mm=self.tolerance_mm)
        return result


class ClassificationAccumulator:
    """Collects scores and labels over batches; AUROC, accuracy, sensitivity, specificity, confusion matrix.

    Args:
      num_classes: K. Scores are ``(B,)`` (binary, score of class 1) or ``(B, K)``; the predicted class is
        ``score >= threshold`` for ``(B,)`` scores and the arg-max for ``(B, K)``.
      threshold: decision threshold for ``(B,)`` scores (e.g. 0.5 for probabilities, 0.0 for logits).
    """

    def __init__(self, num_classes: int = 2, threshold: float = 0.5):
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.num_classes = int(num_classes)
        self.threshold = float(threshold)
        self.reset()

    def reset(self) -> None:
        self._scores: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._ids: list[str] = []

    def update(self, scores, labels, case_ids: Sequence[str] | None = None) -> None:
        """Add a batch: ``scores (B,)`` or ``(B, K)``, ``labels (B,)`` integer classes, optional ids."""
        s = np.asarray(scores, dtype=np.float64)
        y = np.asarray(labels).reshape(-1)
        if s.ndim == 0:
            s = s.reshape(1)
        if s.shape[0] != y.shape[0]:
            raise ValueError(f"scores have {s.shape[0]} rows but labels have {y.shape[0]}")
        if s.ndim == 2 and s.shape[1] != self.num_classes:
            raise ValueError(f"scores have {s.shape[1]} columns, expected num_classes={self.num_classes}")
        if s.ndim == 1 and self.num_classes != 2:
            raise ValueError(f"(B,) scores need num_classes=2; give (B, {self.num_classes}) scores")
        start = len(self._ids)
        ids = [str(i) for i in case_ids] if case_ids is not None else [str(start + i) for i in range(len(y))]
        if len(ids) != len(y):
            raise ValueError(f"{len(ids)} case ids for {len(y)} samples")
        self._scores.append(s)
        self._labels.append(y)
        self._ids.extend(ids)

    def _arrays(self):
        if not self._scores:
            return np.zeros((0,)), np.zeros((0,), dtype=np.int64)
        return np.concatenate(self._scores), np.concatenate(self._labels).astype(np.int64)

    def _predict(self, s: np.ndarray) -> np.ndarray:
        return (s >= self.threshold).astype(np.int64) if s.ndim == 1 else np.argmax(s, axis=-1)

    def per_case(self) -> list[dict]:
        """``{"case", "label", "pred", "score"}`` per sample (score: a float, or a list of K floats)."""
        s, y = self._arrays()
        pred = self._predict(s)
        return [{"case": c, "label": int(y[i]), "pred": int(pred[i]),
                 "score": s[i].tolist() if s.ndim == 2 else float(s[i])} for i, c in enumerate(self._ids)]

    def aggregate(self) -> dict:
        """``{"auroc", "accuracy", "sensitivity", "specificity", "confusion_matrix" (K, K) list, "n"}``."""
        s, y = self._arrays()
        pred = self._predict(s)
        return {
            "auroc": _cls.auroc(s, y),
            "accuracy": _cls.accuracy(pred, y),
            "sensitivity": _cls.sensitivity(pred, y, self.num_classes),
            "specificity": _cls.specificity(pred, y, self.num_classes),
            "confusion_matrix": _cls.confusion_matrix(pred, y, self.num_classes).tolist(),
            "n": int(y.size),
        }


class DetectionAccumulator:
    """Collects boxes per case; FROC and mAP over all cases.

    Args:
      froc_iou_threshold: IoU at which a prediction hits a reference for FROC.
      fps_per_case: false-positive rates for FROC.
      iou_thresholds: IoU thresholds for mAP.
    """

    def __init__(self, froc_iou_threshold: float = 0.1, fps_per_case: Sequence[float] = _det.DEFAULT_FPS_PER_CASE,
                 iou_thresholds: Sequence[float] = (0.1, 0.25, 0.5)):
        self.froc_iou_threshold = float(froc_iou_threshold)
        self.fps_per_case = tuple(float(v) for v in fps_per_case)
        self.iou_thresholds = tuple(float(v) for v in iou_thresholds)
        self.reset()

    def reset(self) -> None:
        self._pred: list[np.ndarray] = []
        self._scores: list[np.ndarray] = []
        self._ref: list[np.ndarray] = []
        self._ids: list[str] = []

    def update(self, pred_boxes, scores, ref_boxes, case_id: str | None = None) -> None:
        """Add one case: ``pred_boxes (N, 6)``, ``scores (N,)``, ``ref_boxes (M, 6)`` (same frame, e.g. mm)."""
        p = _det._boxes(pred_boxes, "pred_boxes")
        s = np.asarray(scores, dtype=np.float64).reshape(-1)
        r = _det._boxes(ref_boxes, "ref_boxes")
        if p.shape[0] != s.shape[0]:
            raise ValueError(f"case {case_id}: {p.shape[0]} predicted boxes but {s.shape[0]} scores")
        self._pred.append(p)
        self._scores.append(s)
        self._ref.append(r)
        self._ids.append(str(case_id) if case_id is not None else str(len(self._ids)))

    def per_case(self) -> list[dict]:
        """``{"case", "num_pred", "num_ref", "num_hit_refs"}`` per case (hit: IoU >= the FROC threshold)."""
        rows = []
        for c, p, r in zip(self._ids, self._pred, self._ref):
            hit = _det.iou3d(p, r) >= self.froc_iou_threshold
            rows.append({"case": c, "num_pred": int(p.shape[0]), "num_ref": int(r.shape[0]),
                         "num_hit_refs": int(hit.any(axis=0).sum())})
        return rows

    def aggregate(self) -> dict:
        """``{"froc": froc(...) dict, "mAP": float, "AP": {iou: AP}}``."""
        fr = _det.froc(self._pred, self._scores, self._ref, self.froc_iou_threshold, self.fps_per_case)
        m = _det.mean_ap(self._pred, self._scores, self._ref, self.iou_thresholds)
        return {"froc": fr, "mAP": m["mAP"], "AP": m["AP"]}
