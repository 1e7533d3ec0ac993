"""Dataset sources: turn a path into a sorted list of *records*.

A record is ``{"id": str, "image": str, "label": str | None, "class": int | list[int] | None,
"boxes": list[list[float]] | None}`` plus any extra keys a manifest carries (``"lesion"``, ...). Paths are
absolute; ``boxes`` are world-mm ``[x0, y0, z0, x1, y1, z1]`` (RAS+). Records are sorted by ``id``.

Recognised layouts:

- an MSD folder with ``dataset.json`` (``"training"``: ``{"image", "label"}`` objects with ``./`` paths,
  ``"test"``: plain paths);
- a folder of volumes: ``*.nii``/``*.nii.gz`` files and subfolders holding DICOM series; labels are paired
  from a ``labels/`` folder (inside the volume folder, or its sibling) holding a file with the same id; a
  folder with ``imagesTr``/``labelsTr``/``imagesTs`` (or ``images``/``labels``) subfolders also works;
- a ``.csv`` manifest: column ``image``, optional ``label``, ``class`` (integer or JSON list), ``boxes``
  (JSON), ``id``; paths relative to the manifest;
- a ``.json`` manifest: a list of objects (or plain paths), or ``{"training": [...], "test": [...]}``;
- a single ``.nii``/``.nii.gz`` file or DICOM series folder (one record).
"""

from __future__ import annotations

import csv
import json
import os

from medjax.data.io_dicom import dicom_files, is_dicom_file
from medjax.data.io_nifti import is_nifti_path, nifti_stem
from medjax.errors import DataError

_LABEL_DIRS = ("labels", "labelsTr", "labelsTs")
_IMAGE_DIRS = {"training": ("imagesTr", "images"), "test": ("imagesTs",)}
_CORE = ("id", "image", "label", "class", "boxes")


def available_splits(path) -> list[str]:
    """Splits a dataset offers: ``["training", "test"]`` for an MSD/JSON manifest with both, else ``["training"]``."""
    path = str(path)
    data = None
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "dataset.json")):
        data = _load_json(os.path.join(path, "dataset.json"))
    elif path.lower().endswith(".json") and os.path.isfile(path):
        data = _load_json(path)
    elif os.path.isdir(path) and os.path.isdir(os.path.join(path, "imagesTs")):
        return ["training", "test"] if _folder_has_training(path) else ["test"]
    if isinstance(data, dict):
        splits = [s for s in ("training", "validation", "test") if isinstance(data.get(s), list) and data.get(s)]
        return splits or ["training"]
    return ["training"]


def _folder_has_training(path: str) -> bool:
    return any(os.path.isdir(os.path.join(path, d)) for d in _IMAGE_DIRS["training"]) or bool(
        [n for n in os.listdir(path) if is_nifti_path(n)]
    )


SOURCE_KINDS = ("msd", "folder", "csv", "json", "image")


def source_kind(path) -> str:
    """What kind of dataset ``path`` is: ``"msd"`` (folder with ``dataset.json``), ``"folder"`` (volumes
    and/or DICOM series), ``"csv"`` / ``"json"`` (manifests) or ``"image"`` (one NIfTI file or DICOM file).

    Raises :class:`DataError` for a missing path or anything else.
    """
    path = str(path)
    if not os.path.exists(path):
        raise DataError(path, "dataset path not found")
    if os.path.isdir(path):
        return "msd" if os.path.isfile(os.path.join(path, "dataset.json")) else "folder"
    if path.lower().endswith(".csv"):
        return "csv"
    if path.lower().endswith(".json"):
        return "json"
    if is_nifti_path(path) or is_dicom_file(path):
        return "image"
    raise DataError(path, "not a dataset: expected a folder, a dataset.json folder, a .csv or .json manifest, "
                          "or a .nii/.nii.gz file")


def load_records(path, split: str = "training", *, must_exist: bool = True) -> list[dict]:
    """Records of a dataset, sorted by id.

    Args:
      path: an MSD folder (``dataset.json``), a folder of volumes, a ``.csv``/``.json`` manifest, or a single
        image (NIfTI file or DICOM series folder).
      split: which list of an MSD/JSON manifest to read (``"training"``, ``"test"``, ...); for folders with
        ``imagesTs`` ``"test"`` reads that folder.
      must_exist: raise :class:`DataError` when a listed image or label file is missing (the checker passes
        False to report missing files one by one instead).

    Raises:
      DataError naming the manifest (and entry/row and key) or the folder.
    """
    path = str(path)
    kind = source_kind(path)
    if kind == "msd":
        records = _from_json(os.path.join(path, "dataset.json"), split)
    elif kind == "folder":
        records = _from_folder(path, split)
    elif kind == "csv":
        records = _from_csv(path)
    elif kind == "json":
        records = _from_json(path, split)
    else:
        records = [_record(nifti_stem(path), os.path.abspath(path))]
    if must_exist:
        for rec in records:
            for key in ("image", "label"):
                p = rec.get(key)
                if p and not os.path.exists(p):
                    raise DataError(p, f"{key} file of record {rec['id']!r} not found (listed in {path})")
    return _sorted_unique(records, path)


def _record(rid: str, image: str, label: str | None = None, cls=None, boxes=None, **extra) -> dict:
    rec = {"id": rid, "image": image, "label": label, "class": cls, "boxes": boxes}
    rec.update(extra)
    return rec


def _sorted_unique(records: list[dict], where: str) -> list[dict]:
    records = sorted(records, key=lambda r: r["id"])
    for a, b in zip(records, records[1:]):
        if a["id"] == b["id"]:
            raise DataError(where, f"two records share the id {a['id']!r} ({a['image']} and {b['image']}); "
                                   "rename one of the files")
    return records


# ---------------------------------------------------------------------------------------------- folders


def _label_dir(volume_dir: str, root: str) -> str | None:
    for base in (volume_dir, os.path.dirname(volume_dir.rstrip(os.sep)), root):
        for name in _LABEL_DIRS:
            cand = os.path.join(base, name)
            if os.path.isdir(cand) and os.path.abspath(cand) != os.path.abspath(volume_dir):
                return cand
    return None


def _find_label(label_dir: str | None, rid: str) -> str | None:
    if label_dir is None:
        return None
    for ext in (".nii.gz", ".nii"):
        cand = os.path.join(label_dir, rid + ext)
        if os.path.isfile(cand):
            return cand
    cand = os.path.join(label_dir, rid)
    return cand if os.path.isdir(cand) else None


def _dicom_series_dirs(root: str, skip: set[str]) -> list[str]:
    out = []
    for dirpath, dirnames, _ in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                             and os.path.abspath(os.path.join(dirpath, d)) not in skip)
        if os.path.abspath(dirpath) != os.path.abspath(root) and dicom_files(dirpath):
            out.append(dirpath)
    return out


def _from_folder(path: str, split: str) -> list[dict]:
    if not any(n for n in os.listdir(path) if is_nifti_path(n)) and dicom_files(path):
        return [_record(os.path.basename(os.path.abspath(path)), os.path.abspath(path))]  # one series folder
    volume_dir = path
    for name in _IMAGE_DIRS.get(split, ()):
        if os.path.isdir(os.path.join(path, name)):
            volume_dir = os.path.join(path, name)
            break
    else:
        if split != "training":
            raise DataError(path, f"folder has no {split!r} split (expected a subfolder {_IMAGE_DIRS.get(split)})")
    volume_dir = os.path.abspath(volume_dir)
    label_dir = _label_dir(volume_dir, os.path.abspath(path))
    skip = {os.path.abspath(os.path.join(path, d)) for d in _LABEL_DIRS + ("imagesTr", "imagesTs", "images")}
    skip |= {os.path.abspath(os.path.join(volume_dir, d)) for d in _LABEL_DIRS}
    records = []
    for name in sorted(os.listdir(volume_dir)):
        p = os.path.join(volume_dir, name)
        if name.startswith(".") or not is_nifti_path(name) or not os.path.isfile(p):
            continue
        rid = nifti_stem(name)
        records.append(_record(rid, p, _find_label(label_dir, rid)))
    for d in _dicom_series_dirs(volume_dir, skip):
        rid = os.path.relpath(d, volume_dir).replace(os.sep, "_")
        records.append(_record(rid, d, _find_label(label_dir, rid)))
    if not records:
        raise DataError(path, "folder holds no .nii/.nii.gz volumes and no DICOM series subfolders")
    return records


# -------------------------------------------------------------------------------------------- manifests


def _load_json(manifest: str):
    try:
        with open(manifest, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(manifest, f"invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(manifest, f"cannot read manifest ({type(e).__name__})") from None


def _fail(where: tuple[str, str], reason: str) -> DataError:
    """A DataError naming the manifest file, with the entry/row location leading the reason."""
    manifest, loc = where
    return DataError(manifest, f"{loc}: {reason}" if loc else reason)


def _resolve(base: str, p, where: tuple[str, str], key: str) -> str:
    if not isinstance(p, str) or not p.strip():
        raise _fail(where, f"{key!r} must be a non-empty path string, got {p!r}")
    p = os.path.expanduser(p.strip())
    return os.path.normpath(p if os.path.isabs(p) else os.path.join(base, p))


def _looks_like_path(value) -> bool:
    """Extra manifest values that name files (e.g. MSD-style ``"lesion": "./lesionsTr/x.nii.gz"``) are resolved too."""
    return isinstance(value, str) and (is_nifti_path(value) or value.startswith(("./", "../")))


def _id_of(image: str) -> str:
    name = os.path.basename(image.rstrip(os.sep))
    return nifti_stem(name) if is_nifti_path(name) else os.path.splitext(name)[0] if name.lower().endswith(
        (".dcm", ".dicom", ".ima")) else name


def _json_text(value, where: tuple[str, str], expected: str):
    """CSV cells hold JSON text; decode it (other values pass through). Errors say what was expected."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        raise _fail(where, f"{expected}, got {value!r}") from None


def _parse_class(value, where: tuple[str, str]):
    if value is None or value == "":
        return None
    value = _json_text(value, where, "'class' must be an integer or a JSON list of integers")
    if isinstance(value, bool):
        raise _fail(where, f"'class' must be an integer or a list of integers, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return list(value)
    raise _fail(where, f"'class' must be an integer or a list of integers, got {value!r}")


def _parse_boxes(value, where: tuple[str, str]):
    if value is None or value == "":
        return None
    value = _json_text(value, where, "'boxes' must be JSON text [[x0,y0,z0,x1,y1,z1], ...]")
    ok = isinstance(value, list) and all(
        isinstance(b, list) and len(b) in (4, 6)
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in b) for b in value
    )
    if not ok:
        raise _fail(where, "'boxes' must be a list of [x0, y0, z0, x1, y1, z1] (mm) boxes "
                               "([x0, y0, x1, y1] in 2D)")
    return [[float(v) for v in b] for b in value]


def _entry_record(entry, base: str, where: tuple[str, str]) -> dict:
    if isinstance(entry, str):
        entry = {"image": entry}
    if not isinstance(entry, dict):
        raise _fail(where, f"entry must be an object with an 'image' key or a path string, got {type(entry).__name__}")
    if "image" not in entry:
        raise _fail(where, f"entry has no 'image' key (keys: {sorted(entry)})")
    image = _resolve(base, entry["image"], where, "image")
    label = entry.get("label")
    label = _resolve(base, label, where, "label") if label not in (None, "") else None
    rid = str(entry["id"]) if entry.get("id") not in (None, "") else _id_of(image)
    extra = {k: (_resolve(base, v, where, k) if _looks_like_path(v) else v)
             for k, v in entry.items() if k not in _CORE}
    return _record(rid, image, label, _parse_class(entry.get("class"), where),
                   _parse_boxes(entry.get("boxes"), where), **extra)


def _from_json(manifest: str, split: str) -> list[dict]:
    data = _load_json(manifest)
    base = os.path.dirname(os.path.abspath(manifest))
    if isinstance(data, list):
        entries, label = data, ""
    elif isinstance(data, dict):
        if split not in data or not isinstance(data[split], list):
            have = sorted(k for k, v in data.items() if isinstance(v, list))
            raise DataError(manifest, f"no {split!r} list (lists present: {have}); choose one with data.split")
        entries, label = data[split], split
    else:
        raise DataError(manifest, "JSON manifest must be a list of entries or an object with a 'training' list")
    return [_entry_record(e, base, (manifest, f"{label}[{i}]" if label else f"entry {i}")) for i, e in enumerate(entries)]


def _from_csv(manifest: str) -> list[dict]:
    base = os.path.dirname(os.path.abspath(manifest))
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fields = [c.strip() for c in (reader.fieldnames or [])]
            if "image" not in fields:
                raise DataError(manifest, f"CSV manifest needs an 'image' column (columns: {fields})")
            records = []
            for row in reader:
                row = {(k or "").strip(): (v.strip() if isinstance(v, str) else v) for k, v in row.items()}
                where = (manifest, f"line {reader.line_num}")
                if not row.get("image"):
                    raise DataError(manifest, f"line {reader.line_num}, column 'image': empty path")
                entry = {k: v for k, v in row.items() if k and v not in (None, "")}
                records.append(_entry_record(entry, base, where))
            return records
    except UnicodeDecodeError:
        raise DataError(manifest, "CSV manifest is not UTF-8 text") from None
    except csv.Error as e:
        raise DataError(manifest, f"malformed CSV: {e}") from None
