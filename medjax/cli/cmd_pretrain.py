"""``medjax pretrain``: MAE pretraining from a preset or config file, resumable, with checkpoints and logs."""

from __future__ import annotations

import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "pretrain",
        help="MAE pretraining of a 2D/3D ViT (resumes from WORKDIR's latest checkpoint)",
        description="MAE pretraining. Resumes from the latest checkpoint in WORKDIR unless --restart. "
                    "SIGTERM/SIGINT save a checkpoint at the next step and exit (0 / 130).",
    )
    p.add_argument("--config", required=True, metavar="NAME_OR_FILE",
                   help="preset name (e.g. demo, mae3d_vitb16_96) or a .py/.json config file")
    p.add_argument("--workdir", default=None, help="run directory (default: runs/<config name>)")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="override config values, e.g. --set train.steps=100 model.variant=S/16")
    p.add_argument("--restart", action="store_true",
                   help="delete WORKDIR's checkpoints, metrics and logs and start from step 0")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs still go to WORKDIR)")
    p.add_argument("--profile", type=int, default=0, metavar="STEPS",
                   help="record a JAX profiler trace of STEPS steps after the first (compiling) one into "
                        "WORKDIR/tb (TensorBoard's profile tab; needs the tensorboard-plugin-profile package)")
    g = p.add_argument_group(
        "multi-process", "Run the same command in every process. Without these flags (or MEDJAX_* variables) JAX "
        "detects TPU pods, SLURM and Open MPI jobs itself; otherwise the run is a single process.")
    g.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                   help="process 0's address for jax.distributed (env MEDJAX_COORDINATOR)")
    g.add_argument("--num-processes", type=int, default=None, metavar="N",
                   help="number of processes (env MEDJAX_NUM_PROCESSES)")
    g.add_argument("--process-id", type=int, default=None, metavar="I",
                   help="this process's index in [0, N) (env MEDJAX_PROCESS_ID)")
    g.add_argument("--data-shards", type=int, default=None, metavar="S",
                   help="split the data into S shards (a multiple of the process count; default: the resumed "
                        "checkpoint's S, else one per process); runs with the same S see the same global batches "
                        "whatever the process count")
    p.set_defaults(func=run)


def run(args) -> int:
    from medjax.parallel.distributed import setup

    setup(args.coordinator, args.num_processes, args.process_id)  # before any JAX computation

    from medjax.config import load_config
    from medjax.training.pretraining import pretrain

    cfg = load_config(args.config, args.overrides)
    workdir = args.workdir or f"runs/{cfg.name}"
    probe = None
    if cfg.train.probe_every:  # the linear-probe callback (finetune's probe; training does not import finetune)
        from medjax.finetune.probe_callback import ProbeCallback

        probe = ProbeCallback(cfg)
    summary = pretrain(cfg, workdir, restart=args.restart, progress=not args.no_progress,
                       data_shards=args.data_shards, profile_steps=args.profile, probe=probe)
    import jax

    if jax.process_index() == 0:
        print_summary(summary)
    return int(summary["exit_code"])


def summary_lines(summary: dict, *, loss_label: str = "loss", checkpoint_note: str = "") -> list[str]:
    """The lines every run summary starts with (step, first -> final loss, checkpoint, parameters, metrics);
    :mod:`medjax.cli.cmd_distill` adds its own after them."""
    loss = summary.get("final_loss")
    first = summary.get("first_loss")
    return [
        f"step {summary['step']}" + (f" (stopped by {summary['signal']})" if summary.get("signal") else ""),
        f"{loss_label}: {first:.4f} (first logged) -> {loss:.4f} (final)" if loss is not None and first is not None
        else f"{loss_label}: no steps run",
        f"checkpoint: {summary['checkpoint']}{checkpoint_note}",
        f"parameters: {summary['num_params']:,} (digest {summary['params_digest'][:16]})",
        f"metrics: {summary['metrics']}",
    ]


def print_summary(summary: dict, out=None) -> None:
    """Where the run's results are, for humans (stdout)."""
    out = out or sys.stdout
    lines = summary_lines(summary) + [f"TensorBoard: {summary['tensorboard']}"]
    if summary.get("reconstruction_png"):
        lines.append(f"reconstructions: {summary['reconstruction_png']}")
    if summary.get("loss_png"):
        lines.append(f"loss curve: {summary['loss_png']}")
    print("\n".join(lines), file=out, flush=True)
