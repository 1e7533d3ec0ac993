"""``medjax launch``: create a TPU pod slice (or GPU node), install medjax on every worker and run pretraining."""

from __future__ import annotations

import shlex


def register(sub) -> None:
    p = sub.add_parser(
        "launch",
        help="run pretraining on a TPU pod slice or GPU node with gcloud (--dry-run prints the commands)",
        description="Print (--dry-run) or run the gcloud commands that create the machine described by a "
        "tpu_configs/*.yaml file, install medjax on every worker, start `medjax pretrain` on all workers and "
        "fetch the logs. Data and workdir must be paths all workers share: --bucket mounts a Cloud Storage bucket with "
        "gcsfuse on every worker.",
    )
    p.add_argument("--tpu-config", required=True, metavar="YAML", help="topology file, e.g. tpu_configs/v4-32.yaml")
    p.add_argument("--config", required=True, metavar="PRESET", help="pretraining preset or config file")
    p.add_argument("--name", default=None, help="VM / queued-resource name (default: medjax-<topology>)")
    p.add_argument("--bucket", default=None, metavar="NAME",
                   help="Cloud Storage bucket mounted with gcsfuse at --mount on every worker")
    p.add_argument("--mount", default="/mnt/medjax", help="where the bucket is mounted (default /mnt/medjax)")
    p.add_argument("--workdir", default=None,
                   help="run directory shared by all workers (default MOUNT/runs/<name>)")
    p.add_argument("--data", default=None, help="dataset path shared by all workers (default MOUNT/data)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="extra config overrides passed to every worker")
    p.add_argument("--dry-run", action="store_true", help="print the commands instead of running them")
    p.set_defaults(func=run)


def run(args) -> int:
    from medjax.config import load_config
    from medjax.launcher import execute, load_topology, plan

    topo = load_topology(args.tpu_config)
    load_config(args.config, args.overrides)  # fail early on a bad preset or key
    name = args.name or f"medjax-{topo.name}"
    workdir = args.workdir or f"{args.mount}/runs/{name}"
    data = args.data or f"{args.mount}/data"
    steps = plan(topo, preset=args.config, vm_name=name, workdir=workdir, data=data,
                 overrides=tuple(args.overrides), bucket=args.bucket, mount=args.mount)
    if args.dry_run:
        print(f"# {topo.name}: {topo.hosts} host(s) x {topo.devices_per_host} devices, mesh {topo.mesh}, "
              f"global batch {topo.global_batch}")
        for s in steps:
            print(f"# {s['step']}")
            print(shlex.join(s["argv"]))
        return 0
    return execute(steps)
