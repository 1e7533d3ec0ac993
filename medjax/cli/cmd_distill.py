"""``medjax distill``: representation distillation of a teacher run's encoder into a smaller student encoder."""

from __future__ import annotations

import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "distill",
        help="distil a teacher run's encoder into a student encoder on unlabeled volumes (resumable)",
        description="Representation distillation: the student encoder (the config's model) learns the frozen "
                    "teacher encoder's tokens on the config's unlabeled volumes, with the pretraining data pipeline "
                    "and step loop. WORKDIR becomes an ordinary run whose encoder `medjax finetune --init-from` reads. "
                    "Resumes from WORKDIR's latest checkpoint unless --restart.",
    )
    p.add_argument("--teacher", required=True, metavar="WORKDIR",
                   help="teacher run directory or checkpoint folder WORKDIR/checkpoints/<step> (sets distill.teacher)")
    p.add_argument("--config", required=True, metavar="NAME_OR_FILE",
                   help="preset name or config file: data and the student model (e.g. --set model.variant=S/16)")
    p.add_argument("--workdir", default=None, help="run directory (default: runs/<config name>-distill)")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="override config values, e.g. --set model.variant=S/16 distill.loss=cosine "
                        "distill.mask_ratio=0.75")
    p.add_argument("--restart", action="store_true",
                   help="delete WORKDIR's checkpoints, metrics and logs and start from step 0")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs still go to WORKDIR)")
    p.set_defaults(func=run)


def run(args) -> int:
    from medjax.config import load_config
    from medjax.distill.run import distill

    cfg = load_config(args.config, list(args.overrides) + [f"distill.teacher={args.teacher}"])
    workdir = args.workdir or f"runs/{cfg.name}-distill"
    summary = distill(cfg, workdir, restart=args.restart, progress=not args.no_progress)
    print_summary(summary)
    return int(summary["exit_code"])


def print_summary(summary: dict, out=None) -> None:
    """Where the run's results are, for humans (stdout)."""
    from medjax.cli.cmd_pretrain import summary_lines

    out = out or sys.stdout
    lines = summary_lines(summary, loss_label="distillation loss",
                          checkpoint_note=f" (fine-tune with --init-from {summary['workdir']})")
    lines.append(f"teacher: {summary['teacher']} (width {summary['teacher_width']}, student {summary['student_width']})")
    print("\n".join(lines), file=out, flush=True)
