"""3D detection metrics: box IoU, non-maximum suppression, FROC and average precision.

Boxes are ``(N, 6)`` arrays ``[x0, y0, z0, x1, y1, z1]`` with ``x0 <= x1`` etc., in world millimetres (RAS+) or
in voxels; the metrics only need all boxes of one case in the same frame. Box volume is
``(x1 - x0) * (y1 - y0) * (z1 - z0)`` (continuous coordinates, no ``+1``).

Matching rules:

- :func:`froc` (LUNA16 / MONAI ``compute_froc_curve_data`` style): a prediction is a false positive when its IoU
  with every reference box of its case is below ``iou_threshold``; a prediction that hits (IoU >= threshold) one
  or more references is never a false positive, and each reference is detected at the highest score of the
  predictions hitting it (extra hits on the same lesion are ignored). Lowering the score threshold through every
  distinct score traces the FROC curve (:func:`froc_curve`): points ``(mean FP per case, sensitivity)`` from
  ``(0, 0)`` at threshold ``+inf`` down to the lowest score. The sensitivity at a rate of ``r`` false positives per
  case is read off that curve by linear interpolation between its points (:func:`froc_sensitivity`), as the
  LUNA16 evaluation script (``np.interp`` over the curve from scikit-learn's ``roc_curve``) and MONAI
  ``compute_froc_score`` do; where the curve is vertical at ``r`` the top of that segment counts, and beyond the
  curve's last point the sensitivity stays at its final value. The score is the mean over the rates (LUNA16:
  1/8, 1/4, 1/2, 1, 2, 4, 8). MONAI's ``compute_froc_curve_data`` leaves out the curve's lowest threshold (it
  expects the score 0 of missed lesions there); the two agree whenever a lesion is missed.
- :func:`average_precision` (PASCAL VOC / COCO style): predictions of all cases are visited in order of
  decreasing score (ties keep case order, then box order); each is a true positive when it matches, with IoU >=
  threshold, a not-yet-matched reference of its case (the one of highest IoU), else a false positive. AP is the
  area under the precision envelope (all-point interpolation).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

__all__ = ["iou3d", "nms3d", "nms3d_padded", "froc", "froc_curve", "froc_sensitivity", "average_precision",
           "mean_ap"]

DEFAULT_FPS_PER_CASE = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def _boxes(b, name: str = "boxes") -> np.ndarray:
    a = np.asarray(b, dtype=np.float64)
    if a.size == 0:
        return a.reshape(0, 6)
    if a.ndim != 2 or a.shape[1] != 6:
        raise ValueError(f"{name}: expected (N, 6) boxes [x0, y0, z0, x1, y1, z1], got shape {a.shape}")
    if np.any(a[:, 3:] < a[:, :3]):
        raise ValueError(f"{name}: every box needs x0 <= x1, y0 <= y1, z0 <= z1")
    return a


def iou3d(a, b) -> np.ndarray:
    """Pairwise intersection-over-union ``(N, M)`` of boxes ``a (N, 6)`` and ``b (M, 6)``; 0 where both are empty."""
    a, b = _boxes(a, "a"), _boxes(b, "b")
    lo = np.maximum(a[:, None, :3], b[None, :, :3])
    hi = np.minimum(a[:, None, 3:], b[None, :, 3:])
    inter = np.prod(np.clip(hi - lo, 0.0, None), axis=-1)
    va = np.prod(a[:, 3:] - a[:, :3], axis=-1)
    vb = np.prod(b[:, 3:] - b[:, :3], axis=-1)
    union = va[:, None] + vb[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def nms3d(boxes, scores, iou_threshold: float = 0.5) -> np.ndarray:
    """Greedy non-maximum suppression.

    Args:
      boxes: ``(N, 6)``; scores: ``(N,)``.
      iou_threshold: a box is dropped when its IoU with a higher-scoring kept box is ``> iou_threshold``.
    Returns:
      int64 indices into ``boxes`` of the kept boxes, by decreasing score (ties: lower index first).
    """
    b = _boxes(boxes)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if s.shape[0] != b.shape[0]:
        raise ValueError(f"{b.shape[0]} boxes but {s.shape[0]} scores")
    order = np.argsort(-s, kind="stable")
    iou = iou3d(b[order], b[order])
    suppressed = np.zeros(len(order), dtype=bool)
    keep = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(order[i])
        suppressed |= iou[i] > iou_threshold
    return np.asarray(keep, dtype=np.int64)


def nms3d_padded(boxes, scores, iou_threshold: float = 0.5, max_output: int = 100):
    """Jittable greedy NMS with a fixed output size (JAX); same selection as :func:`nms3d`.

    Args:
      boxes: ``(N, 6)`` jax or numpy array; scores: ``(N,)``. Entries with score ``-inf`` are padding and never
        kept.
      iou_threshold: suppression threshold (IoU ``>`` threshold suppresses).
      max_output: static number of output slots.
    Returns:
      ``(indices, valid)``: ``(max_output,)`` int32 indices into ``boxes`` by decreasing score, ``-1`` in unused
      slots, and the ``(max_output,)`` bool mask of used slots.
    """
    import jax
    import jax.numpy as jnp

    boxes = jnp.asarray(boxes, dtype=jnp.float32)
    scores = jnp.asarray(scores, dtype=jnp.float32)
    n = boxes.shape[0]
    order = jnp.argsort(-scores, stable=True)
    b = boxes[order]
    lo = jnp.maximum(b[:, None, :3], b[None, :, :3])
    hi = jnp.minimum(b[:, None, 3:], b[None, :, 3:])
    inter = jnp.prod(jnp.clip(hi - lo, 0.0), axis=-1)
    vol = jnp.prod(b[:, 3:] - b[:, :3], axis=-1)
    union = vol[:, None] + vol[None, :] - inter
    iou = jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 0.0)
    usable = scores[order] > -jnp.inf  # -inf (padding) and NaN are never kept
    idx = jnp.arange(n)

    def body(i, keep):
        suppressed = jnp.any(keep & (iou[:, i] > iou_threshold) & (idx < i))
        return keep.at[i].set(usable[i] & ~suppressed)

    keep = jax.lax.fori_loop(0, n, body, jnp.zeros((n,), dtype=bool))
    (slots,) = jnp.nonzero(keep, size=max_output, fill_value=n)
    valid = slots < n
    indices = jnp.where(valid, order[jnp.minimum(slots, n - 1)], -1).astype(jnp.int32)
    return indices, valid


def _cases(pred_boxes_per_case, scores_per_case, ref_boxes_per_case):
    preds = [_boxes(b, f"pred_boxes_per_case[{i}]") for i, b in enumerate(pred_boxes_per_case)]
    scores = [np.asarray(s, dtype=np.float64).reshape(-1) for s in scores_per_case]
    refs = [_boxes(b, f"ref_boxes_per_case[{i}]") for i, b in enumerate(ref_boxes_per_case)]
    if not (len(preds) == len(scores) == len(refs)):
        raise ValueError(f"got {len(preds)} cases of predicted boxes, {len(scores)} of scores and {len(refs)} of "
                         "reference boxes; give one entry per case to each (an empty (0, 6) array for none)")
    for i, (b, s) in enumerate(zip(preds, scores)):
        if b.shape[0] != s.shape[0]:
            raise ValueError(f"case {i}: {b.shape[0]} predicted boxes but {s.shape[0]} scores")
    return preds, scores, refs


def froc_curve(fp_scores, ref_scores, num_cases: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The FROC curve: one point per distinct score threshold, from ``+inf`` (no detections) downwards.

    Args:
      fp_scores: ``(F,)`` scores of the false-positive predictions of all cases (``-inf``: padding, never counted).
      ref_scores: ``(M,)`` per reference lesion the score at which it is detected (the best score of the
        predictions hitting it), ``-inf`` for a lesion no prediction hits. ``M > 0``.
      num_cases: number of cases (scans) the false positives are spread over (> 0).
    Returns:
      ``(fps_per_case, sensitivity, thresholds)``, each ``(P,)`` float64: at ``thresholds[i]`` (``+inf``, then every
      distinct finite score in decreasing order) the mean false positives per case and the fraction of lesions
      with a score ``>= thresholds[i]``. Both curves are non-decreasing and start at ``(0, 0)``.
    """
    fp = np.asarray(fp_scores, dtype=np.float64).reshape(-1)
    det = np.asarray(ref_scores, dtype=np.float64).reshape(-1)
    if np.isnan(fp).any() or np.isnan(det).any():
        raise ValueError("FROC scores contain NaN; give finite scores (-inf marks a lesion that is never detected)")
    if det.size == 0:
        raise ValueError("the FROC curve needs at least one reference lesion")
    if int(num_cases) <= 0:
        raise ValueError(f"num_cases must be > 0, got {num_cases}")
    top = np.finfo(np.float64).max  # +inf counts at every threshold; -inf (padding, a miss) at none
    fp = np.minimum(fp[fp > -np.inf], top)
    det = np.minimum(det, top)
    finite = np.concatenate([fp, det[np.isfinite(det)]])
    thresholds = np.concatenate([[np.inf], np.unique(finite)[::-1]])
    # counts of scores >= t for every threshold t (searchsorted on the sorted scores)
    fps = (fp.size - np.searchsorted(np.sort(fp), thresholds, side="left")) / float(num_cases)
    sens = (det.size - np.searchsorted(np.sort(det), thresholds, side="left")) / float(det.size)
    return fps, sens, thresholds


def froc_sensitivity(fps_per_case, sensitivity, rates: Sequence[float] = DEFAULT_FPS_PER_CASE) -> np.ndarray:
    """Sensitivity at each false-positive rate, linearly interpolated along a FROC curve.

    Args:
      fps_per_case, sensitivity: ``(P,)`` curve points in curve order (both non-decreasing, first point at
        ``fps_per_case == 0``), e.g. from :func:`froc_curve`.
      rates: false positives per case at which to read the curve (finite, ``>= 0``).
    Returns:
      ``(len(rates),)`` float64: at rate ``r``, the interpolation between the last point with ``fps <= r`` (the top
      of a vertical segment) and the next point; the last point's sensitivity beyond the curve's end.
    """
    f = np.asarray(fps_per_case, dtype=np.float64).reshape(-1)
    s = np.asarray(sensitivity, dtype=np.float64).reshape(-1)
    r = np.asarray(rates, dtype=np.float64).reshape(-1)
    if f.shape != s.shape or f.size == 0:
        raise ValueError(f"a FROC curve needs matching non-empty fps and sensitivity vectors; got {f.shape}, {s.shape}")
    if np.any(np.diff(f) < 0) or f[0] != 0:
        raise ValueError("fps_per_case must start at 0 and never decrease along the curve")
    if not np.all(np.isfinite(r)) or np.any(r < 0):
        raise ValueError(f"FROC rates must be finite false positives per case >= 0, got {r.tolist()}")
    lo = np.searchsorted(f, r, side="right") - 1  # last point with fps <= r
    hi = np.minimum(lo + 1, f.size - 1)
    span = f[hi] - f[lo]
    w = np.divide(r - f[lo], span, out=np.zeros_like(r), where=span > 0)
    return s[lo] + w * (s[hi] - s[lo])


def froc(
    pred_boxes_per_case: Sequence,
    scores_per_case: Sequence,
    ref_boxes_per_case: Sequence,
    iou_threshold: float = 0.1,
    fps_per_case: Sequence[float] = DEFAULT_FPS_PER_CASE,
) -> dict:
    """Free-response ROC: sensitivity at given mean false positives per case (see the module docstring).

    Args:
      pred_boxes_per_case: per case a ``(N_i, 6)`` array of predicted boxes.
      scores_per_case: per case ``(N_i,)`` scores.
      ref_boxes_per_case: per case a ``(M_i, 6)`` array of reference boxes.
      iou_threshold: a prediction hits a reference when IoU >= this.
      fps_per_case: false-positive rates at which the sensitivity is read (LUNA16: 1/8 ... 8).
    Returns:
      ``{"fps_per_case": [...], "sensitivity": [...] (one per rate, interpolated along the curve), "score": mean
      sensitivity, "num_refs": int, "num_cases": int}``; sensitivities are NaN (with a warning) without reference
      boxes.
    """
    preds, scores, refs = _cases(pred_boxes_per_case, scores_per_case, ref_boxes_per_case)
    fp_scores, ref_scores = [], []
    for b, s, r in zip(preds, scores, refs):
        hit = iou3d(b, r) >= iou_threshold  # (N_i, M_i)
        fp_scores.append(s[~hit.any(axis=1)])
        # each reference is detected at the best score among the predictions hitting it (-inf: never)
        ref_scores.append(np.max(np.where(hit, s[:, None], -np.inf), axis=0, initial=-np.inf))
    fp = np.concatenate(fp_scores) if fp_scores else np.zeros(0)
    det = np.concatenate(ref_scores) if ref_scores else np.zeros(0)
    n_cases, n_refs = len(preds), det.size
    rates = [float(r) for r in fps_per_case]
    if n_refs == 0:
        warnings.warn("FROC is undefined without reference boxes; sensitivities are NaN", RuntimeWarning,
                      stacklevel=2)
        sens = [float("nan")] * len(rates)
        return {"fps_per_case": rates, "sensitivity": sens, "score": float("nan"), "num_refs": 0,
                "num_cases": n_cases}
    curve_fps, curve_sens, _ = froc_curve(fp, det, n_cases)
    sens = [float(v) for v in froc_sensitivity(curve_fps, curve_sens, rates)]
    return {"fps_per_case": rates, "sensitivity": sens, "score": float(np.mean(sens)), "num_refs": int(n_refs),
            "num_cases": n_cases}


def average_precision(
    pred_boxes_per_case: Sequence,
    scores_per_case: Sequence,
    ref_boxes_per_case: Sequence,
    iou_threshold: float = 0.5,
) -> float:
    """Average precision at one IoU threshold (greedy matching, all-point interpolation; module docstring).

    Returns NaN (with a warning) when there are no reference boxes.
    """
    preds, scores, refs = _cases(pred_boxes_per_case, scores_per_case, ref_boxes_per_case)
    n_refs = sum(r.shape[0] for r in refs)
    if n_refs == 0:
        warnings.warn("average precision is undefined without reference boxes; reported as NaN", RuntimeWarning,
                      stacklevel=2)
        return float("nan")
    ious = [iou3d(b, r) for b, r in zip(preds, refs)]
    case_of = np.concatenate([np.full(b.shape[0], i) for i, b in enumerate(preds)] + [np.zeros(0, int)])
    box_of = np.concatenate([np.arange(b.shape[0]) for b in preds] + [np.zeros(0, int)])
    all_scores = np.concatenate(scores + [np.zeros(0)])
    order = np.argsort(-all_scores, kind="stable")
    matched = [np.zeros(r.shape[0], dtype=bool) for r in refs]
    tp = np.zeros(order.size)
    for rank, k in enumerate(order):
        c, i = int(case_of[k]), int(box_of[k])
        if refs[c].shape[0] == 0:
            continue
        cand = np.where(matched[c], -1.0, ious[c][i])
        j = int(np.argmax(cand))
        if cand[j] >= iou_threshold:
            matched[c][j] = True
            tp[rank] = 1.0
    ctp = np.cumsum(tp)
    cfp = np.cumsum(1.0 - tp)
    recall = ctp / n_refs
    precision = ctp / np.maximum(ctp + cfp, 1e-12)
    # precision envelope: best precision at any recall >= r
    mrec = np.concatenate([[0.0], recall])
    mpre = np.concatenate([[0.0], precision])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.nonzero(mrec[1:] != mrec[:-1])[0] + 1
    return float(np.sum((mrec[steps] - mrec[steps - 1]) * mpre[steps]))


def mean_ap(
    pred_boxes_per_case: Sequence,
    scores_per_case: Sequence,
    ref_boxes_per_case: Sequence,
    iou_thresholds: Sequence[float] = (0.1, 0.25, 0.5),
) -> dict:
    """Average precision at several IoU thresholds and their mean.

    Returns:
      ``{"mAP": mean over thresholds, "AP": {threshold: AP}}``.
    """
    aps = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for t in iou_thresholds:
            aps[float(t)] = average_precision(pred_boxes_per_case, scores_per_case, ref_boxes_per_case, t)
    vals = np.array(list(aps.values()))
    if np.isnan(vals).all():
        warnings.warn("mAP is undefined without reference boxes; reported as NaN", RuntimeWarning, stacklevel=2)
    return {"mAP": float(np.mean(vals)) if vals.size else float("nan"), "AP": aps}
