"""The demo dataset: a small multi-subject MRI set synthesised offline from nilearn's MNI152 templates.

``build_demo`` writes an MSD-style folder::

    OUT/dataset.json            MSD layout plus per-subject "class", "boxes" (world mm), "boxes_voxel", "lesion"
    OUT/imagesTr/sub-XXX.nii.gz T1-like image, int16, qform = sform
    OUT/labelsTr/sub-XXX.nii.gz tissue labels, uint8: 0 background, 1 CSF, 2 grey matter, 3 white matter
    OUT/lesionsTr/sub-XXX.nii.gz binary lesion mask, uint8, same grid
    OUT/boxes.csv               one row per lesion: id, lesion, world box, voxel box

Each subject is the 1 mm template warped by a small random affine and a smooth displacement field (a few mm),
resampled onto its own grid (base spacing ``resolution_mm``, often one axis 1.3-2x coarser), with synthetic
lesions in one subject of each consecutive pair, a gamma change, a smooth multiplicative bias field, a scanner
scale/offset and Rician noise, then stored in a subject-specific orientation (RAS, LPS, PIR, ...) with the affine
fixed so that world positions are unchanged. Subject ``i`` depends only on ``(seed, i, resolution_mm, reorient)``:
its random draws come from ``np.random.default_rng([seed, i])`` (and which subject of the pair ``i // 2`` has
lesions from ``np.random.default_rng([seed, i // 2, 1])``), so builds are reproducible voxel for voxel.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from medjax.data.demo_lesions import lesion_boxes, place_lesions, place_periventricular_lesions, render_lesions

_SOURCE_MM = 1.0  # the templates are read at 1 mm; coarser grids are anti-aliased from them
_ORIENTATIONS = ("RAS", "LPS", "RAS", "PIR", "RAS", "LAS", "RAS", "ASL")  # subject i uses entry i % 8
_SLAB = 16  # output slices resampled at once (bounds memory at 1 mm)
_FIELD_ORDER = 3  # cosine basis functions per axis in the smooth fields
_DIRS = ("imagesTr", "labelsTr", "lesionsTr")
_VENTRICLE = 4  # atlas-only label value: CSF of the lateral ventricles (written as 1, CSF)
_VENTRICLE_DEPTH_MM = 12.0
_VENTRICLE_BOX_MM = ((-36.0, 36.0), (-62.0, 34.0), (-6.0, 32.0))  # MNI x, y, z ranges holding the lateral ventricles
LESION_PRIORS = ("anywhere", "periventricular")


@dataclass(frozen=True)
class _Atlas:
    """The templates on their 1 mm grid, anti-aliased for the target spacing.

    ``t1`` ``(X, Y, Z)`` float32 relative T1 intensity (0..1); ``label`` ``(X, Y, Z)`` uint8 tissue labels
    (0 background, 1 CSF, 2 GM, 3 WM): inside the brain mask, argmax of (CSF = 1 - GM - WM, GM, WM)
    probabilities, with the lateral ventricles' CSF marked ``_VENTRICLE`` (4); ``affine`` ``(4, 4)`` voxel -> MNI world mm, RAS+, axis-aligned.
    """

    t1: np.ndarray
    label: np.ndarray
    affine: np.ndarray


def _sigma(target_mm: float, source_mm: float = _SOURCE_MM) -> float:
    """Gaussian sigma (source voxels) that anti-aliases a resampling from ``source_mm`` to ``target_mm``."""
    return 0.5 * float(np.sqrt(max(target_mm**2 - source_mm**2, 0.0))) / source_mm


_SHARED: dict[float, _Atlas] = {}  # atlases handed to worker processes (memory-mapped, see _init_worker)


@functools.lru_cache(maxsize=2)
def _load_atlas(resolution_mm: float) -> _Atlas:
    from nilearn import datasets
    from scipy import ndimage

    def load(fn):
        img = fn(resolution=1)
        return np.asarray(img.dataobj, dtype=np.float32), np.asarray(img.affine, dtype=np.float64)

    t1, affine = load(datasets.load_mni152_template)
    gm, _ = load(datasets.load_mni152_gm_template)
    wm, _ = load(datasets.load_mni152_wm_template)
    brain, _ = load(datasets.load_mni152_brain_mask)
    if not np.allclose(affine[:3, :3], np.diag(np.diag(affine[:3, :3]))) or (np.diag(affine)[:3] <= 0).any():
        raise RuntimeError(f"nilearn's MNI152 template is expected in RAS axis order, got affine {affine.tolist()}")
    sigma = _sigma(resolution_mm)
    if sigma > 0.05:
        t1, gm, wm, brain = (ndimage.gaussian_filter(a, sigma, mode="nearest") for a in (t1, gm, wm, brain))
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0)
    tissue = 1 + np.argmax(np.stack([csf, gm, wm]), axis=0)
    label = np.where(brain >= 0.5, tissue, 0).astype(np.uint8)
    label[_lateral_ventricles(label, affine)] = _VENTRICLE
    return _Atlas(t1, label, affine)


def _lateral_ventricles(label: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """``(X, Y, Z)`` bool: the lateral ventricles of the template (MNI space), for periventricular lesions.

    The largest connected region of CSF that lies at least ``_VENTRICLE_DEPTH_MM`` inside the brain and within
    the MNI box ``_VENTRICLE_BOX_MM`` (which leaves out the Sylvian fissures and the interhemispheric fissure
    above the corpus callosum).
    """
    from scipy import ndimage

    spacing = np.abs(np.diag(affine)[:3])
    depth = ndimage.distance_transform_edt(label > 0, sampling=spacing)
    axes = [affine[d, d] * np.arange(label.shape[d]) + affine[d, 3] for d in range(3)]
    (x0, x1), (y0, y1), (z0, z1) = _VENTRICLE_BOX_MM
    in_box = (
        ((axes[0] >= x0) & (axes[0] <= x1))[:, None, None]
        & ((axes[1] >= y0) & (axes[1] <= y1))[None, :, None]
        & ((axes[2] >= z0) & (axes[2] <= z1))[None, None, :]
    )
    parts, count = ndimage.label((label == 1) & (depth >= _VENTRICLE_DEPTH_MM) & in_box)
    if count == 0:
        raise RuntimeError("the MNI152 template has no deep CSF where the lateral ventricles should be")
    sizes = np.bincount(parts.ravel())[1:]
    return parts == 1 + int(np.argmax(sizes))


def _atlas(resolution_mm: float) -> _Atlas:
    return _SHARED.get(resolution_mm) or _load_atlas(resolution_mm)


def _init_worker(folder: str, resolution_mm: float) -> None:
    """Worker-process start: map the parent's atlas from ``folder`` (no template loading per worker)."""
    _SHARED[resolution_mm] = _Atlas(
        np.load(os.path.join(folder, "t1.npy"), mmap_mode="r", allow_pickle=False),
        np.load(os.path.join(folder, "label.npy"), mmap_mode="r", allow_pickle=False),
        np.load(os.path.join(folder, "affine.npy"), allow_pickle=False),
    )


class _SmoothField:
    """``F`` smooth scalar fields on a world box: sums of products of low-order cosines, one per axis.

    ``field(x, y, z)`` takes 1D world coordinates (mm) along the three grid axes and returns ``(F, nx, ny, nz)``
    float32. The largest magnitude over the box (sampled on a 16^3 grid) is ``amplitude``.
    """

    def __init__(self, rng: np.random.Generator, count: int, lo, hi, amplitude: float, order: int = _FIELD_ORDER):
        self.lo = np.asarray(lo, dtype=np.float64)
        self.length = np.maximum(np.asarray(hi, dtype=np.float64) - self.lo, 1e-6)
        a = np.arange(order)
        decay = 1.0 / (1.0 + a[:, None, None] + a[None, :, None] + a[None, None, :]) ** 1.5
        self.coeffs = rng.standard_normal((count, order, order, order)) * decay
        grid = [np.linspace(self.lo[d], self.lo[d] + self.length[d], 16) for d in range(3)]
        peak = float(np.abs(self(*grid)).max())
        self.coeffs *= amplitude / max(peak, 1e-12)

    def _basis(self, t, d):
        order = self.coeffs.shape[1]
        u = (np.asarray(t, dtype=np.float64) - self.lo[d]) / self.length[d]
        return np.cos(np.pi * np.arange(order)[:, None] * u[None, :])  # (order, n)

    def __call__(self, x, y, z) -> np.ndarray:
        bx, by, bz = self._basis(x, 0), self._basis(y, 1), self._basis(z, 2)
        f = np.einsum("fabc,ck->fabk", self.coeffs, bz)
        f = np.einsum("fabk,bj->fajk", f, by)
        return np.einsum("fajk,ai->fijk", f, bx).astype(np.float32)


def _rotation(angles_deg) -> np.ndarray:
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _has_lesions(seed: int, index: int) -> bool:
    """One subject of each consecutive pair ``(2p, 2p + 1)`` has lesions; which one is drawn per pair."""
    return index % 2 == int(np.random.default_rng([seed, index // 2, 1]).integers(2))


def _subject(index: int, seed: int, resolution_mm: float, reorient: bool, lesion_prior: str = "anywhere") -> dict:
    """Synthesise subject ``index``. Returns stored-orientation arrays, their affine and the lesion list.

    ``lesion_prior`` is one of ``LESION_PRIORS``: "anywhere" (grey or white matter, any shape and contrast) or
    "periventricular" (T1-dark ovoids in the white matter beside the lateral ventricles, long axis pointing away
    from them, as multiple-sclerosis lesions are).

    Returns a dict: ``image`` (X, Y, Z) int16, ``label`` (X, Y, Z) uint8, ``lesion_index`` (X, Y, Z) uint8
    (k + 1 inside lesion k), ``affine`` (4, 4) float64, ``orientation`` str, ``lesions`` int.
    """
    from scipy import ndimage

    atlas = _atlas(float(resolution_mm))
    rng = np.random.default_rng([seed, index])

    # Grid: base spacing, one axis often coarser; field of view cropped a little on each side.
    spacing = np.full(3, float(resolution_mm))
    coarse_axis = int(rng.integers(3))
    if rng.random() < 0.75:
        spacing[coarse_axis] *= rng.uniform(1.3, 2.0)
    src_lo = atlas.affine[:3, 3]
    src_hi = src_lo + (np.array(atlas.t1.shape) - 1) * np.diag(atlas.affine)[:3]
    lo = src_lo + rng.uniform(0.0, 8.0, 3)
    hi = src_hi - rng.uniform(0.0, 8.0, 3)
    shape = tuple(int(n) for n in np.floor((hi - lo) / spacing + 1e-6).astype(int) + 1)
    affine = np.eye(4)
    affine[:3, :3] = np.diag(spacing)
    affine[:3, 3] = lo

    # Spatial change: world point x of the subject samples the template at c + A (x - c) + t + u(x).
    centre = (src_lo + src_hi) / 2
    linear = _rotation(rng.uniform(-5.0, 5.0, 3)) @ np.diag(rng.uniform(0.93, 1.07, 3))
    shift = rng.uniform(-4.0, 4.0, 3)
    warp = _SmoothField(rng, 3, lo, hi, amplitude=rng.uniform(2.0, 5.0))

    # Appearance.
    gamma = float(np.exp(rng.uniform(np.log(0.8), np.log(1.25))))
    bias = _SmoothField(rng, 1, lo, hi, amplitude=rng.uniform(0.1, 0.3))
    scale = rng.uniform(500.0, 1500.0)
    offset = rng.uniform(0.0, 40.0)
    noise = rng.uniform(0.01, 0.03) * scale

    # Thicker slices along the coarse axis: blur the intensity template along it before sampling.
    t1_src = atlas.t1
    extra = _sigma(spacing[coarse_axis], float(resolution_mm)) * float(resolution_mm) / _SOURCE_MM
    if extra > 0.05:
        t1_src = ndimage.gaussian_filter1d(t1_src, extra, axis=coarse_axis, mode="nearest")

    inv = np.linalg.inv(atlas.affine)
    m = inv[:3, :3] @ linear
    m0 = inv[:3, :3] @ (centre + shift) + inv[:3, 3]
    axes = [lo[d] + spacing[d] * np.arange(shape[d]) for d in range(3)]
    t1 = np.empty(shape, dtype=np.float32)
    label = np.empty(shape, dtype=np.uint8)
    for s in range(0, shape[0], _SLAB):
        sl = slice(s, min(s + _SLAB, shape[0]))
        x, y, z = axes[0][sl], axes[1], axes[2]
        u = warp(x, y, z).astype(np.float64)  # (3, n, Y, Z) mm
        rel = [x[:, None, None] - centre[0], y[None, :, None] - centre[1], z[None, None, :] - centre[2]]
        coords = np.stack(
            [
                m[d, 0] * rel[0] + m[d, 1] * rel[1] + m[d, 2] * rel[2] + m0[d]
                + inv[d, 0] * u[0] + inv[d, 1] * u[1] + inv[d, 2] * u[2]
                for d in range(3)
            ]
        )
        # intensities linearly, labels by nearest neighbour (from the anti-aliased probability maps' argmax)
        t1[sl] = ndimage.map_coordinates(t1_src, coords, order=1, mode="constant", cval=0.0, prefilter=False)
        label[sl] = ndimage.map_coordinates(atlas.label, coords, order=0, mode="constant", cval=0, prefilter=False)
    ventricles = label == _VENTRICLE
    label[ventricles] = 1
    brain = label > 0

    lesions = []
    if _has_lesions(seed, index):
        count = int(rng.integers(1, 4))
        if lesion_prior == "periventricular":
            lesions = place_periventricular_lesions(rng, label, brain, ventricles, spacing, count)
        else:
            lesions = place_lesions(rng, label, brain, spacing, count)
    lesion_index = render_lesions(t1, brain, spacing, lesions)

    signal = scale * np.clip(t1, 0.0, None) ** gamma * np.exp(bias(*axes)[0])
    n1 = rng.standard_normal(shape, dtype=np.float32)
    n2 = rng.standard_normal(shape, dtype=np.float32)
    magnitude = np.sqrt((signal + noise * n1) ** 2 + (noise * n2) ** 2) + offset
    image = np.clip(np.rint(magnitude), -32768, 32767).astype(np.int16)

    orientation = _ORIENTATIONS[index % len(_ORIENTATIONS)] if reorient else "RAS"
    image, label, lesion_index, affine = _reorient([image, label, lesion_index], affine, orientation)
    return {
        "image": image,
        "label": label,
        "lesion_index": lesion_index,
        "affine": affine,
        "orientation": orientation,
        "lesions": len(lesions),
    }


def _reorient(arrays: list[np.ndarray], affine: np.ndarray, code: str):
    """Store RAS-ordered ``arrays`` in orientation ``code``; the returned affine keeps world positions."""
    from medjax.data.transforms.spatial import reorient

    out = [reorient(a, affine, code, has_channels=False) for a in arrays]
    return (*(np.ascontiguousarray(a) for a, _ in out), out[0][1])


def _save(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Write a NIfTI with qform = sform = ``affine`` (code 1), mm units and no free-text fields."""
    from medjax.data.io_nifti import write_nifti

    write_nifti(path, array, affine)


def _build_one(
    out_dir: str, index: int, seed: int, resolution_mm: float, reorient: bool, width: int, lesion_prior: str
) -> dict:
    """Synthesise and write subject ``index``; return its dataset.json entry plus ``orientation``/``shape``/``spacing``."""
    from medjax.data.image import spacing_from_affine

    s = _subject(index, seed, resolution_mm, reorient, lesion_prior)
    sid = f"sub-{index:0{width}d}"
    out = Path(out_dir)
    _save(s["image"], s["affine"], out / "imagesTr" / f"{sid}.nii.gz")
    _save(s["label"], s["affine"], out / "labelsTr" / f"{sid}.nii.gz")
    _save((s["lesion_index"] > 0).astype(np.uint8), s["affine"], out / "lesionsTr" / f"{sid}.nii.gz")
    boxes, boxes_voxel = lesion_boxes(s["lesion_index"], s["affine"], s["lesions"])
    return {
        "id": sid,
        "image": f"./imagesTr/{sid}.nii.gz",
        "label": f"./labelsTr/{sid}.nii.gz",
        "lesion": f"./lesionsTr/{sid}.nii.gz",
        "class": int(len(boxes) > 0),
        "boxes": boxes,
        "boxes_voxel": boxes_voxel,
        "orientation": s["orientation"],
        "shape": list(s["image"].shape),
        "spacing": [round(v, 4) for v in spacing_from_affine(s["affine"])],
    }


def build_demo(
    out_dir,
    subjects: int = 8,
    seed: int = 0,
    resolution_mm: float = 2.0,
    workers: int = 1,
    *,
    reorient: bool = True,
    lesion_prior: str = "anywhere",
) -> str:
    """Build the demo dataset in ``out_dir`` and return the path of its ``dataset.json``.

    Args:
      out_dir: folder to write (created; files of an earlier build there are replaced).
      subjects: number of subjects, ``sub-000`` ... (about half have 1-3 lesions).
      seed: dataset seed; the same seed gives voxel-identical arrays (and byte-identical files).
      resolution_mm: base voxel size in mm (the templates are read at 1 mm; 2 mm gives about
        ``(96, 113, 90)`` voxels per subject, 1 mm about ``(190, 225, 180)``); one axis is often 1.3-2x coarser.
      workers: processes to build subjects in parallel (1 builds in this process).
      reorient: store subjects in varied orientations (``RAS``, ``LPS``, ``PIR``, ``LAS``, ``ASL``); False keeps RAS.
      lesion_prior: where lesions go and how they look, one of ``LESION_PRIORS``. "anywhere" (the default):
        ellipsoids of any orientation, 3-15 mm, bright or dark, centred in white (70%) or grey matter, independent
        of the anatomy around them. "periventricular": T1-dark ovoids (semi-axes 3-5 mm across, 4-11 mm long)
        in the white matter next to the lateral ventricles, the long axis along the normal of the ventricle
        wall, so that the anatomy predicts where a lesion can be.
    """
    from medjax.errors import ConfigError

    if int(subjects) < 1:
        raise ConfigError(f"demo: subjects must be >= 1, got {subjects}")
    if not 0.5 <= float(resolution_mm) <= 8.0:
        raise ConfigError(f"demo: resolution_mm must be between 0.5 and 8 mm, got {resolution_mm}")
    if lesion_prior not in LESION_PRIORS:
        raise ConfigError(f"demo: lesion_prior must be one of {', '.join(LESION_PRIORS)}, got {lesion_prior!r}")
    subjects, workers = int(subjects), max(1, int(workers))
    out = Path(out_dir)
    for d in _DIRS:
        (out / d).mkdir(parents=True, exist_ok=True)
    width = max(3, len(str(subjects - 1)))
    args = [(str(out), i, int(seed), float(resolution_mm), bool(reorient), width, lesion_prior) for i in range(subjects)]
    if workers == 1 or subjects == 1:
        entries = [_build_one(*a) for a in args]
    else:
        entries = _build_parallel(args, float(resolution_mm), min(workers, subjects))

    keep = {e["id"] for e in entries}
    for d in _DIRS:
        for p in (out / d).glob("sub-*.nii.gz"):
            if p.name[: -len(".nii.gz")] not in keep:
                p.unlink()
    _write_boxes_csv(out / "boxes.csv", entries)
    dataset = {
        "name": "medjax-demo",
        "description": (
            "Synthetic T1-weighted brain MRI from the MNI152 template: per-subject warps, bias fields, anisotropic "
            "spacing, varied orientations and ellipsoidal lesions. Labels: tissue classes; 'lesion': lesion masks; "
            "'boxes': lesion boxes in world mm (RAS+, [x0,y0,z0,x1,y1,z1]); 'boxes_voxel': half-open voxel index "
            "boxes [i0,j0,k0,i1,j1,k1] of the stored array."
        ),
        "reference": "nilearn MNI152 templates",
        "licence": "see nilearn",
        "tensorImageSize": "3D",
        "modality": {"0": "MRI T1"},
        "labels": {"0": "background", "1": "CSF", "2": "grey matter", "3": "white matter"},
        "numTraining": len(entries),
        "numTest": 0,
        "training": entries,
        "test": [],
        "medjax_demo": {"seed": int(seed), "subjects": subjects, "resolution_mm": float(resolution_mm),
                        "reorient": bool(reorient), "lesion_prior": lesion_prior},
    }
    path = out / "dataset.json"
    tmp = out / "dataset.json.tmp"
    tmp.write_text(json.dumps(dataset, indent=1) + "\n")
    os.replace(tmp, path)
    return str(path)


def _build_parallel(args: list[tuple], resolution_mm: float, workers: int) -> list[dict]:
    """Build subjects in ``workers`` fresh processes that share this process's atlas through memory-mapped files."""
    atlas = _atlas(resolution_mm)
    with tempfile.TemporaryDirectory(prefix="medjax-demo-") as folder:
        for name in ("t1", "label", "affine"):
            np.save(os.path.join(folder, f"{name}.npy"), np.asarray(getattr(atlas, name)), allow_pickle=False)
        ctx = get_context("spawn")  # no fork: the caller may hold threads (JAX, grain)
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(folder, resolution_mm)) as pool:
            return list(pool.map(_build_one, *zip(*args)))


def _write_boxes_csv(path: Path, entries: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "lesion", "x0", "y0", "z0", "x1", "y1", "z1", "i0", "j0", "k0", "i1", "j1", "k1"])
        for e in entries:
            for k, (bw, bv) in enumerate(zip(e["boxes"], e["boxes_voxel"])):
                w.writerow([e["id"], k, *bw, *bv])


def summarize_demo(out_dir) -> dict:
    """Facts about a built demo folder, read from ``dataset.json`` and the image headers.

    Returns a dict: ``dataset_json`` (path), ``subjects``, ``shape_min``/``shape_max`` (voxels per axis, the
    axes taken in R, A, S order whatever the stored orientation),
    ``spacing_min``/``spacing_max`` (mm, over all axes), ``orientations`` ({code: count}), ``lesion_subjects``,
    ``lesions`` (total count).
    """
    import nibabel as nib

    from medjax.data.image import orientation_code, spacing_from_affine
    from medjax.errors import DataError

    path = Path(out_dir) / "dataset.json"
    if not path.is_file():
        raise DataError(path, "no dataset.json here; build the demo with `medjax data demo OUT`")
    data = json.loads(path.read_text())
    shapes, spacings, orientations = [], [], {}
    for e in data["training"]:
        img = nib.load(str(Path(out_dir) / e["image"]))
        axis_of = nib.orientations.io_orientation(img.affine)[:, 0].astype(int)  # world axis of each array axis
        ras_shape = [0, 0, 0]
        for d, n in enumerate(img.shape[:3]):
            ras_shape[axis_of[d]] = int(n)
        shapes.append(ras_shape)
        spacings.extend(spacing_from_affine(img.affine))
        code = orientation_code(img.affine)
        orientations[code] = orientations.get(code, 0) + 1
    shapes = np.array(shapes)
    return {
        "dataset_json": str(path),
        "subjects": len(data["training"]),
        "shape_min": [int(v) for v in shapes.min(axis=0)],
        "shape_max": [int(v) for v in shapes.max(axis=0)],
        "spacing_min": round(min(spacings), 3),
        "spacing_max": round(max(spacings), 3),
        "orientations": dict(sorted(orientations.items())),
        "lesion_subjects": sum(1 for e in data["training"] if e.get("class")),
        "lesions": sum(len(e.get("boxes") or []) for e in data["training"]),
    }
