"""``medjax predict``: a fine-tuned checkpoint applied to a folder of volumes, outputs in the ORIGINAL space.

- segmentation: ``OUT/<id>.nii.gz`` uint8 label maps with exactly the input's shape and affine (qform and sform
  set from the input's affine, millimetre units), and nothing else from the input header (no description, no
  patient fields);
- classification: ``OUT/predictions.csv`` and ``.json`` (id, predicted class, per-class probabilities);
- detection: ``OUT/boxes.csv`` and ``.json`` (id, score, class, world box in RAS+ mm, and the box in continuous
  voxel indices of the input file), clipped to the input's field of view (padding added for the window is not
  reported).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np

from medjax.errors import CheckpointError


def load_finetuned(checkpoint):
    """``(cfg, model_def, params, model_state, step)`` of a fine-tuning checkpoint (workdir or step folder), the
    arrays read onto the default device (only the parameters and model state; no optimizer state)."""

    from medjax.config.overrides import from_dict
    from medjax.config.schema import Config
    from medjax.finetune.tasks import TASKS, build_task_model
    from medjax.training.restore import open_checkpoint, restore_model
    from medjax.training.state import abstract_model, split_model

    saved = open_checkpoint(checkpoint)
    if not saved.meta.get("config"):
        raise CheckpointError(f"{checkpoint}: checkpoint has no saved config; was it written by `medjax finetune`?")
    cfg = from_dict(Config, saved.meta["config"])
    if cfg.task not in TASKS:
        raise CheckpointError(f"{checkpoint}: task={cfg.task!r} is not a fine-tuned model; pass a `medjax finetune` "
                              "workdir")
    model_def, abs_params, abs_ms = abstract_model(lambda: build_task_model(cfg))
    if saved.meta.get("peft"):  # a PEFT checkpoint: its trainable parameters over the base it references
        from medjax.peft.checkpoint import restore_saved_params

        params, model_state = restore_saved_params(cfg, saved, abs_params, abs_ms,
                                                   lambda: split_model(build_task_model(cfg))[1])
    else:
        params, model_state, _ = restore_model(saved, abs_params, abs_ms)
    return cfg, model_def, params, model_state or {}, saved.step


def _boxes_in_input(world: np.ndarray, shape, affine) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World boxes (N, 6) clipped to the input's field of view: ``(world, voxel, keep)`` with voxel boxes in
    continuous indices of the input (within ``[-0.5, shape - 0.5]``), world boxes the part of the original box
    inside that field of view, and ``keep`` (N,) bool (boxes entirely outside are dropped)."""
    from medjax.finetune.predict import voxel_boxes_to_world, world_boxes_to_voxel

    vox = world_boxes_to_voxel(world, affine)
    hi = np.asarray(shape[:3], np.float64) - 0.5
    vox = np.concatenate([np.clip(vox[:, :3], -0.5, hi), np.clip(vox[:, 3:], -0.5, hi)], axis=1)
    keep = np.all(vox[:, 3:] > vox[:, :3], axis=1)
    inside = voxel_boxes_to_world(vox[keep], affine)
    w = world[keep]
    w = np.concatenate([np.maximum(w[:, :3], inside[:, :3]), np.minimum(w[:, 3:], inside[:, 3:])], axis=1)
    return w, vox[keep], keep


def predict_folder(checkpoint, in_dir, out_dir, *, nearest: bool = False, save_probs: bool = False) -> dict:
    """Predict every volume of ``in_dir`` (any source :func:`medjax.data.sources.load_records` reads) into
    ``out_dir``; returns ``{"task", "outputs": [paths], "cases": n}``.

    ``nearest``: map segmentation labels back by nearest neighbour instead of interpolating probabilities.
    ``save_probs``: also write ``<id>_probs.nii.gz`` float32 (X, Y, Z, K) probabilities in the original space.
    """
    from medjax.data.io_nifti import write_nifti
    from medjax.data.sources import load_records
    from medjax.finetune.predict import (
        Predictor,
        labels_to_original,
        preprocess_record,
        probs_to_original,
        voxel_boxes_to_world,
    )

    cfg, model_def, params, model_state, _ = load_finetuned(checkpoint)
    records = load_records(in_dir, split="training")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pred = Predictor(cfg, model_def, params, model_state)
    outputs, rows = [], []
    for r in records:
        rec = {"id": r["id"], "image": r["image"]}
        s = preprocess_record(cfg, rec)
        orig_shape, orig_affine = s["orig_shape"], s["orig_affine"]
        if cfg.task == "segmentation":
            probs = pred.segment(s["image"])
            if nearest:
                labels = labels_to_original(probs.argmax(-1).astype(np.uint8), s["affine"], orig_shape, orig_affine)
            else:
                back = probs_to_original(probs, s["affine"], orig_shape, orig_affine)
                labels = back.argmax(-1).astype(np.uint8)
                if save_probs:
                    write_nifti(out / f"{r['id']}_probs.nii.gz", back.astype(np.float32), orig_affine)
            path = out / f"{r['id']}.nii.gz"
            write_nifti(path, labels.astype(np.uint8), orig_affine)
            outputs.append(str(path))
        elif cfg.task == "classification":
            p = pred.classify(s["image"])
            rows.append({"id": r["id"], "predicted": int(np.argmax(p)) if not cfg.finetune.multi_label
                         else [int(i) for i in np.flatnonzero(p > 0.5)],
                         "probs": [round(float(v), 6) for v in p]})
        else:
            boxes, scores, classes = pred.detect(s["image"])
            world, vox, keep = _boxes_in_input(voxel_boxes_to_world(boxes, s["affine"]), orig_shape, orig_affine)
            for w, v, sc, c in zip(world, vox, scores[keep], classes[keep]):
                rows.append({"id": r["id"], "score": round(float(sc), 6), "class": int(c),
                             "box_world_mm": [round(float(x), 3) for x in w],
                             "box_voxel": [round(float(x), 3) for x in v]})
    if cfg.task != "segmentation":
        name = "predictions" if cfg.task == "classification" else "boxes"
        (out / f"{name}.json").write_text(json.dumps(rows, indent=1) + "\n")
        with open(out / f"{name}.csv", "w", newline="") as f:
            w = csv.writer(f)
            if cfg.task == "classification":
                k = len(rows[0]["probs"]) if rows else cfg.finetune.num_classes
                w.writerow(["id", "predicted"] + [f"p{i}" for i in range(k)])
                for row in rows:
                    w.writerow([row["id"], json.dumps(row["predicted"]) if isinstance(row["predicted"], list)
                                else row["predicted"], *row["probs"]])
            else:
                w.writerow(["id", "score", "class", "x0", "y0", "z0", "x1", "y1", "z1",
                            "i0", "j0", "k0", "i1", "j1", "k1"])
                for row in rows:
                    w.writerow([row["id"], row["score"], row["class"], *row["box_world_mm"], *row["box_voxel"]])
        outputs += [str(out / f"{name}.json"), str(out / f"{name}.csv")]
    return {"task": cfg.task, "outputs": outputs, "cases": len(records), "out_dir": os.fspath(out)}
