"""``medjax predict --checkpoint WORKDIR_OR_CKPT IN_DIR OUT_DIR``: fine-tuned model -> outputs in original space."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "predict",
        help="apply a fine-tuned checkpoint to a folder of volumes (masks in the inputs' original space)",
        description="Segmentation: OUT_DIR/<id>.nii.gz label maps with each input's exact shape and affine "
                    "(reorientation, resampling and cropping undone; no header text copied). Classification: "
                    "predictions.csv/.json. Detection: boxes.csv/.json in world mm and input voxel indices.",
    )
    p.add_argument("--checkpoint", required=True, metavar="WORKDIR_OR_CKPT",
                   help="a `medjax finetune` workdir (latest checkpoint) or WORKDIR/checkpoints/<step>")
    p.add_argument("in_dir", help="folder of .nii/.nii.gz volumes or DICOM series (or a manifest)")
    p.add_argument("out_dir", help="output folder (created)")
    p.add_argument("--nearest", action="store_true",
                   help="map labels back by nearest neighbour instead of interpolating class probabilities")
    p.add_argument("--save-probs", action="store_true", help="also write <id>_probs.nii.gz (segmentation)")
    p.set_defaults(func=run)


def run(args) -> int:
    from medjax.finetune.predict_io import predict_folder

    result = predict_folder(args.checkpoint, args.in_dir, args.out_dir, nearest=args.nearest,
                            save_probs=args.save_probs)
    print(f"{result['cases']} volume(s), task {result['task']}: outputs in {result['out_dir']}")
    return 0
