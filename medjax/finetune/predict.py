"""Inference of fine-tuned models on whole volumes, and mapping predictions back to the input's original space.

A volume is read and preprocessed exactly as in training (:func:`medjax.data.transforms.preprocess`: reorient,
resample, crop to foreground, normalise, pad); the model runs window by window on that grid; then predictions go
back to the ORIGINAL voxel grid through the geometry alone: each original voxel ``v`` sits at world point
``A_o v`` and therefore at continuous index ``A_p^-1 A_o v`` of the preprocessed grid (``A_o``, ``A_p``: original
and preprocessed affines). Class probabilities are interpolated there (trilinear) and the label is their argmax
(or labels are taken by nearest neighbour); voxels outside the preprocessed field of view (e.g. cut by the
foreground crop) are background. This undoes reorientation (exactly: index permutations and flips), resampling,
cropping and padding in one step.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np

from medjax.evaluation.sliding_window import sliding_window_inference, tile


# ----------------------------------------------------------------------------------------- geometry
def _index_map(affine_from, shape_to, affine_to):
    """Matrix (3, 3) and offset (3,) mapping voxel indices of the ``to`` grid to continuous indices of ``from``."""
    m = np.linalg.inv(np.asarray(affine_from, np.float64)) @ np.asarray(affine_to, np.float64)
    return m[:3, :3], m[:3, 3]


def _inside(matrix, offset, shape_to, shape_from) -> np.ndarray:
    """Bool (*shape_to): the mapped index lies within the ``from`` grid's field of view (half-voxel margins)."""
    idx = [np.arange(n, dtype=np.float64) for n in shape_to]
    ok = np.ones(tuple(shape_to), dtype=bool)
    for a in range(3):
        c = offset[a] + sum(np.reshape(matrix[a, b] * idx[b], [-1 if i == b else 1 for i in range(3)])
                            for b in range(3))
        ok &= (c >= -0.5 - 1e-6) & (c <= shape_from[a] - 0.5 + 1e-6)
    return ok


def probs_to_original(probs: np.ndarray, affine: np.ndarray, orig_shape, orig_affine) -> np.ndarray:
    """Class probabilities (X, Y, Z, K) on a grid with ``affine`` -> (*orig_shape, K) float32 on the original grid.

    Trilinear interpolation at each original voxel's position; outside the grid's field of view the
    probability is 1 for class 0 (background) and 0 for the others.
    """
    from scipy import ndimage

    probs = np.asarray(probs, np.float32)
    orig_shape = tuple(int(s) for s in orig_shape[:3])
    matrix, offset = _index_map(affine, orig_shape, orig_affine)
    out = np.empty((*orig_shape, probs.shape[-1]), np.float32)
    for k in range(probs.shape[-1]):
        out[..., k] = ndimage.affine_transform(probs[..., k], matrix, offset=offset, output_shape=orig_shape,
                                               order=1, mode="nearest")
    inside = _inside(matrix, offset, orig_shape, probs.shape[:3])
    out[~inside] = 0.0
    out[~inside, 0] = 1.0
    return out


def labels_to_original(labels: np.ndarray, affine: np.ndarray, orig_shape, orig_affine) -> np.ndarray:
    """Label map (X, Y, Z) int -> (*orig_shape) by nearest neighbour; 0 outside the grid's field of view."""
    from scipy import ndimage

    labels = np.asarray(labels)
    orig_shape = tuple(int(s) for s in orig_shape[:3])
    matrix, offset = _index_map(affine, orig_shape, orig_affine)
    out = ndimage.affine_transform(labels, matrix, offset=offset, output_shape=orig_shape, order=0, mode="nearest")
    out[~_inside(matrix, offset, orig_shape, labels.shape[:3])] = 0
    return out


def voxel_boxes_to_world(boxes: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Continuous voxel boxes (N, 6) ``[lo, hi]`` -> world (RAS+, mm) boxes (N, 6) enclosing their 8 corners."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 6)
    if not len(boxes):
        return boxes
    corners = np.stack(list(itertools.product(*[(0, 3), (1, 4), (2, 5)])), 0)  # (8, 3) column picks
    pts = boxes[:, corners]  # (N, 8, 3)
    a = np.asarray(affine, np.float64)
    world = pts @ a[:3, :3].T + a[:3, 3]
    return np.concatenate([world.min(1), world.max(1)], axis=1)


def world_boxes_to_voxel(boxes: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """World boxes (N, 6) -> continuous voxel boxes (N, 6) of the grid with ``affine`` (enclosing the corners)."""
    return voxel_boxes_to_world(boxes, np.linalg.inv(np.asarray(affine, np.float64)))


# ----------------------------------------------------------------------------------------- inference
class Predictor:
    """Whole-volume inference for a fine-tuned model.

    Args:
      cfg: the run config (task, data geometry, finetune settings).
      model_def: :class:`~medjax.training.state.ModelDef` of the task model.
      params, model_state: its parameters and non-parameter variables (pure dicts of arrays).

    Volumes are preprocessed ``(X, Y, Z, C)`` float32 arrays. For ``data.spatial_dims=2`` models, slices along
    ``data.slice_axis`` are predicted one by one.
    """

    def __init__(self, cfg, model_def, params, model_state=None):
        from medjax.finetune.tasks import crop_size

        self.cfg = cfg
        self.window = crop_size(cfg)
        self.params = params
        self.model_state = model_state or {}
        self.model_def = model_def
        task = cfg.task

        def forward(x, params, model_state):
            model = model_def.merge(params, model_state)
            return model(x, deterministic=True)

        if task == "segmentation":
            self._seg_fn = lambda x, p, s: jax.nn.softmax(forward(x, p, s), axis=-1)
        elif task == "classification":
            multi = cfg.finetune.multi_label
            self._cls_fn = jax.jit(lambda x, p, s: (jax.nn.sigmoid if multi else
                                                    lambda z: jax.nn.softmax(z, axis=-1))(forward(x, p, s)))
        else:
            from medjax.finetune.tasks import detection_grid
            from medjax.models.heads.detection import decode_boxes

            stride = detection_grid(cfg)[0]
            top_k = cfg.finetune.det_top_k
            self._det_fn = jax.jit(lambda x, p, s: decode_boxes(forward(x, p, s), stride, top_k))

    # -- helpers
    def _slices(self, volume: np.ndarray) -> np.ndarray:
        """(X, Y, Z, C) -> the model's inputs: (1, X, Y, Z, C) in 3D, (N, H, W, C) slices in 2D."""
        if self.cfg.data.spatial_dims == 3:
            return volume[None]
        return np.moveaxis(volume, self.cfg.data.slice_axis, 0)

    def _unslice(self, out: np.ndarray) -> np.ndarray:
        if self.cfg.data.spatial_dims == 3:
            return out[0]
        return np.moveaxis(out, 0, self.cfg.data.slice_axis)

    def _windows(self, batch: np.ndarray):
        """All windows (list of (sample, starts)) tiling ``batch`` (N, *S, C) padded to at least the window."""
        return tile(batch, self.window, self.cfg.finetune.eval_overlap)

    def _run_windows(self, fn, batch, positions):
        bs = max(1, self.cfg.finetune.eval_batch)
        outs = []
        for i in range(0, len(positions), bs):
            chunk = positions[i:i + bs]
            wins = np.stack([batch[(n, *(slice(s, s + w) for s, w in zip(st, self.window)))] for n, st in chunk])
            if len(chunk) < bs:  # constant batch shape: one compilation
                wins = np.concatenate([wins, np.zeros((bs - len(chunk), *wins.shape[1:]), wins.dtype)])
            res = jax.device_get(fn(jnp.asarray(wins), self.params, self.model_state))
            outs.append(jax.tree.map(lambda a: np.asarray(a)[: len(chunk)], res))
        return jax.tree.map(lambda *a: np.concatenate(a), *outs)

    # -- tasks
    def segment(self, volume: np.ndarray) -> np.ndarray:
        """Class probabilities (X, Y, Z, K) float32 of a preprocessed volume (X, Y, Z, C) (Gaussian blending)."""
        x = self._slices(np.asarray(volume, np.float32))
        out = sliding_window_inference(x, self.window, self._seg_fn, overlap=self.cfg.finetune.eval_overlap,
                                       batch_size=self.cfg.finetune.eval_batch, fn_args=(self.params,
                                                                                         self.model_state))
        return self._unslice(np.asarray(jax.device_get(out)))

    def window_probs(self, volume: np.ndarray) -> tuple[np.ndarray, list]:
        """Class probabilities of every window of a volume: ``(probs (W, K), positions)``, one position
        ``(slice index, starts)`` per window (the volume zero-padded to at least the window, as in
        :meth:`classify`)."""
        batch, positions = self._windows(self._slices(np.asarray(volume, np.float32)))
        return self._run_windows(self._cls_fn, batch, positions), positions

    def classify(self, volume: np.ndarray) -> np.ndarray:
        """Class probabilities (K,) of a volume: window probabilities reduced by ``finetune.volume_reduce``."""
        return self.volume_probs(self.window_probs(volume)[0])

    def volume_probs(self, probs: np.ndarray) -> np.ndarray:
        """Window probabilities (W, K) -> the volume's (K,) by ``finetune.volume_reduce`` ("max": the window
        most confident in a non-background class; "mean": the average)."""
        if self.cfg.finetune.volume_reduce == "max" and not self.cfg.finetune.multi_label:
            pos = probs[:, 1:].sum(-1)
            best = probs[int(np.argmax(pos))]
            return best.astype(np.float32)
        return (probs.max(0) if self.cfg.finetune.volume_reduce == "max" else probs.mean(0)).astype(np.float32)

    def detect(self, volume: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Boxes (N, 6) in continuous voxel coordinates of the preprocessed volume, scores (N,), classes (N,)
        after the score threshold and 3D NMS (within each class), by decreasing score."""
        from medjax.evaluation.detection import nms3d

        ft = self.cfg.finetune
        batch, positions = self._windows(self._slices(np.asarray(volume, np.float32)))
        boxes, scores, classes = self._run_windows(self._det_fn, batch, positions)
        shift = np.asarray([st for _, st in positions], np.float64)
        boxes = boxes.astype(np.float64) + np.concatenate([shift, shift], axis=1)[:, None, :]
        boxes, scores, classes = boxes.reshape(-1, 6), scores.reshape(-1), classes.reshape(-1)
        keep = scores >= ft.det_score_threshold
        boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
        # clip to the volume and drop degenerate boxes
        hi = np.asarray(volume.shape[:3], np.float64) - 0.5
        boxes = np.concatenate([np.clip(boxes[:, :3], -0.5, hi), np.clip(boxes[:, 3:], -0.5, hi)], axis=1)
        ok = np.all(boxes[:, 3:] > boxes[:, :3], axis=1)
        boxes, scores, classes = boxes[ok], scores[ok], classes[ok]
        # NMS within each class: boxes of different classes are moved apart so they never overlap
        apart = boxes + (classes.astype(np.float64) * (2.0 + float(np.max(volume.shape[:3]))))[:, None]
        order = nms3d(apart, scores, ft.det_nms_iou) if len(boxes) else np.zeros(0, np.int64)
        return boxes[order], scores[order], classes[order]


def preprocess_record(cfg, record: dict) -> dict:
    """Read and preprocess one record as in training (no random crops); keeps ``orig_shape``/``orig_affine``."""
    from medjax.data.pipeline import read_sample
    from medjax.data.transforms.recipes import preprocess

    return preprocess(read_sample(record, mmap=False), cfg.data)

