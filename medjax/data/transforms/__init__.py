"""Pure array transforms for 2D and 3D medical images, thin dict wrappers and the pipeline recipes.

Conventions: arrays in voxel index order, channels last (``(*S, C)`` images, ``(*S)`` labels); affines are
``(4, 4)`` float64 voxel->world (RAS+, mm). Spatial functions return ``(array, affine)`` and keep every voxel's
world position; random ones take an ``np.random.Generator``.
"""

from medjax.data.transforms.augment import (
    draw_affine,
    draw_flip_axes,
    draw_rot90,
    gamma,
    intensity_jitter,
    random_affine,
    random_flip,
    random_rot90,
    warp_affine,
    warp_affine_matrix,
)
from medjax.data.transforms.crops import (
    balanced_crop_slices,
    centred_crop_slices,
    foreground_voxels,
    random_crop_slices,
)
from medjax.data.transforms.dictionary import (
    crop_d,
    crop_foreground_d,
    flip_d,
    intensity_d,
    pad_to_d,
    random_affine_d,
    random_flip_d,
    random_rot90_d,
    reorient_d,
    resample_d,
    rot90_d,
    slice_d,
)
from medjax.data.transforms.intensity import ct_window, percentile_scale, zscore_foreground
from medjax.data.transforms.recipes import crop_window, preprocess, random_crops
from medjax.data.transforms.resample import resample, resample_geometry
from medjax.data.transforms.slices import slice_affine, slice_from_volume
from medjax.data.transforms.spatial import (
    crop,
    crop_foreground,
    flip,
    flip_affine,
    foreground_bbox,
    pad_to,
    reorient,
    rot90,
    rot90_affine,
)

__all__ = [
    # spatial (exact geometry)
    "reorient", "resample", "resample_geometry", "crop", "crop_foreground", "foreground_bbox", "pad_to",
    "flip", "flip_affine", "rot90", "rot90_affine", "slice_from_volume", "slice_affine",
    # intensity
    "ct_window", "zscore_foreground", "percentile_scale",
    # crops
    "random_crop_slices", "balanced_crop_slices", "centred_crop_slices", "foreground_voxels",
    # augmentation
    "random_flip", "random_rot90", "random_affine", "intensity_jitter", "gamma",
    "draw_flip_axes", "draw_rot90", "draw_affine", "warp_affine", "warp_affine_matrix",
    # dict wrappers
    "reorient_d", "resample_d", "crop_d", "crop_foreground_d", "pad_to_d", "flip_d", "rot90_d",
    "random_flip_d", "random_rot90_d", "random_affine_d", "intensity_d", "slice_d",
    # recipes
    "preprocess", "random_crops", "crop_window",
]
