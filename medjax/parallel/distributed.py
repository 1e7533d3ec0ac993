"""Multi-process (multi-host) setup: starting ``jax.distributed``, barriers and small all-gathers between processes.

Starting the cluster (:func:`setup`): explicit settings win (``--coordinator HOST:PORT --num-processes N
--process-id I``, or the environment variables ``MEDJAX_COORDINATOR`` / ``MEDJAX_NUM_PROCESSES`` /
``MEDJAX_PROCESS_ID``); otherwise JAX's own cluster detection is used where a multi-process job is evident (a
multi-host TPU slice: ``TPU_WORKER_HOSTNAMES`` with several hosts or ``MEGASCALE_COORDINATOR_ADDRESS``; SLURM:
``SLURM_JOB_ID`` with ``SLURM_NTASKS > 1``; Open MPI: ``OMPI_COMM_WORLD_SIZE > 1``); otherwise nothing happens
(one process). CPU processes talk through gloo collectives (``jax_cpu_collectives_implementation``); fake CPU
devices per process come from ``--xla_force_host_platform_device_count`` in ``XLA_FLAGS`` as usual.

How a process count maps onto data shards and global batches lives in :mod:`medjax.data.global_batches`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from medjax.errors import ConfigError

ENV_COORDINATOR = "MEDJAX_COORDINATOR"
ENV_NUM_PROCESSES = "MEDJAX_NUM_PROCESSES"
ENV_PROCESS_ID = "MEDJAX_PROCESS_ID"


@dataclasses.dataclass(frozen=True)
class ClusterSpec:
    """How to start ``jax.distributed``.

    Attributes:
      coordinator: ``"HOST:PORT"`` of process 0's coordination service; None: JAX detects it.
      num_processes: number of processes; None: JAX detects it.
      process_id: this process's index in ``[0, num_processes)``; None: JAX detects it.
      source: where the settings came from: ``"flags"``, ``"env"``, ``"tpu"``, ``"slurm"`` or ``"ompi"``.
    """

    coordinator: str | None
    num_processes: int | None
    process_id: int | None
    source: str

    @property
    def explicit(self) -> bool:
        return self.coordinator is not None


def _int(value, what: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what}={value!r} is not an integer") from None


def _check_coordinator(address: str, what: str) -> str:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{what}={address!r}: expected HOST:PORT, e.g. 10.0.0.2:1234 or 127.0.0.1:29500")
    return address


def detect_cluster(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
                   env: Mapping[str, str] | None = None) -> ClusterSpec | None:
    """The cluster to join, or None for a single process.

    Args:
      coordinator, num_processes, process_id: explicit settings (command-line flags); each falls back to its
        ``MEDJAX_*`` environment variable. Either all three are given (or ``num_processes=1``) or none.
      env: environment to read (default ``os.environ``).

    Raises:
      ConfigError: partial or invalid explicit settings, naming the flag and the environment variable.
    """
    env = os.environ if env is None else env
    flags = (coordinator, num_processes, process_id)
    source = "flags" if any(v is not None for v in flags) else "env"
    coordinator = coordinator if coordinator is not None else (env.get(ENV_COORDINATOR) or None)
    num_processes = _int(num_processes if num_processes is not None else env.get(ENV_NUM_PROCESSES),
                         f"--num-processes / {ENV_NUM_PROCESSES}")
    process_id = _int(process_id if process_id is not None else env.get(ENV_PROCESS_ID),
                      f"--process-id / {ENV_PROCESS_ID}")
    given = {"--coordinator": coordinator, "--num-processes": num_processes, "--process-id": process_id}
    if any(v is not None for v in given.values()):
        if num_processes == 1 and process_id in (None, 0):
            return None
        missing = [k for k, v in given.items() if v is None]
        if missing:
            names = {"--coordinator": ENV_COORDINATOR, "--num-processes": ENV_NUM_PROCESSES,
                     "--process-id": ENV_PROCESS_ID}
            raise ConfigError(
                f"multi-process settings are incomplete: {', '.join(missing)} missing (flags or "
                f"{', '.join(names[k] for k in missing)}); give all of --coordinator HOST:PORT, --num-processes N "
                "and --process-id I, or none to let JAX detect the cluster")
        _check_coordinator(coordinator, f"--coordinator / {ENV_COORDINATOR}")
        if num_processes < 1:
            raise ConfigError(f"--num-processes / {ENV_NUM_PROCESSES}={num_processes} must be at least 1")
        if not 0 <= process_id < num_processes:
            raise ConfigError(f"--process-id / {ENV_PROCESS_ID}={process_id} must be in [0, {num_processes})")
        return ClusterSpec(coordinator, num_processes, process_id, source)
    auto = _auto_source(env)
    return None if auto is None else ClusterSpec(None, None, None, auto)


def _auto_source(env: Mapping[str, str]) -> str | None:
    """Which multi-process environment JAX can detect by itself, or None."""
    hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
    if len(hosts) > 1 or env.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return "tpu"
    if env.get("SLURM_JOB_ID") and (_int(env.get("SLURM_NTASKS"), "SLURM_NTASKS") or 1) > 1:
        return "slurm"
    if (_int(env.get("OMPI_COMM_WORLD_SIZE"), "OMPI_COMM_WORLD_SIZE") or 1) > 1:
        return "ompi"
    return None


def is_initialized() -> bool:
    """Whether ``jax.distributed`` has been started in this process."""
    import jax

    return bool(jax.distributed.is_initialized())


def coordination_client():
    """JAX's coordination-service client of this process (None before ``jax.distributed.initialize``).

    JAX exposes no public handle on it, so this is the one place medjax reaches into ``jax._src``; it is used
    for barriers that wait minutes (device collectives over gloo give up after 30 s). The test
    ``tests/parallel/test_private_apis.py`` fails loudly when a JAX release moves it. Raises RuntimeError
    naming the missing attribute when this JAX has none.
    """
    try:
        from jax._src import distributed as _d

        state = _d.global_state
    except (ImportError, AttributeError) as e:
        raise RuntimeError(f"this JAX has no jax._src.distributed.global_state ({e}); medjax's barriers need "
                           "updating for it (medjax.parallel.distributed.coordination_client)") from e
    if not hasattr(state, "client"):
        raise RuntimeError("jax._src.distributed.global_state has no 'client'; medjax's barriers need updating "
                           "for this JAX (medjax.parallel.distributed.coordination_client)")
    return state.client


def initialize(spec: ClusterSpec | None, *, timeout_s: int = 300) -> None:
    """Start ``jax.distributed`` for ``spec`` (no-op for None or when already started).

    Must run before anything touches a JAX backend (``jax.devices()``, creating an array): JAX refuses to join a
    cluster afterwards, and this raises ConfigError saying so. Sets gloo CPU collectives first, so CPU-only
    processes can all-reduce across process boundaries.
    """
    if spec is None or is_initialized():
        return
    import jax

    if jax.config.jax_cpu_collectives_implementation != "mpi":  # keep an explicit MPI choice
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs: dict[str, Any] = {"initialization_timeout": int(timeout_s)}
    if spec.explicit:
        kwargs.update(coordinator_address=spec.coordinator, num_processes=spec.num_processes,
                      process_id=spec.process_id)
    try:
        jax.distributed.initialize(**kwargs)
    except RuntimeError as e:
        where = (f"coordinator {spec.coordinator}, process {spec.process_id} of {spec.num_processes}"
                 if spec.explicit else f"cluster detected from the {spec.source} environment")
        raise ConfigError(f"could not start jax.distributed ({where}): {e}; start every process with the same "
                          "coordinator and process count, process 0 first, before any JAX computation") from e


def setup(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
          *, env: Mapping[str, str] | None = None, timeout_s: int = 300) -> ClusterSpec | None:
    """:func:`detect_cluster` then :func:`initialize`; returns the spec used (None: single process)."""
    spec = detect_cluster(coordinator, num_processes, process_id, env=env)
    initialize(spec, timeout_s=timeout_s)
    return spec


def process_info() -> dict:
    """``{"process_index", "process_count", "local_devices", "devices", "platform"}`` of this process."""
    import jax

    return {"process_index": jax.process_index(), "process_count": jax.process_count(),
            "local_devices": jax.local_device_count(), "devices": jax.device_count(),
            "platform": jax.devices()[0].platform}


def barrier(name: str, *, timeout_s: float = 900) -> None:
    """Wait until every process reaches ``barrier(name)``; no-op for one process.

    Uses the coordination service (no device collective), so it tolerates processes that arrive minutes apart,
    e.g. after compiling at different speeds; CPU gloo collectives give up after 30 s without their peers, so
    call this after compiling and before the first run of a program with collectives.
    """
    import jax

    if jax.process_count() == 1:
        return
    client = coordination_client()
    if client is None:  # processes started by other means: a collective barrier
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
        return
    _barrier_counts[name] = _barrier_counts.get(name, 0) + 1  # barrier ids must be unique per use
    client.wait_at_barrier(f"medjax/{name}/{_barrier_counts[name]}", int(timeout_s * 1000))


_barrier_counts: dict[str, int] = {}


def any_process(flag: bool) -> bool:
    """Whether ``flag`` is true in any process (collective: all processes must call); ``flag`` for one."""
    import jax

    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.array([bool(flag)]))))


def allgather_json(obj) -> list:
    """Every process's ``obj`` (JSON-able), in process order; all processes must call. ``[obj]`` for one."""
    import jax

    if jax.process_count() == 1:
        return [obj]
    from jax.experimental import multihost_utils

    barrier("medjax-allgather-json")
    raw = np.frombuffer(json.dumps(obj).encode(), np.uint8)
    sizes = multihost_utils.process_allgather(np.array([raw.size], np.int64))
    longest = int(np.max(sizes))
    padded = np.zeros(longest, np.uint8)
    padded[: raw.size] = raw
    gathered = np.asarray(multihost_utils.process_allgather(padded))
    return [json.loads(bytes(gathered[p, : int(sizes[p].reshape(-1)[0])]).decode())
            for p in range(gathered.shape[0])]
