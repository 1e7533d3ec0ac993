"""``medjax import-weights SRC --format F --out WORKDIR``: Hugging Face / timm / MONAI weights -> a medjax run."""

from __future__ import annotations

FORMATS = ("hf-vitmae", "hf-vit", "timm-vit", "monai-vit", "monai-mae", "monai-unetr")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "import-weights",
        help="import Hugging Face / timm / MONAI ViT, MAE or UNETR-encoder weights as a medjax run directory",
        description="Read SRC (a .safetensors file, or a folder with config.json + model.safetensors) in --format "
        "and write WORKDIR as an ordinary medjax run (config.json + checkpoints/0), so `medjax checkpoint info`, "
        "`--init-from`, `medjax finetune` and `medjax pretrain` (continued pretraining) work on it. Pickle files "
        "(.bin/.pt/.pth/.ckpt) are refused unless --allow-pickle.",
    )
    p.add_argument("src", help=".safetensors file or Hugging Face folder")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--out", required=True, metavar="WORKDIR", help="run directory to create")
    p.add_argument("--spatial-dims", type=int, choices=(2, 3), default=None,
                   help="3 inflates a 2D network to volumes (see --inflate)")
    p.add_argument("--input-size", type=int, nargs="+", default=None, metavar="N",
                   help="pixels/voxels per spatial dim to build for (learned positions are interpolated)")
    p.add_argument("--in-channels", type=int, default=None, help="adapt the patch embedding (C->1 sums, 1->N "
                   "repeats / N)")
    p.add_argument("--inflate", choices=("repeat", "centre"), default="repeat",
                   help="2D->3D patch kernel: repeat over depth / depth, or the centre slice (default repeat)")
    p.add_argument("--depth-patch", type=int, default=None, help="patch voxels along the new depth axis")
    p.add_argument("--no-decoder", action="store_true", help="drop an imported MAE decoder (a seeded one is built)")
    p.add_argument("--heads", type=int, default=None, help="encoder heads when no config.json says (default D/64)")
    p.add_argument("--decoder-heads", type=int, default=None, help="MAE decoder heads when no config says")
    p.add_argument("--allow-pickle", action="store_true",
                   help="read pickle files with torch.load(weights_only=True) (needs torch)")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="config overrides (training, data, decoder sizes), as for `medjax pretrain`")
    p.add_argument("--force", action="store_true", help="replace checkpoints already in WORKDIR")
    p.set_defaults(func=run)


def run(args) -> int:
    import json
    import os

    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)
    from medjax.interop.rundir import import_weights

    summary = import_weights(
        args.src, args.format, args.out, overrides=args.overrides, force=args.force,
        spatial_dims=args.spatial_dims, input_size=tuple(args.input_size) if args.input_size else None,
        in_channels=args.in_channels, inflate=args.inflate, depth_patch=args.depth_patch,
        decoder=not args.no_decoder, heads=args.heads, decoder_heads=args.decoder_heads,
        allow_pickle=args.allow_pickle)
    print(json.dumps(summary, sort_keys=True))
    return 0
