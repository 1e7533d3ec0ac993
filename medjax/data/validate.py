"""Validation of images, image/label pairs and whole datasets (``medjax data check``).

Every failure is a :class:`medjax.errors.DataError` whose ``path`` names the file and whose ``reason`` says
what is wrong; :func:`check_file` and :func:`check_dataset` turn them into :class:`CheckResult` rows.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass

import numpy as np

from medjax.data.image import Image
from medjax.errors import DataError

PAIR_TOLERANCE_MM = 1e-3  # largest allowed difference between image and label affine entries (mm)
_SINGULAR_RCOND = 1e-6  # smallest/largest singular value of the affine's linear part below this: singular


@dataclass
class CheckResult:
    """Outcome of checking one file: ``ok`` and, when not, the ``reason``."""

    path: str
    ok: bool
    reason: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def check_shape(path, shape: tuple[int, ...], has_channels: bool | None = None) -> None:
    """Reject array shapes medjax cannot use: spatial dims other than 2 or 3, or more than one extra axis.

    ``shape`` is the full array shape; with ``has_channels=None`` any axis beyond the third is a channel axis.
    """
    shape = tuple(int(s) for s in shape)
    nd = len(shape)
    if has_channels is None:
        has_channels = nd > 3
    spatial = nd - 1 if has_channels else nd
    if nd > 4 or (has_channels and nd < 3):
        raise DataError(path, f"unsupported {nd}D data of shape {shape}: medjax reads 2D or 3D images with at "
                              "most one extra (channel) axis")
    if spatial not in (2, 3):
        raise DataError(path, f"unsupported {nd}D data of shape {shape}: expected 2 or 3 spatial dimensions")
    if any(s < 1 for s in shape):
        raise DataError(path, f"empty array of shape {shape}")


def _check_affine(path, affine: np.ndarray, ndim: int) -> None:
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4):
        raise DataError(path, f"affine must be (4, 4), got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise DataError(path, "affine holds non-finite values (NaN or Inf): fix the header's qform/sform")
    if not np.allclose(a[3], [0, 0, 0, 1]):
        raise DataError(path, f"affine's last row is {a[3].tolist()}, not [0, 0, 0, 1]")
    spacing = np.sqrt((a[:3, :ndim] ** 2).sum(axis=0))
    if np.any(spacing <= 0):
        axes = [i for i, s in enumerate(spacing) if s <= 0]
        raise DataError(path, f"zero spacing along axis {axes} (voxel size 0 mm): fix pixdim / the affine")
    sv = np.linalg.svd(a[:3, :ndim], compute_uv=False)
    if sv[-1] <= _SINGULAR_RCOND * sv[0]:
        raise DataError(path, "singular (degenerate) affine: its voxel axes are linearly dependent, so voxels "
                              "have no volume; fix the header's qform/sform")


def check_image(image: Image, *, is_label: bool = False) -> None:
    """Raise :class:`DataError` if ``image`` is unusable.

    Checks: 2 or 3 spatial dims with at most one channel axis; a finite, non-singular affine with positive
    spacing; finite voxels; not constant (an all-equal volume is empty or blank). With ``is_label=True`` the
    volume may be constant (a case without foreground) but must hold integer class values and no channels.
    """
    path = image.path or "<in-memory image>"
    arr = image.array
    check_shape(path, arr.shape, image.has_channels)
    _check_affine(path, image.affine, image.spatial_dims)
    if arr.dtype.kind == "f":
        total = float(np.sum(arr, dtype=np.float64))  # NaN/Inf propagate; float64 cannot overflow here
        if not math.isfinite(total):
            bad = ~np.isfinite(arr)
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            raise DataError(path, f"{int(bad.sum())} non-finite voxels (NaN or Inf), first at index {first}")
    elif arr.dtype.kind not in "biu":
        raise DataError(path, f"unsupported voxel type {arr.dtype}")
    if is_label:
        if image.has_channels:
            raise DataError(path, f"label map has a channel axis (shape {arr.shape}); expected one class per voxel")
        if arr.dtype.kind == "f" and not np.array_equal(arr, np.round(arr)):
            raise DataError(path, "label map holds non-integer values; labels must be integer class indices")
        return
    lo, hi = arr.min(), arr.max()
    if lo == hi:
        raise DataError(path, f"constant volume (every voxel is {lo.item()}): empty or blank image")


def check_pair(image: Image, label: Image) -> None:
    """Raise :class:`DataError` naming the label file if its grid differs from the image's.

    The spatial shapes must be equal and the affines equal within :data:`PAIR_TOLERANCE_MM`.
    """
    where = label.path or "<in-memory label>"
    if image.spatial_shape != label.spatial_shape:
        raise DataError(where, f"label shape {label.spatial_shape} differs from image shape {image.spatial_shape}"
                               f" of {image.path or 'the image'}")
    diff = float(np.max(np.abs(np.asarray(image.affine) - np.asarray(label.affine))))
    if not diff <= PAIR_TOLERANCE_MM:
        raise DataError(where, f"label affine differs from the image affine of {image.path or 'the image'} by up "
                               f"to {diff:.4g} mm (tolerance {PAIR_TOLERANCE_MM} mm): resample the label onto "
                               "the image grid")


def _result(path, fn) -> tuple[CheckResult, object]:
    try:
        return CheckResult(str(path), True, ""), fn()
    except DataError as e:
        return CheckResult(str(path), False, e.reason if e.path == str(path) else str(e)), None
    except MemoryError:
        return CheckResult(str(path), False, "out of memory while reading"), None
    except Exception as e:  # a checker reports, never crashes on one bad file
        return CheckResult(str(path), False, f"unexpected {type(e).__name__} while reading"), None


def check_file(path, *, is_label: bool = False) -> CheckResult:
    """Read and validate one image (file or DICOM series folder); never raises for a bad file."""
    from medjax.data.io import read_image

    return _result(path, lambda: read_image(path, is_label=is_label))[0]


def _pair_results(record: dict) -> list[CheckResult]:
    from medjax.data.io import read_image

    image_path, label_path = record["image"], record.get("label")
    res, image = _result(image_path, lambda: read_image(image_path))
    out = [res]
    if label_path:
        lres, label = _result(label_path, lambda: read_image(label_path, is_label=True))
        if lres.ok and image is not None:
            lres = _result(label_path, lambda: check_pair(image, label))[0]
        out.append(lres)
    return out


def check_dataset(path, *, progress: bool = False) -> list[CheckResult]:
    """Check every image (and its label, and the pair) of a dataset.

    Args:
      path: a folder of volumes, an MSD folder with ``dataset.json``, a CSV/JSON manifest or a single image.
      progress: show a progress bar on stderr.

    Returns:
      One :class:`CheckResult` per file, images and labels of all splits (MSD ``training`` and ``test``),
      in record order. A file listed twice is checked once.
    """
    from medjax.data.sources import available_splits, load_records

    records = []
    for split in available_splits(path):
        records.extend(load_records(path, split=split, must_exist=False))
    iterator = records
    if progress:
        from tqdm import tqdm

        iterator = tqdm(records, desc="checking", unit="case", file=__import__("sys").stderr)
    results, seen = [], set()
    for rec in iterator:
        key = (rec["image"], rec.get("label"))
        if key in seen:
            continue
        seen.add(key)
        for res in _pair_results(rec):
            if os.path.normpath(res.path) not in seen:
                seen.add(os.path.normpath(res.path))
                results.append(res)
    return results
