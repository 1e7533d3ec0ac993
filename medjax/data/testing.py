"""Small, real test data generated on the fly: volumes, labels, tiny datasets and a corpus of bad inputs.

Everything here writes real NIfTI (nibabel) and DICOM (pydicom) files; nothing is downloaded. Used by the
test suite and handy for quick experiments::

    from medjax.data.testing import make_volume, write_tiny_dataset
    img = make_volume((24, 28, 20), spacing=(1.5, 1.5, 2.0), orientation="LPS")
    path = write_tiny_dataset(tmp_path, n=4, layout="msd")
"""

from __future__ import annotations

import gzip
import json
import os
import shutil

import numpy as np

from medjax.data.image import Image

_AXES = {"R": (0, 1.0), "L": (0, -1.0), "A": (1, 1.0), "P": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}


def orientation_affine(shape, spacing, orientation: str = "RAS") -> np.ndarray:
    """``(4, 4)`` voxel -> RAS+ mm affine for an axis-aligned grid with the volume centre at the world origin.

    Args:
      shape: ``(X, Y[, Z])`` voxels; spacing: mm per voxel (1 value broadcast, or one per axis, 3 for 2D
      keeps the slice thickness); orientation: 3-letter code (``"RAS"``, ``"LPS"``, ``"PIR"``, ...), the world
      direction each array axis increases towards.
    """
    code = orientation.upper()
    if len(code) != 3 or sorted(_AXES[c][0] for c in code if c in _AXES) != [0, 1, 2]:
        raise ValueError(f"orientation must name each world axis once, e.g. 'RAS', got {orientation!r}")
    sp = np.atleast_1d(np.asarray(spacing, dtype=np.float64))
    sp = np.repeat(sp, 3) if sp.size == 1 else np.concatenate([sp, np.ones(3 - sp.size)])[:3]
    aff = np.eye(4)
    aff[:3, :3] = 0.0
    for i, c in enumerate(code):
        axis, sign = _AXES[c]
        aff[axis, i] = sign * sp[i]
    full = np.asarray(list(shape) + [1] * (3 - len(shape)), dtype=np.float64)
    aff[:3, 3] = -aff[:3, :3] @ ((full - 1) / 2)
    return aff


def _blob(shape, rng) -> tuple[np.ndarray, np.ndarray]:
    """Centre (voxels) and radii (voxels) of an ellipsoid well inside the grid."""
    shape = np.asarray(shape, dtype=np.float64)
    centre = shape / 2 + rng.uniform(-0.15, 0.15, size=len(shape)) * shape
    radii = np.maximum(shape * rng.uniform(0.15, 0.25, size=len(shape)), 1.5)
    return centre, radii


def _blob_distance(shape, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centre, radii = _blob(shape, rng)
    grids = np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij")
    return np.sqrt(sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii)))


def make_volume(shape=(24, 28, 20), spacing=(1.5, 1.5, 2.0), orientation: str = "RAS", seed: int = 0) -> Image:
    """A smooth random float32 volume ``(X, Y[, Z])`` with a bright ellipsoid blob (values about 0-300).

    The same ``seed`` and ``shape`` in :func:`make_label` give the blob's label map.
    """
    from scipy.ndimage import gaussian_filter

    shape = tuple(int(s) for s in shape)
    dist = _blob_distance(shape, seed)
    rng = np.random.default_rng(seed + 1_000_003)
    noise = gaussian_filter(rng.standard_normal(shape), sigma=2.0)
    noise = noise / (noise.std() + 1e-12)
    array = 100.0 + 20.0 * noise + 150.0 * np.clip(1.5 - dist, 0.0, 1.0)
    return Image(array=array.astype(np.float32), affine=orientation_affine(shape, spacing, orientation))


def make_label(shape=(24, 28, 20), spacing=(1.5, 1.5, 2.0), orientation: str = "RAS", seed: int = 0) -> Image:
    """uint8 label map matching :func:`make_volume`: 1 inside the blob, 2 in its core, 0 elsewhere."""
    shape = tuple(int(s) for s in shape)
    dist = _blob_distance(shape, seed)
    label = np.where(dist <= 0.5, 2, np.where(dist <= 1.0, 1, 0)).astype(np.uint8)
    return Image(array=label, affine=orientation_affine(shape, spacing, orientation))


def label_box(label: Image) -> list[float]:
    """World-mm box ``[x0, y0, z0, x1, y1, z1]`` (RAS+) around the label's foreground voxel centres."""
    idx = np.argwhere(np.asarray(label.array) > 0)
    lo, hi = idx.min(axis=0), idx.max(axis=0)
    corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])], float)
    world = corners @ label.affine[:3, :3].T + label.affine[:3, 3]
    return [float(v) for v in np.concatenate([world.min(axis=0), world.max(axis=0)])]


def write_tiny_dataset(dir, n: int = 4, layout: str = "folder", with_labels: bool = True,
                       shape=(24, 28, 20), spacing=(1.5, 1.5, 2.0)) -> str:
    """Write ``n`` small cases (``case_000`` ...) and return the path to give to ``load_records``.

    Layouts: ``"folder"`` (``dir/case_i.nii.gz`` + ``dir/labels/``; returns ``dir``), ``"msd"``
    (``imagesTr``/``labelsTr``/``imagesTs`` + ``dataset.json``; returns ``dir``; one extra test image),
    ``"csv"`` (``dir/manifest.csv``) and ``"json"`` (``dir/manifest.json``). Manifests and ``dataset.json``
    carry ``class`` (``i % 2``) and ``boxes`` (the blob's world-mm box) per case.
    """
    from medjax.data.io_nifti import write_nifti

    if layout not in ("folder", "msd", "csv", "json"):
        raise ValueError(f"layout must be 'folder', 'msd', 'csv' or 'json', got {layout!r}")
    dir = os.fspath(dir)
    img_dir, lbl_dir = {"folder": (dir, os.path.join(dir, "labels")),
                        "msd": (os.path.join(dir, "imagesTr"), os.path.join(dir, "labelsTr"))}.get(
        layout, (os.path.join(dir, "images"), os.path.join(dir, "labels")))
    entries = []
    for i in range(n):
        rid = f"case_{i:03d}"
        write_nifti(os.path.join(img_dir, rid + ".nii.gz"), make_volume(shape, spacing, seed=i))
        entry = {"image": os.path.relpath(os.path.join(img_dir, rid + ".nii.gz"), dir)}
        label = make_label(shape, spacing, seed=i)
        if with_labels:
            write_nifti(os.path.join(lbl_dir, rid + ".nii.gz"), label)
            entry["label"] = os.path.relpath(os.path.join(lbl_dir, rid + ".nii.gz"), dir)
        entry["class"] = i % 2
        entry["boxes"] = [label_box(label)]
        entries.append(entry)
    if layout == "folder":
        return dir
    if layout == "msd":
        write_nifti(os.path.join(dir, "imagesTs", "case_test_000.nii.gz"), make_volume(shape, spacing, seed=n))
        for e in entries:
            e["image"] = "./" + e["image"]
            if "label" in e:
                e["label"] = "./" + e["label"]
        meta = {"name": "tiny", "description": "synthetic blobs", "tensorImageSize": "3D",
                "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "blob", "2": "core"},
                "numTraining": n, "numTest": 1, "training": entries, "test": ["./imagesTs/case_test_000.nii.gz"]}
        with open(os.path.join(dir, "dataset.json"), "w") as f:
            json.dump(meta, f, indent=1)
        return dir
    if layout == "json":
        path = os.path.join(dir, "manifest.json")
        with open(path, "w") as f:
            json.dump(entries, f, indent=1)
        return path
    import csv

    path = os.path.join(dir, "manifest.csv")
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "label", "class", "boxes"] if with_labels else ["image", "class", "boxes"])
        for e in entries:
            row = [e["image"]] + ([e["label"]] if with_labels else []) + [e["class"], json.dumps(e["boxes"])]
            w.writerow(row)
    return path


def _raw_nifti(path: str, shape, dtype, payload: bytes, *, geometry: bool = True) -> None:
    """A NIfTI-1 file whose header claims ``shape``/``dtype`` but whose data is ``payload``; with
    ``geometry=False`` it has no qform/sform (codes 0) and zero voxel sizes (unknown geometry)."""
    import nibabel as nib

    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(dtype)
    hdr.set_data_shape(shape)
    if geometry:
        hdr.set_sform(np.eye(4), code=1)
    else:
        hdr["qform_code"] = hdr["sform_code"] = 0
        hdr["pixdim"][1:4] = 0.0
    hdr["vox_offset"] = 352
    blob = hdr.binaryblock + b"\0" * 4 + payload
    if path.endswith(".gz"):
        with gzip.open(path, "wb") as f:
            f.write(blob)
    else:
        with open(path, "wb") as f:
            f.write(blob)


def _sform_only(path: str, array: np.ndarray, affine: np.ndarray) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(array, None)
    img.set_sform(affine, code=1)
    img.set_qform(None, code=0)
    nib.save(img, path)


def make_bad_corpus(dir) -> dict[str, str]:
    """Write one file per kind of bad input into ``dir`` (a folder-of-volumes dataset).

    Returns:
      ``{relative path: substring expected in the checker's reason}`` for every bad file. The images
      ``pair_shape.nii.gz`` and ``pair_affine.nii.gz`` are valid; their labels (in ``labels/``) are not.
    """
    from medjax.data.io_dicom_write import write_dicom_series
    from medjax.data.io_nifti import write_nifti

    dir = os.fspath(dir)
    os.makedirs(os.path.join(dir, "labels"), exist_ok=True)
    j = lambda *p: os.path.join(dir, *p)  # noqa: E731
    good = make_volume((10, 12, 8), spacing=(1.0, 1.0, 1.0), seed=3)
    expected = {}

    write_nifti(j("truncated.nii.gz"), make_volume((20, 20, 20), seed=1))
    with open(j("truncated.nii.gz"), "rb") as f:
        data = f.read()
    with open(j("truncated.nii.gz"), "wb") as f:
        f.write(data[: len(data) // 2])
    expected["truncated.nii.gz"] = "truncated"

    with open(j("corrupt.nii.gz"), "wb") as f:
        f.write(np.random.default_rng(0).bytes(2048))
    expected["corrupt.nii.gz"] = "corrupt"

    with open(j("text.nii"), "w") as f:
        f.write("this is a text file, not an image\n" * 20)
    expected["text.nii"] = "not a readable NIfTI"

    write_nifti(j("five_d.nii.gz"), np.ones((4, 4, 4, 2, 2), np.float32), np.eye(4))
    expected["five_d.nii.gz"] = "5D"
    write_nifti(j("one_d.nii.gz"), np.arange(16, dtype=np.float32), np.eye(4))
    expected["one_d.nii.gz"] = "1D"

    for name, value in (("nan.nii.gz", np.nan), ("inf.nii.gz", np.inf)):
        arr = good.array.copy()
        arr[2, 3, 4] = value
        write_nifti(j(name), arr, good.affine)
        expected[name] = "non-finite"

    zero = np.diag([1.0, 0.0, 1.0, 1.0])
    _sform_only(j("zero_spacing.nii.gz"), good.array, zero)
    expected["zero_spacing.nii.gz"] = "zero spacing"
    singular = np.array([[1.0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]])
    _sform_only(j("singular_affine.nii.gz"), good.array, singular)
    expected["singular_affine.nii.gz"] = "singular"

    small = np.arange(8 * 8 * 8, dtype="<i2").tobytes()
    _raw_nifti(j("header_too_big.nii"), (512, 512, 512), np.int16, small)
    expected["header_too_big.nii"] = "header claims"
    _raw_nifti(j("header_too_big_gz.nii.gz"), (512, 512, 512), np.int16, small)
    expected["header_too_big_gz.nii.gz"] = "header claims"
    _raw_nifti(j("unknown_geometry.nii.gz"), (8, 8, 8), np.int16, small, geometry=False)
    expected["unknown_geometry.nii.gz"] = "geometry unknown"

    write_nifti(j("constant.nii.gz"), np.full((8, 8, 8), 7.0, np.float32), np.eye(4))
    expected["constant.nii.gz"] = "constant"

    write_nifti(j("pair_shape.nii.gz"), good)
    write_nifti(j("labels", "pair_shape.nii.gz"), np.zeros((10, 12, 6), np.uint8), good.affine)
    expected["labels/pair_shape.nii.gz"] = "shape"
    write_nifti(j("pair_affine.nii.gz"), good)
    moved = good.affine.copy()
    moved[0, 3] += 2.0
    write_nifti(j("labels", "pair_affine.nii.gz"), np.zeros((10, 12, 8), np.uint8), moved)
    expected["labels/pair_affine.nii.gz"] = "affine"

    two = j("two_series")
    vol = np.arange(6 * 5 * 2, dtype=np.int16).reshape(6, 5, 2)
    for part in ("a", "b"):
        for p in write_dicom_series(os.path.join(two, part), vol, np.eye(4), modality="MR"):
            shutil.move(p, os.path.join(two, f"{part}_{os.path.basename(p)}"))
        os.rmdir(os.path.join(two, part))
    expected["two_series"] = "2 DICOM series"
    return expected


def write_dicom_multiframe(path, array, affine, *, modality: str = "MR", frame_order=None,
                           series_uid: str | None = None, patient_name: str = "ANONYMOUS") -> str:
    """Write ``array`` ``(X, Y, Z)`` (int16 range) as ONE enhanced multi-frame DICOM file.

    Geometry lives in the functional groups: shared PixelMeasures/PlaneOrientation/PixelValueTransformation,
    per-frame PlanePosition. ``frame_order`` (slice indices, default ``range(Z)``) stores those slices in
    that order, to test that readers sort frames by position; a subset splits a volume over several files of
    one series (pass the same ``series_uid``). Returns ``path``.
    """
    from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

    from medjax.data.io_dicom import LPS_TO_RAS
    from medjax.data.io_dicom_write import _ds

    array = np.asarray(array).astype(np.int16)
    nx, ny, nz = array.shape
    lps = LPS_TO_RAS @ np.asarray(affine, dtype=np.float64)
    c0, c1, c2 = lps[:3, 0], lps[:3, 1], lps[:3, 2]
    sx, sy = np.linalg.norm(c0), np.linalg.norm(c1)
    order = list(range(nz)) if frame_order is None else [int(k) for k in frame_order]
    sop_class = "1.2.840.10008.5.1.4.1.1.4.1" if modality == "MR" else "1.2.840.10008.5.1.4.1.1.2.1"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientName, ds.PatientID = modality, patient_name, "ANON"
    ds.StudyInstanceUID, ds.FrameOfReferenceUID = generate_uid(), generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.NumberOfFrames = len(order)
    ds.Rows, ds.Columns = ny, nx
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation = 15, 1
    measures, orient, transform = Dataset(), Dataset(), Dataset()
    measures.PixelSpacing = _ds([sy, sx])
    measures.SliceThickness = _ds(np.linalg.norm(c2))[0]
    orient.ImageOrientationPatient = _ds(np.concatenate([c0 / sx, c1 / sy]))
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = "1", "0", "US"
    shared = Dataset()
    shared.PixelMeasuresSequence = Sequence([measures])
    shared.PlaneOrientationSequence = Sequence([orient])
    shared.PixelValueTransformationSequence = Sequence([transform])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per = []
    for k in order:
        item, pos = Dataset(), Dataset()
        pos.ImagePositionPatient = _ds(lps[:3, 3] + k * c2)
        item.PlanePositionSequence = Sequence([pos])
        per.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per)
    frames = np.stack([array[:, :, k].T for k in order])  # (frames, Rows, Columns)
    ds.PixelData = np.ascontiguousarray(frames).astype("<i2").tobytes()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)
    return str(path)


def write_blob_volumes(folder, n: int = 3, shape=(20, 20, 20), seed: int = 0, origin=(0.0, 0.0, 0.0)) -> str:
    """Write ``n`` small float32 NIfTI volumes (textured ellipsoids, 2 mm voxels, stored RAS, first voxel at
    ``origin`` mm) as ``vol00.nii.gz``... to ``folder``; returns the folder. For quick training runs in tests."""
    from medjax.data.io_nifti import write_nifti

    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"), -1)
    for i in range(n):
        radii = rng.uniform(0.5, 0.9, size=3)
        inside = ((grid / radii) ** 2).sum(-1) < 1
        vol = 100.0 * inside + 30.0 * np.sin(6 * grid[..., 0] + i) * inside + rng.normal(0, 2, shape)
        affine = np.diag([2.0, 2.0, 2.0, 1.0])
        affine[:3, 3] = origin
        write_nifti(os.path.join(str(folder), f"vol{i:02d}.nii.gz"), vol.astype(np.float32), affine)
    return str(folder)
