"""Launch a pretraining run on a TPU pod slice or a multi-GPU node with ``gcloud``.

A topology file in ``tpu_configs/`` (YAML) describes the machine: accelerator type, zone, runtime version, host
count, devices per host, the mesh shape and the per-host batch. :func:`plan` turns it, a preset and paths into
the exact list of shell commands, in order:

1. create the TPU VM (or a queued resource for multi-host slices) / the GPU VM;
2. build a wheel of this checkout and copy it to every worker (``--worker=all``);
3. install it (``medjax[tpu]`` / ``medjax[cuda]``) on every worker;
4. start the same ``medjax pretrain`` command on every worker in the background, logging to a file
   (JAX detects the pod and calls ``jax.distributed.initialize`` itself);
5. fetch the logs; and, printed last, the command that deletes the machine.

``medjax launch --dry-run`` prints them; without it they run one after another and stop at the first failure.
"""

from __future__ import annotations

import dataclasses
import shlex
import subprocess
from typing import Any

from medjax.errors import ConfigError

_REQUIRED = ("name", "platform", "zone", "hosts", "devices_per_host", "mesh", "per_host_batch")
_TPU_REQUIRED = ("accelerator_type", "runtime_version")
_GPU_REQUIRED = ("machine_type", "accelerator", "accelerator_count", "image_family", "image_project")


@dataclasses.dataclass(frozen=True)
class Topology:
    """One machine shape, read from a ``tpu_configs/*.yaml`` file."""

    name: str
    platform: str  # "tpu" or "gpu"
    zone: str
    hosts: int  # worker VMs
    devices_per_host: int  # accelerator chips (JAX devices) per host
    mesh: dict  # {"data": int, "fsdp": int, "tensor": int}; product = hosts * devices_per_host
    per_host_batch: int  # samples per host per step; global batch = hosts * per_host_batch
    queued_resource: bool = False
    raw: dict = dataclasses.field(default_factory=dict)

    @property
    def num_devices(self) -> int:
        return self.hosts * self.devices_per_host

    @property
    def global_batch(self) -> int:
        return self.hosts * self.per_host_batch


def load_topology(path: str) -> Topology:
    """Read and validate a topology YAML; errors name the file and the key."""
    import yaml

    try:
        with open(path) as f:
            raw = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read topology file ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys (name, platform, zone, ...)")
    platform = raw.get("platform")
    need = _REQUIRED + (_TPU_REQUIRED if platform == "tpu" else _GPU_REQUIRED if platform == "gpu" else ())
    missing = [k for k in need if k not in raw]
    if platform not in ("tpu", "gpu"):
        raise ConfigError(f"{path}: platform must be 'tpu' or 'gpu', got {platform!r}")
    if missing:
        raise ConfigError(f"{path}: missing keys {', '.join(missing)}")
    mesh = raw["mesh"]
    if not isinstance(mesh, dict) or set(mesh) - {"data", "fsdp", "tensor"}:
        raise ConfigError(f"{path}: mesh must map data/fsdp/tensor to sizes, got {mesh!r}")
    topo = Topology(
        name=str(raw["name"]), platform=platform, zone=str(raw["zone"]), hosts=int(raw["hosts"]),
        devices_per_host=int(raw["devices_per_host"]), mesh={k: int(v) for k, v in mesh.items()},
        per_host_batch=int(raw["per_host_batch"]), queued_resource=bool(raw.get("queued_resource", False)), raw=raw,
    )
    prod = 1
    for v in topo.mesh.values():
        prod *= v
    if prod != topo.num_devices:
        raise ConfigError(
            f"{path}: mesh {topo.mesh} has {prod} devices but hosts x devices_per_host = {topo.num_devices}; "
            "make the mesh sizes multiply to the device count"
        )
    return topo


def _ssh(topo: Topology, vm: str, command: str) -> list[str]:
    if topo.platform == "tpu":
        return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", vm, f"--zone={topo.zone}", "--worker=all",
                f"--command={command}"]
    return ["gcloud", "compute", "ssh", vm, f"--zone={topo.zone}", f"--command={command}"]


def _scp(topo: Topology, vm: str, src: str, dst: str) -> list[str]:
    if topo.platform == "tpu":
        return ["gcloud", "compute", "tpus", "tpu-vm", "scp", src, f"{vm}:{dst}", f"--zone={topo.zone}",
                "--worker=all"]
    return ["gcloud", "compute", "scp", src, f"{vm}:{dst}", f"--zone={topo.zone}"]


def plan(topo: Topology, *, preset: str, vm_name: str, workdir: str, data: str, overrides: tuple[str, ...] = (),
         bucket: str | None = None, mount: str = "/mnt/medjax") -> list[dict[str, Any]]:
    """The ordered commands for one run: a list of ``{"step": str, "argv": list[str]}``.

    ``data`` and ``workdir`` must be paths every worker sees the same way. With ``bucket``, a step mounts that
    Cloud Storage bucket with gcsfuse at ``mount`` on every worker, so ``mount/...`` paths are shared (the
    readers and orbax then work on ordinary files). The data is read once per epoch through the mount; for
    many small epochs, ``medjax data prepare`` onto each worker's local disk is faster.
    """
    from medjax import __version__

    remote_wheel = f"medjax-{__version__}-py3-none-any.whl"
    wheel = f"dist/{remote_wheel}"
    r = topo.raw
    steps: list[dict[str, Any]] = []
    if topo.platform == "tpu":
        if topo.queued_resource:
            create = ["gcloud", "compute", "tpus", "queued-resources", "create", vm_name, f"--node-id={vm_name}",
                      f"--zone={topo.zone}", f"--accelerator-type={r['accelerator_type']}",
                      f"--runtime-version={r['runtime_version']}"]
        else:
            create = ["gcloud", "compute", "tpus", "tpu-vm", "create", vm_name, f"--zone={topo.zone}",
                      f"--accelerator-type={r['accelerator_type']}", f"--version={r['runtime_version']}"]
        extra = "tpu"
    else:
        create = ["gcloud", "compute", "instances", "create", vm_name, f"--zone={topo.zone}",
                  f"--machine-type={r['machine_type']}",
                  f"--accelerator=type={r['accelerator']},count={r['accelerator_count']}",
                  f"--image-family={r['image_family']}", f"--image-project={r['image_project']}",
                  "--maintenance-policy=TERMINATE", "--boot-disk-size=500GB"]
        extra = "cuda"
    steps.append({"step": "create", "argv": create})
    if topo.platform == "tpu" and topo.queued_resource:
        describe = (f"gcloud compute tpus queued-resources describe {vm_name} --zone={topo.zone} "
                    "--format='value(state.state)'")
        wait = f"until [ \"$({describe})\" = ACTIVE ]; do echo waiting for {vm_name}; sleep 30; done"
        steps.append({"step": "wait until ACTIVE", "argv": ["bash", "-c", wait]})
    steps.append({"step": "build wheel", "argv": ["python3", "-m", "pip", "wheel", "--no-deps", "-w", "dist", "."]})
    steps.append({"step": "copy wheel", "argv": _scp(topo, vm_name, wheel, f"~/{remote_wheel}")})
    steps.append({"step": "install", "argv": _ssh(topo, vm_name,
                  f'python3 -m pip install -q "$HOME/{remote_wheel}[{extra}]"')})
    sets = [f"data.dir={data}", f"train.batch_size={topo.global_batch}",
            f"mesh.data={topo.mesh.get('data', 1)}", f"mesh.fsdp={topo.mesh.get('fsdp', 1)}",
            f"mesh.tensor={topo.mesh.get('tensor', 1)}", *overrides]
    # one data shard per host: the global batch order stays the same if the run later resumes on another size
    train_cmd = ["medjax", "pretrain", "--config", preset, "--workdir", workdir, "--no-progress",
                 "--data-shards", str(topo.hosts)]
    for s in sets:
        train_cmd += ["--set", s]
    log = f"$HOME/{vm_name}.log"
    run = f"nohup {shlex.join(train_cmd)} > {log} 2>&1 &"
    if bucket:
        mount_cmd = (f"sudo mkdir -p {mount} && sudo chown $USER {mount} && "
                     f"(mountpoint -q {mount} || gcsfuse --implicit-dirs {shlex.quote(bucket)} {mount})")
        steps.append({"step": "mount bucket on all workers", "argv": _ssh(topo, vm_name, mount_cmd)})
    steps.append({"step": "run on all workers", "argv": _ssh(topo, vm_name, run)})
    steps.append({"step": "fetch logs", "argv": _ssh(topo, vm_name, f"tail -n 40 {log}")})
    if topo.platform == "tpu":
        delete = (["gcloud", "compute", "tpus", "queued-resources", "delete", vm_name, f"--zone={topo.zone}",
                   "--force", "--quiet"] if topo.queued_resource else
                  ["gcloud", "compute", "tpus", "tpu-vm", "delete", vm_name, f"--zone={topo.zone}", "--quiet"])
    else:
        delete = ["gcloud", "compute", "instances", "delete", vm_name, f"--zone={topo.zone}", "--quiet"]
    steps.append({"step": "delete (when finished)", "argv": delete, "manual": True})
    return steps


def execute(steps: list[dict[str, Any]], *, printer=print) -> int:
    """Run the non-manual steps in order; stop at the first failure and return its exit code."""
    for s in steps:
        if s.get("manual"):
            printer(f"# {s['step']}: {shlex.join(s['argv'])}")
            continue
        printer(f"+ {shlex.join(s['argv'])}")
        rc = subprocess.call(s["argv"])
        if rc != 0:
            printer(f"medjax launch: step '{s['step']}' failed with exit code {rc}; fix it and re-run (steps are "
                    "safe to repeat except 'create' for an existing VM)")
            return rc
    return 0
