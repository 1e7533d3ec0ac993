"""``medjax export-weights WORKDIR --format F --out DIR``: a medjax run's model -> Hugging Face / MONAI / timm."""

from __future__ import annotations

FORMATS = ("hf-vitmae", "hf-vit", "monai-vit", "monai-mae", "timm-vit")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export-weights",
        help="export a medjax run's encoder (and MAE decoder) for Hugging Face transformers, MONAI or timm",
        description="Write DIR/model.safetensors plus config.json (Hugging Face: loads with from_pretrained; "
        "timm: constructor arguments) or monai_args.json (MONAI: ViT(**args).load_state_dict(...)).",
    )
    p.add_argument("workdir", help="medjax run directory (pretraining or fine-tuning)")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    p.set_defaults(func=run)


def run(args) -> int:
    import json
    import os

    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)
    from medjax.interop.export import export_weights

    print(json.dumps(export_weights(args.workdir, args.format, args.out, step=args.step), sort_keys=True))
    return 0
