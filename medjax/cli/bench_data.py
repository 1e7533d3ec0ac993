"""``medjax bench data DIR``: input-pipeline throughput (samples/s), optionally against MONAI; one JSON line."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser(
        "data",
        help="input-pipeline throughput in samples/s (one JSON line; --peer monai adds a ratio)",
        description="Time the grain pipeline (read, reorient, resample, z-score, foreground crop, pad, random "
        "crops, flips, batching) over DIR and print one JSON line. With --cache the prepared cache is used "
        "(built first if missing). With --peer monai the same recipe runs in MONAI when it is installed.",
    )
    p.add_argument("dir", help="dataset: a folder of volumes, an MSD folder or a manifest")
    p.add_argument("--crop", type=int, default=96, help="crop edge in voxels (default 96)")
    p.add_argument("--spacing", type=float, default=1.5, help="target spacing in mm (default 1.5)")
    p.add_argument("--samples-per-volume", type=int, default=2, help="random crops per volume (default 2)")
    p.add_argument("--batch", type=int, default=2, help="batch size (default 2)")
    p.add_argument("--workers", type=int, default=2, help="parallel read workers (default 2)")
    p.add_argument("--worker-mode", choices=("threads", "processes"), default="threads",
                   help="workers as threads of this process (default) or grain worker processes")
    p.add_argument("--epochs", type=int, default=2, help="passes over the data (default 2)")
    p.add_argument("--cache", default=None, metavar="DIR", help="prepared cache to read (built if missing)")
    p.add_argument("--peer", choices=("monai",), default=None, help="also time the same recipe in MONAI")
    p.add_argument("--seed", type=int, default=0, help="shuffle/augmentation seed (default 0)")
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from medjax.data.bench import run_bench

    result = run_bench(args.dir, crop=args.crop, spacing=args.spacing, samples_per_volume=args.samples_per_volume,
                       batch=args.batch, workers=args.workers, epochs=args.epochs, cache=args.cache,
                       peer=args.peer, seed=args.seed, worker_mode=args.worker_mode)
    print(json.dumps(result, sort_keys=True))
    return 0
