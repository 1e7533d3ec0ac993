"""Whole batches per pipeline element: crops written straight into the batch arrays.

The general pipeline maps each volume to its ``samples_per_volume`` crops, flattens them into single samples
and stacks ``batch_size`` of them into a batch: every crop is allocated, then copied again by the stack. When
``batch_size`` is a multiple ``k * samples_per_volume`` and no volume may be skipped, batch ``j`` is exactly
the crops of stream volumes ``j*k .. j*k + k - 1`` (``drop_remainder`` drops the same tail), so one element
can build the whole batch: it allocates the batch arrays once and each crop is written into its slot, read
once from the (memory-mapped) volume. Same values, same order, same RNG draws as the general path; about a
third less memory traffic per sample from a prepared cache.

Iterator states of the two layouts are positions in the same sample stream, so :func:`convert_state` turns
one into the other (a checkpoint written by either layout restores into the other).
"""

from __future__ import annotations

import numpy as np

from medjax.errors import DataError

LAYOUT_SAMPLES = "samples"  # volume -> crops -> flatten -> batch (any batch size, skip_bad, worker processes)
LAYOUT_BATCHES = "batches"  # k volumes -> one batch, crops written in place


def use_batch_layout(cfg, batch_size: int, worker_mode: str) -> bool:
    """Whether the pipeline builds whole batches per element (see the module docstring)."""
    return (batch_size % cfg.samples_per_volume == 0 and not cfg.skip_bad
            and (worker_mode == "threads" or cfg.workers == 0))


class BatchCrops:
    """``(batch index, _) -> batch dict`` from a ``_VolumeCrops`` (``volumes.load(i) -> (sample, rng)``).

    Batch ``j`` holds the crops of stream elements ``j*k .. j*k + k - 1``, ``k = batch_size //
    samples_per_volume``: ``image`` float32 ``(B, *crop, C)``, ``label`` int32 ``(B, *crop)`` and ``class``
    int32 ``(B,)`` / ``(B, K)`` when the records have them.
    """

    def __init__(self, volumes, batch_size: int):
        self.volumes = volumes
        self.cfg = volumes.cfg
        self.spv = int(self.cfg.samples_per_volume)
        self.k = batch_size // self.spv
        self.batch_size = batch_size

    def _allocate(self, sample: dict) -> dict:
        from medjax.config.dims import broadcast

        crop = tuple(int(c) for c in broadcast(self.cfg.crop_size, self.cfg.spatial_dims, "data.crop_size"))
        image = sample["image"]
        channels = image.shape[-1] if image.ndim == 4 else 1
        out = {"image": np.empty((self.batch_size, *crop, channels), np.float32)}
        if sample.get("label") is not None:
            out["label"] = np.empty((self.batch_size, *crop), np.int32)
        if sample.get("class") is not None:
            out["class"] = np.empty((self.batch_size, *np.shape(sample["class"])), np.int32)
        return out

    def _check_alike(self, sample: dict, out: dict) -> None:
        """Every volume of a batch needs the keys, channels and class shape of the first."""
        where = str(sample.get("id") or "<sample>")
        image = sample["image"]
        channels = image.shape[-1] if image.ndim == 4 else 1
        if channels != out["image"].shape[-1]:
            raise DataError(where, f"{channels} image channel(s), but another volume of the batch has "
                                   f"{out['image'].shape[-1]}; every volume needs the same channels")
        for key in ("label", "class"):
            if (sample.get(key) is not None) != (key in out):
                raise DataError(where, f"some volumes have a {key!r} and others do not; give every record one "
                                       "or none")
        if "class" in out and np.shape(sample["class"]) != out["class"].shape[1:]:
            raise DataError(where, f"class {sample['class']!r} has another shape than the other records' "
                                   f"{out['class'].shape[1:]}")

    def __call__(self, index: int, _element=None) -> dict:
        from medjax.data.pipeline import _PicklableDataError
        from medjax.data.transforms.recipes import random_crops

        out = None
        try:
            for v in range(self.k):
                sample, rng = self.volumes.load(int(index) * self.k + v)
                if out is None:
                    out = self._allocate(sample)
                else:
                    self._check_alike(sample, out)
                rows = slice(v * self.spv, (v + 1) * self.spv)
                random_crops(sample, self.cfg, rng, out={key: arr[rows] for key, arr in out.items()})
        except DataError as e:
            raise _PicklableDataError(e.path, e.reason) from None
        return out


def convert_state(grain_state: dict, have: str, want: str, *, batch_size: int, samples_per_volume: int) -> dict:
    """A thread-pipeline grain state of layout ``have`` as the state of layout ``want`` at the same position.

    ``samples`` layout: ``{"parent": {"next_index": a}, "next_index_in_buffer": b}`` after ``a *
    samples_per_volume + b`` samples; ``batches`` layout: ``{"next_index": j}`` after ``j * batch_size``.
    """
    if have == want:
        return grain_state
    spv = int(samples_per_volume)
    if have == LAYOUT_SAMPLES:
        samples = int(grain_state["parent"]["next_index"]) * spv + int(grain_state["next_index_in_buffer"])
        return {"next_index": samples // batch_size}
    samples = int(grain_state["next_index"]) * batch_size
    if samples == 0:
        return {"parent": {"next_index": 0}, "next_index_in_buffer": 0}
    a = (samples - 1) // spv
    return {"parent": {"next_index": a}, "next_index_in_buffer": samples - a * spv}
