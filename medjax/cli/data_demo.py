"""``medjax data demo OUT``: build the demo MRI dataset from the MNI152 templates shipped with nilearn."""

from __future__ import annotations


def register(subparsers) -> None:
    from medjax.data.demo import LESION_PRIORS

    p = subparsers.add_parser(
        "demo",
        help="build a synthetic multi-subject brain MRI dataset (MSD layout) offline",
        description=(
            "Build a multi-subject T1 MRI dataset from nilearn's MNI152 templates: per-subject warps, bias fields, "
            "anisotropic spacing, varied orientations, tissue labels (CSF/GM/WM), and lesion masks and boxes in "
            "about half the subjects. Writes OUT/dataset.json (MSD layout), imagesTr/, labelsTr/, lesionsTr/ "
            "and boxes.csv."
        ),
    )
    p.add_argument("out", metavar="OUT", help="output folder")
    p.add_argument("--subjects", type=int, default=8, help="number of subjects (default 8)")
    p.add_argument("--seed", type=int, default=0, help="dataset seed; same seed, same voxels (default 0)")
    p.add_argument("--resolution-mm", type=float, default=2.0, help="base voxel size in mm (default 2)")
    p.add_argument("--workers", type=int, default=1, help="processes building subjects in parallel (default 1)")
    p.add_argument("--no-reorient", action="store_true", help="store every subject in RAS orientation")
    p.add_argument(
        "--lesions",
        choices=LESION_PRIORS,
        default="anywhere",
        help="lesion placement: 'anywhere' (default; grey or white matter, bright or dark, 3-15 mm, independent of "
        "the anatomy) or 'periventricular' (T1-dark ovoids beside the lateral ventricles, pointing away from them)",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    import time

    from medjax.data.demo import build_demo, summarize_demo

    start = time.perf_counter()
    path = build_demo(
        args.out,
        subjects=args.subjects,
        seed=args.seed,
        resolution_mm=args.resolution_mm,
        workers=args.workers,
        reorient=not args.no_reorient,
        lesion_prior=args.lesions,
    )
    seconds = time.perf_counter() - start
    s = summarize_demo(args.out)
    shape = lambda v: "x".join(str(n) for n in v)  # noqa: E731
    orient = ", ".join(f"{code} x{n}" for code, n in s["orientations"].items())
    print(f"built {s['subjects']} subjects in {seconds:.1f} s (seed {args.seed}, {args.resolution_mm:g} mm base)")
    print(f"  shape        {shape(s['shape_min'])} .. {shape(s['shape_max'])} voxels (R x A x S, min .. max per axis)")
    print(f"  spacing      {s['spacing_min']:g} .. {s['spacing_max']:g} mm")
    print(f"  orientations {orient}")
    print(f"  lesions      {s['lesions']} in {s['lesion_subjects']} of {s['subjects']} subjects ({args.lesions})")
    print(f"  dataset      {path}")
    return 0
