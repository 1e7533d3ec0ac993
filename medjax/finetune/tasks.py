"""Per-task pieces of fine-tuning: model, loss, host-side targets.

Tasks (``Config.task``):

- ``"classification"``: :class:`~medjax.models.heads.ViTClassifier`; softmax cross-entropy (or per-class sigmoid
  BCE when ``finetune.multi_label``) with optional class weights. Targets come from the batch's ``class``
  (volume-level labels), or, with ``finetune.class_from_label``, from whether the crop's label map holds an
  object of at least ``min_object_voxels`` voxels (e.g. "is there a lesion in this crop").
- ``"segmentation"``: :class:`~medjax.models.heads.UNETR`; cross-entropy + ``dice_weight`` x soft Dice (mean over
  the foreground labels, pooled over the batch).
- ``"detection"``: :class:`~medjax.models.heads.ViTDetector`; CenterNet penalty-reduced focal loss on the centre
  heat map plus L1 on log-size and centre offset at object centres, on the grid of ``finetune.det_stride`` voxels
  per cell (:func:`detection_grid`; finer than the patch through the detector's upsampling neck). Boxes come from
  the connected components of the crop's label map (host side, :func:`label_objects`, :func:`detection_targets`),
  so they follow crops and augmentation exactly. With one class every labelled voxel belongs to an object
  (values may be instance ids); with ``num_classes`` K > 1 the label map holds class ids (value ``c`` in 1..K is
  class ``c - 1``) and each class gets its own heat-map channel and targets.

A loss function has the signature of :mod:`medjax.training.steps`: ``loss_fn(model, batch, key) -> (loss, aux)``.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from medjax.errors import ConfigError

TASKS = ("classification", "segmentation", "detection")


def check_task(cfg) -> None:
    """ConfigError naming the key for settings a fine-tuning run cannot use."""
    ft = cfg.finetune
    if cfg.task not in TASKS:
        raise ConfigError(f"task={cfg.task!r}: fine-tuning needs one of {TASKS} (task=mae is `medjax pretrain`)")
    from medjax.peft.methods import check_method

    check_method(ft)  # finetune.method (and the older finetune.mode=linear)
    if ft.num_classes < 1 or (cfg.task == "segmentation" and ft.num_classes < 2):
        raise ConfigError(f"finetune.num_classes={ft.num_classes}: segmentation needs >= 2 (background + labels), "
                          "other tasks >= 1")
    if ft.class_weights and len(ft.class_weights) != ft.num_classes:
        raise ConfigError(f"finetune.class_weights has {len(ft.class_weights)} entries but finetune.num_classes="
                          f"{ft.num_classes}; give one weight per class or ()")
    if cfg.task == "classification" and ft.pool not in ("mean", "max", "cls"):
        raise ConfigError(f"finetune.pool={ft.pool!r}: use 'mean' or 'max' (over the patch tokens) or 'cls'")
    if ft.volume_reduce not in ("mean", "max"):
        raise ConfigError(f"finetune.volume_reduce={ft.volume_reduce!r}: use 'mean' or 'max'")
    if cfg.task == "detection" and cfg.data.spatial_dims != 3:
        raise ConfigError("task=detection finds 3D lesions: set data.spatial_dims=3")
    if cfg.task == "detection":
        detection_grid(cfg)  # a ConfigError naming finetune.det_stride when the stride cannot be built


def detection_grid(cfg) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(stride, grid)`` of the detection heat map for ``cfg``: voxels per cell along each axis
    (``finetune.det_stride``, at most the patch; 0 = the patch) and cells per crop (``crop_size / stride``).

    Raises:
      ConfigError: ``finetune.det_stride`` is not 0 or a power of two, or the patch is not a power of two.
    """
    from medjax.config.variants import decode_variant
    from medjax.models.heads.detection import detection_stride

    patch = decode_variant(cfg.model.variant, cfg.data.spatial_dims).patch
    try:
        stride = detection_stride(patch, cfg.finetune.det_stride)
    except ValueError as e:
        raise ConfigError(f"finetune.det_stride={cfg.finetune.det_stride}: {e}; use 0 (the patch grid of "
                          f"{cfg.model.variant}) or a power of two such as 2 or 4") from None
    return stride, tuple(c // s for c, s in zip(crop_size(cfg), stride))


def crop_size(cfg) -> tuple[int, ...]:
    from medjax.config.dims import broadcast_size

    return broadcast_size(cfg.data.crop_size, cfg.data.spatial_dims, "data.crop_size")


def build_task_model(cfg, seed: int | None = None) -> nnx.Module:
    """The model of ``cfg.task`` with fresh parameters (seed ``cfg.train.seed`` unless given)."""
    from medjax.models.heads import UNETR, ViTClassifier, ViTDetector

    check_task(cfg)
    rngs = nnx.Rngs(cfg.train.seed if seed is None else seed)
    common = dict(spatial_dims=cfg.data.spatial_dims, input_size=crop_size(cfg), rngs=rngs)
    from medjax.peft import apply_peft, resolve_method

    ft = cfg.finetune
    if cfg.task == "classification":
        model = ViTClassifier(cfg.model, num_classes=ft.num_classes, pool=ft.pool,
                              probe_norm=resolve_method(ft) == "linear", **common)
    elif cfg.task == "segmentation":
        model = UNETR(cfg.model, num_classes=ft.num_classes, features=ft.decoder_features, **common)
    else:
        model = ViTDetector(cfg.model, num_classes=ft.num_classes, hidden=ft.det_hidden, stride=ft.det_stride,
                            features=ft.decoder_features, **common)
    # PEFT modules (LoRA, adapters, prompts) around the encoder; base parameter paths are unchanged
    return apply_peft(model, ft, cfg.train.seed if seed is None else seed)


# ------------------------------------------------------------------------------------------------ losses
def _weights(cfg) -> jax.Array:
    ft = cfg.finetune
    w = ft.class_weights or (1.0,) * ft.num_classes
    return jnp.asarray(w, jnp.float32)


def classification_loss(model, batch, key, *, cfg, deterministic: bool = False):
    """Weighted softmax CE (``class`` (B,) int) or per-class BCE (``class`` (B, K) in {0, 1}); aux: logits."""
    del key
    from medjax.peft import resolve_method

    logits = model(batch["image"], deterministic=deterministic,
                   frozen_encoder=resolve_method(cfg.finetune) == "linear")
    w = _weights(cfg)
    y = batch["class"]
    if cfg.finetune.multi_label:
        y = y.astype(jnp.float32).reshape(logits.shape)
        per = optax_sigmoid_bce(logits, y) * jnp.where(y > 0, w, 1.0)
        loss = per.mean()
    else:
        y = y.reshape(-1).astype(jnp.int32)
        logp = jax.nn.log_softmax(logits, axis=-1)
        nll = -jnp.take_along_axis(logp, y[:, None], axis=-1)[:, 0]
        wy = w[y]
        loss = (nll * wy).sum() / jnp.maximum(wy.sum(), 1e-6)
    return loss, {"logits": logits}


def optax_sigmoid_bce(logits, labels):
    """Element-wise sigmoid binary cross-entropy (numerically stable)."""
    return jnp.maximum(logits, 0) - logits * labels + jnp.log1p(jnp.exp(-jnp.abs(logits)))


def soft_dice_loss(probs: jax.Array, onehot: jax.Array, eps: float = 1e-5) -> jax.Array:
    """1 - mean over foreground labels of the soft Dice, pooled over batch and voxels; probs/onehot (B, *S, K)."""
    axes = tuple(range(probs.ndim - 1))
    inter = (probs * onehot).sum(axes)
    denom = probs.sum(axes) + onehot.sum(axes)
    dice = (2 * inter + eps) / (denom + eps)
    return 1.0 - dice[1:].mean()


def segmentation_loss(model, batch, key, *, cfg, deterministic: bool = False):
    """Weighted CE + ``dice_weight`` x soft Dice on ``label`` (B, *S) int; aux: logits (B, *S, K)."""
    del key
    logits = model(batch["image"], deterministic=deterministic)
    return segmentation_logits_loss(logits, batch["label"], cfg=cfg), {"logits": logits}


def segmentation_logits_loss(logits: jax.Array, label: jax.Array, *, cfg) -> jax.Array:
    """The loss of :func:`segmentation_loss` for given logits (B, *S, K) and ``label`` (B, *S) int."""
    k = logits.shape[-1]
    y = jnp.clip(label.astype(jnp.int32), 0, k - 1)
    onehot = jax.nn.one_hot(y, k, dtype=jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    w = _weights(cfg)
    wy = w[y]
    ce = -(onehot * logp).sum(-1)
    ce = (ce * wy).sum() / jnp.maximum(wy.sum(), 1e-6)
    return ce + cfg.finetune.dice_weight * soft_dice_loss(jnp.exp(logp), onehot)


def focal_heatmap_loss(logits: jax.Array, target: jax.Array, alpha: float = 2.0, beta: float = 4.0) -> jax.Array:
    """CenterNet penalty-reduced focal loss summed over cells / max(1, number of peaks (target == 1))."""
    p = jax.nn.sigmoid(logits)
    log_p = jax.nn.log_sigmoid(logits)
    log_not_p = jax.nn.log_sigmoid(-logits)
    pos = (target >= 1.0 - 1e-6).astype(jnp.float32)
    pos_loss = -((1 - p) ** alpha) * log_p * pos
    neg_loss = -((1 - target) ** beta) * (p**alpha) * log_not_p * (1 - pos)
    return (pos_loss.sum() + neg_loss.sum()) / jnp.maximum(pos.sum(), 1.0)


def detection_loss(model, batch, key, *, cfg, deterministic: bool = False):
    """Focal heat-map loss + L1 on log-size and offset at object centres; aux: the model outputs."""
    del key
    out = model(batch["image"], deterministic=deterministic)
    heat = focal_heatmap_loss(out["heatmap"], batch["heatmap"])
    m = batch["center_mask"].astype(jnp.float32)[..., None]
    n = jnp.maximum(m.sum(), 1.0)
    size_l1 = (jnp.abs(out["size"] - batch["log_size"]) * m).sum() / n
    off_l1 = (jnp.abs(jax.nn.sigmoid(out["offset"]) - batch["offset"]) * m).sum() / n
    return heat + 0.1 * size_l1 + off_l1, out


def loss_for(cfg):
    """``loss_fn(model, batch, key) -> (loss, aux)`` of ``cfg.task`` (training mode: dropout on)."""
    fn = {"classification": classification_loss, "segmentation": segmentation_loss,
          "detection": detection_loss}[cfg.task]
    return functools.partial(fn, cfg=cfg)


# ------------------------------------------------------------------------------------------------ targets
def _components(mask: np.ndarray, min_voxels: int) -> list[list[float]]:
    """Boxes ``[lo..., hi...]`` of the face-connected components of ``mask`` with at least ``min_voxels`` voxels."""
    from scipy import ndimage

    comp, count = ndimage.label(mask)
    if count == 0:
        return []
    sizes = ndimage.sum_labels(np.ones(mask.shape), comp, index=np.arange(1, count + 1))
    boxes = []
    for i, sl in enumerate(ndimage.find_objects(comp)):
        if sl is None or sizes[i] < min_voxels:
            continue
        boxes.append([s.start - 0.5 for s in sl] + [s.stop - 0.5 for s in sl])
    return boxes


def object_boxes(label: np.ndarray, min_voxels: int = 1) -> np.ndarray:
    """Boxes ``(N, 2n)`` float64 ``[lo..., hi...]`` (continuous voxel coordinates, voxel i covers [i-0.5, i+0.5])
    of the connected components (face connectivity) of ``label > 0`` with at least ``min_voxels`` voxels, whatever
    their label values (one object class)."""
    n = np.ndim(label)
    return np.asarray(_components(np.asarray(label) > 0, min_voxels), dtype=np.float64).reshape(-1, 2 * n)


def label_objects(label: np.ndarray, min_voxels: int = 1, num_classes: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Objects of a label map for detection: ``(boxes (N, 2n) float64, classes (N,) int64)``.

    ``num_classes == 1``: the connected components of ``label > 0`` (as :func:`object_boxes`), all class 0.
    ``num_classes`` K > 1: the label map holds class ids; the components of ``label == c`` are objects of class
    ``c - 1`` for c in 1..K (touching objects of different classes stay apart).

    Raises:
      ConfigError: with K > 1, a label value outside 0..K (naming the values and ``finetune.num_classes``).
    """
    label = np.asarray(label)
    n = label.ndim
    if num_classes <= 1:
        boxes = object_boxes(label, min_voxels)
        return boxes, np.zeros(len(boxes), np.int64)
    values = np.unique(label)
    bad = values[(values < 0) | (values > num_classes)]
    if len(bad):
        raise ConfigError(f"detection label map holds values {bad.tolist()[:5]} but finetune.num_classes={num_classes}:"
                          f" with several classes the label map must hold class ids 1..{num_classes} (0 background);"
                          " relabel it, or set finetune.num_classes=1 to detect every labelled object as one class")
    boxes, classes = [], []
    for c in values[values > 0]:
        found = _components(label == c, min_voxels)
        boxes += found
        classes += [int(c) - 1] * len(found)
    return np.asarray(boxes, np.float64).reshape(-1, 2 * n), np.asarray(classes, np.int64)


def detection_targets(boxes: np.ndarray, grid, stride, num_classes: int = 1, classes=None) -> dict[str, np.ndarray]:
    """CenterNet targets on a grid of ``grid`` cells of ``stride`` voxels each (the patch grid, or the finer grid
    of the detector's neck; see :func:`detection_grid`) for boxes ``(N, 2n)`` (continuous voxel coordinates) of
    ``classes`` ``(N,)`` (ints in ``[0, num_classes)``; default all 0). Cell ``g`` covers voxels
    ``[g s - 0.5, (g + 1) s - 0.5)``; a centre ``c`` lies in cell ``floor((c + 0.5) / s)`` at offset
    ``(c + 0.5) / s - cell`` (what :func:`~medjax.models.heads.detection.decode_boxes` inverts).

    Returns ``heatmap`` (*grid, K) float32 (per class channel: Gaussian peaks, sigma from the box size in cells,
    max over that class's objects), ``log_size`` (*grid, n), ``offset`` (*grid, n) in [0, 1), ``center_mask``
    (*grid) float32 (1 at centres of any class).
    """
    grid, stride = tuple(int(g) for g in grid), np.asarray(stride, np.float64)
    n = len(grid)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 2 * n)
    classes = np.zeros(len(boxes), np.int64) if classes is None else np.asarray(classes, np.int64).reshape(-1)
    if len(classes) != len(boxes) or np.any((classes < 0) | (classes >= num_classes)):
        raise ValueError(f"detection_targets: classes {classes.tolist()[:5]} must give one class in "
                         f"[0, {num_classes}) per box ({len(boxes)} boxes)")
    heat = np.zeros((*grid, num_classes), np.float32)
    log_size = np.zeros((*grid, n), np.float32)
    offset = np.zeros((*grid, n), np.float32)
    mask = np.zeros(grid, np.float32)
    coords = np.stack(np.meshgrid(*(np.arange(g) for g in grid), indexing="ij"), -1).astype(np.float64)
    for box, k in zip(boxes, classes):
        lo, hi = box[:n], box[n:]
        centre = (lo + hi) / 2
        pos = (centre + 0.5) / stride  # in cells
        cell = np.clip(np.floor(pos).astype(int), 0, np.asarray(grid) - 1)
        size_cells = (hi - lo) / stride
        sigma = np.maximum(size_cells / 6.0, 0.5)
        g = np.exp(-0.5 * (((coords - cell) / sigma) ** 2).sum(-1)).astype(np.float32)
        heat[..., k] = np.maximum(heat[..., k], g)
        idx = tuple(cell)
        heat[idx + (k,)] = 1.0
        log_size[idx] = np.log(np.maximum(hi - lo, 1.0))
        offset[idx] = np.clip(pos - cell, 0.0, 1.0 - 1e-6)
        mask[idx] = 1.0
    return {"heatmap": heat, "log_size": log_size, "offset": offset, "center_mask": mask}


def prepare_batch(cfg, batch: dict) -> dict:
    """Host-side targets for a pipeline batch (numpy in, numpy out): detection targets from ``label``, crop
    classes from ``label`` (``class_from_label``), or the batch unchanged. Drops keys the task does not use."""
    ft = cfg.finetune
    out = {"image": batch["image"]}
    if cfg.task == "segmentation":
        if "label" not in batch:
            raise ConfigError(f"task=segmentation needs label maps: the records of data.dir={cfg.data.dir!r} have "
                              f"no {ft.label_key!r} files")
        out["label"] = batch["label"]
    elif cfg.task == "classification":
        if ft.class_from_label:
            if "label" not in batch:
                raise ConfigError("finetune.class_from_label=true needs label maps in the records "
                                  f"(finetune.label_key={ft.label_key!r})")
            counts = (batch["label"] > 0).reshape(batch["label"].shape[0], -1).sum(1)
            out["class"] = (counts >= ft.min_object_voxels).astype(np.int32)
        else:
            if "class" not in batch:
                raise ConfigError(f"task=classification needs a 'class' per record in data.dir={cfg.data.dir!r}, or "
                                  "finetune.class_from_label=true with label maps")
            out["class"] = batch["class"]
    else:
        if "label" not in batch:
            raise ConfigError("task=detection derives boxes from label maps: set finetune.label_key to the records' "
                              "lesion-mask key (e.g. 'lesion')")
        stride, grid = detection_grid(cfg)
        targets = []
        for lab in batch["label"]:
            boxes, classes = label_objects(lab, ft.min_object_voxels, ft.num_classes)
            targets.append(detection_targets(boxes, grid, stride, ft.num_classes, classes))
        for k in targets[0]:
            out[k] = np.stack([t[k] for t in targets])
    return out


def num_encoder_layers(cfg) -> int:
    from medjax.config.variants import decode_variant

    return decode_variant(cfg.model.variant, cfg.data.spatial_dims).depth


def param_count(tree) -> int:
    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(tree)))
