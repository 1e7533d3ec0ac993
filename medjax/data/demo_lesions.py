"""Synthetic lesions for the demo dataset: soft-edged ellipsoids placed inside the brain, anywhere or periventricular.

All positions here are on one voxel grid (the subject's canonical RAS grid before reorientation), with
``spacing`` in millimetres per voxel. Intensities are on the template's relative scale (white matter ~0.8-0.9,
grey matter ~0.5-0.6, CSF ~0.2), before bias field, gamma and scanner scaling are applied.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_EDGE_MM = 1.0  # width of the soft lesion border in the image, mm
_MIN_INSIDE = 0.8  # a lesion must lie at least this much inside the brain mask
_TRIES = 40
_MAX_IN_AVOID = 0.2  # a periventricular lesion may reach into the ventricle by at most this fraction


@dataclass(frozen=True)
class Ellipsoid:
    """One lesion.

    Attributes:
      centre: ``(3,)`` voxel index of the centre (integers, so the centre voxel is always inside).
      radii_mm: ``(3,)`` semi-axes in millimetres (3-15 mm).
      rotation: ``(3, 3)`` orthonormal matrix whose columns are the semi-axis directions (grid axes frame).
      intensity: target relative intensity in the lesion core (> 1 hyperintense, < 0.4 hypointense).
    """

    centre: np.ndarray
    radii_mm: np.ndarray
    rotation: np.ndarray
    intensity: float


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _local_radius(e: Ellipsoid, shape: tuple[int, ...], spacing: np.ndarray, margin_mm: float):
    """Normalised ellipsoidal radius (1 on the surface) on the sub-box around ``e``.

    Returns ``(slices, r)`` with ``r`` float32 of the sub-box shape.
    """
    half = np.ceil((e.radii_mm.max() + margin_mm) / spacing).astype(int)
    lo = np.maximum(e.centre - half, 0)
    hi = np.minimum(e.centre + half + 1, shape)
    axes = [(np.arange(lo[d], hi[d]) - e.centre[d]) * spacing[d] for d in range(3)]
    d_mm = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)  # (*sub, 3) offsets in mm
    q = d_mm @ e.rotation  # coordinates along the semi-axes
    r = np.sqrt(((q / e.radii_mm) ** 2).sum(-1)).astype(np.float32)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi)), r


def place_lesions(
    rng: np.random.Generator, label: np.ndarray, brain: np.ndarray, spacing, count: int
) -> list[Ellipsoid]:
    """Draw ``count`` non-overlapping ellipsoids centred in grey or (mostly) white matter.

    Args:
      rng: the subject's generator.
      label: ``(X, Y, Z)`` tissue labels (0 background, 1 CSF, 2 GM, 3 WM).
      brain: ``(X, Y, Z)`` bool brain mask.
      spacing: ``(3,)`` voxel size in mm.
      count: number of lesions wanted (1-3). Fewer are returned only if no room is found.
    """
    spacing = np.asarray(spacing, dtype=np.float64)
    shape = label.shape
    taken = np.zeros(shape, dtype=bool)
    pools = {t: np.flatnonzero(label == t) for t in (2, 3)}
    lesions: list[Ellipsoid] = []
    for _ in range(count):
        for _ in range(_TRIES):
            tissue = 3 if (rng.random() < 0.7 or pools[2].size == 0) else 2
            centre = np.array(np.unravel_index(rng.choice(pools[tissue]), shape))
            base = np.exp(rng.uniform(np.log(3.0), np.log(15.0)))
            radii = np.clip(base * rng.uniform(0.6, 1.0, size=3), 3.0, 15.0)
            hyper = rng.random() < 0.5
            intensity = float(rng.uniform(1.1, 1.5) if hyper else rng.uniform(0.08, 0.35))
            e = Ellipsoid(centre, radii, _random_rotation(rng), intensity)
            if _claim(e, brain, taken, spacing):
                lesions.append(e)
                break
    return lesions


def _claim(e: Ellipsoid, brain: np.ndarray, taken: np.ndarray, spacing: np.ndarray, avoid=None) -> bool:
    """Mark ``e``'s voxels in ``taken`` and return True if it lies inside the brain, clear of earlier lesions.

    ``avoid`` (optional ``(X, Y, Z)`` bool) is a region the lesion may overlap by at most ``_MAX_IN_AVOID``.
    """
    sl, r = _local_radius(e, brain.shape, spacing, margin_mm=2 * _EDGE_MM)
    inside = r <= 1.0
    if brain[sl][inside].mean() < _MIN_INSIDE or taken[sl][r <= 1.3].any():
        return False
    if avoid is not None and avoid[sl][inside].mean() > _MAX_IN_AVOID:
        return False
    taken[sl] |= inside
    return True


def place_periventricular_lesions(
    rng: np.random.Generator, label: np.ndarray, brain: np.ndarray, ventricles: np.ndarray, spacing, count: int
) -> list[Ellipsoid]:
    """Draw ``count`` non-overlapping T1-dark ovoids in the white matter beside the lateral ventricles.

    Each lesion's long semi-axis (4-11 mm) points along the normal of the nearest ventricle wall (the gradient
    of the distance to the ventricles) and its centre lies 0.6-1.1 long semi-axes from the wall, so the ovoid
    reaches towards the ventricle, as periventricular multiple-sclerosis lesions do. The two short semi-axes are
    3-5 mm. Core intensity is 0.25-0.45, between CSF and grey matter (a T1 "black hole").

    Args:
      rng: the subject's generator.
      label: ``(X, Y, Z)`` tissue labels (0 background, 1 CSF, 2 GM, 3 WM).
      brain: ``(X, Y, Z)`` bool brain mask.
      ventricles: ``(X, Y, Z)`` bool lateral-ventricle CSF on the same grid.
      spacing: ``(3,)`` voxel size in mm.
      count: number of lesions wanted (1-3). Fewer are returned only if no room is found.
    """
    from scipy import ndimage

    spacing = np.asarray(spacing, dtype=np.float64)
    if not ventricles.any():
        return place_lesions(rng, label, brain, spacing, count)  # a grid too coarse to hold the ventricles
    distance = ndimage.distance_transform_edt(~ventricles, sampling=spacing)  # mm to the nearest ventricle voxel
    white = np.flatnonzero(label == 3)
    white_distance = distance.ravel()[white]
    taken = np.zeros(label.shape, dtype=bool)
    lesions: list[Ellipsoid] = []
    for _ in range(count):
        for _ in range(_TRIES):
            short = rng.uniform(3.0, 5.0, size=2)
            long = float(np.clip(short.max() * rng.uniform(1.4, 2.2), 4.0, 11.0))
            pool = white[(white_distance >= 0.6 * long) & (white_distance <= 1.1 * long)]
            if pool.size == 0:
                continue
            centre = np.array(np.unravel_index(rng.choice(pool), label.shape))
            axis = _gradient_at(distance, centre, spacing)  # points away from the ventricles
            e = Ellipsoid(
                centre, np.array([long, *short]), _frame_along(axis, rng), float(rng.uniform(0.25, 0.45))
            )
            if _claim(e, brain, taken, spacing, avoid=ventricles):
                lesions.append(e)
                break
    return lesions


def _gradient_at(field: np.ndarray, index: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """``(3,)`` gradient of ``field`` at voxel ``index`` (per mm), equal to ``np.gradient(field, *spacing)`` there,
    computed on the 3^3 neighbourhood only."""
    lo = np.maximum(index - 1, 0)
    hi = np.minimum(index + 2, field.shape)
    local = field[tuple(slice(a, b) for a, b in zip(lo, hi))]
    at = tuple(index - lo)
    return np.array([g[at] for g in np.gradient(local, *spacing)])


def _frame_along(axis: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``(3, 3)`` right-handed orthonormal columns, the first along ``axis``, the other two turned at random about it."""
    first = axis / np.linalg.norm(axis) if np.linalg.norm(axis) > 1e-6 else _random_rotation(rng)[:, 0]
    helper = np.eye(3)[int(np.argmin(np.abs(first)))]
    second = np.cross(first, helper)
    second /= np.linalg.norm(second)
    third = np.cross(first, second)
    turn = rng.uniform(0.0, 2.0 * np.pi)
    second, third = np.cos(turn) * second + np.sin(turn) * third, -np.sin(turn) * second + np.cos(turn) * third
    return np.stack([first, second, third], axis=1)


def render_lesions(image: np.ndarray, brain: np.ndarray, spacing, lesions: list[Ellipsoid]) -> np.ndarray:
    """Blend lesions into ``image`` in place and return their index map.

    Args:
      image: ``(X, Y, Z)`` float32 relative intensities; modified in place, with soft edges about ``_EDGE_MM``
        wide; the contrast also fades out over about a voxel at the brain-mask boundary.
      brain: ``(X, Y, Z)`` bool brain mask; the lesion masks are clipped to it.
      spacing: ``(3,)`` voxel size in mm.
      lesions: from :func:`place_lesions`.

    Returns:
      ``(X, Y, Z)`` uint8: 0 outside lesions, ``k + 1`` inside lesion ``k``.
    """
    from scipy import ndimage

    spacing = np.asarray(spacing, dtype=np.float64)
    index = np.zeros(image.shape, dtype=np.uint8)
    for k, e in enumerate(lesions):
        sl, r = _local_radius(e, image.shape, spacing, margin_mm=3 * _EDGE_MM)
        mean_r = float(np.mean(e.radii_mm))
        w = 0.5 * (1.0 - np.tanh((r - 1.0) * mean_r / _EDGE_MM))
        inside_brain = brain[sl]
        w *= np.where(inside_brain, ndimage.gaussian_filter(inside_brain.astype(np.float32), 0.7, mode="nearest"), 0.0)
        image[sl] = image[sl] * (1.0 - w) + w * e.intensity
        sub = index[sl]
        sub[(r <= 1.0) & inside_brain] = k + 1
    return index


def lesion_boxes(index: np.ndarray, affine: np.ndarray, count: int) -> tuple[list[list[float]], list[list[int]]]:
    """Bounding boxes of each lesion in a stored (possibly reoriented) index map.

    Voxel boxes are half-open index bounds ``[i0, j0, k0, i1, j1, k1]`` (``array[i0:i1, j0:j1, k0:k1]`` holds
    the lesion). World boxes ``[x0, y0, z0, x1, y1, z1]`` (RAS+, mm) enclose the voxels' full extent: the
    corners ``(i0 - 0.5, ...)`` and ``(i1 - 0.5, ...)`` mapped through ``affine``, min and max per world axis.
    Lesions absent from ``index`` (none in practice) are skipped.
    """
    world, voxel = [], []
    for k in range(1, count + 1):
        nz = np.nonzero(index == k)
        if nz[0].size == 0:
            continue
        lo = [int(a.min()) for a in nz]
        hi = [int(a.max()) + 1 for a in nz]
        voxel.append(lo + hi)
        world.append(voxel_box_to_world(lo + hi, affine))
    return world, voxel


def voxel_box_to_world(box_voxel, affine: np.ndarray) -> list[float]:
    """World (RAS+, mm) box enclosing a half-open voxel box ``[i0, j0, k0, i1, j1, k1]``; see :func:`lesion_boxes`."""
    lo = np.asarray(box_voxel[:3], dtype=np.float64) - 0.5
    hi = np.asarray(box_voxel[3:], dtype=np.float64) - 0.5
    corners = np.array([[c[0], c[1], c[2], 1.0] for c in np.stack(np.meshgrid(*zip(lo, hi), indexing="ij"), -1).reshape(-1, 3)])
    xyz = (np.asarray(affine, dtype=np.float64) @ corners.T)[:3]
    return [round(float(v), 4) for v in (*xyz.min(axis=1), *xyz.max(axis=1))]
