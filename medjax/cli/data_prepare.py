"""``medjax data prepare SRC OUT``: read + preprocess every volume once into a memory-mappable cache."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser(
        "prepare",
        help="preprocess a dataset once into a prepared cache (uncompressed .npy, memory-mapped crops)",
        description="Read, reorient, resample, normalise, foreground-crop and pad every volume of SRC once, in "
        "parallel, and store the results in OUT with a manifest that records these settings, SRC (resolved path "
        "and kind), its record list and a fingerprint of every source file (size, modification time, hash of the "
        "first 4 KiB). Train from it with --set data.dir=SRC data.cache_dir=OUT: a cache used with another "
        "data.dir, other settings, or after records or files changed is refused with the command that "
        "rebuilds it.",
    )
    p.add_argument("src", help="dataset: a folder of volumes, an MSD folder (dataset.json) or a CSV/JSON manifest")
    p.add_argument("out", help="cache folder to write")
    p.add_argument("--spacing", type=float, nargs="+", default=[1.5], metavar="MM",
                   help="target voxel spacing in mm: one value or three (x y z); default 1.5")
    p.add_argument("--native-spacing", action="store_true", help="keep each volume's own spacing")
    p.add_argument("--orientation", default="RAS", help="orientation code to reorient to (default RAS)")
    p.add_argument("--intensity", choices=("ct", "mri", "none"), default="mri",
                   help="ct: clip the HU window to [0, 1]; mri: z-score over the foreground; none: as stored")
    p.add_argument("--ct-window", type=float, nargs=2, default=[-1000.0, 1000.0], metavar=("LO", "HI"),
                   help="HU window for --intensity ct (default -1000 1000)")
    p.add_argument("--crop", type=int, nargs="+", default=[96], metavar="VOXELS",
                   help="crop size the volumes are padded to: one value or one per spatial dim (default 96)")
    p.add_argument("--spatial-dims", type=int, choices=(2, 3), default=3, help="3: volumes; 2: slices (default 3)")
    p.add_argument("--slice-axis", type=int, default=2, help="slice axis for --spatial-dims 2 (default 2)")
    p.add_argument("--no-crop-foreground", action="store_true", help="keep the background around the body")
    p.add_argument("--split", default="training", help="MSD split to read (default training)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--export-nifti", action="store_true",
                   help="also write each prepared volume as NIfTI (with its new affine) beside its arrays")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable volumes (listed in the manifest)")
    p.set_defaults(func=run)


def config_from_args(args):
    """The DataConfig described by the prepare arguments."""
    from medjax.config.schema import DataConfig
    from medjax.errors import ConfigError

    if len(args.spacing) not in (1, 3):
        raise ConfigError(f"--spacing takes one or three values, got {args.spacing}")
    if len(args.crop) not in (1, args.spatial_dims):
        raise ConfigError(f"--crop takes one or {args.spatial_dims} values, got {args.crop}")
    return DataConfig(
        dir=args.src, split=args.split, spatial_dims=args.spatial_dims, crop_size=tuple(args.crop),
        spacing=() if args.native_spacing else tuple(args.spacing), orientation=args.orientation.upper(),
        intensity=args.intensity, ct_window=tuple(args.ct_window), crop_foreground=not args.no_crop_foreground,
        slice_axis=args.slice_axis, skip_bad=args.skip_bad,
    )


def run(args) -> int:
    import logging

    from medjax.data.cache import cache_summary, prepare

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    cfg = config_from_args(args)
    manifest = prepare(args.src, args.out, cfg, workers=args.workers, export_nifti=args.export_nifti)
    print(f"{cache_summary(manifest)} -> {args.out}")
    print(f"train from it with: --set data.dir={args.src} data.cache_dir={args.out}")
    return 0
