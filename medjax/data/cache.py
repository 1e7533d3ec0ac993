"""Prepared cache: volumes read and preprocessed once, stored as uncompressed ``.npy`` for memory-mapped crops.

Layout of a cache folder ``OUT``::

    OUT/manifest.json                       settings, source, fingerprints, one entry per record
    OUT/records/00000_<id>/image.npy        float32 (*S, C), preprocessed (reoriented, resampled, normalised...)
    OUT/records/00000_<id>/label.npy        integer (*S,), same grid (only for records with a label)
    OUT/records/00000_<id>/foreground.npy   int32 (K, 3) voxel indices of label > 0, C order (with a label):
                                            crops centred on foreground read one row, not the whole label
    OUT/records/00000_<id>/image.nii.gz     with ``export_nifti``: the prepared volume with its new affine

The manifest records what the cache was built from and how:

- ``settings``: the preprocessing settings (orientation, spacing, intensity, CT window, foreground crop, pad
  size, cache format version);
- ``source``: the dataset's resolved path (symlinks resolved) and kind (``msd``, ``folder``, ``csv``, ``json``,
  ``image``), and ``source_records``: every record it listed (id, image, label, class, boxes), bad ones too;
- ``sources``: a fingerprint of every file those records name (every file of a DICOM series folder):
  ``[size in bytes, modification time in ns, sha256 of the first 4 KiB (16 hex digits)]``. Size and time catch
  edits; the head hash catches a same-sized file copied over with its time preserved (``cp -p``, ``rsync -a``),
  which for NIfTI headers, gzip streams and DICOM preambles (unique instance UIDs) differs between files;
- ``fingerprint``: a sha256 over all of the above, so a hand-edited manifest is refused too.

:func:`open_cache` (which the training pipeline, fine-tuning, the demo job and the benchmark all go through)
compares them with the config and the dataset as it is now, and refuses (:class:`StaleCacheError`) a cache
whose settings differ, that was built from another dataset than ``data.dir``, whose dataset now lists other
records (added, removed or changed), or whose files changed. Every message names what differs and the
``medjax data prepare SRC OUT ...`` command that rebuilds it. Caches written before this format (version 2 and
older, which did not store the record list and fingerprints) are refused the same way: rebuild them.
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

from medjax.config.dims import broadcast
from medjax.config.schema import DataConfig
from medjax.errors import DataError, StaleCacheError

log = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 3  # 2: foreground.npy per labelled record; 3: source, record list, file fingerprints
MANIFEST = "manifest.json"
_HEAD_BYTES = 4096  # bytes of each source file hashed into its fingerprint


def cache_settings(cfg: DataConfig) -> dict:
    """The settings that change what :func:`preprocess` writes (all of them enter the fingerprint)."""
    sd = cfg.spatial_dims
    spacing = broadcast(cfg.spacing, 3, "data.spacing") if cfg.spacing else ()
    return {
        "format": CACHE_FORMAT_VERSION,
        "orientation": cfg.orientation,
        "spacing": [float(s) for s in spacing],  # mm (x, y, z); [] keeps native spacing
        "intensity": cfg.intensity,
        "ct_window": [float(v) for v in cfg.ct_window] if cfg.intensity == "ct" else None,  # HU
        "crop_foreground": bool(cfg.crop_foreground),
        "pad": [int(c) for c in broadcast(cfg.crop_size, sd, "data.crop_size")],  # voxels
        "spatial_dims": sd,
        "slice_axis": cfg.slice_axis if sd == 2 else None,
    }


_MISSING = None  # fingerprint of a file that does not exist


def file_fingerprint(path: str) -> list | None:
    """``[size bytes, mtime ns, sha256 of the first 4 KiB (16 hex digits)]`` of a file; None if it is gone."""
    try:
        st = os.stat(path)
        with open(path, "rb") as f:
            head = hashlib.sha256(f.read(_HEAD_BYTES)).hexdigest()[:16]
    except (FileNotFoundError, NotADirectoryError):
        return _MISSING
    return [st.st_size, st.st_mtime_ns, head]


def _stat_sources(paths) -> dict[str, list | None]:
    """``{file: fingerprint}`` for each path (every file inside a folder, e.g. a DICOM series)."""
    out: dict[str, list | None] = {}
    for p in paths:
        p = os.path.abspath(p)
        if os.path.isdir(p):
            for root, _dirs, files in os.walk(p):
                for name in files:
                    f = os.path.join(root, name)
                    out[f] = file_fingerprint(f)
        else:
            out[p] = file_fingerprint(p)
    return dict(sorted(out.items()))


def _fingerprint(settings: Mapping, source: Mapping, records: list, sources: Mapping) -> str:
    blob = json.dumps({"settings": settings, "source": source, "source_records": records, "sources": sources},
                      sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


def _record_paths(records) -> list[str]:
    return [p for r in records for p in (r["image"], r.get("label")) if p]


def _record_list(records) -> list[dict]:
    """What the cache depends on in each listed record (JSON-normalised so it compares equal after a round trip)."""
    out = [{"id": str(r["id"]), "image": os.path.abspath(r["image"]),
            "label": os.path.abspath(r["label"]) if r.get("label") else None,
            "class": r.get("class"), "boxes": r.get("boxes")} for r in records]
    return json.loads(json.dumps(out))


def describe_source(src: str) -> dict:
    """``{"path": resolved absolute path, "kind": msd/folder/csv/json/image}`` of a dataset."""
    from medjax.data.sources import source_kind

    return {"path": os.path.realpath(src), "kind": source_kind(src)}


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


def _save_nifti(path: str, array: np.ndarray, affine: np.ndarray) -> int:
    from medjax.data.io_nifti import write_nifti

    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    write_nifti(path, array, affine)
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
        nbytes += _save_nifti(os.path.join(folder, "image.nii.gz"), image, affine)
        if entry["label"]:
            nbytes += _save_nifti(os.path.join(folder, "label.nii.gz"), label, affine)
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
    source = describe_source(src)
    listed = _record_list(records)
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
        "source": source,
        "source_records": listed,
        "sources": sources,
        "fingerprint": _fingerprint(settings, source, listed, sources),
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


def _describe_records(stored: list[dict], now: list[dict]) -> list[str]:
    """What differs between the record list stored at prepare time and the one the dataset gives now."""
    old, new = {r["id"]: r for r in stored}, {r["id"]: r for r in now}
    what = []
    added = sorted(set(new) - set(old))
    removed = sorted(set(old) - set(new))
    if added:
        what.append(f"{len(added)} new record(s): {_describe(added)}")
    if removed:
        what.append(f"{len(removed)} removed record(s): {_describe(removed)}")
    changed = [f"{i} ({', '.join(k for k in new[i] if new[i][k] != old[i].get(k))})"
               for i in sorted(set(old) & set(new)) if new[i] != old[i]]
    if changed:
        what.append(f"{len(changed)} changed record(s): {_describe(changed)}")
    return what


def _check_source(out: str, manifest: Mapping, cfg: DataConfig, src: str | None) -> None:
    """Raise :class:`StaleCacheError` unless the dataset ``src`` (default ``cfg.dir``; empty: the one the cache
    was built from) is the cache's source and still lists the same records from the same files."""
    from medjax.data.sources import load_records

    stored = manifest["source"]
    want = cfg.dir if src is None else src
    target = want or stored["path"]
    try:
        now = describe_source(target)
    except DataError as e:
        raise StaleCacheError(f"{out}: its dataset {target} cannot be read now ({e.reason}); rebuild it with: "
                              f"{prepare_command(target, out, cfg)}") from None
    if now["path"] != stored["path"]:
        raise StaleCacheError(
            f"{out}: prepared from {stored['path']} ({stored['kind']}), but data.dir is {now['path']} "
            f"({now['kind']}); set data.dir={stored['path']} to use this cache, or rebuild it from "
            f"{target} with: {prepare_command(target, out, cfg)}")
    rebuild = f"rebuild it with: {prepare_command(target, out, cfg)}"
    if now["kind"] != stored["kind"]:
        raise StaleCacheError(f"{out}: {target} was a {stored['kind']} dataset when prepared and is a "
                              f"{now['kind']} dataset now; {rebuild}")
    try:
        listed = _record_list(load_records(target, split=cfg.split, must_exist=False))
    except DataError as e:
        raise StaleCacheError(f"{out}: its dataset cannot be listed now ({e}); {rebuild}") from None
    what = _describe_records(manifest["source_records"], listed)
    if what:
        raise StaleCacheError(f"{out}: the dataset {target} changed since preparing ({'; '.join(what)}); {rebuild}")
    files = manifest["sources"]
    current = _stat_sources(_record_paths(listed))  # folders (DICOM series) are walked again: new files count
    changed = [p for p, fp in files.items() if current.get(p) != fp]
    added = sorted(set(current) - set(files))  # files added inside a DICOM series folder
    if changed or added:
        missing = [p for p in changed if current.get(p) is _MISSING]
        what = []
        if missing:
            what.append(f"missing: {_describe(missing)}")
        modified = [p for p in changed if p not in missing]
        if modified:
            what.append(f"modified since preparing: {_describe(modified)}")
        if added:
            what.append(f"new files: {_describe(added)}")
        raise StaleCacheError(f"{out}: source files changed ({'; '.join(what)}); {rebuild}")


def open_cache(out: str, cfg: DataConfig, *, src: str | None = None) -> list[dict]:
    """Check a prepared cache against ``cfg`` and its dataset, and return its records.

    Args:
      out: the cache folder.
      cfg: the data settings; ``cfg.dir`` is the dataset the cache must have been prepared from.
      src: the dataset to check against instead of ``cfg.dir``; with ``cfg.dir`` and ``src`` both empty the
        cache is checked against the dataset it was built from (its record list and files).

    Each record: ``{"id", "image": path of image.npy, "label": path of label.npy or None, "foreground": path
    of foreground.npy ((K, 3) int32 indices of label > 0) or None, "affine": (4, 4) nested list (mm, RAS+),
    "shape", "class", "boxes", "source": original image path}``.

    Raises :class:`StaleCacheError` naming what differs (settings; another dataset than ``data.dir``;
    records added, removed or changed; changed or missing files; a cache from an older medjax) and the
    ``medjax data prepare`` command that rebuilds it.
    """
    manifest = read_manifest(out)
    target = (cfg.dir if src is None else src) or manifest.get("src", "SRC")
    rebuild = f"rebuild it with: {prepare_command(target, out, cfg)}"
    fmt = manifest.get("format")
    if fmt != CACHE_FORMAT_VERSION:
        if isinstance(fmt, int) and fmt < CACHE_FORMAT_VERSION:
            raise StaleCacheError(
                f"{out}: prepared by an older medjax (cache format {fmt}, now {CACHE_FORMAT_VERSION}) that did not "
                f"store its dataset's record list and file fingerprints, so it cannot be checked against "
                f"data.dir; {rebuild}")
        raise StaleCacheError(f"{out}: cache format {fmt!r} is not {CACHE_FORMAT_VERSION}; {rebuild}")
    want, have = cache_settings(cfg), manifest.get("settings", {})
    diffs = [f"{k}: cache {have.get(k)!r} vs config {v!r}" for k, v in want.items() if have.get(k) != v]
    if manifest.get("split") != cfg.split:
        diffs.append(f"split: cache {manifest.get('split')!r} vs config {cfg.split!r}")
    if diffs:
        raise StaleCacheError(f"{out}: prepared with other settings ({'; '.join(diffs)}); {rebuild}")
    if any(k not in manifest for k in ("source", "source_records", "sources", "records")):
        raise StaleCacheError(f"{out}: manifest lacks its source description; {rebuild}")
    if manifest.get("fingerprint") != _fingerprint(have, manifest["source"], manifest["source_records"],
                                                   manifest["sources"]):
        raise StaleCacheError(f"{out}: manifest fingerprint does not match its contents; {rebuild}")
    _check_source(out, manifest, cfg, src)
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
    """Open the cache ``out`` if it is fresh for ``cfg`` and the dataset ``src`` (:func:`open_cache`; and holds
    exactly the records ``ids``, when given), otherwise (re)build it from ``src`` with :func:`prepare`.
    Returns ``(records, rebuilt)``."""
    try:
        records = open_cache(out, cfg, src=src)
        if ids is None or sorted(r["id"] for r in records) == sorted(str(i) for i in ids):
            return records, False
    except (DataError, StaleCacheError):
        pass
    prepare(src, out, cfg, workers=workers)
    return open_cache(out, cfg, src=src), True


def cache_summary(manifest: Mapping[str, Any]) -> str:
    """One line: records, skipped, size in MB, seconds."""
    s = manifest["summary"]
    return (f"prepared {s['records']} records ({s['skipped']} skipped), {s['bytes'] / 1e6:.1f} MB "
            f"in {s['seconds']:.1f} s")
