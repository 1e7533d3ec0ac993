"""Sliding-window inference for 2D and 3D images in JAX.

A model trained on crops of shape ``window`` is applied to a whole image by tiling it with overlapping windows,
predicting each window and blending the predictions with an importance map (Gaussian by default, which weighs
window centres over their borders, where context is missing).

Design:

- **Window positions.** Along each axis of size ``S`` (after padding to at least the window ``w``) the stride is
  ``max(1, int(w * (1 - overlap)))``; positions ``0, stride, 2*stride, ...`` and a last one clamped to ``S - w``,
  so every voxel is covered and windows never leave the image. Images smaller than the window are padded at the
  end with ``pad_value`` and the output is cropped back.
- **The model compiles once, whatever the image size.** Three jitted pieces run per window batch: gather the
  batch with ``lax.dynamic_slice``; call ``predict_fn`` on ``(batch_size, *window, C)``; add the weighted
  predictions and weights into on-device accumulators with ``lax.dynamic_update_slice`` (a ``fori_loop`` over
  the batch, so overlapping windows of one batch add up), donating the accumulators. The last partial batch is
  padded with dummy windows whose weight is zero. Only the gather and the accumulation (no model inside, a
  fraction of a second to compile) depend on the image shape; the model call is compiled once per (window,
  batch_size, ``predict_fn``, ``fn_args`` shapes), so a folder of volumes of different sizes compiles the model
  once. Pass the same ``predict_fn`` object (not a fresh lambda) to reuse it across calls. The host loop only
  dispatches: the device works through the batches without a round trip.
- **Memory** is the input, the two accumulators ``(B, *S, K)`` and ``(B, *S, 1)`` float32 (inherent to a
  dense output) plus one window batch of activations, whatever the number of windows. Accumulating on the device
  avoids a host round trip per window batch.
- **Parameters** should be passed through ``fn_args`` (``predict_fn(windows, *fn_args)``) rather than closed
  over, so they enter the compiled program as arguments, not as embedded constants. For a Flax NNX model:
  ``graphdef, state = nnx.split(model)``; ``fn = lambda x, s: nnx.merge(graphdef, s)(x)``; ``fn_args=(state,)``.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["sliding_window_inference", "importance_map", "window_starts"]


def window_starts(size: int, window: int, overlap: float) -> list[int]:
    """Start indices of windows of length ``window`` covering ``[0, size)`` (``size >= window``), see module doc."""
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if window < 1 or size < window:
        raise ValueError(f"window {window} must be in [1, size={size}]")
    stride = max(1, int(window * (1.0 - overlap)))
    n = math.ceil((size - window) / stride) + 1
    return [min(i * stride, size - window) for i in range(n)]


def tile(inputs: np.ndarray, window, overlap: float) -> tuple[np.ndarray, list]:
    """Zero-pad ``inputs`` ``(N, *S, C)`` to at least ``window`` and list the windows tiling each sample.

    Returns ``(padded, positions)``; positions ``[(sample index, starts), ...]`` (starts per spatial dim, from
    :func:`window_starts`), the layout :func:`medjax.finetune.evaluate.window_classes` reads.
    """
    window = tuple(int(w) for w in window)
    spatial = inputs.shape[1:-1]
    padded = tuple(max(s, w) for s, w in zip(spatial, window))
    if padded != spatial:
        inputs = np.pad(inputs, [(0, 0)] + [(0, p - s) for p, s in zip(padded, spatial)] + [(0, 0)])
    per_axis = [window_starts(p, w, overlap) for p, w in zip(padded, window)]
    return inputs, [(i, st) for i in range(inputs.shape[0]) for st in itertools.product(*per_axis)]


def importance_map(window: Sequence[int], mode: str = "gaussian", sigma_scale: float | Sequence[float] = 0.125):
    """Blending weights ``(*window)`` float32 with maximum 1.

    ``"constant"``: all ones (plain averaging of overlapping windows). ``"gaussian"``: separable Gaussian centred
    on the window centre ``(w - 1) / 2`` with standard deviation ``sigma_scale * w`` voxels per axis; values that
    underflow to zero are raised to the smallest positive value so every voxel keeps a positive weight.
    """
    window = tuple(int(w) for w in window)
    if mode == "constant":
        return np.ones(window, dtype=np.float32)
    if mode != "gaussian":
        raise ValueError(f"mode must be 'gaussian' or 'constant', got {mode!r}")
    scales = np.broadcast_to(np.asarray(sigma_scale, dtype=np.float64), (len(window),))
    if np.any(scales <= 0):
        raise ValueError(f"sigma_scale must be positive, got {sigma_scale}")
    m = np.ones((), dtype=np.float64)
    for w, sc in zip(window, scales):
        i = np.arange(w, dtype=np.float64)
        g = np.exp(-0.5 * ((i - (w - 1) / 2.0) / (sc * w)) ** 2)
        m = np.multiply.outer(m, g)
    m = (m / m.max()).astype(np.float32)
    positive = m[m > 0]
    return np.where(m > 0, m, positive.min()).astype(np.float32)


def _check_output(predict_fn, fn_args, bs: int, window: tuple[int, ...], channels: int, dtype) -> int:
    """K of ``predict_fn`` on ``(bs, *window, C)`` windows (abstract evaluation); ValueError for a wrong shape."""
    win_spec = jax.ShapeDtypeStruct((bs, *window, channels), dtype)
    try:  # through the jitted call, so its trace is cached with the compilation: nothing is traced twice
        out_spec = _predict.eval_shape(win_spec, fn_args, predict_fn=predict_fn)
    except TypeError:  # not an array-valued function: trace it plainly for the error below
        out_spec = jax.eval_shape(predict_fn, win_spec, *fn_args)
    nd = len(window)
    if not hasattr(out_spec, "shape") or out_spec.shape[:-1] != (bs, *window) or len(out_spec.shape) != nd + 2:
        raise ValueError(f"predict_fn must map windows {win_spec.shape} to (batch, *window, K) = "
                         f"({bs}, {', '.join(map(str, window))}, K), got {getattr(out_spec, 'shape', out_spec)}")
    return int(out_spec.shape[-1])


@functools.partial(jax.jit, static_argnames=("window",))
def _extract(x, starts, *, window):
    """Windows ``(bs, *window, C)`` of ``x (B, *P, C)`` at ``starts (bs, 1+nd)`` (sample index, then corner)."""
    zero = jnp.zeros((), jnp.int32)
    return jax.vmap(lambda st: jax.lax.dynamic_slice(x, (*st, zero), (1, *window, x.shape[-1]))[0])(starts)


@functools.partial(jax.jit, static_argnames=("predict_fn",))
def _predict(windows, fn_args, *, predict_fn):
    """The model on one window batch, float32: compiled once per window batch shape, whatever the image."""
    return predict_fn(windows, *fn_args).astype(jnp.float32)


@functools.partial(jax.jit, donate_argnums=(0, 1))
def _accumulate(acc, wsum, preds, starts, valid, weight):
    """Add ``preds * weight`` and ``weight`` (times ``valid``, 0 for padding windows) into the accumulators at
    ``starts``, one window after another so that overlapping windows of one batch add up."""
    zero = jnp.zeros((), jnp.int32)
    window = weight.shape

    def add(j, carry):
        acc, wsum = carry
        w = weight * valid[j]
        idx = (*starts[j], zero)
        cur = jax.lax.dynamic_slice(acc, idx, (1, *window, acc.shape[-1]))
        acc = jax.lax.dynamic_update_slice(acc, cur + (preds[j] * w[..., None])[None], idx)
        curw = jax.lax.dynamic_slice(wsum, idx, (1, *window, 1))
        wsum = jax.lax.dynamic_update_slice(wsum, curw + w[None, ..., None], idx)
        return acc, wsum

    return jax.lax.fori_loop(0, preds.shape[0], add, (acc, wsum))


@jax.jit
def _normalise(acc, wsum):
    return acc / wsum


def sliding_window_inference(
    inputs,
    window: Sequence[int],
    predict_fn: Callable,
    *,
    overlap: float = 0.5,
    batch_size: int = 4,
    mode: str = "gaussian",
    sigma_scale: float | Sequence[float] = 0.125,
    fn_args: tuple = (),
    pad_value: float = 0.0,
) -> jax.Array:
    """Predict a whole image window by window and blend the overlapping predictions.

    Args:
      inputs: one image ``(*S, C)`` or a batch ``(B, *S, C)``, channels last, with ``len(S) == len(window)``
        (2D: ``(X, Y, C)``; 3D: ``(X, Y, Z, C)``).
      window: window size in voxels per spatial axis, e.g. ``(96, 96, 96)``.
      predict_fn: ``predict_fn(windows (batch_size, *window, C), *fn_args) -> (batch_size, *window, K)``, a
        JAX-traceable function (it is traced inside one jitted program).
      overlap: fraction of the window shared by neighbouring windows along each axis, in ``[0, 1)``.
      batch_size: windows per ``predict_fn`` call.
      mode: ``"gaussian"`` or ``"constant"`` blending (:func:`importance_map`).
      sigma_scale: Gaussian standard deviation as a fraction of the window size (scalar or one per axis).
      fn_args: extra arguments of ``predict_fn`` (e.g. model parameters), passed into the compiled program.
      pad_value: value used to pad images smaller than the window.
    Returns:
      float32 ``jax.Array`` of shape ``(*S, K)`` (or ``(B, *S, K)`` for a batch): the importance-weighted mean
      of the window predictions covering each voxel.
    """
    x = jnp.asarray(inputs)
    window = tuple(int(w) for w in window)
    nd = len(window)
    if nd not in (2, 3) or any(w < 1 for w in window):
        raise ValueError(f"window must give 2 or 3 positive sizes, got {window}")
    if x.ndim == nd + 1:
        batched = False
        x = x[None]
    elif x.ndim == nd + 2:
        batched = True
    else:
        raise ValueError(f"inputs of shape {x.shape} do not match a {nd}D window {window}: expected (*S, C) or "
                         f"(B, *S, C) with {nd} spatial axes")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    spatial = x.shape[1:-1]
    padded = tuple(max(s, w) for s, w in zip(spatial, window))
    if padded != spatial:
        pad = [(0, 0)] + [(0, p - s) for p, s in zip(padded, spatial)] + [(0, 0)]
        x = jnp.pad(x, pad, constant_values=pad_value)
    per_axis = [window_starts(p, w, overlap) for p, w in zip(padded, window)]
    grid = np.array(list(itertools.product(range(x.shape[0]), *per_axis)), dtype=np.int32)
    n = grid.shape[0]
    n_batches = math.ceil(n / batch_size)
    starts = np.zeros((n_batches * batch_size, nd + 1), dtype=np.int32)
    starts[:n] = grid
    valid = np.zeros(n_batches * batch_size, dtype=np.float32)
    valid[:n] = 1.0
    weight = jnp.asarray(importance_map(window, mode, sigma_scale))
    fn_args = tuple(fn_args)
    k = _check_output(predict_fn, fn_args, batch_size, window, x.shape[-1], x.dtype)
    starts = jnp.asarray(starts.reshape(n_batches, batch_size, nd + 1))
    valid = jnp.asarray(valid.reshape(n_batches, batch_size))
    acc = jnp.zeros((*x.shape[:-1], k), jnp.float32)
    wsum = jnp.zeros((*x.shape[:-1], 1), jnp.float32)
    for b in range(n_batches):  # dispatched asynchronously: the host runs ahead of the device
        preds = _predict(_extract(x, starts[b], window=window), fn_args, predict_fn=predict_fn)
        acc, wsum = _accumulate(acc, wsum, preds, starts[b], valid[b], weight)
    out = _normalise(acc, wsum)
    if padded != spatial:
        out = out[(slice(None), *(slice(0, s) for s in spatial))]
    return out if batched else out[0]
