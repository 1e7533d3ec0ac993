"""Multi-process (multi-host) setup: starting ``jax.distributed``, per-process data shards and global batches.

Starting the cluster (:func:`setup`): explicit settings win (``--coordinator HOST:PORT --num-processes N
--process-id I``, or the environment variables ``MEDJAX_COORDINATOR`` / ``MEDJAX_NUM_PROCESSES`` /
``MEDJAX_PROCESS_ID``); otherwise JAX's own cluster detection is used where a multi-process job is evident (a
multi-host TPU slice: ``TPU_WORKER_HOSTNAMES`` with several hosts or ``MEGASCALE_COORDINATOR_ADDRESS``; SLURM:
``SLURM_JOB_ID`` with ``SLURM_NTASKS > 1``; Open MPI: ``OMPI_COMM_WORLD_SIZE > 1``); otherwise nothing happens
(one process). CPU processes talk through gloo collectives (``jax_cpu_collectives_implementation``); fake CPU
devices per process come from ``--xla_force_host_platform_device_count`` in ``XLA_FLAGS`` as usual.

The global batch rule (what makes a run's data independent of how many processes read it):

- The data is split into ``S`` *data shards* (default: one per process). Shard ``s`` is the pipeline of
  ``process_index=s, process_count=S`` (records ``s::S``, its own seeded shuffle), with ``B / S`` samples per
  batch, ``B`` = ``train.batch_size``.
- Process ``p`` of ``P`` reads shards ``p*S/P ... (p+1)*S/P - 1`` and concatenates their batches in shard
  order; the global batch is the concatenation of all shards' batches, shard 0 first. This needs process
  ``p``'s devices to hold the ``p``-th contiguous block of batch rows, which :func:`check_process_rows`
  verifies (it holds for meshes built over ``jax.devices()``, which lists devices process by process).
- Hence two processes with ``S=2`` and one process with ``--data-shards 2`` train on identical global batches,
  and a checkpoint's data position (all shards' iterator states, gathered by :func:`gather_data_state`) can be
  resumed by any process count that divides ``S``.
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
SHARDS_STATE_VERSION = 1


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

    check = getattr(jax.distributed, "is_initialized", None)
    if callable(check):
        return bool(check())
    from jax._src import distributed as _d  # older JAX

    return _d.global_state.client is not None


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
    from jax._src import distributed as _d

    client = _d.global_state.client
    if client is None:  # processes started by other means: a collective barrier
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
        return
    _barrier_counts[name] = _barrier_counts.get(name, 0) + 1  # barrier ids must be unique per use
    client.wait_at_barrier(f"medjax/{name}/{_barrier_counts[name]}", int(timeout_s * 1000))


_barrier_counts: dict[str, int] = {}


# ----------------------------------------------------------------------------------------------------------------
# Global batches from per-process data


def process_rows(sharding, global_rows: int) -> dict[int, list[tuple[int, int]]]:
    """Batch rows held by each process's devices: ``{process_index: [(start, stop), ...]}`` merged and sorted.

    ``sharding`` is the batch sharding (leading dim split); ``global_rows`` the global batch size.
    """
    spans: dict[int, set[tuple[int, int]]] = {}
    for device, index in sharding.devices_indices_map((global_rows,)).items():
        start, stop, _ = index[0].indices(global_rows)
        spans.setdefault(device.process_index, set()).add((start, stop))
    out = {}
    for p, items in spans.items():
        merged: list[list[int]] = []
        for start, stop in sorted(items):
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], stop)
            else:
                merged.append([start, stop])
        out[p] = [tuple(m) for m in merged]
    return out


def check_process_rows(sharding, global_rows: int) -> None:
    """Raise ConfigError unless process ``p`` of ``P`` holds exactly rows ``[p*B/P, (p+1)*B/P)`` of the batch.

    That is the layout under which the global batch is the concatenation of the processes' batches in process
    order (the rule in the module docstring).
    """
    rows = process_rows(sharding, global_rows)
    count = len(rows)
    per = global_rows // count
    expected = {p: [(p * per, (p + 1) * per)] for p in range(count)}
    if rows != expected:
        raise ConfigError(
            f"the batch sharding gives processes the rows {rows}, not contiguous blocks in process order "
            f"{expected}; build the mesh over jax.devices() (process by process) so the global batch is the "
            "concatenation of the processes' batches")


def _concat(batches: list[dict]) -> dict:
    if len(batches) == 1:
        return batches[0]
    return {k: np.concatenate([b[k] for b in batches], axis=0) for k in batches[0]}


class ShardedBatchIterator:
    """This process's data shards read side by side; each batch is their batches concatenated in shard order.

    Args:
      iterators: ``{shard_index: iterator}``; each iterator yields dicts of numpy arrays and has
        ``get_state()`` / ``set_state()`` / ``close()`` (a :class:`medjax.data.pipeline.BatchIterator`).
      num_shards: ``S``, the number of data shards over all processes.

    ``get_state`` gives this process's shards only; :func:`gather_data_state` collects every process's.
    With a single shard the state is the plain iterator state (same format as an unsharded run).
    """

    def __init__(self, iterators: Mapping[int, Any], num_shards: int):
        self.iterators = dict(sorted(iterators.items()))
        self.num_shards = int(num_shards)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return _concat([next(it) for it in self.iterators.values()])

    def get_state(self) -> dict:
        if self.num_shards == 1:
            return self.iterators[0].get_state()
        return {"version": SHARDS_STATE_VERSION, "num_shards": self.num_shards,
                "shards": {str(s): it.get_state() for s, it in self.iterators.items()}}

    def set_state(self, state: Mapping[str, Any]) -> None:
        if self.num_shards == 1 and "shards" not in state:
            self.iterators[0].set_state(state)
            return
        saved = state.get("num_shards", 1) if "shards" in state else 1
        if saved != self.num_shards:
            raise ConfigError(
                f"the checkpoint's data position is for {saved} data shard(s), this run reads {self.num_shards}; "
                f"resume with --data-shards {saved} (any process count that divides it)")
        shards = state["shards"]
        missing = [s for s in self.iterators if str(s) not in shards]
        if missing:
            raise ConfigError(f"the checkpoint's data position lacks data shards {missing}; it was written by an "
                              "incomplete multi-process save; restore an earlier checkpoint")
        for s, it in self.iterators.items():
            it.set_state(shards[str(s)])

    def close(self) -> None:
        for it in self.iterators.values():
            it.close()


def shards_of_process(num_shards: int, process_index: int, process_count: int) -> range:
    """Data shards read by ``process_index``: a contiguous block of ``num_shards / process_count``."""
    if num_shards < 1 or num_shards % process_count:
        raise ConfigError(f"--data-shards {num_shards} must be a positive multiple of the process count "
                          f"({process_count})")
    per = num_shards // process_count
    return range(process_index * per, (process_index + 1) * per)


def make_data_iterator(data_cfg, *, global_batch: int, seed: int, num_shards: int | None = None,
                       process_index: int | None = None, process_count: int | None = None,
                       worker_mode: str = "threads") -> ShardedBatchIterator:
    """This process's part of the global batch stream (rule in the module docstring).

    Args:
      data_cfg: :class:`~medjax.config.schema.DataConfig`.
      global_batch: samples per global batch ``B`` (over all processes).
      seed: data seed (shuffle and augmentation).
      num_shards: data shards ``S`` (default: the process count); ``B`` must divide by ``S``.
      process_index, process_count: default ``jax.process_index()`` / ``jax.process_count()``.

    Returns:
      A :class:`ShardedBatchIterator` yielding ``B / P`` samples per batch (``image`` ``(B/P, *crop, C)``).
    """
    from medjax.data.pipeline import make_iterator

    if process_index is None or process_count is None:
        import jax

        process_index, process_count = jax.process_index(), jax.process_count()
    num_shards = process_count if num_shards is None else int(num_shards)
    shards = shards_of_process(num_shards, process_index, process_count)
    if global_batch % num_shards:
        raise ConfigError(f"train.batch_size={global_batch} must divide by the number of data shards ({num_shards})")
    per_shard = global_batch // num_shards
    iterators = {s: make_iterator(data_cfg, batch_size=per_shard, seed=seed, process_index=s,
                                  process_count=num_shards, worker_mode=worker_mode) for s in shards}
    return ShardedBatchIterator(iterators, num_shards)


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


def gather_data_state(iterator) -> dict:
    """The data position of every process's shards in one dict (collective: all processes must call)."""
    local = iterator.get_state()
    if "shards" not in local:
        return local
    merged = dict(local, shards={})
    for state in allgather_json(local):
        merged["shards"].update(state["shards"])
    return merged
