"""``medjax finetune`` (classification, segmentation, detection from an MAE encoder or from scratch) and
``medjax finetune-compare`` (pretrained-then-fine-tuned vs from scratch, same data and steps)."""

from __future__ import annotations

import json
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "finetune",
        help="fine-tune a classification/segmentation/detection model (from an MAE encoder or from scratch)",
        description="Fine-tune the task of the config (task=classification|segmentation|detection). Resumes from "
                    "WORKDIR's latest checkpoint unless --restart; the last finetune.val_records records are held "
                    "out and scored at the end (WORKDIR/eval.json). The training volumes are preprocessed once "
                    "into WORKDIR/cache and read memory-mapped from there (--set finetune.cache=false reads and "
                    "resamples them at every visit; the batches are the same).",
    )
    _common(p)
    p.add_argument("--init-from", default=None, metavar="WORKDIR_OR_CKPT",
                   help="MAE pretraining workdir or checkpoint folder whose encoder initialises the model "
                        "(default: finetune.init_from; '' = from scratch)")
    p.add_argument("--restart", action="store_true", help="delete WORKDIR's checkpoints and logs first")
    p.set_defaults(func=run)

    c = subparsers.add_parser(
        "finetune-compare",
        help="fine-tune from an MAE encoder and from scratch on the same few labels; report both",
        description="Runs the config per seed in WORKDIR/pretrained/seed<S> and WORKDIR/scratch/seed<S> (same "
                    "data, seed and steps), prints a table of both arms' held-out metric (mean ± std over seeds) "
                    "and then one JSON line with all numbers (also WORKDIR/compare.json).",
    )
    _common(c)
    c.add_argument("--init-from", required=True, metavar="WORKDIR_OR_CKPT", help="MAE pretraining workdir")
    c.add_argument("--seeds", type=int, nargs="+", default=None, metavar="SEED",
                   help="train.seed values; each seed runs both arms (default: the config's train.seed)")
    c.add_argument("--metric", default=None,
                   help="held-out metric to compare (a key of eval.json, e.g. window_auroc; default: mean_dice, "
                        "auroc or ap_iou0.1 by task)")
    c.add_argument("--methods", default=None, metavar="M1,M2,...",
                   help="compare fine-tuning methods instead (full,linear,lora,adapter,bitfit,prompt; all from "
                        "--init-from): held-out metric, trainable parameters, checkpoint and optimizer bytes, "
                        "the compiled step's memory, seconds per step (WORKDIR/<method>/seed<S>; "
                        "WORKDIR/compare_methods.json, .md and .png rewritten after every run)")
    c.set_defaults(func=run_compare)


def _common(p) -> None:
    p.add_argument("--config", required=True, metavar="NAME_OR_FILE",
                   help="preset (demo_seg, demo_cls, demo_det) or a .py/.json config file")
    p.add_argument("--workdir", default=None, help="run directory (default: runs/<config name>)")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="override config values, e.g. --set train.steps=50 finetune.num_labeled=4")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    from medjax.config import load_config
    from medjax.finetune.loop import finetune

    cfg = load_config(args.config, args.overrides)
    workdir = args.workdir or f"runs/{cfg.name}"
    summary = finetune(cfg, workdir, init_from=args.init_from, restart=args.restart, progress=not args.no_progress)
    loss = summary.get("final_loss")
    print(f"step {summary['step']}; loss {summary.get('first_loss')} -> {loss}", file=sys.stdout)
    print(f"checkpoint: {summary['checkpoint']}")
    if summary.get("init"):
        print(f"encoder from: {summary['init']['source']} (step {summary['init']['step']})")
    if summary.get("eval"):
        ev = {k: v for k, v in summary["eval"].items() if k != "cases"}
        print("held-out: " + json.dumps(ev))
    return int(summary["exit_code"])


def run_compare(args) -> int:
    from medjax.config import load_config
    from medjax.finetune.compare import compare, format_compare

    cfg = load_config(args.config, args.overrides)
    workdir = args.workdir or f"runs/{cfg.name}_compare"
    if args.methods:
        from medjax.peft.compare import compare_methods, format_methods

        result = compare_methods(cfg, workdir, init_from=args.init_from, methods=args.methods.split(","),
                                 seeds=args.seeds, metric=args.metric, progress=not args.no_progress)
        if not result.get("stopped"):
            print(format_methods(result))
        print(json.dumps(result), flush=True)
        return 1 if result.get("stopped") else 0
    result = compare(cfg, workdir, init_from=args.init_from, seeds=args.seeds, progress=not args.no_progress,
                     metric=args.metric)
    if result.get("stopped"):
        print(json.dumps(result), flush=True)
        return int(result["stopped"]["exit_code"]) or 1
    print(format_compare(result))
    print(json.dumps(result), flush=True)
    return 0
