"""The ``medjax`` command. Each subcommand lives in its own module and is a thin call into the packages.

A top-level subcommand ``X`` is the module ``medjax.cli.cmd_X`` exposing ``register(subparsers)``; a grouped
command ``medjax GROUP Y`` (groups: ``bench``, ``data``, ``checkpoint``) is the module ``medjax.cli.GROUP_Y``
exposing the same. ``register`` adds a parser whose default
``func(args) -> int`` runs the command. Heavy imports (jax, grain) stay inside ``func`` so ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from medjax import __version__


def _modules(prefix: str) -> list[str]:
    import medjax.cli as pkg

    return sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if m.name.startswith(prefix))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medjax",
        description="medjax: MAE pretraining and fine-tuning of 2D/3D Vision Transformers on CT and MRI, in JAX.",
    )
    parser.add_argument("--version", action="version", version=f"medjax {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _modules("cmd_"):
        importlib.import_module(f"medjax.cli.{name}").register(sub)
    for group, help_ in GROUPS.items():
        gp = sub.add_parser(group, help=help_, description=help_)
        gsub = gp.add_subparsers(dest=f"{group}_command", metavar="SUBCOMMAND")
        for name in _modules(f"{group}_"):
            importlib.import_module(f"medjax.cli.{name}").register(gsub)
        gp.set_defaults(func=_print_help(gp))
    return parser


GROUPS = {
    "data": "build, check and prepare datasets (NIfTI, DICOM, MSD folders, manifests)",
    "checkpoint": "inspect training checkpoints",
    "bench": "benchmarks that print one JSON line (and a ratio against a peer when installed)",
}


def _print_help(parser):
    def run(args):
        parser.print_help()
        return 2

    return run


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    from medjax.data.allocator import tune_allocator
    from medjax.errors import MedjaxError

    tune_allocator()  # the command owns its process (MEDJAX_MALLOC_TUNING=0 keeps glibc's defaults)
    try:
        return int(args.func(args) or 0)
    except MedjaxError as e:
        print(f"medjax: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
