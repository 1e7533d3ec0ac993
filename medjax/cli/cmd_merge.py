"""``medjax merge WORKDIR OUT``: fold a LoRA run's updates into its base weights as a plain checkpoint."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "merge",
        help="fold a LoRA fine-tuning run into its base weights (a plain checkpoint for deployment)",
        description="Read WORKDIR's fine-tuned model (a PEFT checkpoint over its base, or a plain one), add each "
                    "LoRA update (alpha/r * A @ B) into the kernel it adapts, and write OUT/checkpoints/<step> with "
                    "finetune.method=full: `medjax predict --checkpoint OUT` then needs neither the adapters nor "
                    "the base. linear/bitfit runs are written whole; adapter/prompt runs cannot be merged.",
    )
    p.add_argument("workdir", help="`medjax finetune` workdir (or WORKDIR/checkpoints/<step>)")
    p.add_argument("out", help="output run directory (OUT/checkpoints/<step> is written)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step of WORKDIR (default: the latest)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.set_defaults(func=run)


def run(args) -> int:
    import json
    import os

    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from medjax.peft.merge import merge_checkpoint

    summary = merge_checkpoint(args.workdir, args.out, step=args.step)
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        print(f"merged {summary['method']} step {summary['step']} ({summary['num_params']:,} parameters) -> "
              f"{summary['checkpoint']}")
    return 0
