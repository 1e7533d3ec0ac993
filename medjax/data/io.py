"""Image readers and writers: one entry point that dispatches on what a path is.

- ``.nii`` / ``.nii.gz``: NIfTI via nibabel (:mod:`medjax.data.io_nifti`);
- a folder: one DICOM series (:mod:`medjax.data.io_dicom`);
- any other file: a single DICOM file, possibly multi-frame.

All readers return an :class:`medjax.data.image.Image` (voxel index order, channels last, ``(4, 4)``
voxel -> RAS+ mm affine) and raise :class:`medjax.errors.DataError` naming the path and the reason.
"""

from __future__ import annotations

import os

import numpy as np

from medjax.data.image import Image
from medjax.data.io_dicom import is_dicom_file, read_dicom, read_dicom_geometry
from medjax.data.io_dicom_write import write_dicom_series
from medjax.data.io_nifti import is_nifti_path, nifti_stem, read_nifti, read_nifti_geometry, write_nifti
from medjax.errors import DataError

__all__ = ["read_image", "read_geometry", "write_nifti", "write_dicom_series", "image_kind", "nifti_stem"]

_DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")


def image_kind(path) -> str:
    """``"nifti"``, ``"dicom-series"`` or ``"dicom"`` for a readable path; raises :class:`DataError` otherwise."""
    path = str(path)
    if is_nifti_path(path):
        if os.path.isdir(path):
            raise DataError(path, "is a folder, not a NIfTI file")
        return "nifti"
    if os.path.isdir(path):
        return "dicom-series"
    if not os.path.exists(path):
        raise DataError(path, "file not found")
    if is_dicom_file(path) or path.lower().endswith(_DICOM_SUFFIXES):
        return "dicom"
    raise DataError(path, "unsupported file type: expected .nii, .nii.gz, a DICOM file or a folder holding one "
                          "DICOM series")


def read_image(path, *, mmap: bool = True, check: bool = True, is_label: bool = False) -> Image:
    """Read a NIfTI file, a DICOM series folder or a DICOM file.

    Args:
      path: ``.nii``/``.nii.gz`` file, a folder holding ONE DICOM series, or a (multi-frame) DICOM file.
      mmap: memory-map uncompressed NIfTI data where possible (voxels are still read once, lazily).
      check: validate with :func:`medjax.data.validate.check_image`; invalid data raises :class:`DataError`.
        Dimensionality and header-vs-file-size problems are always reported before voxels are read.
      is_label: the file is a label map: a constant map is allowed, values must be integer classes.

    Returns:
      ``Image``: array ``(X, Y[, Z])`` or channels-last ``(X, Y, Z, C)`` (4-D NIfTI, or the 5-D vector layout
      ``(X, Y, Z, 1, C)``; see :func:`medjax.data.io_nifti.read_nifti`); float32 for floating or
      scaled data, the native integer dtype otherwise (DICOM with integral rescaling: int16 when it fits,
      e.g. CT in Hounsfield units); affine ``(4, 4)`` voxel -> RAS+ mm.
    """
    from medjax.data.validate import check_image, check_shape

    kind = image_kind(path)
    if kind == "nifti":
        image = read_nifti(path, mmap=mmap, check_shape=check_shape if check else None)
    else:
        image = read_dicom(path)
    if check:
        check_image(image, is_label=is_label)
    return image


def read_geometry(path) -> tuple[tuple[int, ...], np.ndarray]:
    """Spatial shape (voxels) and ``(4, 4)`` voxel -> RAS+ mm affine, from headers only (no voxel read)."""
    kind = image_kind(path)
    if kind == "nifti":
        return read_nifti_geometry(path)
    return read_dicom_geometry(path)
