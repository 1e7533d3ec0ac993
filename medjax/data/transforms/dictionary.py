"""Thin dict wrappers: the same spatial op on ``sample["image"]`` (``(*S, C)``, linear) and ``sample["label"]``
(``(*S)``, nearest), with ``sample["affine"]`` updated. Each returns a new dict; other keys pass through
(``"boxes"`` are world mm, which these ops preserve). Every transform is defined once, in the array modules.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from medjax.data.transforms import augment, spatial
from medjax.data.transforms.resample import resample as _resample_array
from medjax.data.transforms.slices import slice_from_volume


def _apply(sample: dict, op: Callable, image_kw: dict | None = None, label_kw: dict | None = None) -> dict:
    """``op(array, affine, **kw) -> (array, affine)`` on image (has_channels) and label; the image's affine kept."""
    out = dict(sample)
    affine = sample["affine"]
    out["image"], out["affine"] = op(sample["image"], affine, has_channels=True, **(image_kw or {}))
    if sample.get("label") is not None:
        out["label"] = op(sample["label"], affine, has_channels=False, **(label_kw or {}))[0]
    return out


def _apply_array(sample: dict, op: Callable, new_affine: np.ndarray | None, **kw) -> dict:
    """``op(array, has_channels=..., **kw) -> array`` on image and label; affine replaced if given."""
    out = dict(sample)
    out["image"] = op(sample["image"], has_channels=True, **kw)
    if sample.get("label") is not None:
        out["label"] = op(sample["label"], has_channels=False, **kw)
    if new_affine is not None and "affine" in sample:
        out["affine"] = new_affine
    return out


def _spatial_shape(sample: dict) -> tuple[int, ...]:
    return tuple(sample["image"].shape[:-1])


def reorient_d(sample: dict, target: str = "RAS") -> dict:
    """:func:`~medjax.data.transforms.spatial.reorient` on image and label."""
    return _apply(sample, lambda a, aff, **kw: spatial.reorient(a, aff, target, **kw))


def resample_d(sample: dict, spacing) -> dict:
    """:func:`~medjax.data.transforms.resample.resample` to ``spacing`` mm: image linear, label nearest."""
    return _apply(sample, lambda a, aff, **kw: _resample_array(a, aff, spacing, **kw),
                  image_kw={"order": 1}, label_kw={"order": 0})


def crop_d(sample: dict, slices) -> dict:
    """:func:`~medjax.data.transforms.spatial.crop` of image and label to ``slices``."""
    return _apply(sample, lambda a, aff, **kw: spatial.crop(a, aff, slices, **kw))


def crop_foreground_d(sample: dict, *, threshold: float = 0, margin=0) -> dict:
    """Crop image and label to the image's foreground box (voxels ``> threshold`` in any channel)."""
    box = spatial.foreground_bbox(sample["image"], threshold, margin, has_channels=True)
    return crop_d(sample, box)


def pad_to_d(sample: dict, shape, *, mode: str = "constant", value=0) -> dict:
    """:func:`~medjax.data.transforms.spatial.pad_to`; the label is padded with 0 (background)."""
    return _apply(sample, lambda a, aff, **kw: spatial.pad_to(a, aff, shape, **kw),
                  image_kw={"mode": mode, "value": value}, label_kw={"mode": "constant", "value": 0})


def flip_d(sample: dict, axes) -> dict:
    """:func:`~medjax.data.transforms.spatial.flip` of image and label (affine updated when present)."""
    new_affine = spatial.flip_affine(sample["affine"], axes, _spatial_shape(sample)) if "affine" in sample else None
    return _apply_array(sample, spatial.flip, new_affine, axes=axes)


def rot90_d(sample: dict, k: int, axes=(0, 1)) -> dict:
    """:func:`~medjax.data.transforms.spatial.rot90` of image and label (affine updated when present)."""
    shape = _spatial_shape(sample)
    new_affine = spatial.rot90_affine(sample["affine"], k, axes, shape) if "affine" in sample else None
    return _apply_array(sample, spatial.rot90, new_affine, k=k, axes=axes)


def random_flip_d(sample: dict, rng: np.random.Generator, *, p: float = 0.5) -> dict:
    """One :func:`~medjax.data.transforms.augment.draw_flip_axes` draw applied to image and label."""
    axes = augment.draw_flip_axes(rng, len(_spatial_shape(sample)), p)
    return flip_d(sample, axes) if axes else dict(sample)


def random_rot90_d(sample: dict, rng: np.random.Generator, *, axes=(0, 1)) -> dict:
    """One :func:`~medjax.data.transforms.augment.draw_rot90` draw applied to image and label."""
    k = augment.draw_rot90(rng, _spatial_shape(sample), axes)
    return rot90_d(sample, k, axes) if k else dict(sample)


def random_affine_d(sample: dict, rng: np.random.Generator, *, max_rotation_deg: float = 10.0,
                    max_scale: float = 0.1) -> dict:
    """One :func:`~medjax.data.transforms.augment.draw_affine` draw: image linear, label nearest; the affine
    describes where the warped voxels came from in the world."""
    shape = _spatial_shape(sample)
    matrix = augment.draw_affine(rng, len(shape), max_rotation_deg=max_rotation_deg, max_scale=max_scale)
    out = dict(sample)
    out["image"] = augment.warp_affine(sample["image"], matrix, order=1, has_channels=True)
    if sample.get("label") is not None:
        out["label"] = augment.warp_affine(sample["label"], matrix, order=0, has_channels=False)
    if "affine" in sample:
        out["affine"] = spatial.check_affine(sample["affine"]) @ augment.warp_affine_matrix(matrix, shape)
    return out


def intensity_d(sample: dict, fn: Callable, *args, **kwargs) -> dict:
    """``fn(sample["image"], *args, **kwargs)`` on the image only (e.g. ``ct_window``, ``intensity_jitter``)."""
    out = dict(sample)
    out["image"] = fn(sample["image"], *args, **kwargs)
    return out


def slice_d(sample: dict, index: int, axis: int = 2) -> dict:
    """:func:`~medjax.data.transforms.slices.slice_from_volume` of image and label."""
    return _apply(sample, lambda a, aff, **kw: slice_from_volume(a, aff, index, axis, **kw))
