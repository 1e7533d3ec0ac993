"""Do small objects need a finer detection grid? A tiny detector on volumes with small bright balls.

Writes ``--volumes`` synthetic NIfTI volumes (``--size``^3 voxels at 1 mm, a smooth noisy background, 2-4 balls of
radius 2-3 voxels each, their label maps), then fine-tunes the same tiny ViT (``--variant``, 8-voxel patches by
default) from scratch with ``finetune.det_stride`` = each of ``--strides`` (the patch itself means no neck) for
``--steps`` steps, and evaluates on the last ``--val`` volumes (never trained on). Prints one JSON line per run
and a Markdown table: AP at IoU 0.1 and the FROC score of the held-out balls.

    python benchmarks/det_small_blobs.py --workdir /tmp/blobs --strides 8 2 --steps 300 --seeds 0 1

Everything runs through ``medjax.finetune.finetune`` (the same loop, targets, decoding and NMS as
``medjax finetune --config demo_det``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os

import numpy as np


def write_blob_volumes(root: str, n: int, size: int, seed: int = 0) -> str:
    """``n`` cases ``case_000`` ... (``root/case_i.nii.gz`` + ``root/labels/``), 1 mm isotropic, RAS."""
    from scipy.ndimage import gaussian_filter

    from medjax.data.image import Image
    from medjax.data.io_nifti import write_nifti
    from medjax.data.testing import orientation_affine

    rng = np.random.default_rng(seed)
    affine = orientation_affine((size,) * 3, 1.0)
    grid = np.stack(np.meshgrid(*[np.arange(size)] * 3, indexing="ij"), -1).astype(np.float64)
    for i in range(n):
        noise = gaussian_filter(rng.standard_normal((size,) * 3), 1.5)
        image = 100.0 + 15.0 * noise / noise.std()
        label = np.zeros((size,) * 3, np.uint8)
        placed = []
        for _ in range(int(rng.integers(2, 5))):
            for _ in range(50):  # a centre at least 4 voxels inside and 10 voxels from the other balls
                c, r = rng.uniform(4, size - 5, 3), rng.uniform(2.0, 3.0)
                if all(np.linalg.norm(c - p) > 10 for p in placed):
                    break
            else:
                continue
            placed.append(c)
            d = np.linalg.norm(grid - c, axis=-1)
            image += 60.0 * np.clip(r + 0.5 - d, 0.0, 1.0)  # soft-edged ball, +4 noise standard deviations
            label[d <= r] = 1
        write_nifti(os.path.join(root, f"case_{i:03d}.nii.gz"), Image(array=image.astype(np.float32), affine=affine))
        write_nifti(os.path.join(root, "labels", f"case_{i:03d}.nii.gz"), Image(array=label, affine=affine))
    return root


def config(data_dir: str, args, stride: int, seed: int):
    from medjax.config.finetune_schema import FinetuneConfig
    from medjax.config.schema import CheckpointConfig, Config, DataConfig, ModelConfig, TrainConfig

    return Config(
        name="det_small_blobs", task="detection",
        data=DataConfig(dir=data_dir, spatial_dims=3, crop_size=(args.crop,) * 3, spacing=(), intensity="mri",
                        samples_per_volume=2, workers=0, augment=True),
        model=ModelConfig(variant=args.variant, pos_embed="learned"),
        train=TrainConfig(steps=args.steps, batch_size=4, lr=args.lr, warmup_steps=20, seed=seed,
                          log_every=max(args.steps // 5, 1)),
        checkpoint=CheckpointConfig(every_steps=args.steps, keep=1),
        finetune=FinetuneConfig(num_classes=1, min_object_voxels=4, det_hidden=32, decoder_features=8,
                                det_stride=stride, det_top_k=10, det_score_threshold=0.05, val_records=args.val,
                                eval_overlap=0.25, cache=False),
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--volumes", type=int, default=12)
    p.add_argument("--val", type=int, default=4)
    p.add_argument("--size", type=int, default=40)
    p.add_argument("--crop", type=int, default=32)
    p.add_argument("--variant", default="Mu/8")
    p.add_argument("--strides", type=int, nargs="+", default=[8, 2])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = p.parse_args(argv)

    from medjax.finetune.loop import finetune

    data = os.path.join(args.workdir, "data")
    if not os.path.exists(os.path.join(data, "labels")):
        write_blob_volumes(data, args.volumes, args.size)
    rows = []
    for stride in args.strides:
        for seed in args.seeds:
            cfg = config(data, args, stride, seed)
            s = finetune(cfg, os.path.join(args.workdir, f"stride{stride}_seed{seed}"), restart=True, progress=False)
            ev = s["eval"]
            if ev is None:
                raise SystemExit(f"{s['workdir']}: stopped before the held-out evaluation (signal {s['signal']})")
            row = {"stride": stride, "seed": seed, "ap_iou0.1": ev["ap_iou0.1"], "froc": ev["froc"]["score"],
                   "refs": ev["froc"]["num_refs"], "first_loss": s["first_loss"], "final_loss": s["final_loss"],
                   "seconds": round(s["seconds"], 1)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    print("\n| det_stride | seed | AP@0.1 | FROC | held-out balls | loss first → final | s |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['stride']} | {r['seed']} | {r['ap_iou0.1']:.3f} | {r['froc']:.3f} | {r['refs']} | "
              f"{r['first_loss']:.3f} → {r['final_loss']:.3f} | {r['seconds']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
