"""Classification metrics: AUROC (rank-based), accuracy, sensitivity, specificity, confusion matrix.

Pure numpy. Labels are integer class indices ``(N,)`` in ``[0, K)``; predictions for accuracy/sensitivity/
specificity are class indices ``(N,)``; scores for AUROC are ``(N,)`` (binary: score of class 1) or ``(N, K)``
(one column per class, e.g. softmax probabilities or logits), and AUROC also takes multi-label targets
``(N, K)`` of 0/1.

Binary vs multi-class: with ``K == 2`` classes the positive class is 1 and sensitivity/specificity are those of
class 1; with ``K > 2`` they are macro averages of the one-vs-rest values over classes. Undefined values (a class
without any positive or any negative example) are NaN, with a ``RuntimeWarning`` naming the class.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.stats import rankdata

__all__ = ["auroc", "accuracy", "sensitivity", "specificity", "confusion_matrix"]


def _labels(labels, name: str = "labels") -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"{name}: expected class indices (N,), got shape {y.shape}")
    if y.size and (not np.all(np.equal(np.mod(y, 1), 0)) or y.min() < 0):
        raise ValueError(f"{name}: expected non-negative integer class indices")
    return y.astype(np.int64)


def _num_classes(num_classes: int | None, *arrays: np.ndarray) -> int:
    if num_classes is not None:
        for a in arrays:
            if a.size and a.max() >= num_classes:
                raise ValueError(f"class index {int(a.max())} >= num_classes={num_classes}")
        return int(num_classes)
    return max(2, max((int(a.max()) + 1 for a in arrays if a.size), default=2))


def confusion_matrix(pred, labels, num_classes: int | None = None) -> np.ndarray:
    """Confusion matrix ``(K, K)`` int64: rows are the true class, columns the predicted class."""
    p, y = _labels(pred, "pred"), _labels(labels)
    if p.shape != y.shape:
        raise ValueError(f"pred shape {p.shape} differs from labels shape {y.shape}")
    k = _num_classes(num_classes, p, y)
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (y, p), 1)
    return cm


def accuracy(pred, labels) -> float:
    """Fraction of predictions equal to the label; NaN for no samples."""
    p, y = _labels(pred, "pred"), _labels(labels)
    if p.shape != y.shape:
        raise ValueError(f"pred shape {p.shape} differs from labels shape {y.shape}")
    return float(np.mean(p == y)) if y.size else float("nan")


def _per_class(cm: np.ndarray, kind: str) -> np.ndarray:
    """One-vs-rest sensitivity or specificity per class ``(K,)``; NaN where the denominator is zero."""
    tp = np.diag(cm)
    fn = cm.sum(axis=1) - tp
    fp = cm.sum(axis=0) - tp
    tn = cm.sum() - tp - fn - fp
    num, den = (tp, tp + fn) if kind == "sensitivity" else (tn, tn + fp)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1), np.nan).astype(np.float64)


def _reduce(cm: np.ndarray, kind: str) -> float:
    vals = _per_class(cm, kind)
    k = cm.shape[0]
    what = "positives" if kind == "sensitivity" else "negatives"
    if k == 2:
        if np.isnan(vals[1]):
            warnings.warn(f"{kind} is undefined: no {what} of class 1 in the labels; reported as NaN",
                          RuntimeWarning, stacklevel=3)
        return float(vals[1])
    bad = [c for c in range(k) if np.isnan(vals[c])]
    if bad:
        warnings.warn(f"{kind} is undefined for classes {bad} (no {what} in the labels); left out of the macro "
                      "mean", RuntimeWarning, stacklevel=3)
    return float(np.nanmean(vals)) if len(bad) < k else float("nan")


def sensitivity(pred, labels, num_classes: int | None = None) -> float:
    """Sensitivity (recall, TP / (TP + FN)): of class 1 when binary, macro mean over classes when ``K > 2``."""
    return _reduce(confusion_matrix(pred, labels, num_classes), "sensitivity")


def specificity(pred, labels, num_classes: int | None = None) -> float:
    """Specificity (TN / (TN + FP)): of class 1 when binary, macro mean of one-vs-rest values when ``K > 2``."""
    return _reduce(confusion_matrix(pred, labels, num_classes), "specificity")


def _binary_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Mann-Whitney AUC with average ranks for ties; NaN when one class is absent."""
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores, method="average")
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


AVERAGES = ("macro", "weighted", "micro", None)


def _indicator(labels, k: int) -> tuple[np.ndarray, bool]:
    """``(Y, multi_label)``: ``(N, K)`` bool targets from class indices ``(N,)`` (one-hot) or a 0/1 ``(N, K)``
    matrix."""
    y = np.asarray(labels)
    if y.ndim == 2:
        if y.shape[1] != k:
            raise ValueError(f"labels: multi-label targets (N, C) need one column per score column; got {y.shape[1]} "
                             f"columns for K={k} scores")
        if y.size and not np.all((y == 0) | (y == 1)):
            raise ValueError("labels: multi-label targets (N, C) must hold only 0 and 1")
        return y.astype(bool), True
    y = _labels(labels)
    if y.size and y.max() >= k:
        raise ValueError(f"label {int(y.max())} has no score column (scores have K={k} columns)")
    return y[:, None] == np.arange(k)[None, :], False


def auroc(scores, labels, average: str | None = "macro") -> float | np.ndarray:
    """Area under the ROC curve, rank-based (Mann-Whitney; ties count one half).

    Args:
      scores: ``(N,)`` score of the positive class (binary labels 0/1), or ``(N, K)`` one score per class or label
        (probabilities or logits).
      labels: ``(N,)`` integer class indices (binary: 0/1; with ``(N, K)`` scores each class ``c`` is scored one
        vs rest on column ``c``), or ``(N, K)`` 0/1 multi-label targets (column ``c`` against score column ``c``).
      average: for ``(N, K)`` scores, ``K >= 2`` (including ``K == 2``): ``"macro"`` is the unweighted mean of the
        K one-vs-rest AUROCs; ``"weighted"`` weights them by the number of positives of each class; ``"micro"``
        is the AUROC of all ``N * K`` (score, target) pairs pooled; ``None`` returns the per-class vector ``(K,)``.
        These are scikit-learn's ``roc_auc_score`` definitions (``multi_class="ovr"``) and MONAI's
        ``compute_roc_auc``. With two softmax columns both classes' AUROCs are equal, so "macro" is the binary
        AUROC; with logits it averages the two. Ignored for ``(N,)`` scores.
    Returns:
      the AUROC in [0, 1]; NaN, with a ``RuntimeWarning`` naming the class, when a class has no positive or no
      negative example (the ROC curve does not exist then); such classes are left out of "macro"/"weighted".
    """
    if average not in AVERAGES:
        raise ValueError(f"average must be one of {AVERAGES}, got {average!r}")
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim not in (1, 2):
        raise ValueError(f"scores: expected (N,) or (N, K), got shape {s.shape}")
    n_labels = np.asarray(labels).shape[0] if np.ndim(labels) else 0
    if s.shape[0] != n_labels:
        raise ValueError(f"scores have {s.shape[0]} rows but labels have {n_labels}")
    if s.ndim == 1:
        y = _labels(labels)
        if y.size and y.max() > 1:
            raise ValueError("1-D scores need binary labels (0/1); give (N, K) scores for K classes")
        auc = _binary_auc(s, y == 1)
        if np.isnan(auc):
            warnings.warn("AUROC is undefined: the labels contain only one class; reported as NaN",
                          RuntimeWarning, stacklevel=2)
        return auc
    k = s.shape[1]
    if k < 2 and np.asarray(labels).ndim == 1:
        raise ValueError("(N, 1) scores: give (N,) scores for a binary problem")
    y, multi = _indicator(labels, k)
    if average == "micro":
        auc = _binary_auc(s.reshape(-1), y.reshape(-1))
        if np.isnan(auc):
            warnings.warn("micro AUROC is undefined: every target is positive or every target is negative",
                          RuntimeWarning, stacklevel=2)
        return auc
    per = np.array([_binary_auc(s[:, c], y[:, c]) for c in range(k)])
    missing = [c for c in range(k) if np.isnan(per[c])]
    if missing:
        what = "labels" if multi else "classes"
        warnings.warn(f"AUROC is undefined for {what} {missing} (no positive or no negative example); they are NaN "
                      "and left out of the average", RuntimeWarning, stacklevel=2)
    if average is None:
        return per
    if len(missing) == k:
        return float("nan")
    ok = ~np.isnan(per)
    if average == "weighted":
        w = y.sum(axis=0)[ok].astype(np.float64)
        return float(np.sum(per[ok] * w) / np.sum(w))
    return float(np.mean(per[ok]))
