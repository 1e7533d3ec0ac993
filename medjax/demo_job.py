"""``make demo``: build the demo dataset if missing, prepare it once, pretrain the demo MAE, say where the results are.

Usage: ``python -m medjax.demo_job --data data/demo --workdir runs/demo [--restart] [--set key=value ...]``

The volumes are preprocessed once into a memory-mapped cache (``DATA_prepared``, rebuilt when the data or the
preprocessing settings change), so pretraining spends its time on the model rather than on decompressing and
resampling NIfTI files; the batches are the same as reading the volumes directly.
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
    parser.add_argument("--cache", default=None,
                        help="prepared cache folder (default: DATA_prepared); built when missing or stale")
    parser.add_argument("--restart", action="store_true", help="start from step 0 even if a checkpoint exists")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="extra config overrides, e.g. --set train.steps=50")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    from medjax.data.allocator import tune_allocator
    from medjax.errors import MedjaxError

    tune_allocator()  # this job owns its process, like the medjax command

    try:
        return _run(args)
    except MedjaxError as e:
        print(f"medjax demo: error: {e}", file=sys.stderr)
        return 2


def _prepared(cfg, data: Path, cache: Path) -> Path:
    """``cache`` holding ``data`` preprocessed with ``cfg.data``'s settings: reused when fresh, else (re)built."""
    from medjax.data.cache import ensure_prepared

    t = time.time()
    records, rebuilt = ensure_prepared(str(data), str(cache), cfg.data, workers=2)
    if rebuilt:
        print(f"prepared {len(records)} volumes in {cache} ({time.time() - t:.0f} s)", file=sys.stderr, flush=True)
    return cache


def _run(args) -> int:
    from medjax.cli.cmd_pretrain import print_summary
    from medjax.config import load_config
    from medjax.training.pretraining import pretrain

    data = Path(args.data)
    if not _have_data(data):
        from medjax.data.demo import build_demo

        print(f"building the demo dataset in {data} ...", file=sys.stderr, flush=True)
        t = time.time()
        build_demo(str(data), subjects=8, seed=0)
        print(f"demo dataset ready ({time.time() - t:.0f} s)", file=sys.stderr, flush=True)
    cfg = load_config("demo", [f"data.dir={data}", *args.overrides])
    cache = _prepared(cfg, data, Path(args.cache) if args.cache else data.with_name(data.name + "_prepared"))
    cfg = load_config("demo", [f"data.dir={data}", f"data.cache_dir={cache}", "data.workers=1", *args.overrides])
    summary = pretrain(cfg, args.workdir, restart=args.restart, progress=not args.no_progress)
    print_summary(summary)
    print(f"finished in {summary['seconds']:.0f} s (first step incl. compilation {summary['compile_s'] or 0:.0f} s)")
    return int(summary["exit_code"])


if __name__ == "__main__":
    sys.exit(main())
