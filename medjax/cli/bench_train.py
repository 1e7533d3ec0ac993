"""``medjax bench train``: train-step throughput on synthetic input, optionally beside a PyTorch peer; prints one
JSON line (and a one-line summary on stderr)."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train-step throughput (samples/s, compile time, TFLOP/s, MFU) on synthetic input",
        description="Times the MAE train step of a preset on random input of its crop size (no data loading) "
                    "and prints one JSON line.",
    )
    p.add_argument("--config", required=True, metavar="NAME_OR_FILE", help="preset name or config file")
    p.add_argument("--steps", type=int, default=10, help="timed steps after the first (default 10)")
    p.add_argument("--batch", type=int, default=None, help="global batch (default: the config's train.batch_size)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="peak TFLOP/s per device for MFU (default: looked up by device kind; none on CPU)")
    p.add_argument("--compile-only", action="store_true",
                   help="no steps: compile the step on abstract inputs and print the per-device memory of the "
                        "train state (from its shardings) and of the compiled program (XLA memory analysis)")
    p.add_argument("--peer", choices=("hf", "monai"), default=None,
                   help="also time the same MAE step in PyTorch in this process: hf = Hugging Face "
                        "ViTMAEForPreTraining (2D), monai = MONAI MaskedAutoEncoderViT (2D/3D); adds peer_* keys "
                        "and ratio (needs the interop extra: torch, transformers, MONAI)")
    p.add_argument("--peer-compile", action="store_true", help="run the peer's step through torch.compile")
    p.add_argument("--peer-dtype", choices=("float32", "bfloat16"), default=None,
                   help="the peer's compute dtype (default: model.dtype; MONAI's MAE crashes under bf16 autocast)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU only: pin the process to N cores (medjax's XLA thread pools and the peer's torch threads "
                        "alike); 1 gives a per-core comparison that a busy machine disturbs least")
    p.add_argument("--repeat", type=int, default=1,
                   help="timed rounds, alternating medjax and the peer (default 1); the best round is reported")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="config overrides, e.g. --set model.variant=S/16 model.dtype=bfloat16")
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit(f"--threads {args.threads}: must be >= 1")
        set_cpu_threads(args.threads)

    from medjax.config import load_config
    import sys

    from medjax.training.bench import bench_train, format_summary

    cfg = load_config(args.config, args.overrides)
    if args.compile_only:
        result = memory_report(cfg, batch=args.batch)
    else:
        result = bench_train(cfg, steps=args.steps, batch=args.batch, peak=args.peak_tflops, peer=args.peer,
                             repeat=args.repeat, peer_compile=args.peer_compile, threads=args.threads,
                             peer_dtype=args.peer_dtype)
        print(format_summary(result), file=sys.stderr, flush=True)
    print(json.dumps(result), flush=True)
    return 0


def set_cpu_threads(n: int) -> None:
    """Limit medjax and the peer to ``n`` CPU cores (before JAX starts its backend); recorded as ``cpu_threads``.

    The process is pinned to the first ``n`` cores it may run on (``os.sched_setaffinity``), which every thread
    started afterwards inherits: XLA's thread pools and torch's OpenMP workers alike. XLA's own flags do not
    do this: with ``--xla_cpu_multi_thread_eigen=false`` its CPU runtime still runs a step on every core
    (measured on 2 cores: 13.6 samples/s with that flag, 8.6 pinned to one core, 12.5 unrestricted). Torch is
    also limited to ``n`` intra-op threads. Raises SystemExit naming the counts when ``n`` exceeds the cores
    this process may use.
    """
    import os
    import sys

    if "jax" in sys.modules:
        import jax._src.xla_bridge as xb

        if xb.backends_are_initialized():
            raise RuntimeError("--threads must be applied before JAX starts its backend")
    allowed = sorted(os.sched_getaffinity(0))
    if n > len(allowed):
        raise SystemExit(f"--threads {n}: this process may use only {len(allowed)} CPU cores ({allowed}); "
                         f"pass --threads {len(allowed)} or fewer")
    os.sched_setaffinity(0, allowed[:n])
    flags = os.environ.get("XLA_FLAGS", "")
    extra = f"--xla_cpu_multi_thread_eigen={'true' if n > 1 else 'false'}"
    os.environ["XLA_FLAGS"] = f"{flags} {extra}".strip()


def memory_report(cfg, *, batch: int | None = None) -> dict:
    """Per-device bytes of ``cfg``'s train state and train step on the mesh of ``cfg.mesh``; nothing is allocated.

    ``state_bytes_per_device`` comes from the state shardings (params + AdamW moments + scalars);
    ``compiled_*_bytes`` from XLA's memory analysis of the step compiled on abstract (``ShapeDtypeStruct``)
    inputs: ``argument`` = the device's state and batch shards, ``total`` = argument + output + temp - alias.
    """
    import dataclasses
    import time

    import jax
    import numpy as np

    from medjax.parallel.sharding import compiled_memory, sharded_bytes
    from medjax.parallel.mesh import make_mesh
    from medjax.parallel.rules import use_mesh
    from medjax.parallel.sharding import batch_sharding
    from medjax.training.digest import count_params
    from medjax.training.optim import make_optimizer, make_schedule
    from medjax.training.state import input_shape, train_state_spec
    from medjax.training.steps import make_train_step

    if batch is not None:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=int(batch)))
    mesh = make_mesh(cfg.mesh)
    schedule = make_schedule(cfg.train)
    tx = make_optimizer(cfg.train, schedule=schedule)
    spec = train_state_spec(cfg, mesh, tx=tx)
    bsh = batch_sharding(mesh)
    images = jax.ShapeDtypeStruct((cfg.train.batch_size, *input_shape(cfg)), np.float32, sharding=bsh)
    t0 = time.perf_counter()
    with use_mesh(mesh, spec.rules):
        step = make_train_step(spec.model_def, tx, schedule, state_shardings=spec.shardings, batch_sharding=bsh,
                               grad_accum=cfg.train.grad_accum)
        compiled = step.lower(spec.abstract_with_shardings(), {"image": images}).compile()
    compile_s = time.perf_counter() - t0
    state = sharded_bytes(spec.abstract, spec.shardings)
    mem = compiled_memory(compiled)
    return {
        "benchmark": "train-memory",
        "config": cfg.name,
        "variant": cfg.model.variant,
        "input": list(input_shape(cfg)),
        "batch": cfg.train.batch_size,
        "devices": jax.device_count(),
        "mesh": {k: int(v) for k, v in mesh.shape.items()},
        "params": int(count_params(spec.abstract.params)),
        "state_bytes_total": state["total"],
        "state_bytes_per_device": state["per_device"],
        "state_bytes_replicated": state["replicated"],
        "state_fraction_per_device": state["per_device"] / state["total"],
        **{f"compiled_{k}_bytes": v for k, v in mem.items() if k != "total"},
        "compiled_bytes_per_device": mem["total"],
        "compile_s": compile_s,
    }
