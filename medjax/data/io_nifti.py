"""NIfTI-1/NIfTI-2 reading and writing through nibabel.

Reading is lazy: the header is parsed first, the file size is compared with what the header claims (so a
corrupt header never makes us allocate a huge array), and only then are the voxels read, once. Integer data
without scaling keeps its native dtype (label maps stay integers); anything scaled or floating point becomes
float32.

Writing builds a fresh header from the array and affine only: no ``descrip``, ``db_name``, ``aux_file`` or any
other free-text field of a source header is ever copied.
"""

from __future__ import annotations

import gzip
import os
import struct
import threading
import zlib

import numpy as np

from medjax.data.image import Image
from medjax.errors import DataError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
_GZIP_CHUNK = 1 << 20


def is_nifti_path(path) -> bool:
    """Whether ``path`` names a NIfTI file by its suffix (``.nii`` or ``.nii.gz``, any case)."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def nifti_stem(path) -> str:
    """File name without ``.nii`` / ``.nii.gz``: ``"/a/case_01.nii.gz" -> "case_01"``."""
    name = os.path.basename(str(path))
    low = name.lower()
    for suffix in (".nii.gz", ".nii"):
        if low.endswith(suffix):
            return name[: -len(suffix)]
    return name


def layout(shape: tuple[int, ...]) -> tuple[tuple[int, ...], bool]:
    """Map a NIfTI data shape to ``(array shape, has_channels)``.

    ``(X, Y)`` and ``(X, Y, Z)`` are single-channel images; ``(X, Y, Z, C)`` is channels-last; trailing
    singleton axes beyond the third are dropped, and the NIfTI vector layout ``(X, Y, Z, 1, C)`` becomes
    ``(X, Y, Z, C)``. Any other shape is returned unchanged (``has_channels`` True when it has > 3 axes) so that
    :func:`medjax.data.validate.check_shape` can name it.
    """
    shape = tuple(int(s) for s in shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) == 5 and shape[3] == 1:
        shape = shape[:3] + shape[4:]
    return shape, len(shape) > 3


def _load(path: str, mmap: bool):
    import nibabel as nib

    if path.lower().endswith(".gz") and os.path.isfile(path):
        with open(path, "rb") as f:
            if f.read(2) != b"\x1f\x8b":
                raise DataError(path, "unreadable: corrupt gzip data (no gzip signature; is it really .nii.gz?)")
    try:
        img = nib.load(path, mmap=mmap) if path.lower().endswith(".nii") else nib.load(path)
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DataError(path, f"unreadable: truncated or corrupt compressed data ({type(e).__name__})") from None
    except Exception as e:  # nibabel raises several types for non-NIfTI content
        raise DataError(path, f"not a readable NIfTI file ({type(e).__name__}: {_short(e, path)})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise DataError(path, f"not a NIfTI image (nibabel read it as {type(img).__name__})")
    return img


def _short(e: Exception, path: str = "", limit: int = 160) -> str:
    """One-line exception text without the file path (the DataError already names it)."""
    text = " ".join(str(e).split())
    if path:
        text = text.replace(f'"{path}"', "the file").replace(path, "the file")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _gzip_payload_size(path: str, need: int) -> int:
    """Uncompressed size of a gzip file, read in 1 MiB chunks and stopping once ``need`` bytes are seen.

    Raises ``EOFError`` for a truncated stream and ``zlib.error`` for corrupt data. Memory stays bounded.
    """
    total = 0
    d = zlib.decompressobj(wbits=31)
    in_member = False
    with open(path, "rb") as f:
        while total < need:
            data = f.read(_GZIP_CHUNK)
            if not data:
                break
            while data is not None and total < need:
                if data:
                    in_member = True
                out = d.decompress(data, _GZIP_CHUNK)
                total += len(out)
                if d.eof:  # end of a gzip member; a multi-member file goes on with the next one
                    data = d.unused_data.lstrip(b"\0") or None
                    d = zlib.decompressobj(wbits=31)
                    in_member = False
                elif d.unconsumed_tail or len(out) == _GZIP_CHUNK:
                    data = d.unconsumed_tail  # output was capped: drain before reading more
                else:
                    data = None
    if total < need and in_member:
        raise EOFError("compressed stream ends before its end-of-stream marker")
    return total


def _check_size(path: str, header, shape: tuple[int, ...]) -> None:
    """Compare the bytes the header claims with what the file holds, without reading the voxels."""
    itemsize = np.dtype(header.get_data_dtype()).itemsize
    offset = int(header.get_data_offset())
    need = offset + int(np.prod(shape, dtype=np.float64)) * itemsize
    claim = f"header claims {'x'.join(map(str, shape))} voxels of {header.get_data_dtype()} ({need} bytes with header)"
    if path.lower().endswith(".gz"):
        size = os.path.getsize(path)
        if size < 18:
            raise DataError(path, "unreadable: truncated gzip file")
        with open(path, "rb") as f:
            f.seek(-4, os.SEEK_END)
            isize = struct.unpack("<I", f.read(4))[0]
        if need < 2**32 and isize >= need:
            return
        try:
            have = _gzip_payload_size(path, need)
        except EOFError:
            raise DataError(path, "unreadable: truncated gzip data (stream ends early)") from None
        except zlib.error as e:
            raise DataError(path, f"unreadable: corrupt gzip data ({_short(e)})") from None
        if have < need:
            raise DataError(path, f"{claim} but the file holds only {have} bytes uncompressed: truncated file or bad header")
    else:
        have = os.path.getsize(path)
        if have < need:
            raise DataError(path, f"{claim} but the file holds only {have} bytes: truncated file or bad header")


def _check_geometry(path: str, img, spatial_dims: int) -> None:
    """Refuse a header whose geometry is unknown: no qform and no sform (both codes 0) and a voxel size
    (``pixdim``) that is zero, negative or not finite. nibabel then silently assumes 1 mm voxels.

    nibabel repairs ``pixdim`` while loading, so the stored header is read again (its first 540 bytes). A
    header without qform/sform but with positive voxel sizes is accepted (ANALYZE-style: spacing from
    ``pixdim``, axes assumed RAS, as nibabel does).
    """
    import io

    header = img.header
    if int(header["qform_code"]) != 0 or int(header["sform_code"]) != 0:
        return
    opener = gzip.open if path.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read(540)
        stored = type(header).from_fileobj(io.BytesIO(raw), check=False)
    except (OSError, EOFError, zlib.error, ValueError):
        return  # unreadable headers are reported by the reader itself
    n = max(1, min(spatial_dims, 3))
    zooms = [float(v) for v in stored["pixdim"][1: n + 1]]
    bad = [i for i, z in enumerate(zooms) if not (np.isfinite(z) and z > 0)]
    if bad:
        raise DataError(path, f"geometry unknown: the header has no qform or sform (qform_code = sform_code = 0) "
                              f"and voxel size (pixdim) {zooms} mm is zero or invalid along axis {bad}, so the "
                              "spacing and orientation are not known (nibabel would assume 1 mm); set the voxel "
                              "size and a qform/sform when converting, e.g. re-export from DICOM")


def read_nifti_geometry(path) -> tuple[tuple[int, ...], np.ndarray]:
    """Spatial shape and ``(4, 4)`` voxel->RAS+ mm affine of a NIfTI file, from its header only."""
    path = str(path)
    img = _load(path, mmap=True)
    shape, has_channels = layout(img.shape)
    spatial = shape[:-1] if has_channels else shape
    _check_geometry(path, img, len(spatial))
    return tuple(spatial), np.asarray(img.affine, dtype=np.float64)


def read_nifti(path, *, mmap: bool = True, check_shape=None) -> Image:
    """Read a ``.nii`` / ``.nii.gz`` file into an :class:`Image`.

    Args:
      path: the file.
      mmap: memory-map uncompressed, unscaled ``.nii`` data instead of copying it into memory.
      check_shape: optional callable ``(path, shape) -> None`` run on the array shape before any voxel is
        read (used by the validator to reject 1D/5D data without reading it).

    Returns:
      ``Image`` whose array is ``(X, Y[, Z])`` or channels-last ``(X, Y, Z, C)``; float32 when the file is
      floating point or has scaling (``scl_slope``/``scl_inter``), else the native integer dtype.

    Channels: a 4-D file ``(X, Y, Z, C)`` and a 5-D file in the NIfTI vector layout ``(X, Y, Z, 1, C)``
    (time axis of length 1, components in the fifth dimension, e.g. several MRI sequences or an RGB-like
    volume) are both read as channels-last ``(X, Y, Z, C)``, channel ``c`` being component ``c``. Trailing
    axes of length 1 are dropped. A 5-D file with a time axis longer than 1, ``(X, Y, Z, T, C)``, is refused
    (``unsupported 5D data``), as is anything with more axes.

    Raises:
      DataError naming the file: unreadable or truncated data, unsupported voxel types or shapes, or an
      unknown geometry (no qform/sform and zero voxel sizes; see :func:`_check_geometry`).
    """
    path = str(path)
    img = _load(path, mmap=mmap)
    header = img.header
    dtype = np.dtype(header.get_data_dtype())
    if dtype.fields is not None or dtype.kind not in "biuf":
        raise DataError(path, f"unsupported voxel type {dtype} (complex or RGB); medjax reads scalar voxels only")
    shape, has_channels = layout(img.shape)
    if check_shape is not None:
        check_shape(path, shape)
    _check_geometry(path, img, len(shape) - 1 if has_channels else len(shape))
    _check_size(path, header, tuple(int(s) for s in img.shape))
    proxy = img.dataobj
    slope, inter = float(getattr(proxy, "slope", 1.0)), float(getattr(proxy, "inter", 0.0))
    scaled = not (slope == 1.0 and inter == 0.0)
    try:
        if dtype.kind in "biu" and not scaled:
            array = np.asanyarray(proxy)
        else:
            array = np.asarray(proxy, dtype=np.float32).astype(np.float32, copy=False)
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DataError(path, f"unreadable: truncated or corrupt compressed data ({type(e).__name__})") from None
    except (OSError, ValueError) as e:
        raise DataError(path, f"unreadable voxel data ({type(e).__name__}: {_short(e, path)})") from None
    if dtype.kind == "b":
        array = array.astype(np.uint8)
    elif not array.dtype.isnative:  # big-endian files: native byte order for numpy/JAX consumers
        array = array.astype(array.dtype.newbyteorder("="))
    array = array.reshape(shape)
    return Image(array=array, affine=np.asarray(img.affine, dtype=np.float64), path=path, has_channels=has_channels)


def _nifti_dtype(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    if array.dtype in (np.int64, np.uint64):
        info = np.iinfo(np.int32)
        if array.size == 0 or (array.min() >= info.min and array.max() <= info.max):
            return array.astype(np.int32)
        raise ValueError("int64 voxel values exceed int32; NIfTI readers commonly reject int64")
    if array.dtype == np.float16:
        return array.astype(np.float32)
    if array.dtype.kind not in "iuf":
        raise ValueError(f"cannot write voxels of dtype {array.dtype} to NIfTI")
    return array


def write_nifti(path, image, affine=None) -> None:
    """Write ``image`` to ``.nii`` or ``.nii.gz`` (chosen by the suffix).

    Args:
      path: destination; must end with ``.nii`` or ``.nii.gz``. Parent folders are created.
      image: an :class:`Image` (its affine is used unless ``affine`` is given) or an array ``(X, Y[, Z][, C])``.
      affine: ``(4, 4)`` voxel->RAS+ mm; required for a bare array.

    This is medjax's one NIfTI writer (prepared-cache exports, predictions, the demo set and test data all
    use it). The header is built from scratch: the affine is stored as both qform and sform (code 1,
    scanner-aligned), units are mm, scaling is off, and no free-text or identifying header field
    (``descrip``, ``db_name``, ``aux_file``, ``intent_name``) of any source is written. The file is written
    to a temporary name in the same folder and renamed, so a crash never leaves a half-written file.
    """
    import nibabel as nib

    path = str(path)
    if not is_nifti_path(path):
        raise ValueError(f"{path}: NIfTI output must end with .nii or .nii.gz")
    if isinstance(image, Image):
        array = np.asarray(image.array)
        affine = image.affine if affine is None else affine
    else:
        array = np.asarray(image)
    if affine is None:
        raise ValueError(f"{path}: an affine (4, 4) is required to write a bare array")
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"{path}: affine must be (4, 4), got {affine.shape}")
    array = _nifti_dtype(array)
    header = nib.Nifti1Header()
    header.set_data_dtype(array.dtype)
    out = nib.Nifti1Image(np.ascontiguousarray(array), affine, header=header)
    out.set_qform(affine, code=1)
    out.set_sform(affine, code=1)
    out.header.set_xyzt_units(xyz="mm", t="sec")
    out.header.set_slope_inter(1.0, 0.0)
    folder, name = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".tmp{os.getpid()}_{threading.get_ident()}_{name}")  # keeps the suffix
    try:
        nib.save(out, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
