"""Deterministic intensity normalisation. Inputs are any numeric arrays; outputs are float32, same shape.

``has_channels=True`` computes statistics per channel (last axis) instead of over the whole array.
"""

from __future__ import annotations

import numpy as np


def _per_channel(array: np.ndarray, has_channels: bool):
    """``(index, channel_view)`` pairs: the whole array, or each ``[..., c]``."""
    if has_channels:
        return [((..., c), array[..., c]) for c in range(array.shape[-1])]
    return [((...,), array)]


def ct_window(array: np.ndarray, hu_min: float = -1000.0, hu_max: float = 1000.0) -> np.ndarray:
    """Clip Hounsfield units to ``[hu_min, hu_max]`` and scale linearly to ``[0, 1]`` (float32)."""
    if not hu_max > hu_min:
        raise ValueError(f"CT window needs hu_max > hu_min; got ({hu_min}, {hu_max}) HU")
    out = np.asarray(array, dtype=np.float32)
    out = np.clip(out, hu_min, hu_max)
    out -= np.float32(hu_min)
    out *= np.float32(1.0 / (hu_max - hu_min))
    return out


def zscore_foreground(array: np.ndarray, mask: np.ndarray | None = None, *, threshold: float | None = 0.0,
                      has_channels: bool = False) -> np.ndarray:
    """Z-score over the foreground; background set to 0 (float32).

    The foreground is ``mask`` when given, else the voxels ``> threshold``. The default ``threshold=0.0`` suits
    MRI, where the background (air, or what skull stripping removed) is stored as 0 and tissue is positive. It is
    wrong for CT in Hounsfield units, where fat (about -100 HU) and lung (about -800 HU) are tissue below 0: use
    :func:`ct_window` for CT, or pass a ``mask`` (e.g. a body mask) or a threshold in HU (e.g. ``-500`` to keep
    soft tissue and drop air). ``threshold=None`` takes every voxel (a plain z-score).

    Args:
      array: ``(*S)`` or ``(*S, C)`` intensities.
      mask: boolean ``(*S)`` foreground; overrides the threshold (giving both, with a threshold other than the
        default, is an error).
      threshold: foreground is ``array > threshold`` (per channel when ``has_channels``); None: every voxel.
      has_channels: statistics per channel of the last axis.

    Returns:
      ``(array - mean) / std`` on foreground voxels (mean/std over the foreground; std 0 counts as 1),
      0 elsewhere; all zeros when the foreground is empty.
    """
    if mask is not None and (threshold is None or threshold != 0.0):
        raise ValueError(f"zscore_foreground: give either mask= or threshold= (got both, threshold={threshold}); "
                         "the mask alone defines the foreground")
    if threshold is not None and not np.isfinite(threshold):
        raise ValueError(f"zscore_foreground: threshold={threshold} must be a finite intensity, or None for all voxels")
    src = np.asarray(array)
    out = np.zeros(src.shape, dtype=np.float32)
    for index, chan in _per_channel(src, has_channels):
        if mask is not None:
            fg = np.asarray(mask, dtype=bool)
        elif threshold is None:
            fg = np.ones(chan.shape, dtype=bool)
        else:
            fg = chan > threshold
        if fg.shape != chan.shape:
            raise ValueError(f"mask shape {fg.shape} does not match spatial shape {chan.shape}")
        values = chan[fg].astype(np.float64)
        if values.size == 0:
            continue
        mean, std = values.mean(), values.std()
        std = std if std > 0 else 1.0
        view = out[index]
        view[fg] = ((values - mean) / std).astype(np.float32)
    return out


def percentile_scale(array: np.ndarray, lo: float = 0.5, hi: float = 99.5, *, has_channels: bool = False) -> np.ndarray:
    """Scale so the ``lo``/``hi`` percentiles map to 0/1, clipped to ``[0, 1]`` (float32; zeros if equal)."""
    if not 0 <= lo < hi <= 100:
        raise ValueError(f"percentiles need 0 <= lo < hi <= 100; got ({lo}, {hi})")
    src = np.asarray(array)
    out = np.zeros(src.shape, dtype=np.float32)
    for index, chan in _per_channel(src, has_channels):
        p_lo, p_hi = np.percentile(chan, [lo, hi])
        if p_hi > p_lo:
            out[index] = np.clip((chan.astype(np.float32) - np.float32(p_lo)) / np.float32(p_hi - p_lo), 0, 1)
    return out
