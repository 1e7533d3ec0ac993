"""DICOM reading through pydicom: a folder holding one series, or one (possibly multi-frame) file.

Geometry: slices are sorted along the slice normal (the cross product of the row and column direction cosines
of ImageOrientationPatient) by the projection of ImagePositionPatient; the slice step is taken from the
positions themselves (not SliceThickness) and must be even. The array is ``(X, Y, Z) = (Columns, Rows,
slices)`` so that, as for NIfTI, the first index runs along a pixel row. DICOM's LPS+ patient coordinates are
converted to RAS+ (x and y negated). RescaleSlope/RescaleIntercept are applied: integral rescaling keeps an
integer array (int16 when the values fit, e.g. CT in Hounsfield units), any other becomes float32.

Privacy: no patient tag reaches the returned :class:`Image` (``extra`` holds the modality only), an error
message or a log line; pydicom's warnings, which may quote tag values, are silenced while reading.
"""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from medjax.data.image import Image
from medjax.errors import DataError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
SPACING_TOLERANCE = 0.01  # allowed deviation of a slice step from the mean step, as a fraction of the mean
_ABS_TOL_MM = 1e-3  # absolute floor (mm) for position and spacing comparisons
_DICOMDIR_UID = "1.2.840.10008.1.3.10"


@contextmanager
def _quiet():
    """Silence pydicom's warnings (they can quote tag values) and its logger while reading."""
    import logging

    logger = logging.getLogger("pydicom")
    old = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(old)


def is_dicom_file(path) -> bool:
    """Whether ``path`` is a file with the DICOM Part 10 preamble (``"DICM"`` at byte 128)."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def dicom_files(folder) -> list[str]:
    """Sorted DICOM Part 10 files directly inside ``folder`` (hidden files skipped)."""
    folder = str(folder)
    out = []
    for name in sorted(os.listdir(folder)):
        p = os.path.join(folder, name)
        if not name.startswith(".") and os.path.isfile(p) and is_dicom_file(p):
            out.append(p)
    return out


@dataclass
class _Frame:
    """Geometry and rescaling of one 2D frame: a file of a series, or a frame of a multi-frame file."""

    path: str
    index: int  # frame index inside its file (0 for single-frame files)
    position: np.ndarray  # (3,) ImagePositionPatient, LPS mm
    orientation: np.ndarray  # (6,) ImageOrientationPatient row then column cosines
    pixel_spacing: tuple[float, float]  # (between rows, between columns) mm
    shape: tuple[int, int]  # (Rows, Columns)
    slope: float
    intercept: float
    thickness: float | None


def _read(path: str, *, pixels: bool):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with _quiet():
            return pydicom.dcmread(path, stop_before_pixels=not pixels)
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except InvalidDicomError:
        raise DataError(path, "not a DICOM file (no DICM preamble or unreadable header)") from None
    except Exception as e:  # truncated or malformed elements; message may quote values, so name the type only
        raise DataError(path, f"unreadable DICOM file ({type(e).__name__})") from None


def _floats(where: str, value, n: int, keyword: str) -> np.ndarray:
    if value is None:
        raise DataError(where, f"missing {keyword}; cannot place the image in space")
    try:
        arr = np.asarray([float(v) for v in (value if n > 1 else [value])], dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(where, f"{keyword} is not numeric") from None
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        raise DataError(where, f"{keyword} must hold {n} finite numbers, got {len(arr)}")
    return arr


def _lookup(items, seq: str, keyword: str):
    """First ``keyword`` found in functional-group sequence ``seq`` of ``items`` (per-frame, then shared)."""
    for item in items:
        if item is not None and seq in item and len(item[seq].value):
            value = item[seq].value[0].get(keyword)
            if value is not None:
                return value
    return None


def _optional_float(value, default):
    try:
        return float(value) if value is not None and value != "" else default
    except (TypeError, ValueError):
        return default


def _check_monochrome(ds, where: str) -> None:
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    if spp != 1:
        raise DataError(where, f"colour DICOM ({spp} samples per pixel); medjax reads greyscale CT/MR images only")
    if "Rows" not in ds or "Columns" not in ds:
        raise DataError(where, "DICOM object holds no image (no Rows/Columns)")


def _single_frame(ds, path: str) -> _Frame:
    _check_monochrome(ds, path)
    slope = _optional_float(ds.get("RescaleSlope"), 1.0)
    if ds.get("Modality") == "RTDOSE" and ds.get("DoseGridScaling") is not None:
        slope = _optional_float(ds.get("DoseGridScaling"), 1.0)
    return _Frame(
        path=path,
        index=0,
        position=_floats(path, ds.get("ImagePositionPatient"), 3, "ImagePositionPatient"),
        orientation=_floats(path, ds.get("ImageOrientationPatient"), 6, "ImageOrientationPatient"),
        pixel_spacing=tuple(_floats(path, ds.get("PixelSpacing"), 2, "PixelSpacing")),
        shape=(int(ds.Rows), int(ds.Columns)),
        slope=slope,
        intercept=_optional_float(ds.get("RescaleIntercept"), 0.0),
        thickness=_optional_float(ds.get("SpacingBetweenSlices"), _optional_float(ds.get("SliceThickness"), None)),
    )


def _multi_frames(ds, path: str) -> list[_Frame]:
    """Frames of an enhanced (functional groups) or legacy (GridFrameOffsetVector) multi-frame file."""
    _check_monochrome(ds, path)
    n = int(ds.get("NumberOfFrames", 1) or 1)
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else None
    per = ds.PerFrameFunctionalGroupsSequence if "PerFrameFunctionalGroupsSequence" in ds else None
    if per is not None and len(per) != n:
        raise DataError(path, f"PerFrameFunctionalGroupsSequence has {len(per)} items for {n} frames")
    shape = (int(ds.Rows), int(ds.Columns))
    frames = []
    if per is not None:
        for i in range(n):
            items = (per[i], shared)
            where = f"{path} (frame {i + 1})"
            iop = _lookup(items, "PlaneOrientationSequence", "ImageOrientationPatient")
            ps = _lookup(items, "PixelMeasuresSequence", "PixelSpacing")
            slope = _lookup(items, "PixelValueTransformationSequence", "RescaleSlope")
            inter = _lookup(items, "PixelValueTransformationSequence", "RescaleIntercept")
            thick = _lookup(items, "PixelMeasuresSequence", "SpacingBetweenSlices")
            thick = thick if thick is not None else _lookup(items, "PixelMeasuresSequence", "SliceThickness")
            frames.append(
                _Frame(
                    path=path,
                    index=i,
                    position=_floats(
                        where, _lookup(items, "PlanePositionSequence", "ImagePositionPatient"), 3,
                        "ImagePositionPatient (PlanePositionSequence)",
                    ),
                    orientation=_floats(where, iop if iop is not None else ds.get("ImageOrientationPatient"), 6,
                                        "ImageOrientationPatient"),
                    pixel_spacing=tuple(_floats(where, ps if ps is not None else ds.get("PixelSpacing"), 2,
                                                "PixelSpacing")),
                    shape=shape,
                    slope=_optional_float(slope if slope is not None else ds.get("RescaleSlope"), 1.0),
                    intercept=_optional_float(inter if inter is not None else ds.get("RescaleIntercept"), 0.0),
                    thickness=_optional_float(thick, None),
                )
            )
        return frames
    base = _single_frame(ds, path)
    if n == 1:
        return [base]
    offsets = ds.get("GridFrameOffsetVector")
    if offsets is None:
        raise DataError(path, f"multi-frame file ({n} frames) without per-frame positions "
                              "(no PerFrameFunctionalGroupsSequence or GridFrameOffsetVector)")
    offsets = _floats(path, offsets, n, "GridFrameOffsetVector")
    offsets = offsets - offsets[0]  # relative to the first frame, whose position is ImagePositionPatient
    normal = np.cross(base.orientation[:3], base.orientation[3:])
    for i in range(n):
        frames.append(_Frame(**{**base.__dict__, "index": i, "position": base.position + offsets[i] * normal}))
    return frames


def _geometry(where: str, frames: list[_Frame]) -> tuple[list[int], np.ndarray]:
    """Sort frames along the slice normal and build the ``(4, 4)`` RAS+ affine of ``(Columns, Rows, n)``."""
    first = frames[0]
    for f in frames[1:]:
        if f.shape != first.shape:
            raise DataError(where, f"slices have different sizes ({first.shape} and {f.shape} pixels)")
        if not np.allclose(f.orientation, first.orientation, atol=1e-4):
            raise DataError(where, "slices have different orientations (ImageOrientationPatient differs; "
                                   "a localizer or a second series mixed in?)")
        if not np.allclose(f.pixel_spacing, first.pixel_spacing, atol=1e-4):
            raise DataError(where, "slices have different PixelSpacing")
    row, col = first.orientation[:3], first.orientation[3:]
    if not (0.99 < np.linalg.norm(row) < 1.01 and 0.99 < np.linalg.norm(col) < 1.01) or abs(row @ col) > 1e-3:
        raise DataError(where, "ImageOrientationPatient row/column cosines are not orthonormal")
    row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    normal = np.cross(row, col)
    positions = np.stack([f.position for f in frames])
    proj = positions @ normal
    order = [int(i) for i in np.argsort(proj, kind="stable")]
    n = len(frames)
    if n > 1:
        sorted_pos = positions[order]
        steps = np.diff(proj[order])
        mean = float((proj[order[-1]] - proj[order[0]]) / (n - 1))
        if steps.min() <= _ABS_TOL_MM:
            dup = int(np.sum(steps <= _ABS_TOL_MM)) + 1
            raise DataError(where, f"{dup} slices share a position: several images per location "
                                   "(echoes, phases or time points) in one series are not supported")
        tol = max(_ABS_TOL_MM, SPACING_TOLERANCE * mean)
        worst = float(np.max(np.abs(steps - mean)))
        if worst > tol:
            raise DataError(where, f"uneven slice spacing: steps range {steps.min():.4g}-{steps.max():.4g} mm "
                                   f"around a mean of {mean:.4g} mm (tolerance {tol:.2g} mm); missing slices?")
        step = (sorted_pos[-1] - sorted_pos[0]) / (n - 1)
        drift = np.linalg.norm(sorted_pos - (sorted_pos[0] + np.arange(n)[:, None] * step), axis=1).max()
        if drift > tol:
            raise DataError(where, f"slice positions do not lie on a line (off by {drift:.3g} mm)")
    else:
        step = normal * (first.thickness if first.thickness and first.thickness > 0 else 1.0)
    lps = np.eye(4)
    lps[:3, 0] = row * first.pixel_spacing[1]
    lps[:3, 1] = col * first.pixel_spacing[0]
    lps[:3, 2] = step
    lps[:3, 3] = positions[order[0]]
    return order, LPS_TO_RAS @ lps


def _out_dtype(frames: list[_Frame]):
    slopes = np.array([f.slope for f in frames])
    inters = np.array([f.intercept for f in frames])
    if np.all(slopes == 1.0) and np.all(inters == 0.0):
        return None  # native dtype of the stored pixels
    if np.all(slopes == np.round(slopes)) and np.all(inters == np.round(inters)):
        return np.int32
    return np.float32


def _frames_of(path: str) -> tuple[list[_Frame], str]:
    """Frames (unsorted) and modality of a DICOM file or a folder holding one series."""
    if os.path.isdir(path):
        files = dicom_files(path)
        headers = []
        for p in files:
            ds = _read(p, pixels=False)
            if "Rows" not in ds or ds.get("SOPClassUID") == _DICOMDIR_UID:
                continue  # non-image objects (DICOMDIR, structured reports, RT structures) are skipped
            headers.append((p, ds))
        if not headers:
            raise DataError(path, "folder holds no DICOM image files (expected one series of .dcm files)")
        series: dict[str, int] = {}
        for _, ds in headers:
            uid = str(ds.get("SeriesInstanceUID", ""))
            series[uid] = series.get(uid, 0) + 1
        if len(series) > 1:
            counts = ", ".join(str(c) for c in sorted(series.values(), reverse=True))
            raise DataError(path, f"folder mixes {len(series)} DICOM series ({counts} files); medjax reads one "
                                  "series per folder: move each series into its own folder")
        frames = [f for p, ds in headers for f in _file_frames(ds, p)]
        return frames, str(headers[0][1].get("Modality", ""))
    ds = _read(path, pixels=False)
    return _file_frames(ds, path), str(ds.get("Modality", ""))


def _file_frames(ds, path: str) -> list[_Frame]:
    if int(ds.get("NumberOfFrames", 1) or 1) > 1 or "PerFrameFunctionalGroupsSequence" in ds:
        return _multi_frames(ds, path)
    return [_single_frame(ds, path)]


def read_dicom_geometry(path) -> tuple[tuple[int, int, int], np.ndarray]:
    """``((Columns, Rows, slices), affine)`` of a DICOM series folder or file, from headers only."""
    path = str(path)
    frames, _ = _frames_of(path)
    _, affine = _geometry(path, frames)
    rows, cols = frames[0].shape
    return (cols, rows, len(frames)), affine


def _pixels(path: str, ds) -> np.ndarray:
    try:
        with _quiet():
            return ds.pixel_array
    except Exception as e:
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(ts, "name", str(ts))
        if ts is not None and not getattr(ts, "is_compressed", True):
            raise DataError(path, f"pixel data is truncated or does not match Rows/Columns/BitsAllocated "
                                  f"({type(e).__name__})") from None
        raise DataError(path, f"cannot decode pixel data (transfer syntax {name}; {type(e).__name__}): "
                              "install a pixel-data plugin for compressed DICOM or convert the files") from None


def read_dicom(path) -> Image:
    """Read a folder holding one DICOM series, or one (multi-frame) DICOM file, as a 3D :class:`Image`.

    Returns:
      ``Image`` with array ``(Columns, Rows, slices)`` (a single slice gives ``(X, Y, 1)``), rescaled values
      (Hounsfield units for CT), affine ``(4, 4)`` voxel -> RAS+ mm, ``extra={"modality": ...}``.
    """
    path = str(path)
    frames, modality = _frames_of(path)
    order, affine = _geometry(path, frames)
    rows, cols = frames[0].shape
    out_dtype = _out_dtype(frames)
    out = None
    per_file: dict[str, int] = {}
    for f in frames:
        per_file[f.path] = per_file.get(f.path, 0) + 1
    cache: dict[str, np.ndarray] = {}  # decoded multi-frame files (frames of several files may interleave)
    for k, idx in enumerate(order):
        f = frames[idx]
        stack = cache.get(f.path)
        if stack is None:
            stack = _pixels(f.path, _read(f.path, pixels=True))
            stack = stack.reshape((-1,) + stack.shape[-2:])
            if len(stack) != per_file[f.path]:
                raise DataError(f.path, f"pixel data holds {len(stack)} frames, header says {per_file[f.path]}")
            if per_file[f.path] > 1:
                cache[f.path] = stack
        pix = stack[f.index]
        if pix.shape != (rows, cols):
            raise DataError(f.path, f"pixel data is {pix.shape}, header says {(rows, cols)}")
        if out is None:
            out = np.empty((cols, rows, len(frames)), dtype=out_dtype or pix.dtype)
        elif out_dtype is None and pix.dtype != out.dtype:
            out = out.astype(np.result_type(out.dtype, pix.dtype))
        if out_dtype is None:
            out[:, :, k] = pix.T
        elif out_dtype is np.int32:
            out[:, :, k] = (pix.astype(np.int64) * int(f.slope) + int(f.intercept)).T
        else:
            out[:, :, k] = (pix.astype(np.float32) * np.float32(f.slope) + np.float32(f.intercept)).T
    if out_dtype is np.int32 and out.size and out.min() >= -32768 and out.max() <= 32767:
        out = out.astype(np.int16)
    extra = {"modality": modality} if modality else {}
    return Image(array=out, affine=affine, path=path, has_channels=False, extra=extra)
