"""Segmentation metrics on binary masks and label maps: Dice, HD95 and normalised surface Dice (NSD).

All functions are pure numpy/scipy and take masks in voxel index order, 2D ``(X, Y)`` or 3D ``(X, Y, Z)``,
with the voxel ``spacing`` in millimetres per array axis (``medjax.data.image.spacing_from_affine``).

Definitions (MONAI ``metrics/utils.py`` ``get_mask_edges``/``get_surface_distance`` are the reference):

- **Surface (boundary) voxels** of a mask are ``mask XOR binary_erosion(mask)``, with scipy's default structuring
  element (face connectivity: 4-neighbourhood in 2D, 6-neighbourhood in 3D) and voxels outside the array taken as
  background, so a mask touching the array border has its border voxels on the surface.
- **Surface distances** from A to B: for every surface voxel of A, the Euclidean distance in mm (voxel centres,
  anisotropic ``spacing``) to the nearest surface voxel of B (``scipy.ndimage.distance_transform_edt`` with
  ``sampling=spacing``). Exact for orthogonal voxel axes (any rotation of the grid); for a sheared affine the
  column norms of the affine only approximate the geometry.
- **HD95** = max of the two directed 95th percentiles (``numpy.percentile``, linear interpolation).
- **NSD** (normalised surface Dice) at tolerance ``tau`` mm, two definitions (``surface=``):

  - ``"voxels"`` (default): (surface voxels of pred within ``tau`` of ref's surface + surface voxels of ref within
    ``tau`` of pred's surface) / (all surface voxels of both); "within" is ``<=``. Every boundary voxel weighs
    the same (MONAI ``compute_surface_dice`` with ``use_subvoxels=False``).
  - ``"area"``: the same ratio with every surface element weighted by its area (2D: length) in mm², on the
    surface between voxel centres of :mod:`medjax.evaluation.surface_area`, distances between those elements.
    This is the definition of DeepMind's ``surface-distance`` package (``compute_surface_dice_at_tolerance``),
    which most published NSD values use, and of MONAI's ``use_subvoxels=True``; with anisotropic voxels the two
    definitions differ, because a boundary voxel's face area depends on its direction.

Empty masks. Both masks empty is a convention, chosen with ``empty=``:

======================  ======  ===========  =====
case                    dice    hd95         nsd
======================  ======  ===========  =====
both empty, "perfect"   1.0     0.0          1.0
both empty, "nan"       NaN     NaN          NaN
exactly one empty       0.0     ``inf``      0.0
======================  ======  ===========  =====

``"perfect"`` (default) scores an absent structure that is correctly not predicted as a perfect match, so it
counts in means; ``"nan"`` marks it undefined so that means leave it out (MONAI's ``ignore_empty=True`` and the
Metrics Reloaded recommendations). MONAI differs where exactly one mask is empty: its Dice with
``ignore_empty=True`` is NaN whenever the reference is empty, and its Hausdorff distance is NaN where medjax
reports ``inf``. ``inf`` stays a Python float here; JSON writers turn it into ``null`` plus a flag
(:func:`medjax.evaluation.accumulators.json_safe`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import math
import numbers

import numpy as np
from scipy import ndimage

from medjax.evaluation import surface_area as _sa

EMPTY_CONVENTIONS = ("perfect", "nan")
SURFACES = ("voxels", "area")

__all__ = [
    "EMPTY_CONVENTIONS",
    "SURFACES",
    "check_empty",
    "check_surface",
    "check_tolerance",
    "dice",
    "surface_voxels",
    "surface_distances",
    "hausdorff",
    "hd95",
    "nsd",
    "per_label",
    "foreground_labels",
]


def _as_bool(mask, name: str) -> np.ndarray:
    a = np.asarray(mask)
    if a.ndim not in (2, 3):
        raise ValueError(f"{name}: expected a 2D (X, Y) or 3D (X, Y, Z) mask, got shape {a.shape}")
    return a.astype(bool, copy=False)


def _pair(pred, ref) -> tuple[np.ndarray, np.ndarray]:
    p, r = _as_bool(pred, "pred"), _as_bool(ref, "ref")
    if p.shape != r.shape:
        raise ValueError(f"pred shape {p.shape} differs from ref shape {r.shape}; resample one onto the other")
    return p, r


def _spacing(spacing, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    s = tuple(float(v) for v in np.atleast_1d(np.asarray(spacing, dtype=np.float64)))
    if len(s) == 1:
        s = s * ndim
    if len(s) != ndim:
        raise ValueError(f"spacing {s} has {len(s)} entries for a {ndim}D mask; give one per spatial axis (mm)")
    if any(not np.isfinite(v) or v <= 0 for v in s):
        raise ValueError(f"spacing {s} must be positive millimetres")
    return s


def check_empty(empty: str) -> str:
    """``empty`` if it names a convention for two empty masks (``"perfect"`` or ``"nan"``), else ValueError."""
    if empty not in EMPTY_CONVENTIONS:
        raise ValueError(f"empty={empty!r}: use 'perfect' (both masks empty scores as a perfect match) or 'nan' "
                         "(undefined, left out of means)")
    return empty


def check_surface(surface: str) -> str:
    """``surface`` if it names an NSD surface definition (``"voxels"`` or ``"area"``), else ValueError."""
    if surface not in SURFACES:
        raise ValueError(f"surface={surface!r}: use 'voxels' (boundary voxels count equally) or 'area' (surface "
                         "elements weighted by area, as DeepMind's surface-distance)")
    return surface


def check_tolerance(tolerance_mm) -> float:
    """The NSD tolerance as a float if it is a finite number ``>= 0`` (mm), else ValueError."""
    if isinstance(tolerance_mm, (bool, np.bool_)) or not isinstance(tolerance_mm, numbers.Real):
        raise ValueError(f"tolerance_mm={tolerance_mm!r}: expected a number of millimetres >= 0")
    t = float(tolerance_mm)
    if not math.isfinite(t) or t < 0:
        raise ValueError(f"tolerance_mm={t}: must be a finite distance >= 0 millimetres")
    return t


def dice(pred, ref, *, empty: str = "perfect") -> float:
    """Dice overlap ``2|P∩R| / (|P|+|R|)`` of two binary masks of the same shape (non-zero = foreground).

    Returns 0.0 when exactly one mask is empty; when both are, 1.0 with ``empty="perfect"`` and NaN with
    ``empty="nan"`` (module docstring).
    """
    return dice_from_counts(*overlap_counts(pred, ref), empty=empty)


def global_dice(pairs, *, empty: str = "perfect") -> float:
    """Dice pooled over cases, ``2·Σ|P∩R| / (Σ|P| + Σ|R|)`` for ``(pred, ref)`` mask pairs: large and small
    cases count by their voxels, and a case with an empty reference adds only its false positives (the
    "Dice global" of lesion benchmarks). Both sums empty: as :func:`dice`."""
    return dice_from_counts(*np.sum([overlap_counts(p, r) for p, r in pairs], axis=0, dtype=np.int64),
                            empty=empty) if pairs else float("nan")


def overlap_counts(pred, ref) -> tuple[int, int, int]:
    """``(|P∩R|, |P|, |R|)`` voxel counts of two binary masks of the same shape."""
    p, r = _pair(pred, ref)
    return int(np.logical_and(p, r).sum()), int(p.sum()), int(r.sum())


def dice_from_counts(intersection: int, pred: int, ref: int, *, empty: str = "perfect") -> float:
    """Dice from voxel counts (of one case, or summed over cases); both empty: as :func:`dice`."""
    check_empty(empty)
    if pred + ref == 0:
        return 1.0 if empty == "perfect" else float("nan")
    return 2.0 * float(intersection) / float(pred + ref)


def surface_voxels(mask) -> np.ndarray:
    """Boolean surface of a binary mask: ``mask XOR binary_erosion(mask)`` (face connectivity, outside = 0).

    Args:
      mask: ``(X, Y)`` or ``(X, Y, Z)``; non-zero = foreground.
    Returns:
      bool array of the same shape, True on the mask's boundary voxels.
    """
    m = _as_bool(mask, "mask")
    if not m.any():
        return np.zeros_like(m)
    return m ^ ndimage.binary_erosion(m, border_value=0)


def _crop_box(*masks: np.ndarray) -> tuple[slice, ...]:
    """Bounding box of the union of masks, one voxel of margin, clamped to the array (exact for EDT)."""
    union = np.logical_or.reduce(masks)
    idx = np.nonzero(union)
    return tuple(slice(max(int(i.min()) - 1, 0), min(int(i.max()) + 2, n)) for i, n in zip(idx, union.shape))


def surface_distances(pred, ref, spacing=None) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances in mm between two non-empty binary masks.

    Args:
      pred, ref: binary masks ``(X, Y)`` or ``(X, Y, Z)`` of the same shape, both non-empty.
      spacing: voxel size in mm per array axis (one value broadcasts); None means 1 mm.
    Returns:
      ``(d_pred_to_ref, d_ref_to_pred)``: float64 vectors, one entry per surface voxel of pred (resp. ref): the
      distance in mm to the nearest surface voxel of the other mask.
    Raises:
      ValueError if either mask is empty (distances are undefined; see the module docstring for the conventions
      :func:`hd95` and :func:`nsd` use).
    """
    p, r = _pair(pred, ref)
    s = _spacing(spacing, p.ndim)
    if not p.any() or not r.any():
        raise ValueError("surface distances are undefined when a mask is empty")
    box = _crop_box(p, r)  # all surface voxels lie in the box, so the EDT inside it is exact and cheaper
    p, r = p[box], r[box]
    sp, sr = surface_voxels(p), surface_voxels(r)
    dist_to_r = ndimage.distance_transform_edt(~sr, sampling=s)
    dist_to_p = ndimage.distance_transform_edt(~sp, sampling=s)
    return dist_to_r[sp].astype(np.float64), dist_to_p[sr].astype(np.float64)


def _empty_case(p: np.ndarray, r: np.ndarray, both: float, one: float, empty: str) -> float | None:
    pe, re_ = not p.any(), not r.any()
    if pe and re_:
        return both if check_empty(empty) == "perfect" else float("nan")
    if pe or re_:
        return one
    return None


def hausdorff(pred, ref, spacing=None, percentile: float = 100.0, *, empty: str = "perfect") -> float:
    """Symmetric (percentile) Hausdorff distance in mm: max of the two directed ``percentile``-th percentiles.

    ``percentile=100`` is the classic Hausdorff distance, 95 is HD95. Exactly one empty: ``inf``; both empty: 0.0
    with ``empty="perfect"``, NaN with ``empty="nan"``.
    """
    check_empty(empty)
    p, r = _pair(pred, ref)
    special = _empty_case(p, r, 0.0, float("inf"), empty)
    if special is not None:
        return special
    d_pr, d_rp = surface_distances(p, r, spacing)
    return float(max(np.percentile(d_pr, percentile), np.percentile(d_rp, percentile)))


def hd95(pred, ref, spacing=None, *, empty: str = "perfect") -> float:
    """95th-percentile Hausdorff distance in mm (see :func:`hausdorff`). One empty: ``inf``; both empty: 0.0
    (``empty="perfect"``) or NaN (``empty="nan"``)."""
    return hausdorff(pred, ref, spacing, 95.0, empty=empty)


def nsd(pred, ref, spacing=None, tolerance_mm: float = 1.0, *, surface: str = "voxels",
        empty: str = "perfect") -> float:
    """Normalised surface Dice at ``tolerance_mm``: fraction of both surfaces within the tolerance of the other.

    Args:
      pred, ref: binary masks ``(X, Y)`` or ``(X, Y, Z)``.
      spacing: voxel size in mm per array axis.
      tolerance_mm: distance (mm, finite, ``>= 0``) at or below which a surface element counts as matched.
      surface: ``"voxels"`` counts boundary voxels; ``"area"`` weights surface elements by their area
        (DeepMind ``surface-distance``; see the module docstring).
      empty: convention when both masks are empty: ``"perfect"`` gives 1.0, ``"nan"`` gives NaN.
    Returns:
      a float in [0, 1]; exactly one empty: 0.0.
    Raises:
      ValueError for a tolerance that is not a finite number >= 0, or an unknown ``surface``/``empty``.
    """
    tol = check_tolerance(tolerance_mm)
    check_surface(surface)
    check_empty(empty)
    p, r = _pair(pred, ref)
    special = _empty_case(p, r, 1.0, 0.0, empty)
    if special is not None:
        return special
    if surface == "area":
        return _nsd_area(p, r, _spacing(spacing, p.ndim), tol)
    d_pr, d_rp = surface_distances(p, r, spacing)
    good = int((d_pr <= tol).sum()) + int((d_rp <= tol).sum())
    return good / (d_pr.size + d_rp.size)


def _nsd_area(p: np.ndarray, r: np.ndarray, spacing: tuple[float, ...], tol: float) -> float:
    """Area-weighted NSD of two non-empty masks (surface elements between voxel centres)."""
    box = _crop_box(p, r)
    measure = _sa.element_measures(spacing)
    codes_p, surf_p = _sa.surface_elements(p[box])
    codes_r, surf_r = _sa.surface_elements(r[box])
    dist_to_r = ndimage.distance_transform_edt(~surf_r, sampling=spacing)
    dist_to_p = ndimage.distance_transform_edt(~surf_p, sampling=spacing)
    area_p, area_r = measure[codes_p[surf_p]], measure[codes_r[surf_r]]
    good = area_p[dist_to_r[surf_p] <= tol].sum() + area_r[dist_to_p[surf_r] <= tol].sum()
    return float(good / (area_p.sum() + area_r.sum()))


def per_label(fn: Callable[..., float], pred, ref, labels: Iterable[int], **kwargs) -> dict[int, float]:
    """Apply a binary-mask metric to each label of two label maps.

    Args:
      fn: a metric taking ``(pred_mask, ref_mask, **kwargs)``, e.g. :func:`dice` or ``hd95`` with ``spacing=``.
      pred, ref: integer label maps ``(X, Y)`` or ``(X, Y, Z)`` of the same shape.
      labels: the label values to score (e.g. ``[1, 2]``; 0 is usually background).
    Returns:
      ``{label: fn(pred == label, ref == label, **kwargs)}``.
    """
    p, r = np.asarray(pred), np.asarray(ref)
    if p.shape != r.shape:
        raise ValueError(f"pred shape {p.shape} differs from ref shape {r.shape}")
    return {int(lab): fn(p == lab, r == lab, **kwargs) for lab in labels}


def foreground_labels(*label_maps: np.ndarray) -> list[int]:
    """Sorted non-zero integer labels present in any of the given label maps."""
    found: set[int] = set()
    for m in label_maps:
        found.update(int(v) for v in np.unique(np.asarray(m)) if v != 0)
    return sorted(found)

