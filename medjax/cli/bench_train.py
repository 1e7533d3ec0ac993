"""``medjax bench train``: train-step throughput on synthetic input; prints one JSON line."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train-step throughput (samples/s, compile time, TFLOP/s, MFU) on synthetic input",
        description="Times the MAE train step of a preset on random input of its crop size (no data loading) "
                    "and prints one JSON line.",
    )
    p.add_argument("--config", required=True, metavar="NAME_OR_FILE", help="preset name or config file")
    p.add_argument("--steps", type=int, default=10, help="timed steps after the first (default 10)")
    p.add_argument("--batch", type=int, default=None, help="global batch (default: the config's train.batch_size)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="peak TFLOP/s per device for MFU (default: looked up by device kind; none on CPU)")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="config overrides, e.g. --set model.variant=S/16 model.dtype=bfloat16")
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from medjax.config import load_config
    from medjax.training.bench import bench_train

    cfg = load_config(args.config, args.overrides)
    result = bench_train(cfg, steps=args.steps, batch=args.batch, peak=args.peak_tflops)
    print(json.dumps(result), flush=True)
    return 0
