"""``medjax experiment label-efficiency``: pretrained vs from scratch over labeled-volume counts and seeds."""

from __future__ import annotations

import json


def register(subparsers) -> None:
    p = subparsers.add_parser("experiment", help="multi-run experiments (label efficiency)",
                              description="Experiments made of many fine-tuning runs, with a table and a plot.")
    sub = p.add_subparsers(dest="experiment_command", metavar="SUBCOMMAND")
    le = sub.add_parser(
        "label-efficiency",
        help="fine-tune from an MAE encoder and from scratch for each labeled-volume count and seed",
        description="For each N in --labels and each of --seeds seeds, fine-tune the config with "
                    "finetune.num_labeled=N from --checkpoint's encoder and from scratch (same records, steps and "
                    "seed). Writes WORKDIR/label_efficiency.{json,md,png} after every run (mean ± std over seeds per "
                    "arm; delta and delta / pooled std); finished runs are reused, so the same command resumes.",
    )
    le.add_argument("--config", required=True, metavar="NAME_OR_FILE", help="fine-tuning config (demo_cls, demo_seg)")
    le.add_argument("--checkpoint", required=True, metavar="WORKDIR_OR_CKPT", help="pretraining run (MAE)")
    le.add_argument("--labels", default="1,2,4,8,16", help="labeled-volume counts, comma-separated (default 1,2,4,8,16)")
    le.add_argument("--seeds", type=int, default=3, metavar="N",
                    help="number of seeds: train.seed, train.seed + 1, ... (default 3)")
    le.add_argument("--workdir", default=None, help="output directory (default runs/<config>_label_efficiency)")
    le.add_argument("--metric", default=None, help="held-out metric (a key of eval.json, e.g. window_auroc)")
    le.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                    help="config overrides, e.g. train.steps=100 finetune.val_records=8")
    le.add_argument("--no-progress", action="store_true", help="no progress bars")
    le.set_defaults(func=run_label_efficiency)

    def _help(args, parser=p):
        parser.print_help()
        return 2

    p.set_defaults(func=_help)


def run_label_efficiency(args) -> int:
    from medjax.config import load_config
    from medjax.errors import ConfigError
    from medjax.finetune.label_efficiency import format_table, label_efficiency

    cfg = load_config(args.config, args.overrides)
    try:
        labels = [int(v) for v in args.labels.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--labels {args.labels!r}: give integers separated by commas, e.g. 1,2,4,8") from None
    if args.seeds < 1:
        raise ConfigError(f"--seeds {args.seeds}: give the number of seeds (>= 1)")
    seeds = [cfg.train.seed + i for i in range(args.seeds)]
    workdir = args.workdir or f"runs/{cfg.name}_label_efficiency"
    result = label_efficiency(cfg, workdir, init_from=args.checkpoint, labels=labels, seeds=seeds,
                              metric=args.metric, progress=not args.no_progress)
    print(format_table(result))
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}), flush=True)
    return int(result["stopped"]["exit_code"]) or 1 if result.get("stopped") else 0
