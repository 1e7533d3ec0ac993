"""Held-out evaluation of a fine-tuned model on whole volumes (preprocessed grid, as in training).

- segmentation: Dice per foreground label (mean over volumes) and their mean, from sliding-window predictions;
  and the global Dice per label, 2·ΣTP / (Σpredicted + Σreference) with the sums over every held-out volume
  (``global_dice``: the mean over labels; the "Dice global" of lesion benchmarks such as LiTS). The per-volume
  mean scores a lesion-free volume 1 or 0 by whether anything is predicted in it, so with small lesions it mostly
  counts empty predictions; the global Dice measures how much lesion is found, and is 0 when nothing is;
- classification: accuracy, sensitivity, specificity and AUROC of the volume-level predictions against the
  record's ``class`` (or, with ``class_from_label``, whether its label map holds an object); with
  ``class_from_label`` also the window level (``window_auroc``, ``window_accuracy``, ``windows``,
  ``window_positives``): every sliding window of every held-out volume against whether it holds an object, the
  question the model was trained on. A volume score is the maximum over tens of windows, so a window classifier
  needs few false positives before the volume AUROC rises above chance; the window AUROC shows what it learned;
- detection: average precision and FROC sensitivities (IoU >= 0.1) of the predicted boxes against the boxes of
  the record's label map, in world millimetres; with several classes per class (a prediction is matched only to
  references of its class) and ``ap_iou0.1`` their mean over the classes that have references.
"""

from __future__ import annotations

import numpy as np


def window_classes(label: np.ndarray, positions, window, min_voxels: int, spatial_dims: int = 3,
                   slice_axis: int = 2) -> np.ndarray:
    """Crop targets of sliding windows, as in training with ``class_from_label``: 1 when the window of the
    label map holds at least ``min_voxels`` foreground voxels.

    Args:
      label: label map of the preprocessed volume, ``(X, Y, Z)`` (or with a trailing channel axis of 1).
      positions: ``(slice index, starts)`` per window from :meth:`Predictor.window_probs`.
      window: window size (spatial_dims sides); the label is zero-padded like the volume.
      spatial_dims, slice_axis: 2D models see slices along ``slice_axis``.

    Returns ``(W,)`` int64.
    """
    lab = np.asarray(label)
    if lab.ndim == 4:
        lab = lab[..., 0]
    lab = lab[None] if spatial_dims == 3 else np.moveaxis(lab, slice_axis, 0)
    fg = lab > 0
    out = []
    for n, starts in positions:
        crop = fg[(n, *(slice(s, s + w) for s, w in zip(starts, window)))]
        out.append(int(crop.sum() >= min_voxels))
    return np.asarray(out, np.int64)


def _of_class(arrays: list, labels: list, k: int) -> list:
    """Per case, the rows of ``arrays[i]`` whose ``labels[i]`` is ``k``."""
    return [np.asarray(a)[np.asarray(c) == k] for a, c in zip(arrays, labels)]


def evaluate_records(cfg, model_def, params, model_state, records: list[dict]) -> dict:
    """Metrics dict (JSON-safe) of the model on ``records`` (see module doc); ``cases`` lists per-volume values."""
    from medjax.evaluation import accumulators as acc
    from medjax.finetune.predict import Predictor, preprocess_record, voxel_boxes_to_world
    from medjax.finetune.tasks import object_boxes

    pred = Predictor(cfg, model_def, params, model_state)
    ft = cfg.finetune
    cases = []
    if cfg.task == "segmentation":
        from medjax.evaluation.segmentation import dice_from_counts, overlap_counts

        per_label: dict[int, list[float]] = {k: [] for k in range(1, ft.num_classes)}
        sums = {k: np.zeros(3, np.int64) for k in per_label}  # (true positives, predicted, reference) voxels
        for r in records:
            s = preprocess_record(cfg, r)
            labels = pred.segment(s["image"]).argmax(-1)
            ref = np.asarray(s["label"])
            counts = [(k, overlap_counts(labels == k, ref == k)) for k in per_label]
            d = {k: dice_from_counts(*c) for k, c in counts}
            for k, c in counts:
                per_label[k].append(d[k])
                sums[k] += c
            cases.append({"id": r["id"], "dice": d,
                          "voxels": {str(k): {"predicted": c[1], "reference": c[2]} for k, c in counts}})
        means = {str(k): float(np.nanmean(v)) for k, v in per_label.items()}
        glob = {str(k): dice_from_counts(*c) for k, c in sums.items()}
        return {"task": "segmentation", "mean_dice": float(np.nanmean(list(means.values()))),
                "dice_per_label": means, "global_dice": float(np.mean(list(glob.values()))),
                "global_dice_per_label": glob, "cases": cases}
    if cfg.task == "classification":
        from medjax.evaluation.classification import accuracy, auroc, sensitivity, specificity

        scores, truth = [], []
        win_scores, win_truth = [], []
        for r in records:
            s = preprocess_record(cfg, r)
            wp, positions = pred.window_probs(s["image"])
            p = pred.volume_probs(wp)
            if ft.class_from_label:
                label = np.asarray(s["label"])
                y = int(len(object_boxes(label, ft.min_object_voxels)) > 0)
                win_scores.append(wp)
                win_truth.append(window_classes(label, positions, pred.window, ft.min_object_voxels,
                                                cfg.data.spatial_dims, cfg.data.slice_axis))
            else:
                y = r["class"]
            scores.append(p)
            truth.append(y)
            cases.append({"id": r["id"], "probs": [float(v) for v in p], "class": y})
        scores = np.stack(scores)
        if ft.multi_label:
            y = np.asarray(truth, np.int64)
            return acc.json_safe({"task": "classification", "auroc": auroc(scores, y),
                                  "accuracy": float(((scores > 0.5) == y).mean()), "cases": cases})
        y = np.asarray(truth, np.int64)
        hard = scores.argmax(-1)
        both = len(set(y.tolist())) > 1
        out = {"task": "classification", "accuracy": accuracy(hard, y),
               "sensitivity": sensitivity(hard, y, ft.num_classes), "specificity": specificity(hard, y, ft.num_classes),
               "auroc": (auroc(scores[:, 1], y) if ft.num_classes == 2 else auroc(scores, y)) if both else None,
               "cases": cases}
        if win_scores:  # window level: every sliding window of the held-out volumes, target from its label map
            ws, wy = np.concatenate(win_scores), np.concatenate(win_truth)
            out.update({"windows": int(len(wy)), "window_positives": int(wy.sum()),
                        "window_accuracy": accuracy(ws.argmax(-1), wy),
                        "window_auroc": auroc(ws[:, 1], wy) if 0 < wy.sum() < len(wy) else None})
        return acc.json_safe(out)
    from medjax.evaluation.detection import average_precision, froc
    from medjax.finetune.tasks import label_objects

    k_classes = max(int(ft.num_classes), 1)
    pb, ps, pc, rb, rc = [], [], [], [], []
    for r in records:
        s = preprocess_record(cfg, r)
        boxes, scores, classes = pred.detect(s["image"])
        world = voxel_boxes_to_world(boxes, s["affine"])
        ref_boxes, ref_classes = label_objects(np.asarray(s["label"]), ft.min_object_voxels, k_classes)
        ref = voxel_boxes_to_world(ref_boxes, s["affine"])
        pb.append(world)
        ps.append(scores)
        pc.append(np.asarray(classes))
        rb.append(ref)
        rc.append(ref_classes)
        cases.append({"id": r["id"], "predicted": len(world), "reference": len(ref),
                      "top_score": float(scores[0]) if len(scores) else None})
    if k_classes == 1:
        ap = average_precision(pb, ps, rb, iou_threshold=0.1)
        fr = froc(pb, ps, rb, iou_threshold=0.1)
        return acc.json_safe({"task": "detection", "ap_iou0.1": ap, "froc": fr, "cases": cases})
    # several classes: a prediction counts only against references of its own class; the headline AP is the mean
    # over the classes that have references (classes without any are reported as None and left out)
    per_class = {}
    for k in range(k_classes):
        refs_k = _of_class(rb, rc, k)
        if not sum(len(x) for x in refs_k):
            per_class[str(k)] = {"ap_iou0.1": None, "froc": None, "reference": 0}
            continue
        pred_k, scores_k = _of_class(pb, pc, k), _of_class(ps, pc, k)
        per_class[str(k)] = {"ap_iou0.1": average_precision(pred_k, scores_k, refs_k, iou_threshold=0.1),
                             "froc": froc(pred_k, scores_k, refs_k, iou_threshold=0.1),
                             "reference": int(sum(len(x) for x in refs_k))}
    aps = [v["ap_iou0.1"] for v in per_class.values() if v["ap_iou0.1"] is not None]
    return acc.json_safe({"task": "detection", "ap_iou0.1": float(np.mean(aps)) if aps else None,
                          "per_class": per_class, "cases": cases})
