"""``medjax data check PATH [--json]``: read every volume of a dataset and report the bad ones."""

from __future__ import annotations

HELP = "read every image (and label) of a dataset and report unreadable or invalid files"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "check",
        help=HELP,
        description=HELP + ". PATH: a folder of .nii/.nii.gz volumes (labels in labels/), an MSD folder with "
        "dataset.json, a .csv/.json manifest, a single image or a DICOM series folder. Exit status: 0 if every "
        "file is good, 1 if any is bad, 2 if PATH is not a dataset.",
    )
    p.add_argument("path", metavar="PATH", help="dataset folder, manifest or image")
    p.add_argument("--json", action="store_true", help='print a JSON list of {"path", "ok", "reason"} for every file')
    p.set_defaults(func=run)


def run(args) -> int:
    import json
    import sys

    from medjax.data.validate import check_dataset

    results = check_dataset(args.path, progress=sys.stderr.isatty())
    bad = [r for r in results if not r.ok]
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=1))
    else:
        for r in bad:
            print(f"{r.path}: {r.reason}")
        print(f"checked {len(results)} files: {len(results) - len(bad)} good, {len(bad)} bad")
    return 1 if bad else 0
