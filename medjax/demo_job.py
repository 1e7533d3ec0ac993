"""``make demo``: build the demo dataset if missing, pretrain the demo MAE on it, say where the results are.

Usage: ``python -m medjax.demo_job --data data/demo --workdir runs/demo [--restart] [--set key=value ...]``
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def _have_data(folder: Path) -> bool:
    return (folder / "dataset.json").is_file()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medjax.demo_job", description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/demo", help="demo dataset folder (built here if missing)")
    parser.add_argument("--workdir", default="runs/demo", help="run directory")
    parser.add_argument("--restart", action="store_true", help="start from step 0 even if a checkpoint exists")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="extra config overrides, e.g. --set train.steps=50")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    from medjax.errors import MedjaxError

    try:
        return _run(args)
    except MedjaxError as e:
        print(f"medjax demo: error: {e}", file=sys.stderr)
        return 2


def _run(args) -> int:
    from medjax.cli.cmd_pretrain import print_summary
    from medjax.config import load_config
    from medjax.training.loop import pretrain

    data = Path(args.data)
    if not _have_data(data):
        from medjax.data.demo import build_demo

        print(f"building the demo dataset in {data} ...", file=sys.stderr, flush=True)
        t = time.time()
        build_demo(str(data), subjects=8, seed=0)
        print(f"demo dataset ready ({time.time() - t:.0f} s)", file=sys.stderr, flush=True)
    cfg = load_config("demo", [f"data.dir={data}", *args.overrides])
    summary = pretrain(cfg, args.workdir, restart=args.restart, progress=not args.no_progress)
    print_summary(summary)
    print(f"finished in {summary['seconds']:.0f} s (first step incl. compilation {summary['compile_s'] or 0:.0f} s)")
    return int(summary["exit_code"])


if __name__ == "__main__":
    sys.exit(main())
