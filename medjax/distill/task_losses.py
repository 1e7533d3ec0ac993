"""Task-distillation losses: the task's own loss plus ``finetune.distill_weight`` x a term against the frozen
teacher's outputs on the *same* batch (the same crops: the teacher is built for the student's crop size, so in
sliding-window training and inference both see exactly the same window).

- classification: ``T^2 KL(softmax(t / T) || softmax(s / T))`` on the class logits (B, K).
- segmentation: the same KL per voxel on the logits (B, *S, K), averaged over batch and voxels; plus, with
  ``finetune.distill_feature_weight`` > 0, matching the last decoder stage's features (B, *S, F) (smooth-L1 with
  ``beta`` 1 when the channel counts agree, attention transfer of the per-voxel energy maps when they differ).
- detection: ``T^2 KL(Bern(sigmoid(t / T)) || Bern(sigmoid(s / T)))`` per heat-map cell and class (the teacher's
  heat map as a soft target), plus the teacher's boxes as regression targets at the cells where the teacher is
  confident (``max_k sigmoid(t_heat) >= finetune.distill_box_threshold``): ``0.1 x L1(log-size) + L1(sigmoid
  offset)`` averaged over those cells, the weights of the task's own box loss.

Every loss is ``loss_fn(model, batch, key) -> (loss, aux)`` (:mod:`medjax.training.steps`); aux holds the task
loss's aux plus ``task_loss``, ``kd_loss`` and the teacher's outputs. The teacher arrays are wrapped in
``stop_gradient``: no gradient reaches them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from medjax.distill.losses import bernoulli_kl, smooth_l1, soft_target_kl, spatial_attention_loss


def _teacher(teacher_def, teacher_arrays):
    frozen = jax.tree.map(jax.lax.stop_gradient, teacher_arrays)
    return teacher_def.merge(frozen["params"], frozen["model_state"])


def decoder_feature_loss(student: jax.Array, teacher: jax.Array) -> jax.Array:
    """Decoder features (B, *S, F_s) vs (B, *S, F_t): smooth-L1 (beta 1) when F_s == F_t, else attention transfer
    (:func:`~medjax.distill.losses.spatial_attention_loss`). 0 when the features are equal."""
    if student.shape[:-1] != teacher.shape[:-1]:
        raise ValueError(f"student decoder features {student.shape} and teacher's {teacher.shape} cover different "
                         "voxels")
    teacher = jax.lax.stop_gradient(teacher)
    if student.shape[-1] == teacher.shape[-1]:
        return smooth_l1(student, teacher, 1.0)
    return spatial_attention_loss(student, teacher)


def confident_box_loss(student: dict, teacher: dict, threshold: float) -> tuple[jax.Array, jax.Array]:
    """The teacher's boxes as targets where it is confident: ``(loss, cells)``.

    ``student``/``teacher``: detector outputs ``heatmap`` (B, *G, K), ``size`` (B, *G, n) log side lengths,
    ``offset`` (B, *G, n) logits. A cell is a target when ``max_k sigmoid(teacher heatmap) >= threshold``; the loss
    is ``(0.1 sum |s_size - t_size| + sum |sigmoid(s_off) - sigmoid(t_off)|) / max(1, cells)`` over those cells
    (``cells`` is their count, float32).
    """
    t = jax.tree.map(jax.lax.stop_gradient, teacher)
    conf = jnp.max(jax.nn.sigmoid(t["heatmap"].astype(jnp.float32)), axis=-1) >= threshold
    m = conf.astype(jnp.float32)[..., None]
    cells = jnp.sum(m)
    n = jnp.maximum(cells, 1.0)
    size = jnp.sum(jnp.abs(student["size"] - t["size"]) * m) / n
    off = jnp.sum(jnp.abs(jax.nn.sigmoid(student["offset"]) - jax.nn.sigmoid(t["offset"])) * m) / n
    return 0.1 * size + off, cells


def classification_distill_loss(model, batch, key, *, cfg, teacher_def, teacher_arrays, weight: float,
                                temperature: float, deterministic: bool = False):
    """``task loss + weight * soft_target_kl(student logits, teacher logits, temperature)``."""
    from medjax.finetune.tasks import classification_loss

    task, aux = classification_loss(model, batch, key, cfg=cfg, deterministic=deterministic)
    t_logits = _teacher(teacher_def, teacher_arrays)(batch["image"], deterministic=True)
    kd = soft_target_kl(aux["logits"], t_logits, temperature)
    return task + weight * kd, {**aux, "task_loss": task, "kd_loss": kd, "teacher_logits": t_logits}


def segmentation_distill_loss(model, batch, key, *, cfg, teacher_def, teacher_arrays, weight: float,
                              temperature: float, feature_weight: float = 0.0, deterministic: bool = False):
    """``task loss + weight * per-voxel soft_target_kl + feature_weight * decoder_feature_loss``; aux also holds
    ``feature_loss`` (0 when ``feature_weight`` is 0: then no features are computed)."""
    from medjax.finetune.tasks import segmentation_logits_loss

    del key
    teacher = _teacher(teacher_def, teacher_arrays)
    images = batch["image"]
    if feature_weight > 0:
        logits, feats = model(images, deterministic=deterministic, return_features=True)
        t_logits, t_feats = teacher(images, deterministic=True, return_features=True)
        feat = decoder_feature_loss(feats, t_feats)
    else:
        logits = model(images, deterministic=deterministic)
        t_logits = teacher(images, deterministic=True)
        feat = jnp.zeros((), jnp.float32)
    if logits.shape != t_logits.shape:
        raise ValueError(f"student logits {logits.shape} and teacher logits {t_logits.shape} differ on the same crop")
    task = segmentation_logits_loss(logits, batch["label"], cfg=cfg)
    kd = soft_target_kl(logits, t_logits, temperature)
    loss = task + weight * kd + feature_weight * feat
    return loss, {"logits": logits, "task_loss": task, "kd_loss": kd, "feature_loss": feat,
                  "teacher_logits": t_logits}


def detection_distill_loss(model, batch, key, *, cfg, teacher_def, teacher_arrays, weight: float,
                           temperature: float, box_threshold: float = 0.5, deterministic: bool = False):
    """``task loss + weight * (bernoulli_kl(heat maps, temperature) + confident_box_loss)``; aux: the student's
    outputs plus ``task_loss``, ``kd_loss``, ``heat_kd``, ``box_kd``, ``teacher_cells`` and ``teacher``."""
    from medjax.finetune.tasks import detection_loss

    task, out = detection_loss(model, batch, key, cfg=cfg, deterministic=deterministic)
    t_out = _teacher(teacher_def, teacher_arrays)(batch["image"], deterministic=True)
    if out["heatmap"].shape != t_out["heatmap"].shape:
        raise ValueError(f"student heat map {out['heatmap'].shape} and teacher heat map {t_out['heatmap'].shape} "
                         "differ: detection distillation needs the same heat-map grid (patch size / det_stride) "
                         "and classes")
    heat = bernoulli_kl(out["heatmap"], t_out["heatmap"], temperature)
    box, cells = confident_box_loss(out, t_out, box_threshold)
    kd = heat + box
    return task + weight * kd, {**out, "task_loss": task, "kd_loss": kd, "heat_kd": heat, "box_kd": box,
                                "teacher_cells": cells, "teacher": t_out}


def task_distill_loss_fn(cfg):
    """The distillation loss of ``cfg.task`` with the weights of ``cfg.finetune``, still to be given
    ``teacher_def`` and ``teacher_arrays`` (keyword arguments)."""
    import functools

    ft = cfg.finetune
    common = dict(cfg=cfg, weight=float(ft.distill_weight), temperature=float(ft.temperature))
    if cfg.task == "classification":
        return functools.partial(classification_distill_loss, **common)
    if cfg.task == "segmentation":
        return functools.partial(segmentation_distill_loss, feature_weight=float(ft.distill_feature_weight), **common)
    if cfg.task == "detection":
        return functools.partial(detection_distill_loss, box_threshold=float(ft.distill_box_threshold), **common)
    raise ValueError(f"task={cfg.task!r} has no task distillation")
