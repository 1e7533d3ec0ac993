"""``medjax probe``: linear / k-NN probes on frozen encoder features, against the same encoder at random init."""

from __future__ import annotations

import json


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "probe",
        help="fit a linear or k-NN probe on frozen encoder features; compare with random initialisation",
        description="Embed every window (data.crop_size, finetune.eval_overlap) of the config's training and "
                    "held-out volumes with the frozen encoder of --checkpoint, fit a probe on the training "
                    "windows/volumes and report held-out accuracy and AUROC per window and per volume; the same "
                    "architecture at random initialisation (--seeds) is probed alongside as the baseline, and the "
                    "output says whether the pretrained encoder beats it (> 3 std, pooled over both arms when "
                    "several checkpoints are given, else of the random-init seeds).",
    )
    p.add_argument("--checkpoint", nargs="+", default=[], metavar="WORKDIR_OR_CKPT",
                   help="pretraining (or fine-tuning) run(s) whose encoder is probed; several give a mean ± std")
    p.add_argument("--config", required=True, metavar="NAME_OR_FILE",
                   help="classification config giving records, split, windows and targets (e.g. demo_cls)")
    p.add_argument("--kind", choices=("linear", "knn"), nargs="+", default=["linear"],
                   help="probe(s) (default linear); several (--kind linear knn) share one embedding pass")
    p.add_argument("--random-init", action="store_true", help="probe only the randomly initialised encoder")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], metavar="SEED",
                   help="random-init seeds (default 0 1 2)")
    p.add_argument("--no-baseline", action="store_true", help="with --checkpoint, skip the random-init probes")
    p.add_argument("--pool", choices=("mean", "max", "cls"), nargs="+", default=["mean"],
                   help="window feature(s): mean or max over the patch tokens, or the CLS token (default mean); "
                        "several (--pool mean max) share one embedding pass")
    p.add_argument("--layer", type=int, nargs="+", default=[None], metavar="BLOCK",
                   help="pool the tokens of these encoder blocks (1-based; each through the final LayerNorm) "
                        "instead of the encoder output, which is the last block (the default); several "
                        "(--layer 4 8 12) share one embedding pass")
    p.add_argument("--k", type=int, default=20, help="neighbours for --kind knn (default 20)")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="config overrides, e.g. data.dir=... finetune.val_records=16")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object instead of the table; with several --pool/--layer/--kind, one "
                        "object {\"results\": [...]} holding one such object per (pool, layer, kind)")
    p.set_defaults(func=run)


def run(args) -> int:
    from medjax.config import load_config
    from medjax.finetune.probe import format_probe, probe_grid

    cfg = load_config(args.config, args.overrides)
    results = probe_grid(cfg, args.checkpoint, kinds=tuple(args.kind), pools=tuple(args.pool),
                         random_init=args.random_init, seeds=tuple(args.seeds), knn_k=args.k,
                         baseline=not args.no_baseline, layers=tuple(args.layer))
    if args.json:
        print(json.dumps(results[0] if len(results) == 1 else {"results": results}), flush=True)
    else:
        print("\n\n".join(format_probe(r) for r in results), flush=True)
    return 0
