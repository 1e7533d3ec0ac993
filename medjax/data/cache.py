"""Prepared cache: volumes read and preprocessed once, stored as uncompressed ``.npy`` for memory-mapped crops.

Layout of a cache folder ``OUT``::

    OUT/manifest.json                       settings, fingerprint, one entry per record
    OUT/records/00000_<id>/image.npy        float32 (*S, C), preprocessed (reoriented, resampled, normalised...)
    OUT/records/00000_<id>/label.npy        integer (*S,), same grid (only for records with a label)
    OUT/records/00000_<id>/foreground.npy   int32 (K, 3) voxel indices of label > 0, C order (with a label):
                                            crops centred on foreground read one row, not the whole label
    OUT/records/00000_<id>/image.nii.gz     with ``export_nifti``: the prepared volume with its new affine

The fingerprint is a sha256 over the preprocessing settings (orientation, spacing, intensity, CT window,
foreground crop, pad size, cache format version) and the size + modification time of every source file.
:func:`open_cache` refuses (:class:`StaleCacheError`) a cache whose settings or sources changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shlex
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from medjax.config.schema import DataConfig
from medjax.errors import DataError, StaleCacheError

log = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 2  # 2: foreground.npy per labelled record
MANIFEST = "manifest.json"


def _broadcast(values, n: int) -> list:
    values = list(values)
    if len(values) == 1:
        return values * n
    return values


def cache_settings(cfg: DataConfig) -> dict:
    """The settings that change what :func:`preprocess` writes (all of them enter the fingerprint)."""
    sd = cfg.spatial_dims
    return {
        "format": CACHE_FORMAT_VERSION,
        "orientation": cfg.orientation,
        "spacing": [float(s) for s in _broadcast(cfg.spacing, 3)],  # mm (x, y, z); [] keeps native spacing
        "intensity": cfg.intensity,
        "ct_window": [float(v) for v in cfg.ct_window] if cfg.intensity == "ct" else None,  # HU
        "crop_foreground": bool(cfg.crop_foreground),
        "pad": [int(c) for c in _broadcast(cfg.crop_size, sd)],  # voxels
        "spatial_dims": sd,
        "slice_axis": cfg.slice_axis if sd == 2 else None,
    }


def _stat_sources(paths) -> dict[str, list[int]]:
    """``{file: [size bytes, mtime ns]}`` for each path (every file inside a folder, e.g. a DICOM series)."""
    out: dict[str, list[int]] = {}
    for p in paths:
        p = os.path.abspath(p)
        if os.path.isdir(p):
            for root, _dirs, files in os.walk(p):
                for name in files:
                    f = os.path.join(root, name)
                    st = os.stat(f)
                    out[f] = [st.st_size, st.st_mtime_ns]
        elif os.path.exists(p):
            st = os.stat(p)
            out[p] = [st.st_size, st.st_mtime_ns]
        else:
            out[p] = [-1, -1]
    return dict(sorted(out.items()))


def _fingerprint(settings: Mapping, sources: Mapping) -> str:
    blob = json.dumps({"settings": settings, "sources": sources}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


def _record_paths(records) -> list[str]:
    return [p for r in records for p in (r["image"], r.get("label")) if p]


def prepare_command(src: str, out: str, cfg: DataConfig) -> str:
    """The ``medjax data prepare`` command that builds a cache matching ``cfg``."""
    args = ["medjax", "data", "prepare", src, out]
    if cfg.spacing:
        args += ["--spacing", *(f"{s:g}" for s in cfg.spacing)]
    args += ["--orientation", cfg.orientation, "--intensity", cfg.intensity]
    if cfg.intensity == "ct":
        args += ["--ct-window", *(f"{v:g}" for v in cfg.ct_window)]
    args += ["--crop", *(str(c) for c in cfg.crop_size)]
    if cfg.spatial_dims != 3:
        args += ["--spatial-dims", str(cfg.spatial_dims), "--slice-axis", str(cfg.slice_axis)]
    if not cfg.crop_foreground:
        args += ["--no-crop-foreground"]
    if cfg.split != "training":
        args += ["--split", cfg.split]
    return " ".join(shlex.quote(a) for a in args)


# ----------------------------------------------------------------------------------------------------------------
# Writing


def _save_npy_atomic(path: str, array: np.ndarray) -> int:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)
    os.replace(tmp, path)
    return os.path.getsize(path)


def _save_nifti_atomic(path: str, array: np.ndarray, affine: np.ndarray) -> int:
    import nibabel as nib

    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    img = nib.Nifti1Image(np.asarray(array), np.asarray(affine, np.float64))
    img.header.set_xyzt_units("mm")
    tmp = os.path.join(os.path.dirname(path), f".tmp{os.getpid()}_{os.path.basename(path)}")
    nib.save(img, tmp)
    os.replace(tmp, path)
    return os.path.getsize(path)


def _label_dtype(label: np.ndarray):
    lo, hi = (int(label.min()), int(label.max())) if label.size else (0, 0)
    for dt in (np.uint8, np.int16, np.int32):
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return dt
    return np.int64


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:64] or "record"


def _prepare_one(task: tuple) -> dict:
    """Read + preprocess one record and write its arrays (runs in a spawned worker; module-level to pickle)."""
    index, record, cfg, out, export_nifti = task
    from medjax.data.pipeline import read_sample
    from medjax.data.transforms.recipes import preprocess

    try:
        raw = read_sample(record)
        original_shape = list(raw["image"].shape[:-1])
        original_affine = raw["affine"].tolist()
        sample = preprocess(raw, cfg)
    except DataError as e:
        return {"index": index, "error": [e.path, e.reason]}
    rel = os.path.join("records", f"{index:05d}_{_safe_name(str(record.get('id', index)))}")
    folder = os.path.join(out, rel)
    os.makedirs(folder, exist_ok=True)
    image = np.ascontiguousarray(sample["image"], dtype=np.float32)
    affine = np.asarray(sample["affine"], np.float64)
    nbytes = _save_npy_atomic(os.path.join(folder, "image.npy"), image)
    entry = {
        "index": index,
        "id": str(record.get("id", index)),
        "source_image": os.path.abspath(record["image"]),
        "source_label": os.path.abspath(record["label"]) if record.get("label") else None,
        "original_shape": original_shape,
        "original_affine": original_affine,
        "shape": list(image.shape),
        "affine": affine.tolist(),
        "image": os.path.join(rel, "image.npy"),
        "label": None,
        "class": record.get("class"),
        "boxes": record.get("boxes"),
    }
    entry["foreground"] = None
    if sample.get("label") is not None:
        from medjax.data.transforms.crops import foreground_voxels

        label = np.asarray(sample["label"])
        label = np.ascontiguousarray(label, dtype=_label_dtype(label))
        nbytes += _save_npy_atomic(os.path.join(folder, "label.npy"), label)
        entry["label"] = os.path.join(rel, "label.npy")
        fg = foreground_voxels(label)
        nbytes += _save_npy_atomic(os.path.join(folder, "foreground.npy"), np.ascontiguousarray(fg, np.int32))
        entry["foreground"] = os.path.join(rel, "foreground.npy")
    if export_nifti:
        nbytes += _save_nifti_atomic(os.path.join(folder, "image.nii.gz"), image, affine)
        if entry["label"]:
            nbytes += _save_nifti_atomic(os.path.join(folder, "label.nii.gz"), label, affine)
    entry["bytes"] = nbytes
    return entry


def prepare(src: str, out: str, cfg: DataConfig, *, workers: int = 2, export_nifti: bool = False) -> dict:
    """Read and preprocess every record of ``src`` once, in parallel, into the cache folder ``out``.

    Args:
      src: a dataset (folder, MSD folder, manifest) as accepted by ``medjax.data.sources.load_records``.
      out: the cache folder (created; an old manifest there is removed first, so a crash never leaves a
        manifest that points at a half-written cache).
      cfg: preprocessing settings (``cfg.dir`` is ignored; ``src`` is read with ``cfg.split``).
      workers: worker processes (spawned); 0 or 1 runs in this process.
      export_nifti: also write each prepared volume (and label) as NIfTI with its new affine.

    Returns the manifest dict (also written to ``out/manifest.json``) with ``summary`` (records, bytes,
    seconds). Unreadable records raise :class:`DataError`, or are skipped and listed with ``cfg.skip_bad``.
    """
    from medjax.data.sources import load_records

    t0 = time.perf_counter()
    records = load_records(src, split=cfg.split)
    if not records:
        raise DataError(src, f"no records in split {cfg.split!r}; check the dataset")
    os.makedirs(out, exist_ok=True)
    manifest_path = os.path.join(out, MANIFEST)
    if os.path.exists(manifest_path):
        os.remove(manifest_path)
    sources = _stat_sources(_record_paths(records))
    tasks = [(i, dict(r), cfg, os.path.abspath(out), export_nifti) for i, r in enumerate(records)]
    if workers and workers > 1 and len(tasks) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=ctx) as pool:
            results = list(pool.map(_prepare_one, tasks))
    else:
        results = [_prepare_one(t) for t in tasks]
    entries, skipped = [], []
    for res in results:
        if "error" in res:
            path, reason = res["error"]
            if not cfg.skip_bad:
                raise DataError(path, reason)
            log.warning("skipping bad volume %s: %s", path, reason)
            skipped.append({"path": path, "reason": reason})
        else:
            entries.append(res)
    if not entries:
        raise DataError(src, "every record failed to read; see the warnings above")
    settings = cache_settings(cfg)
    manifest = {
        "format": CACHE_FORMAT_VERSION,
        "src": os.path.abspath(src),
        "split": cfg.split,
        "settings": settings,
        "sources": sources,
        "fingerprint": _fingerprint(settings, sources),
        "records": entries,
        "skipped": skipped,
        "summary": {"records": len(entries), "skipped": len(skipped),
                    "bytes": int(sum(e["bytes"] for e in entries)),
                    "seconds": round(time.perf_counter() - t0, 3)},
    }
    tmp = f"{manifest_path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1)
    os.replace(tmp, manifest_path)
    return manifest


# ----------------------------------------------------------------------------------------------------------------
# Reading


def read_manifest(out: str) -> dict:
    """The manifest of a cache folder; :class:`DataError` if there is none (or it is unreadable)."""
    path = os.path.join(out, MANIFEST)
    if not os.path.isfile(path):
        raise DataError(out, "not a prepared cache (no manifest.json); build it with `medjax data prepare SRC "
                             f"{out}` or leave data.cache_dir empty")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise DataError(path, f"unreadable cache manifest ({e}); rebuild with `medjax data prepare`")


def _describe(values) -> str:
    values = list(values)
    head = ", ".join(values[:3])
    return head + (f" and {len(values) - 3} more" if len(values) > 3 else "")


def open_cache(out: str, cfg: DataConfig) -> list[dict]:
    """Check a prepared cache against ``cfg`` and its source files, and return its records.

    Each record: ``{"id", "image": path of image.npy, "label": path of label.npy or None, "foreground": path
    of foreground.npy ((K, 3) int32 indices of label > 0) or None, "affine": (4, 4) nested list (mm, RAS+),
    "shape", "class", "boxes", "source": original image path}``.

    Raises :class:`StaleCacheError` naming what differs (settings, or changed/missing source files) and the
    command that rebuilds it.
    """
    manifest = read_manifest(out)
    src = manifest.get("src", "SRC")
    rebuild = f"rebuild it with: {prepare_command(src, out, cfg)}"
    if manifest.get("format") != CACHE_FORMAT_VERSION:
        raise StaleCacheError(f"{out}: cache format {manifest.get('format')} is not {CACHE_FORMAT_VERSION}; {rebuild}")
    want, have = cache_settings(cfg), manifest.get("settings", {})
    diffs = [f"{k}: cache {have.get(k)!r} vs config {v!r}" for k, v in want.items() if have.get(k) != v]
    if manifest.get("split") != cfg.split:
        diffs.append(f"split: cache {manifest.get('split')!r} vs config {cfg.split!r}")
    if diffs:
        raise StaleCacheError(f"{out}: prepared with other settings ({'; '.join(diffs)}); {rebuild}")
    stored = manifest.get("sources", {})
    now = _stat_sources(stored.keys())
    changed = [p for p, st in stored.items() if now.get(p) != st]
    added = sorted(set(now) - set(stored))  # files added inside a DICOM series folder
    if changed or added:
        missing = [p for p in changed if now.get(p) == [-1, -1]]
        what = []
        if missing:
            what.append(f"missing: {_describe(missing)}")
        modified = [p for p in changed if p not in missing]
        if modified:
            what.append(f"modified since preparing: {_describe(modified)}")
        if added:
            what.append(f"new files: {_describe(added)}")
        raise StaleCacheError(f"{out}: source files changed ({'; '.join(what)}); {rebuild}")
    if manifest.get("fingerprint") != _fingerprint(have, stored):
        raise StaleCacheError(f"{out}: manifest fingerprint does not match its contents; {rebuild}")
    root = os.path.abspath(out)
    records = []
    for e in manifest["records"]:
        records.append({
            "id": e["id"],
            "image": os.path.join(root, e["image"]),
            "label": os.path.join(root, e["label"]) if e.get("label") else None,
            "foreground": os.path.join(root, e["foreground"]) if e.get("foreground") else None,
            "affine": e["affine"],
            "shape": e["shape"],
            "class": e.get("class"),
            "boxes": e.get("boxes"),
            "source": e["source_image"],
        })
    return records


def ensure_prepared(src: str, out: str, cfg: DataConfig, *, workers: int = 2,
                    ids: list[str] | None = None) -> tuple[list[dict], bool]:
    """Open the cache ``out`` if it is fresh for ``cfg`` (and holds exactly the records ``ids``, when given),
    otherwise (re)build it from ``src`` with :func:`prepare`. Returns ``(records, rebuilt)``."""
    try:
        records = open_cache(out, cfg)
        if ids is None or sorted(r["id"] for r in records) == sorted(str(i) for i in ids):
            return records, False
    except (DataError, StaleCacheError):
        pass
    prepare(src, out, cfg, workers=workers)
    return open_cache(out, cfg), True


def cache_summary(manifest: Mapping[str, Any]) -> str:
    """One line: records, skipped, size in MB, seconds."""
    s = manifest["summary"]
    return (f"prepared {s['records']} records ({s['skipped']} skipped), {s['bytes'] / 1e6:.1f} MB "
            f"in {s['seconds']:.1f} s")
