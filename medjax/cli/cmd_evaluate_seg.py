"""``medjax evaluate-seg``: score NIfTI label maps against references (Dice, HD95, NSD per case and label)."""

from __future__ import annotations

_SUFFIXES = (".nii.gz", ".nii")
_SURFACE_WORDS = {"voxels": "boundary voxels counted", "area": "surface elements weighted by area"}


def register(sub) -> None:
    p = sub.add_parser(
        "evaluate-seg",
        help="score predicted NIfTI label maps against references: Dice, HD95 (mm), NSD",
        description="Match predictions to references by file name (.nii/.nii.gz), check that shapes and affines "
        "agree, and report per-case and mean Dice, 95th-percentile Hausdorff distance (mm, from the header "
        "spacing) and normalised surface Dice. HD95 is infinite when exactly one of prediction and reference is "
        "empty for a label; it is printed as 'inf' and written as null with \"hd95_infinite\": true in --json. "
        "A label empty in both prediction and reference scores per --empty; NSD counts boundary voxels or weighs "
        "surface elements by area per --nsd-surface. The output states both choices.",
    )
    p.add_argument("--pred", required=True, metavar="DIR", help="folder of predicted label maps")
    p.add_argument("--ref", required=True, metavar="DIR", help="folder of reference label maps (same file names)")
    p.add_argument("--labels", default=None, metavar="L1,L2,...",
                   help="labels to score (default: every non-zero label found in the references)")
    p.add_argument("--tolerance-mm", type=float, default=1.0, metavar="T", help="NSD tolerance in mm (default 1)")
    p.add_argument("--empty", choices=("perfect", "nan"), default="perfect",
                   help="a label empty in both prediction and reference: 'perfect' scores Dice 1, HD95 0, NSD 1 and "
                   "counts it in the means (default); 'nan' scores NaN and leaves it out of the means (MONAI "
                   "ignore_empty, Metrics Reloaded)")
    p.add_argument("--nsd-surface", choices=("voxels", "area"), default="voxels",
                   help="NSD definition: 'voxels' counts boundary voxels (default); 'area' weighs surface elements "
                   "by their area in mm^2, as DeepMind's surface-distance package and MONAI use_subvoxels=True")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(func=run)


def _parse_labels(text: str | None) -> list[int] | None:
    from medjax.errors import ConfigError

    if text is None:
        return None
    try:
        labels = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ConfigError(f"--labels {text!r}: expected comma-separated integers such as 1,2,3") from None
    if not labels:
        raise ConfigError("--labels is empty: give comma-separated integers such as 1,2,3, or omit it")
    return labels


def _nifti_files(folder: str, role: str) -> dict[str, str]:
    import os

    from medjax.errors import DataError

    if not os.path.isdir(folder):
        raise DataError(folder, f"--{role} is not a folder; give the folder holding the {role} .nii/.nii.gz files")
    files = {n: os.path.join(folder, n) for n in sorted(os.listdir(folder)) if n.endswith(_SUFFIXES)}
    if not files:
        raise DataError(folder, f"no .nii or .nii.gz files in the --{role} folder")
    return files


def _read_labels(path: str):
    """Label map ``(X, Y[, Z])`` int64 and its ``(4, 4)`` affine; trailing singleton axes are dropped."""
    import nibabel as nib
    import numpy as np

    from medjax.errors import DataError

    try:
        img = nib.load(path)
        data = np.asanyarray(img.dataobj)
    except Exception as e:  # nibabel raises several types for corrupt or non-NIfTI files
        raise DataError(path, f"cannot read as NIfTI ({type(e).__name__}: {e})") from None
    while data.ndim > 2 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim not in (2, 3):
        raise DataError(path, f"expected a 2D or 3D label map, got shape {data.shape}")
    if np.issubdtype(data.dtype, np.floating):
        rounded = np.rint(data)
        if not np.array_equal(rounded, data):
            raise DataError(path, "label map holds non-integer values; save integer labels (e.g. argmax of the "
                            "class probabilities)")
        data = rounded
    return data.astype(np.int64), np.asarray(img.affine, dtype=np.float64)


def _pairs(pred_dir: str, ref_dir: str) -> list[tuple[str, str, str]]:
    from medjax.errors import DataError

    preds, refs = _nifti_files(pred_dir, "pred"), _nifti_files(ref_dir, "ref")
    no_ref = sorted(set(preds) - set(refs))
    if no_ref:
        raise DataError(ref_dir, f"reference missing for prediction(s) {', '.join(no_ref)}; every prediction "
                        "needs a reference of the same file name")
    no_pred = sorted(set(refs) - set(preds))
    if no_pred:
        raise DataError(pred_dir, f"prediction missing for reference(s) {', '.join(no_pred)}; write one per "
                        "reference (same file name) or evaluate a --ref folder holding only the scored cases")
    return [(name, preds[name], refs[name]) for name in sorted(refs)]


def _fmt(v: float) -> str:
    import math

    return "nan" if math.isnan(v) else ("inf" if math.isinf(v) else f"{v:.4f}")


def run(args) -> int:
    import json
    import math

    import numpy as np

    from medjax.data.image import spacing_from_affine
    from medjax.errors import DataError
    from medjax.evaluation.accumulators import SegmentationAccumulator, json_safe
    from medjax.evaluation.segmentation import foreground_labels

    labels = _parse_labels(args.labels)
    if not (math.isfinite(args.tolerance_mm) and args.tolerance_mm >= 0):
        from medjax.errors import ConfigError

        raise ConfigError(f"--tolerance-mm {args.tolerance_mm}: must be a finite distance >= 0 millimetres")
    pairs = _pairs(args.pred, args.ref)
    if labels is None:
        labels = foreground_labels(*(_read_labels(ref)[0] for _, _, ref in pairs))
        if not labels:
            raise DataError(args.ref, "the references hold no non-zero label; give --labels to score anyway")
    acc = SegmentationAccumulator(labels, tolerance_mm=args.tolerance_mm, surface=args.nsd_surface,
                                  empty=args.empty)
    for name, pred_path, ref_path in pairs:
        pred, pred_aff = _read_labels(pred_path)
        ref, ref_aff = _read_labels(ref_path)
        if pred.shape != ref.shape:
            raise DataError(pred_path, f"shape {pred.shape} differs from the reference {ref_path} {ref.shape}; "
                            "resample the prediction onto the reference grid")
        if not np.allclose(pred_aff, ref_aff, atol=1e-3):
            raise DataError(pred_path, f"affine differs from the reference {ref_path} (max difference "
                            f"{np.abs(pred_aff - ref_aff).max():.4g} mm); resample the prediction onto the "
                            "reference grid")
        acc.update(pred, ref, spacing_from_affine(ref_aff, ref.ndim), case_id=name)
    rows = acc.per_case()
    agg = acc.aggregate()
    mean = {"dice": agg["dice"], "hd95": agg["hd95"], "nsd": agg["nsd"], "n_cases": agg["n_cases"],
            "n_hd95_infinite": agg["counts"]["hd95"]["n_inf"], "n_both_empty_excluded": agg["counts"]["dice"]["n_nan"]}
    if args.json:
        out = {
            "cases": rows,
            "mean": mean,
            "per_label": {lab: {"dice": s["dice"], "hd95": s["hd95"], "nsd": s["nsd"],
                                "n_hd95_infinite": s["counts"]["hd95"]["n_inf"],
                                "n_both_empty_excluded": s["counts"]["dice"]["n_nan"]}
                          for lab, s in agg["per_label"].items()},
            "labels": labels,
            "tolerance_mm": args.tolerance_mm,
            "empty": args.empty,
            "nsd_surface": args.nsd_surface,
        }
        print(json.dumps(json_safe(out), allow_nan=False))
        return 0
    width = max(len("case"), *(len(r["case"]) for r in rows))
    print(f"{'case':<{width}}  label  {'dice':>8}  {'hd95_mm':>8}  {'nsd':>8}")
    for r in rows:
        print(f"{r['case']:<{width}}  {r['label']:>5}  {_fmt(r['dice']):>8}  {_fmt(r['hd95']):>8}  "
              f"{_fmt(r['nsd']):>8}")
    for lab, s in agg["per_label"].items():
        print(f"{'mean':<{width}}  {lab:>5}  {_fmt(s['dice']):>8}  {_fmt(s['hd95']):>8}  {_fmt(s['nsd']):>8}")
    print(f"{'mean':<{width}}  {'all':>5}  {_fmt(mean['dice']):>8}  {_fmt(mean['hd95']):>8}  "
          f"{_fmt(mean['nsd']):>8}")
    print(f"{mean['n_cases']} case(s), labels {labels}, NSD tolerance {args.tolerance_mm} mm, NSD surface "
          f"'{args.nsd_surface}' ({_SURFACE_WORDS[args.nsd_surface]}); "
          f"{mean['n_hd95_infinite']} infinite HD95 value(s) (one mask empty) left out of the HD95 mean")
    print(f"both-empty convention '{args.empty}': " + (
        "a label empty in prediction and reference scores Dice 1, HD95 0, NSD 1 and counts in the means"
        if args.empty == "perfect" else
        f"{mean['n_both_empty_excluded']} case-label(s) empty in both scored NaN and left out of the means"))
    return 0
