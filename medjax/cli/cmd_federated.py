"""``medjax federated simulate``: a real Flower deployment (SuperLink + one SuperNode per site) on 127.0.0.1."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "federated",
        help="federated training on Flower across sites that keep their data",
        description="Federated MAE pretraining and fine-tuning on Flower (federated.task=pretrain|finetune). "
                    "`simulate` rehearses a consortium on one machine.",
    )
    sub = p.add_subparsers(dest="federated_command", metavar="SUBCOMMAND")
    s = sub.add_parser(
        "simulate",
        help="run a real SuperLink and N SuperNodes on 127.0.0.1, each reading only its own site folder",
        description="Split the data into N site folders (or take --site-dirs), start flower-superlink and one "
                    "flower-supernode per site as separate processes, run the medjax Flower app with `flwr run` "
                    "for the configured rounds, and stop every process started. WORKDIR gets the global "
                    "checkpoints (one per round), metrics.jsonl, tb/, privacy.json (with DP), eval.json (fine-tuning: "
                    "each site's score of the final global model on its own held-out records) and flower/ (logs, "
                    "site state). Fine-tune with a task preset and --set federated.task=finetune finetune.method=lora "
                    "finetune.init_from=MAE_WORKDIR (PEFT methods exchange only their trainable parameters). Resumes at the round after WORKDIR's latest checkpoint unless --restart.",
    )
    s.add_argument("--config", required=True, metavar="NAME_OR_FILE", help="preset name or .py/.json config file")
    s.add_argument("--sites", type=int, default=None, help="number of sites (default 3, or one per --site-dirs)")
    s.add_argument("--rounds", type=int, default=None, help="federated rounds (sets federated.rounds)")
    s.add_argument("--partition", choices=("by-site", "iid"), default="by-site",
                   help="how data.dir (a demo set) is split: sites that differ like hospitals, or iid")
    s.add_argument("--site-dirs", nargs="+", default=None, metavar="DIR",
                   help="use these site data folders instead of splitting data.dir (one per site)")
    s.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="override config values, e.g. --set federated.strategy=fedprox federated.local_steps=10")
    s.add_argument("--workdir", default=None, help="coordinator's run directory (default: runs/<config>-federated)")
    s.add_argument("--restart", action="store_true", help="delete WORKDIR's rounds and site state and start afresh")
    s.set_defaults(func=run_simulate)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_simulate(args) -> int:
    from pathlib import Path

    from medjax.config import load_config
    from medjax.errors import ConfigError

    overrides = list(args.overrides)
    if args.rounds is not None:
        overrides.append(f"federated.rounds={args.rounds}")
    cfg = load_config(args.config, overrides)
    workdir = Path(args.workdir or f"runs/{cfg.name}-federated")
    if args.site_dirs:
        site_dirs = [str(d) for d in args.site_dirs]
        if args.sites is not None and args.sites != len(site_dirs):
            raise ConfigError(f"--sites {args.sites} but {len(site_dirs)} --site-dirs; give one folder per site")
    else:
        from medjax.data.demo_sites import split_demo_sites

        sites = 3 if args.sites is None else args.sites
        if sites < 1:
            raise ConfigError(f"--sites {sites}: must be at least 1")
        site_dirs = [str(p) for p in split_demo_sites(cfg.data.dir, workdir / "sites", sites, args.partition,
                                                      cfg.train.seed)]
        print(f"split {cfg.data.dir} into {len(site_dirs)} sites ({args.partition}) under {workdir / 'sites'}",
              flush=True)

    from medjax.federated.simulate import simulate

    def show(line: str) -> None:
        if "[medjax]" in line or "ERROR" in line or "Traceback" in line or "Error" in line:
            print(line, flush=True)

    summary = simulate(cfg, workdir, site_dirs, restart=args.restart, on_line=show)
    lines = [f"rounds: {summary['rounds']} ({summary['strategy']}, {len(site_dirs)} sites) in {summary['seconds']:.0f} s",
             f"checkpoint: {summary['checkpoint']}", f"metrics: {summary['metrics']}",
             f"processes started and stopped: {len(summary['pids'])}"]
    if summary.get("eval"):
        ev = summary["eval"]
        shown = ", ".join(f"{k} {v:.4f}" for k, v in ev["mean"].items()) or "no held-out records"
        lines.append(f"global model on {ev['num_val']} held-out record(s) across sites: {shown} (eval.json)")
    if summary.get("epsilon") is not None:
        lines.append(f"privacy: epsilon {summary['epsilon']:.3g} at delta {summary['delta']:g} (site-level)")
    print("\n".join(lines), flush=True)
    return 0
