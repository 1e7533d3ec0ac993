"""Initialise a task model's encoder from an MAE checkpoint.

The MAE keeps its encoder at ``params["encoder"]`` and every task model (:mod:`medjax.models.heads`) at
``params["encoder"]`` too, so the encoder parameters copy one to one. They are read with
:mod:`medjax.training.restore` straight into the shardings of the task model's parameters (no host copy of the
model, and neither the MAE decoder nor its optimizer state is read). A *learned* position embedding saved for
another input size is resized (linear interpolation over the patch grid, :func:`medjax.models.resize_pos_embed`)
on the devices; fixed sin-cos embeddings have no parameters and are rebuilt for the new grid anyway.
"""

from __future__ import annotations

import math

from medjax.errors import CheckpointError
from medjax.training.restore import resolve_checkpoint  # noqa: F401  (re-exported: medjax.finetune.resolve_checkpoint)


def read_checkpoint(path) -> tuple[dict, dict, int]:
    """``(state, meta, step)`` of a checkpoint without a model: ``state`` holds the ``params`` (and
    ``model_state``) subtrees as host numpy arrays (no optimizer state); see
    :func:`medjax.training.restore.read_arrays`, which this calls."""
    from medjax.training.restore import read_arrays

    state, saved = read_arrays(path, ("params", "model_state"))
    return state, saved.meta, saved.step


def _saved_grid(meta: dict, tokens: int, prefix: int, spatial_dims: int) -> tuple[int, ...]:
    """Patch grid of a saved learned position embedding, from the saved config (crop size / variant patch)."""
    from medjax.config.dims import broadcast_size
    from medjax.config.variants import decode_variant

    cfg = (meta or {}).get("config") or {}
    try:
        crop = broadcast_size(tuple(cfg["data"]["crop_size"]), spatial_dims, "data.crop_size")
        patch = decode_variant(cfg["model"]["variant"], spatial_dims).patch
        grid = tuple(c // p for c, p in zip(crop, patch))
    except (KeyError, TypeError, ValueError):
        side = round((tokens - prefix) ** (1.0 / spatial_dims))
        grid = (side,) * spatial_dims
    if math.prod(grid) != tokens - prefix:
        raise CheckpointError(f"saved position embedding has {tokens} tokens, which does not match the saved grid "
                              f"{grid} plus {prefix} prefix token(s)")
    return grid


def load_encoder(params: dict, source, *, grid, num_prefix: int, spatial_dims: int) -> tuple[dict, dict]:
    """The task model's parameters with ``params["encoder"]`` read from the MAE checkpoint ``source``.

    Args:
      params: the task model's parameters (nested dict of ``jax.Array``, possibly sharded, or of
        ``jax.ShapeDtypeStruct`` with shardings); only the ``"encoder"`` subtree is replaced, each array in the
        sharding and dtype of the one it replaces.
      source: MAE workdir or checkpoint folder (see :func:`medjax.training.restore.resolve_checkpoint`).
      grid: the task model's patch grid (patches per spatial dim), for resizing a learned position embedding.
      num_prefix: prefix tokens (CLS) of the task model's encoder.
      spatial_dims: 2 or 3.

    Returns:
      ``(new_params, report)``; report: ``source``, ``step``, ``loaded`` (arrays read), ``resized`` (paths of
      resized position embeddings, with old and new grids).

    Raises:
      CheckpointError: no encoder in the checkpoint, a missing parameter, or a shape that cannot be adapted
      (different width, depth, patch or input channels), naming the parameter and both shapes.
    """
    import jax

    from medjax.models.posembed import resize_pos_embed
    from medjax.training.restore import abstract_like, open_checkpoint, restore_arrays

    if "encoder" not in params:
        raise CheckpointError("the task model has no 'encoder' parameters to initialise")
    saved = open_checkpoint(source)
    if not saved.keys("params/encoder"):
        raise CheckpointError(f"{source}: checkpoint has no params/encoder (was it written by `medjax pretrain`?)")
    encoder = abstract_like(params["encoder"])
    resize = {}
    pos = encoder.get("pos_embed") if isinstance(encoder, dict) else None
    shape = saved.arrays.get("params/encoder/pos_embed", (None,))[0]
    if pos is not None and shape is not None and shape != tuple(pos.shape):
        if len(shape) != 3 or shape[-1] != pos.shape[-1]:
            raise CheckpointError(f"{source}: encoder/pos_embed shape {shape} cannot be resized to {tuple(pos.shape)}")
        old_grid = _saved_grid(saved.meta, shape[1], num_prefix, spatial_dims)
        if shape[1] - math.prod(old_grid) != num_prefix:
            raise CheckpointError(f"{source}: the saved position embedding has {shape[1] - math.prod(old_grid)} "
                                  f"prefix (CLS) token(s), the model {num_prefix}; set model.cls_token as in pretraining")
        replicated = pos.sharding
        if isinstance(replicated, jax.sharding.NamedSharding):  # read whole (it is small), then resize
            replicated = jax.sharding.NamedSharding(replicated.mesh, jax.sharding.PartitionSpec())
        resize["pos_embed"] = (old_grid, pos)
        encoder = dict(encoder, pos_embed=jax.ShapeDtypeStruct(shape, pos.dtype, sharding=replicated))
    try:
        loaded = restore_arrays(saved, {"params": {"encoder": encoder}})["params"]["encoder"]
    except CheckpointError as e:
        raise CheckpointError(f"{e}; the model config (model.variant, model.cls_token, model.pos_embed, "
                              "model.in_channels) must match the pretraining run") from None
    report = {"source": str(source), "step": int(saved.step), "loaded": len(jax.tree.leaves(loaded)), "resized": []}
    for name, (old_grid, target) in resize.items():
        def fn(pe, old_grid=old_grid, dtype=target.dtype):
            return resize_pos_embed(pe, old_grid, tuple(grid)).astype(dtype)

        loaded[name] = jax.jit(fn, out_shardings=target.sharding)(loaded[name])
        report["resized"].append({"param": f"encoder/{name}", "old_grid": list(old_grid), "new_grid": list(grid)})
    out = dict(params)
    out["encoder"] = loaded
    return out, report
