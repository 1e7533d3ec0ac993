"""Split the demo set into simulated hospital sites for federated training.

``split_demo_sites(DEMO, OUT, n_sites=3)`` writes ``OUT/site-1`` ... ``OUT/site-N``, each a folder in the demo
set's own layout (``dataset.json``, ``imagesTr/``, ``labelsTr/``, ``lesionsTr/``, ``boxes.csv``) plus a
``site.json`` manifest, so every preset trains on one site with ``--set data.dir=OUT/site-k``.

Partitions:

- ``"iid"``: subjects are shuffled (seeded) and dealt into equal parts; volumes are unchanged (voxels and
  affines rewritten as they are).
- ``"by-site"``: the sites differ as hospitals do.

  * Case mix: subjects are sorted by lesion count (ties broken at random) and cut into consecutive, equal-sized
    parts, so site-1 holds the fewest lesions (a screening population, possibly none) and site-N the most (a
    referral centre).
  * Scanner: every voxel becomes ``scale * I * exp(b(x)) + offset``, with a per-site intensity scale (a
    geometric ladder from 0.6 to 1.7, assigned to sites in a seeded order), an offset (0-80) and a smooth
    multiplicative bias field ``b`` (a coil profile: the same low-order cosine field in world coordinates for
    every subject of the site, peak |b| 0.05-0.25).
  * Protocol: voxel spacing (per world axis R, A, S, as multiples of the source's median spacing: isotropic,
    thick axial slices, coarser isotropic, thick sagittal slices, ...), resampled linearly for images and by
    nearest neighbour for label and lesion masks on one shared grid (:func:`medjax.data.transforms.resample`).
  * Export: every subject of a site is stored in the site's orientation (``LPS``, ``RAS``, ``PIR``, ...); the
    affine follows, so the world position of every voxel is kept (:func:`site_geometry`).

Lesion boxes are recomputed from each written lesion mask (connected components, 26-neighbourhood), so the
``boxes``/``boxes_voxel``/``class`` fields describe what was stored. Manifests hold subject ids (synthetic
``sub-XXX``), counts and scanner settings only: no paths of the source and no header fields.
Every random draw comes from ``np.random.default_rng([seed, ...])``: the same inputs and seed give the same
files byte for byte.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

PARTITIONS = ("by-site", "iid")
SITE_FILE = "site.json"
_ORIENTATIONS = ("LPS", "RAS", "PIR", "LAS", "ASL", "RPI")  # site k (0-based) uses entry k % 6
# spacing multiples of the source's median spacing along world R, A, S (site k uses entry k % 5)
_SPACING_FACTORS = ((1.0, 1.0, 1.0), (0.85, 0.85, 1.6), (1.3, 1.3, 1.3), (1.6, 0.9, 0.9), (1.0, 1.0, 1.8))
_SCALE_RANGE = (0.6, 1.7)
_IMAGE_DIRS = {"image": "imagesTr", "label": "labelsTr", "lesion": "lesionsTr"}


def _site_names(n: int) -> list[str]:
    return [f"site-{k + 1}" for k in range(n)]


def scanner_profiles(n_sites: int, seed: int, source_spacing_mm: float) -> list[dict]:
    """The simulated scanner of each site (``by-site``): one dict per site, JSON-ready.

    Keys: ``intensity_scale`` (unitless), ``intensity_offset`` (image units), ``bias_amplitude`` (peak |b| of
    the log-bias field), ``spacing_mm`` (``[R, A, S]`` mm, rounded to 0.01), ``orientation`` (stored axis code).
    Site ``k`` draws from ``np.random.default_rng([seed, k, 7])``; scales come from a ladder shuffled with
    ``np.random.default_rng([seed, 7])``, so sites always differ in scale.
    """
    lo, hi = _SCALE_RANGE
    ladder = np.geomspace(lo, hi, n_sites) if n_sites > 1 else np.array([1.0])
    ladder = ladder[np.random.default_rng([seed, 7]).permutation(n_sites)]
    profiles = []
    for k in range(n_sites):
        rng = np.random.default_rng([seed, k, 7])
        factors = np.asarray(_SPACING_FACTORS[k % len(_SPACING_FACTORS)])
        profiles.append({
            "intensity_scale": round(float(ladder[k] * rng.uniform(0.97, 1.03)), 4),
            "intensity_offset": round(float(rng.uniform(0.0, 80.0)), 2),
            "bias_amplitude": round(float(rng.uniform(0.05, 0.25)), 4),
            "spacing_mm": [round(float(v), 2) for v in factors * float(source_spacing_mm)],
            "orientation": _ORIENTATIONS[k % len(_ORIENTATIONS)],
        })
    return profiles


def site_geometry(arrays: list[np.ndarray], affine, spacing_ras, orientation: str, orders: list[int]):
    """Resample volumes that share one grid to ``spacing_ras`` and store them in ``orientation``.

    Args:
      arrays: ``(X, Y, Z)`` volumes on the grid of ``affine`` (image and masks of one subject).
      affine: ``(4, 4)`` voxel -> world (RAS+, mm).
      spacing_ras: target mm per voxel along the world axes R, A, S (the arrays are brought to RAS order first,
        so "thick axial slices" means a coarse S axis whatever the stored orientation).
      orientation: stored axis code of the result, e.g. ``"LPS"``.
      orders: interpolation order per array: 1 linear (images, float32 out), 0 nearest (masks, dtype kept).

    Returns:
      ``(arrays, affine)``: every output voxel centre ``v`` lies at world ``affine @ v``; reorientation is exact
      and resampling keeps the field of view's low corner (see :mod:`medjax.data.transforms.resample`).
    """
    from medjax.data.transforms.resample import resample
    from medjax.data.transforms.spatial import reorient

    ras = [reorient(a, affine, "RAS", has_channels=False) for a in arrays]
    ras_affine = ras[0][1]
    resampled = [resample(a, ras_affine, spacing_ras, order=o, has_channels=False) for (a, _), o in zip(ras, orders)]
    new_affine = resampled[0][1]
    out = [reorient(a, new_affine, orientation, has_channels=False) for a, _ in resampled]
    return [np.ascontiguousarray(a) for a, _ in out], out[0][1]


def _bias_field(profile: dict, seed: int, site: int, shape, affine) -> np.ndarray:
    """``exp(b)`` at the voxel centres of a RAS-ordered grid ``(X, Y, Z)``, float32: the site's coil profile.

    The field lives in world coordinates on a fixed head-sized box, the same for every subject of the site. The
    grid is taken as axis-aligned (the demo's are); an oblique grid is evaluated along its diagonal.
    """
    from medjax.data.demo import _SmoothField

    axes = [affine[d, d] * np.arange(shape[d]) + affine[d, 3] for d in range(3)]
    field = _SmoothField(np.random.default_rng([seed, site, 11]), 1, (-100.0, -130.0, -80.0), (100.0, 100.0, 110.0),
                         amplitude=float(profile["bias_amplitude"]))
    return np.exp(field(*axes)[0])


def _apply_site(image: np.ndarray, masks: list[np.ndarray], affine, profile: dict, seed: int, site: int):
    """One subject through a site's protocol and scanner: ``(image int16, masks, affine)`` in the site's grid."""
    from medjax.data.transforms.spatial import reorient

    arrays, ras_affine = site_geometry([image, *masks], affine, profile["spacing_mm"], "RAS", [1] + [0] * len(masks))
    img = arrays[0] * _bias_field(profile, seed, site, arrays[0].shape, ras_affine)
    img = float(profile["intensity_scale"]) * img + float(profile["intensity_offset"])
    arrays[0] = np.clip(np.rint(img), -32768, 32767).astype(np.int16)
    out = [reorient(a, ras_affine, profile["orientation"], has_channels=False) for a in arrays]
    return np.ascontiguousarray(out[0][0]), [np.ascontiguousarray(a) for a, _ in out[1:]], out[0][1]


def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected lesions of a binary mask (26-neighbourhood): ``(index map uint8, count)``."""
    from scipy import ndimage

    index, count = ndimage.label(mask > 0, structure=np.ones((3, 3, 3), dtype=bool))
    return index.astype(np.uint8 if count < 256 else np.int32), int(count)


def _lesion_count(record: dict) -> int:
    return len(record.get("boxes") or [])


def assign_sites(records: list[dict], n_sites: int, partition: str, seed: int) -> list[list[dict]]:
    """Deal ``records`` into ``n_sites`` parts of near-equal size (sizes differ by at most one).

    ``"iid"``: a seeded shuffle (``np.random.default_rng([seed, 3])``). ``"by-site"``: sorted by lesion count
    (``len(record["boxes"])``), ties broken by the same seeded shuffle, cut into consecutive parts (site-1 the
    fewest lesions). Within a part, records keep id order.
    """
    order = np.random.default_rng([seed, 3]).permutation(len(records))
    if partition == "by-site":
        rank = {int(i): r for r, i in enumerate(order)}
        order = sorted(range(len(records)), key=lambda i: (_lesion_count(records[i]), rank[i]))
    parts = np.array_split(np.asarray(order, dtype=int), n_sites)
    return [sorted((records[int(i)] for i in part), key=lambda r: r["id"]) for part in parts]


def _read_subject(record: dict):
    """The image and its masks (``label``, ``lesion`` where listed) of one record, checked to share one grid."""
    from medjax.data.io_nifti import read_nifti
    from medjax.errors import DataError

    image = read_nifti(record["image"], mmap=False)
    if image.has_channels or image.array.ndim != 3:
        raise DataError(record["image"], f"demo-sites splits single-channel 3D volumes; got shape {image.array.shape}")
    masks = {}
    for key in ("label", "lesion"):
        if record.get(key):
            m = read_nifti(record[key], mmap=False)
            if m.array.shape != image.array.shape or not np.allclose(m.affine, image.affine, atol=1e-4):
                raise DataError(record[key], f"{key} grid {m.array.shape} does not match its image "
                                             f"{record['image']} {image.array.shape}; masks must share the image's "
                                             "voxel grid and affine")
            masks[key] = np.asarray(m.array)
    return np.asarray(image.array), image.affine, masks


def _write_subject(record: dict, site_dir: Path, profile: dict | None, seed: int, site: int) -> dict:
    """Write one subject into ``site_dir``; return its ``dataset.json`` entry."""
    from medjax.data.demo_lesions import lesion_boxes
    from medjax.data.image import orientation_code, spacing_from_affine
    from medjax.data.io_nifti import write_nifti

    image, affine, masks = _read_subject(record)
    keys = list(masks)
    if profile is not None:
        image, arrays, affine = _apply_site(image, [masks[k] for k in keys], affine, profile, seed, site)
        masks = dict(zip(keys, arrays))
    sid = record["id"]
    entry = {"id": sid}
    for key, array in (("image", image), *masks.items()):
        rel = f"{_IMAGE_DIRS[key]}/{sid}.nii.gz"
        write_nifti(site_dir / rel, array, affine)
        entry[key] = f"./{rel}"
    if profile is None:  # voxels unchanged: the source's lesion facts still hold
        entry.update({k: record[k] for k in ("class", "boxes", "boxes_voxel") if record.get(k) is not None})
    elif "lesion" in masks:
        index, count = _components(masks["lesion"])
        boxes, boxes_voxel = lesion_boxes(index, affine, count)
        entry.update({"class": int(count > 0), "boxes": boxes, "boxes_voxel": boxes_voxel})
    entry.update({"orientation": orientation_code(affine), "shape": [int(n) for n in image.shape],
                  "spacing": [round(v, 4) for v in spacing_from_affine(affine)]})
    return entry


def _median_spacing(records: list[dict]) -> float:
    from medjax.data.image import spacing_from_affine
    from medjax.data.io_nifti import read_nifti_geometry

    return float(np.median([spacing_from_affine(read_nifti_geometry(r["image"])[1]) for r in records]))


def _prepare_out(out: Path, names: list[str]) -> None:
    """Clear earlier splits in ``out`` (folders ``site-*`` holding a ``site.json``); refuse foreign folders."""
    from medjax.errors import DataError

    out.mkdir(parents=True, exist_ok=True)
    for d in sorted(out.glob("site-*")):
        if d.is_dir() and (d / SITE_FILE).is_file():
            shutil.rmtree(d)
    for name in names:
        d = out / name
        if d.exists() and (not d.is_dir() or any(d.iterdir())):
            raise DataError(d, "exists and was not written by demo-sites (no site.json); choose an empty OUT folder")


def split_demo_sites(demo_dir, out_dir, n_sites: int = 3, partition: str = "by-site", seed: int = 0) -> list[Path]:
    """Split an MSD-layout demo folder into ``n_sites`` site folders; returns their paths (``site-1`` first).

    Args:
      demo_dir: a folder with ``dataset.json`` (``medjax data demo`` builds one); every ``training`` record's
        image, and its ``label``/``lesion`` masks where listed, are split.
      out_dir: destination; gets ``site-1`` ... ``site-N`` (earlier splits there are replaced).
      n_sites: number of sites, 1 <= n_sites <= number of subjects.
      partition: ``"by-site"`` (hospitals that differ: case mix, scanner, spacing, orientation) or ``"iid"``
        (random equal parts, volumes unchanged); see the module docs.
      seed: split seed; the same inputs and seed give identical files.

    Each site folder holds ``dataset.json`` (the source's metadata and the site's ``training`` list),
    ``imagesTr/``, ``labelsTr/``, ``lesionsTr/``, ``boxes.csv`` and ``site.json`` (site name, partition, seed,
    subject ids, lesion counts and, for ``by-site``, the simulated scanner of :func:`scanner_profiles`).

    Raises:
      ConfigError: a bad ``n_sites`` or ``partition``. DataError: a missing or malformed dataset.
    """
    from medjax.data.demo import _write_boxes_csv
    from medjax.data.sources import load_records
    from medjax.errors import ConfigError, DataError

    if partition not in PARTITIONS:
        raise ConfigError(f"demo-sites: partition must be one of {', '.join(PARTITIONS)}; got {partition!r}")
    demo, out = Path(demo_dir), Path(out_dir)
    manifest = demo / "dataset.json"
    if not manifest.is_file():
        raise DataError(demo, "no dataset.json here; demo-sites splits an MSD-layout folder (build one with "
                              "`medjax data demo DEMO_DIR`)")
    records = load_records(demo, split="training")
    n = int(n_sites)
    if n != n_sites or not 1 <= n <= len(records):
        raise ConfigError(f"demo-sites: sites must be an integer from 1 to the number of subjects "
                          f"({len(records)} in {manifest}); got {n_sites!r}")
    if os.path.abspath(out) == os.path.abspath(demo):
        raise ConfigError(f"demo-sites: OUT must differ from DEMO_DIR ({demo})")
    meta = json.loads(manifest.read_text())
    names = _site_names(n)
    profiles = scanner_profiles(n, seed, _median_spacing(records)) if partition == "by-site" else [None] * n
    _prepare_out(out, names)
    paths = []
    for k, (name, part, profile) in enumerate(zip(names, assign_sites(records, n, partition, seed), profiles)):
        site_dir = out / name
        entries = [_write_subject(r, site_dir, profile, seed, k) for r in part]
        _write_boxes_csv(site_dir / "boxes.csv", entries)
        lesions = sum(len(e.get("boxes") or []) for e in entries)
        lesion_subjects = sum(1 for e in entries if e.get("class"))
        site = {"site": name, "partition": partition, "seed": int(seed), "sites": n,
                "subjects": [e["id"] for e in entries], "lesion_subjects": lesion_subjects, "lesions": lesions,
                "scanner": profile}
        dataset = {k: v for k, v in meta.items() if k not in ("training", "test", "numTraining", "numTest")}
        dataset.update({"name": f"{meta.get('name', 'dataset')}-{name}", "numTraining": len(entries), "numTest": 0,
                        "training": entries, "test": [], "medjax_site": site})
        (site_dir / "dataset.json").write_text(json.dumps(dataset, indent=1) + "\n")
        (site_dir / SITE_FILE).write_text(json.dumps(site, indent=1) + "\n")
        paths.append(site_dir)
    return paths


def summarize_sites(out_dir) -> list[dict]:
    """The ``site.json`` of every site folder under ``out_dir``, ``site-1`` first (for printing and widgets)."""
    sites = [json.loads(p.read_text()) for p in Path(out_dir).glob(f"site-*/{SITE_FILE}")]
    return sorted(sites, key=lambda s: int(s["site"].split("-")[1]))
