"""The one in-memory image type: a voxel array plus its geometry.

Conventions used across medjax (readers, transforms, cache, models):

- ``array`` is in voxel index order ``(i, j, k)`` as stored on disk (nibabel convention), channels last:
  ``(X, Y, Z)`` or ``(X, Y, Z, C)`` for 3D, ``(X, Y)`` or ``(X, Y, C)`` for 2D.
- ``affine`` is a ``(4, 4)`` float64 matrix mapping voxel indices to world coordinates in millimetres, in the
  NIfTI/nibabel RAS+ world, whose coordinates increase towards the patient's Right, Anterior and Superior.
  DICOM's LPS+ patient coordinates are converted on reading (x and y negated).
- ``spacing`` is in millimetres per voxel along each array axis (the affine's column norms).
- The orientation code (e.g. ``"RAS"``, ``"LPS"``) names, for each array axis, the world direction that the
  index increases towards (``nibabel.aff2axcodes``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Image:
    """A volume or slice with its geometry.

    Attributes:
      array: voxel data, ``(*spatial)`` or ``(*spatial, C)``; any numeric dtype.
      affine: ``(4, 4)`` float64 voxel-index -> world (RAS+, mm) matrix. For 2D images the third spatial
        column is kept so a slice still knows where it sits in the volume.
      path: the file (or folder, for a DICOM series) it was read from; ``""`` if made in memory.
      has_channels: whether the last array axis is channels.
    """

    array: np.ndarray
    affine: np.ndarray
    path: str = ""
    has_channels: bool = False
    extra: dict = field(default_factory=dict)  # non-identifying facts only (e.g. modality); never patient tags

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape[:-1] if self.has_channels else self.array.shape)

    @property
    def spatial_dims(self) -> int:
        return len(self.spatial_shape)

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size in mm along each spatial array axis."""
        return spacing_from_affine(self.affine, self.spatial_dims)

    @property
    def orientation(self) -> str:
        """Orientation code such as ``"RAS"``: world direction each array axis increases towards."""
        return orientation_code(self.affine)[: self.spatial_dims]


def spacing_from_affine(affine: np.ndarray, ndim: int = 3) -> tuple[float, ...]:
    """Voxel spacing in mm: the norms of the affine's first ``ndim`` columns."""
    a = np.asarray(affine, dtype=np.float64)
    return tuple(float(v) for v in np.sqrt((a[:3, :ndim] ** 2).sum(axis=0)))


def orientation_code(affine: np.ndarray) -> str:
    """Three-letter orientation code of an affine (``nibabel.orientations.aff2axcodes``), e.g. ``"LPS"``."""
    import nibabel as nib

    return "".join(nib.orientations.aff2axcodes(np.asarray(affine, dtype=np.float64)))
