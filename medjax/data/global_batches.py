"""This process's part of the global batch stream: data shards, their concatenation, and their saved position.

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
  resumed by any process count that divides ``S``; :func:`saved_num_shards` reads ``S`` back from that position
  so a resumed run keeps it without being told.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from medjax.errors import ConfigError

SHARDS_STATE_VERSION = 1


def saved_num_shards(data_state: Mapping[str, Any] | None) -> int | None:
    """``S`` of a saved data position (:meth:`ShardedBatchIterator.get_state`): the ``num_shards`` of a
    multi-shard state, 1 for a plain single-iterator state, None when nothing was saved."""
    if data_state is None:
        return None
    if "shards" in data_state:
        return int(data_state.get("num_shards", len(data_state["shards"])))
    return 1


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

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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


def gather_data_state(iterator) -> dict:
    """The data position of every process's shards in one dict (collective: all processes must call)."""
    from medjax.parallel.distributed import allgather_json

    local = iterator.get_state()
    if "shards" not in local:
        return local
    merged = dict(local, shards={})
    for state in allgather_json(local):
        merged["shards"].update(state["shards"])
    return merged
