"""Writing a volume as a real DICOM series (one Part 10 file per slice) with pydicom.

Used by tests and the demo set. Patient identity is never written: the patient fields hold anonymous
placeholders and there is no birth date.
"""

from __future__ import annotations

import os

import numpy as np

from medjax.data.io_dicom import LPS_TO_RAS

_SOP_CLASS = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4"}
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def _ds(values) -> list[str]:
    """Numbers as DICOM decimal strings (at most 16 characters each)."""
    from pydicom.valuerep import format_number_as_ds

    return [format_number_as_ds(float(v)) for v in np.atleast_1d(values)]


def write_dicom_series(folder, array, affine, *, modality: str = "MR", series_uid: str | None = None,
                       patient_name: str = "ANONYMOUS", patient_id: str = "ANON") -> list[str]:
    """Write ``array`` as one DICOM file per slice along its third axis.

    Args:
      folder: output folder (created); files are ``slice_0000.dcm``, ``slice_0001.dcm``, ...
      array: ``(X, Y, Z)`` integers within the int16 range (e.g. Hounsfield units for CT). ``X`` runs along a
        pixel row (DICOM Columns), ``Y`` down the rows.
      affine: ``(4, 4)`` voxel -> RAS+ mm. Its first two columns must be orthogonal (DICOM image planes are
        rectangular); the third may be any non-zero vector (slice positions carry it).
      modality: ``"MR"``, ``"CT"`` or another DICOM modality code (stored as secondary capture).
      series_uid: SeriesInstanceUID; a new UID when None.
      patient_name, patient_id: placeholders written to the patient fields (tests pass a fake name to check
        that readers never leak it).

    Returns:
      The written file paths, in slice order.

    CT slices are stored as unsigned pixels with RescaleIntercept -1024 when the values allow (the common
    scanner convention); otherwise pixels are signed with slope 1 and intercept 0. Reading the folder back
    with :func:`medjax.data.io.read_image` gives the same array and affine (to 1e-4 mm) when
    ``det(affine[:3, :3]) > 0``; with a negative determinant the slices come back in the opposite order
    (sorted along the slice normal), describing the same world geometry.
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"write_dicom_series needs an (X, Y, Z) array, got shape {array.shape}")
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise ValueError("write_dicom_series needs integer voxel values")
    lo, hi = (int(array.min()), int(array.max())) if array.size else (0, 0)
    if lo < -32768 or hi > 32767:
        raise ValueError(f"values {lo}..{hi} exceed the int16 range")
    affine = np.asarray(affine, dtype=np.float64)
    lps = LPS_TO_RAS @ affine  # LPS_TO_RAS is its own inverse
    c0, c1, c2 = lps[:3, 0], lps[:3, 1], lps[:3, 2]
    sx, sy = np.linalg.norm(c0), np.linalg.norm(c1)
    if sx == 0 or sy == 0 or np.linalg.norm(c2) == 0:
        raise ValueError("affine has a zero-length column")
    if abs(c0 @ c1) > 1e-6 * sx * sy:
        raise ValueError("affine's first two columns are not orthogonal; DICOM pixels are rectangular")
    row, col = c0 / sx, c1 / sy
    normal = np.cross(row, col)
    modality = modality.upper()
    if modality == "CT" and lo >= -1024 and hi + 1024 <= 65535:
        intercept, signed = -1024, False
        stored = (array.astype(np.int32) + 1024).astype(np.uint16)
    else:
        intercept, signed = 0, True
        stored = array.astype(np.int16)
    sop_class = _SOP_CLASS.get(modality, _SECONDARY_CAPTURE)
    study, series = generate_uid(), series_uid or generate_uid()
    frame_of_ref = generate_uid()
    os.makedirs(folder, exist_ok=True)
    paths = []
    nx, ny, nz = array.shape
    for k in range(nz):
        pos = lps[:3, 3] + k * c2
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        path = os.path.join(str(folder), f"slice_{k:04d}.dcm")
        ds = FileDataset(path, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.Modality = modality
        ds.ImageType = ["DERIVED", "SECONDARY"]
        ds.PatientName = patient_name
        ds.PatientID = patient_id
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.FrameOfReferenceUID = frame_of_ref
        ds.SeriesNumber = 1
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = _ds(pos)
        ds.ImageOrientationPatient = _ds(np.concatenate([row, col]))
        ds.PixelSpacing = _ds([sy, sx])  # (between rows, between columns)
        ds.SliceThickness = _ds(abs(c2 @ normal))[0]
        ds.SpacingBetweenSlices = _ds(abs(c2 @ normal))[0]
        ds.SliceLocation = _ds(pos @ normal)[0]
        ds.Rows, ds.Columns = ny, nx
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1 if signed else 0
        ds.RescaleSlope = "1"
        ds.RescaleIntercept = str(intercept)
        if modality == "CT":
            ds.RescaleType = "HU"
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).astype("<" + stored.dtype.str[1:]).tobytes()
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
