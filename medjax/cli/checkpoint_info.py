"""``medjax checkpoint info WORKDIR [--json]``: what a run's checkpoints hold, without the model code."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "info",
        help="latest step, kept steps, config, parameter count and digest of a run's checkpoints",
        description="Summarise WORKDIR/checkpoints: steps kept, the saved config, the number of parameters and "
        "their SHA-256 digest (from the latest checkpoint, restored on the CPU), the data iterator position and "
        "sizes on disk.",
    )
    p.add_argument("workdir", help="run directory holding checkpoints/")
    p.add_argument("--step", type=int, default=None, help="step to inspect (default: the latest)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(func=run)


def info(workdir, step: int | None = None) -> dict:
    """Summary dict of ``WORKDIR/checkpoints`` (see module docstring); raises CheckpointError when empty."""
    from medjax.training.checkpoint import Checkpointer
    from medjax.training.digest import count_params, params_digest
    from medjax.training.restore import open_checkpoint, read_arrays

    ck = Checkpointer(workdir, read_only=True)
    steps = ck.all_steps()
    saved = open_checkpoint(workdir, step)  # only the parameters are read (not the optimizer state)
    step = saved.step
    if saved.keys("params"):
        params = read_arrays(saved, ("params",))[0]["params"]
    else:  # a state that is not a medjax train state: count and digest all of it
        params = read_arrays(saved, tuple({k.split("/", 1)[0] for k in saved.arrays}))[0]
    data_state = ck.read_item("data", step)
    meta = saved.meta
    return {
        "workdir": str(workdir),
        "directory": str(ck.directory),
        "latest_step": steps[-1],
        "step": step,
        "steps": steps,
        "num_params": count_params(params),
        "params_digest": params_digest(params),
        "num_state_arrays": len(ck.saved_shapes(step)),
        # PEFT runs (medjax.peft.checkpoint) store only their trainable parameters over a referenced base
        "trainable_params": (meta.get("peft") or {}).get("trainable_params", count_params(params)),
        "base_digest": (meta.get("peft") or {}).get("base_digest"),
        "config": meta.get("config"),
        "meta": {k: v for k, v in meta.items() if k != "config"},
        "data_state": data_state,
        "bytes": {str(s): ck.step_bytes(s) for s in steps},
    }


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def run(args) -> int:
    import json
    import os

    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)
    summary = info(args.workdir, args.step)
    if args.json:
        print(json.dumps(summary, sort_keys=True))
        return 0
    cfg = summary["config"] or {}
    rows = [
        ("directory", summary["directory"]),
        ("latest step", summary["latest_step"]),
        ("steps kept", ", ".join(map(str, summary["steps"]))),
        ("inspected step", summary["step"]),
        ("parameters", f"{summary['num_params']:,}"),
        ("params digest", summary["params_digest"]),
        ("state arrays", summary["num_state_arrays"]),
        ("config", f"{cfg.get('name', '?')} (task {cfg.get('task', '?')})" if cfg else "not saved"),
        ("data position", json.dumps(summary["data_state"]) if summary["data_state"] is not None else "not saved"),
        ("size", ", ".join(f"{s}: {_human(b)}" for s, b in summary["bytes"].items())),
    ]
    for k, v in summary["meta"].items():
        rows.append((k, json.dumps(v) if not isinstance(v, str) else v))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0
