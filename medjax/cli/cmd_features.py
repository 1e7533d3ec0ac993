"""``medjax features``: frozen-encoder embeddings of a folder of volumes (.npy per volume plus a CSV index)."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "features",
        help="write one encoder embedding per volume (and per window) as .npy plus a CSV index",
        description="Preprocess every volume of IN_DIR with the checkpoint's data settings, embed its windows "
                    "(the checkpoint's crop size) with the frozen encoder and write OUT/<id>.npy (mean over "
                    "windows, (D,)), OUT/index.csv and OUT/features.json; --per-window adds OUT/<id>_windows.npy "
                    "(W, D) and OUT/<id>_positions.npy. No image header field is copied.",
    )
    p.add_argument("in_dir", metavar="IN_DIR", help="folder of NIfTI/DICOM volumes, MSD folder or manifest")
    p.add_argument("out", metavar="OUT", help="output folder")
    p.add_argument("--checkpoint", required=True, metavar="WORKDIR_OR_CKPT", help="run whose encoder embeds")
    p.add_argument("--per-window", action="store_true", help="also write every window's features and position")
    p.add_argument("--pool", choices=("mean", "max", "cls"), default="mean",
                   help="window feature: mean or max over the patch tokens, or the CLS token (default mean)")
    p.add_argument("--layer", type=int, default=None, metavar="BLOCK",
                   help="pool this encoder block's tokens (1-based, through the final LayerNorm) instead of the "
                        "encoder output (the last block, the default)")
    p.add_argument("--overlap", type=float, default=None,
                   help="window overlap fraction (default: finetune.eval_overlap of the config)")
    p.add_argument("--config", default=None, metavar="NAME_OR_FILE",
                   help="config for the data settings and windows (default: the checkpoint's saved config)")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="overrides of --config, e.g. data.spacing=2,2,2")
    p.set_defaults(func=run)


def run(args) -> int:
    from medjax.finetune.features_export import export_features

    config = None
    if args.config is not None or args.overrides:
        from medjax.config import load_config
        from medjax.finetune.features_export import features_config

        config = (load_config(args.config, args.overrides) if args.config is not None
                  else _apply(features_config(args.checkpoint, None), args.overrides))
    res = export_features(args.checkpoint, args.in_dir, args.out, per_window=args.per_window, config=config,
                          pool=args.pool, overlap=args.overlap, layer=args.layer)
    print(f"wrote {res['volumes']} embeddings of dimension {res['feature_dim']} to {res['out']} "
          f"(index: {res['index']})")
    return 0


def _apply(cfg, overrides):
    from medjax.config import apply_overrides

    return apply_overrides(cfg, overrides)
