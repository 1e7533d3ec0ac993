"""The grain input pipeline: records -> shard -> seeded epochs -> read/preprocess -> random crops -> batches.

Flow (one process of ``process_count``)::

    records (sources or prepared cache)
      -> this process's shard: records[process_index::process_count]
      -> epochs: element i is (epoch = i // n, shuffled position i % n); the shuffle is seeded by (seed, epoch)
      -> read + preprocess (skipped when reading a prepared cache, whose arrays are memory-mapped)
      -> random crops, RNG seeded by (seed, epoch, global record index): augmentation does not depend on the
         number of workers or processes
      -> flatten the ``samples_per_volume`` crops into single samples
      -> batch(batch_size, drop_remainder=True)

When ``batch_size`` is a multiple of ``samples_per_volume`` (and volumes are not skipped, and workers are
threads), each element is a whole batch instead, its crops written straight into the batch arrays
(:mod:`medjax.data.batch_crops`): the same batches with one copy per crop fewer. Iterator states of either
layout restore into the other.

Parallelism (``cfg.workers``): the read/preprocess/crop step of whole volumes runs in a pool of ``cfg.workers``
threads of this process (``0``: read synchronously in the calling thread), with ``prefetch`` volumes per worker
buffered ahead. The heavy parts release the GIL (zlib inflation, numpy copies and arithmetic, BLAS), so threads
use the cores like processes do, but start instantly, share the memory-mapped cache and pass crops without
pickling. ``worker_mode="processes"`` instead runs the whole chain in ``cfg.workers`` grain worker processes
(``mp_prefetch``; each is spawned and imports medjax, which takes seconds) for recipes dominated by pure
Python. Either way the state is a position in the stream: a restored iterator yields exactly the rest.

Allocator: the ``medjax`` command tunes glibc's malloc for these few-MB crop buffers
(:func:`medjax.data.allocator.tune_allocator`, about half the CPU per sample from a prepared cache); building a
pipeline in your own process never changes the allocator: call that function yourself to get the same.

A batch is a dict of numpy arrays: ``image`` float32 ``(B, *crop, C)`` (``(B, H, W, C)`` for 2D), optional
``label`` int32 ``(B, *crop)`` and ``class`` int32 ``(B,)`` or ``(B, K)``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from medjax.config.schema import DataConfig
from medjax.data.batch_crops import LAYOUT_BATCHES, LAYOUT_SAMPLES, BatchCrops, convert_state, use_batch_layout
from medjax.errors import ConfigError, DataError

log = logging.getLogger(__name__)

STATE_VERSION = 1
BATCH_KEYS = ("image", "label", "class")


# ----------------------------------------------------------------------------------------------------------------
# Reading one record into a sample


def read_sample(record: Mapping[str, Any], *, mmap: bool = True) -> dict:
    """Read a record (``{"id", "image", "label", "class", "boxes"}``) into a sample.

    Returns ``{"image": (*S, C) array, "label": (*S,) int array (if the record has one), "affine": (4, 4)
    float64, "id": str, "class"/"boxes" (if present)}``. The image keeps its stored dtype (no copy when
    memory-mapped); transforms convert to float32. Raises :class:`DataError` naming the file.
    """
    from medjax.data.io import read_image

    img = read_image(record["image"], mmap=mmap)
    array = img.array if img.has_channels else img.array[..., None]
    sample = {"image": array, "affine": np.asarray(img.affine, np.float64), "id": str(record.get("id", ""))}
    if record.get("label"):
        lab = read_image(record["label"], mmap=mmap, is_label=True)
        if lab.spatial_shape != img.spatial_shape:
            raise DataError(
                record["label"],
                f"label shape {lab.spatial_shape} differs from image shape {img.spatial_shape} "
                f"({record['image']}); fix or remove the pair",
            )
        larr = np.asarray(lab.array)
        if lab.has_channels:
            larr = larr[..., 0]
        if not np.issubdtype(larr.dtype, np.integer):
            larr = np.rint(larr).astype(np.int32)
        sample["label"] = larr
    for key in ("class", "boxes"):
        if record.get(key) is not None:
            sample[key] = record[key]
    return sample


def _read_cached_sample(record: Mapping[str, Any]) -> dict:
    """A prepared-cache record -> sample with memory-mapped arrays (reading only what the crops touch).

    ``"foreground"`` (``(K, 3)`` int32 voxel indices of ``label > 0``, memory-mapped) comes from the cache when
    it has one, so a crop draw reads one row of it instead of scanning the whole label.
    """
    try:
        image = np.load(record["image"], mmap_mode="r", allow_pickle=False)
        sample = {"image": image, "affine": record["affine"], "id": record["id"]}
        if record.get("label"):
            sample["label"] = np.load(record["label"], mmap_mode="r", allow_pickle=False)
            if record.get("foreground"):
                sample["foreground"] = np.load(record["foreground"], mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError(record["image"], f"unreadable prepared array ({e}); rebuild with `medjax data prepare`")
    for key in ("class", "boxes"):
        if record.get(key) is not None:
            sample[key] = record[key]
    return sample


_MAX_MAPPED = 512  # prepared records kept memory-mapped per pipeline (3 mappings each)


class _PicklableDataError(DataError):
    """A :class:`DataError` that survives the trip from a worker process to the main process."""

    def __reduce__(self):
        return (type(self), (self.path, self.reason))


# ----------------------------------------------------------------------------------------------------------------
# The per-element work (must pickle: it runs in grain worker processes)


class _VolumeCrops:
    """``(index, _) -> list of samples`` for element ``index`` of the repeated, shuffled shard; None if skipped."""

    def __init__(self, records, cfg: DataConfig, *, seed: int, process_index: int, process_count: int,
                 cached: bool):
        if cached:  # parse the affines once, not on every visit
            records = [dict(r, affine=np.asarray(r["affine"], np.float64)) for r in records]
        self.records = list(records)
        self.cfg = cfg
        self.seed = int(seed)
        self.process_index = process_index
        self.process_count = process_count
        self.cached = cached
        self._perm: tuple[int, np.ndarray] | None = None  # (epoch, permutation), swapped atomically (threads)
        self._logged: set[str] = set()
        self._mapped: dict[int, dict] = {}  # cache: record -> sample of memmaps, kept open across epochs

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_perm"] = None
        state["_mapped"] = {}
        return state

    def _cached_sample(self, local: int) -> dict:
        """The memory-mapped sample of prepared record ``local``, mapped once and reused (pages already
        faulted in stay mapped, the header is parsed once); at most ``_MAX_MAPPED`` records stay mapped."""
        sample = self._mapped.get(local)
        if sample is None:
            sample = _read_cached_sample(self.records[local])
            if len(self._mapped) >= _MAX_MAPPED:
                try:  # oldest first; another thread may be changing the dict at the same moment
                    self._mapped.pop(next(iter(self._mapped)), None)
                except (RuntimeError, StopIteration):
                    pass
            self._mapped[local] = sample
        return sample

    def _position(self, epoch: int, pos: int) -> int:
        if not self.cfg.shuffle:
            return pos
        cached = self._perm
        if cached is None or cached[0] != epoch:
            seq = np.random.SeedSequence([self.seed % 2**63, epoch, 0x5EED])
            cached = (epoch, np.random.default_rng(seq).permutation(len(self.records)))
            self._perm = cached
        return int(cached[1][pos])

    def load(self, index: int) -> tuple[dict, np.random.Generator]:
        """``(sample, rng)`` of stream element ``index``: the preprocessed (or memory-mapped prepared) volume
        and the generator its crops are drawn with, seeded by (seed, epoch, global record index).
        Raises :class:`DataError` naming the file."""
        from medjax.data.transforms.recipes import preprocess

        epoch, pos = divmod(int(index), len(self.records))
        local = self._position(epoch, pos)
        global_index = self.process_index + local * self.process_count
        if self.cached:
            sample = self._cached_sample(local)
        else:
            sample = preprocess(read_sample(self.records[local]), self.cfg)
        return sample, np.random.default_rng(np.random.SeedSequence([self.seed % 2**63, epoch, global_index]))

    def __call__(self, index: int, _element=None) -> list[dict] | None:
        from medjax.data.transforms.recipes import random_crops

        try:
            sample, rng = self.load(index)
            crops = random_crops(sample, self.cfg, rng)
        except DataError as e:
            if not self.cfg.skip_bad:
                raise _PicklableDataError(e.path, e.reason) from None
            if e.path not in self._logged:
                self._logged.add(e.path)
                log.warning("skipping bad volume %s: %s", e.path, e.reason)
            return None
        return [_batch_item(c) for c in crops]


def _batch_item(crop: Mapping[str, Any]) -> dict:
    """Keep the batched keys, with their batch dtypes (float32 image, int32 label/class)."""
    item = {"image": np.asarray(crop["image"], dtype=np.float32)}
    if crop.get("label") is not None:
        item["label"] = np.asarray(crop["label"]).astype(np.int32, copy=False)
    if crop.get("class") is not None:
        item["class"] = np.asarray(crop["class"], dtype=np.int32)
    return item


def _flatten_transform(max_fan_out: int):
    import grain

    class _Flatten(grain.experimental.FlatMapTransform):
        def __init__(self):
            self.max_fan_out = max_fan_out

        def flat_map(self, element):
            return element

    return _Flatten()


# ----------------------------------------------------------------------------------------------------------------
# Public API


WORKER_MODES = ("threads", "processes")


def load_pipeline_records(cfg: DataConfig) -> tuple[list[dict], bool]:
    """The records the pipeline reads and whether they come from a prepared cache (``cfg.cache_dir``).

    The last ``cfg.holdout_last`` records are left out: an MAE pretrained on the manifest a fine-tuning preset
    splits (its last ``finetune.val_records`` held out) then never sees the volumes its encoder is scored on.
    """
    if cfg.cache_dir:
        from medjax.data.cache import open_cache

        records, cached = open_cache(cfg.cache_dir, cfg), True
    else:
        from medjax.data.sources import load_records

        records, cached = load_records(cfg.dir, split=cfg.split), False
    n = int(cfg.holdout_last)
    if n:
        if not 0 < n < len(records):
            raise ConfigError(f"data.holdout_last={n}: {cfg.cache_dir or cfg.dir} has {len(records)} records; "
                              "hold out at least 0 and fewer than all of them")
        records = records[:-n]
    return records, cached


def build_dataset(cfg: DataConfig, *, batch_size: int, seed: int, process_index: int = 0, process_count: int = 1,
                  num_epochs: int | None = None, worker_mode: str = "threads"):
    """The grain pipeline of this process as a ``grain.IterDataset`` of batches (see the module docstring).

    Args:
      cfg: data settings; ``cfg.cache_dir`` switches to the prepared cache (memory-mapped, crops only).
      batch_size: samples per batch of this process (the global batch is ``batch_size * process_count``).
      seed: seeds the per-epoch shuffle and the augmentation.
      process_index, process_count: this process reads only ``records[process_index::process_count]``.
      num_epochs: passes over the shard; ``None`` repeats forever.
      worker_mode: ``"threads"`` (``cfg.workers`` read threads in this process) or ``"processes"``
        (``cfg.workers`` grain worker processes); the batches are the same either way.
    """
    import grain

    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if not 0 <= process_index < process_count:
        raise ConfigError(f"process_index {process_index} is not in [0, {process_count})")
    if cfg.samples_per_volume < 1:
        raise ConfigError(f"data.samples_per_volume must be >= 1, got {cfg.samples_per_volume}")
    if worker_mode not in WORKER_MODES:
        raise ConfigError(f"worker_mode={worker_mode!r}: use one of {WORKER_MODES}")
    records, cached = load_pipeline_records(cfg)
    shard = records[process_index::process_count]
    if not shard:
        where = cfg.cache_dir or cfg.dir
        raise DataError(where, f"no records for process {process_index} of {process_count} "
                               f"({len(records)} records in all); add data or use fewer processes")
    fn = _VolumeCrops(shard, cfg, seed=seed, process_index=process_index, process_count=process_count,
                      cached=cached)
    processes = worker_mode == "processes" and cfg.workers > 0
    if processes:
        threads, buffered = 1, max(2, cfg.prefetch)
    else:
        threads = cfg.workers  # 0: read synchronously in the calling thread
        buffered = threads * max(1, cfg.prefetch)
    options = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=buffered)
    if use_batch_layout(cfg, batch_size, worker_mode):  # whole batches per element, crops written in place
        per_batch = batch_size // cfg.samples_per_volume
        if num_epochs is None:
            ds = grain.MapDataset.range(1).repeat(None)
        else:
            ds = grain.MapDataset.range(len(shard) * num_epochs // per_batch)
        return ds.map_with_index(BatchCrops(fn, batch_size)).to_iter_dataset(options)
    ds = grain.MapDataset.range(len(shard)).repeat(num_epochs).map_with_index(fn)
    ds = ds.to_iter_dataset(options)
    ds = grain.experimental.FlatMapIterDataset(ds, _flatten_transform(max(1, cfg.samples_per_volume)))
    ds = ds.batch(batch_size, drop_remainder=True)
    if processes:
        _mark_flags_parsed()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg.workers,
                                                          per_worker_buffer_size=max(1, cfg.prefetch)))
    return ds


def _mark_flags_parsed() -> None:
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


class BatchIterator:
    """Iterator over batches (dicts of numpy arrays) with JSON-serialisable ``get_state``/``set_state``.

    A state taken mid-epoch and restored (in this or a fresh iterator built with the same settings) yields
    exactly the batches the original iterator would have yielded next. ``layout`` is how the pipeline forms
    batches (:mod:`medjax.data.batch_crops`); a state of the other layout is converted on restore.
    """

    def __init__(self, dataset, settings: dict, layout: str = LAYOUT_SAMPLES):
        self._dataset = dataset
        self._it = iter(dataset)
        self.settings = settings
        self.layout = layout

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._it)

    def get_state(self) -> dict:
        state = {"version": STATE_VERSION, "settings": self.settings, "layout": self.layout,
                 "grain": self._it.get_state()}
        return json.loads(json.dumps(state))

    def set_state(self, state: Mapping[str, Any]) -> None:
        if state.get("version") != STATE_VERSION or "grain" not in state:
            raise ConfigError(f"not a medjax data-iterator state (version {state.get('version')!r}); "
                              "restore from a checkpoint written by this medjax version")
        theirs = dict(state.get("settings", {}))
        if "worker_mode" not in theirs:  # states written before the thread workers: processes when workers > 0
            theirs["worker_mode"] = "processes" if theirs.get("workers", 0) > 0 else "threads"
        diff = {k: (theirs.get(k), v) for k, v in self.settings.items() if theirs.get(k) != v}
        if diff:
            what = ", ".join(f"{k}: saved {a!r} vs now {b!r}" for k, (a, b) in sorted(diff.items()))
            raise ConfigError(f"data-iterator state does not match this pipeline ({what}); "
                              "restore with the settings the checkpoint was written with")
        grain_state = convert_state(state["grain"], state.get("layout", LAYOUT_SAMPLES), self.layout,
                                    batch_size=self.settings["batch_size"],
                                    samples_per_volume=self.settings["samples_per_volume"])
        self._it.set_state(grain_state)

    def close(self) -> None:
        close = getattr(self._it, "close", None)
        if close is not None:
            close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def make_iterator(cfg: DataConfig, *, batch_size: int, seed: int, process_index: int = 0, process_count: int = 1,
                  num_epochs: int | None = None, worker_mode: str = "threads") -> BatchIterator:
    """:func:`build_dataset` wrapped in a :class:`BatchIterator` (``next``, ``get_state``, ``set_state``)."""
    ds = build_dataset(cfg, batch_size=batch_size, seed=seed, process_index=process_index,
                       process_count=process_count, num_epochs=num_epochs, worker_mode=worker_mode)
    mode = worker_mode if cfg.workers > 0 else "threads"
    settings = {"batch_size": batch_size, "seed": seed, "process_index": process_index,
                "process_count": process_count, "workers": cfg.workers, "worker_mode": mode,
                "samples_per_volume": cfg.samples_per_volume}
    layout = LAYOUT_BATCHES if use_batch_layout(cfg, batch_size, worker_mode) else LAYOUT_SAMPLES
    return BatchIterator(ds, settings, layout)


def to_global_batch(batch: Mapping[str, np.ndarray], sharding) -> dict:
    """Assemble each process's batch into global ``jax.Array`` s (``jax.make_array_from_process_local_data``).

    ``sharding`` is one ``jax.sharding.Sharding`` for every key, or a mapping key -> sharding. The global
    leading dimension is ``batch_size * process_count``.
    """
    import jax

    out = {}
    for key, value in batch.items():
        s = sharding[key] if isinstance(sharding, Mapping) else sharding
        out[key] = jax.make_array_from_process_local_data(s, np.asarray(value))
    return out
