"""Initialise a task model's encoder from an MAE checkpoint.

The MAE keeps its encoder at ``params["encoder"]`` and every task model (:mod:`medjax.models.heads`) at
``params["encoder"]`` too, so the encoder parameters copy one to one. A *learned* position embedding saved for
another input size is resized (linear interpolation over the patch grid, :func:`medjax.models.resize_pos_embed`);
fixed sin-cos embeddings have no parameters and are rebuilt for the new grid anyway. Decoder parameters of the
MAE are ignored.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from medjax.errors import CheckpointError


def resolve_checkpoint(path) -> tuple[Path, int | None]:
    """``(workdir, step)`` of ``path``: a run directory (latest step), its ``checkpoints/`` folder, or one step
    folder ``WORKDIR/checkpoints/<step>``. Raises CheckpointError naming the path otherwise."""
    p = Path(path).expanduser().absolute()
    if (p / "checkpoints").is_dir():
        return p, None
    if p.name == "checkpoints" and p.is_dir():
        return p.parent, None
    if p.name.isdigit() and p.parent.name == "checkpoints" and p.is_dir():
        return p.parent.parent, int(p.name)
    raise CheckpointError(f"{p}: not a run directory (with checkpoints/) or a checkpoint folder "
                          "WORKDIR/checkpoints/<step>; pass the workdir of a `medjax pretrain` run")


def read_checkpoint(path) -> tuple[dict, dict, int]:
    """``(state, meta, step)`` of a checkpoint as host numpy arrays (no model needed)."""
    from medjax.training.checkpoint import Checkpointer

    workdir, step = resolve_checkpoint(path)
    ck = Checkpointer(workdir, read_only=True)
    steps = ck.all_steps()
    if not steps:
        raise CheckpointError(f"{workdir / 'checkpoints'}: holds no checkpoint")
    state, _, meta = ck.restore_unsharded(step)
    return state, meta or {}, steps[-1] if step is None else step


def _flat(tree, prefix=()) -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, prefix + (str(k),)))
        else:
            out[prefix + (str(k),)] = v
    return out


def _saved_grid(meta: dict, tokens: int, prefix: int, spatial_dims: int) -> tuple[int, ...]:
    """Patch grid of a saved learned position embedding, from the saved config (crop size / variant patch)."""
    from medjax.config.variants import decode_variant
    from medjax.models.vit import broadcast_size

    cfg = (meta or {}).get("config") or {}
    try:
        crop = broadcast_size(tuple(cfg["data"]["crop_size"]), spatial_dims)
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
    """Copy the MAE encoder of checkpoint ``source`` into ``params["encoder"]``.

    Args:
      params: the task model's parameters (nested dict of arrays); only the ``"encoder"`` subtree changes.
      source: MAE workdir or checkpoint folder (see :func:`resolve_checkpoint`).
      grid: the task model's patch grid (patches per spatial dim), for resizing a learned position embedding.
      num_prefix: prefix tokens (CLS) of the task model's encoder.
      spatial_dims: 2 or 3.

    Returns:
      ``(new_params, report)``; report: ``source``, ``step``, ``loaded`` (arrays copied), ``resized`` (paths of
      resized position embeddings, with old and new grids).

    Raises:
      CheckpointError: no encoder in the checkpoint, a missing parameter, or a shape that cannot be adapted
      (different width, depth, patch or input channels), naming the parameter and both shapes.
    """
    from medjax.models.posembed import resize_pos_embed

    state, meta, step = read_checkpoint(source)
    saved = (state.get("params") or {}).get("encoder") if isinstance(state, dict) else None
    if not saved:
        raise CheckpointError(f"{source}: checkpoint has no params/encoder (was it written by `medjax pretrain`?)")
    if "encoder" not in params:
        raise CheckpointError("the task model has no 'encoder' parameters to initialise")
    saved_flat = _flat(saved)
    target_flat = _flat(params["encoder"])
    missing = sorted("/".join(k) for k in target_flat if k not in saved_flat)
    if missing:
        raise CheckpointError(f"{source}: the checkpoint's encoder lacks {missing[:5]}; the model config "
                              "(model.variant, model.cls_token, model.pos_embed) must match the pretraining run")
    new_flat, resized = {}, []
    for key, target in target_flat.items():
        value = np.asarray(saved_flat[key])
        name = "encoder/" + "/".join(key)
        if key[-1] == "pos_embed" and value.shape != tuple(target.shape):
            if value.ndim != 3 or value.shape[-1] != target.shape[-1]:
                raise CheckpointError(f"{source}: {name} shape {value.shape} cannot be resized to {target.shape}")
            old_grid = _saved_grid(meta, value.shape[1], num_prefix, spatial_dims)
            value = np.asarray(resize_pos_embed(value, old_grid, grid))
            resized.append({"param": name, "old_grid": list(old_grid), "new_grid": list(grid)})
        if value.shape != tuple(target.shape):
            raise CheckpointError(f"{source}: {name} has shape {value.shape} in the checkpoint but {tuple(target.shape)}"
                                  " in the model; use the pretraining model.variant/in_channels")
        new_flat[key] = value.astype(target.dtype)
    import jax

    leaves = [new_flat[tuple(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)]
              for path, _ in jax.tree_util.tree_flatten_with_path(params["encoder"])[0]]
    new_encoder = jax.tree.unflatten(jax.tree.structure(params["encoder"]), leaves)
    out = dict(params)
    out["encoder"] = new_encoder
    return out, {"source": str(source), "step": int(step), "loaded": len(leaves), "resized": resized}


def tree_like(template, saved, *, where: str = "checkpoint"):
    """``saved`` (nested dicts, keys possibly stringified by the checkpoint) arranged as ``template``'s pytree.

    Leaves are matched by their ``a/b/0/kernel`` paths and cast to the template's dtype; CheckpointError names a
    missing path or a shape mismatch.
    """
    import jax

    flat = {"/".join(k): v for k, v in _flat(saved).items()} if isinstance(saved, dict) else {}
    leaves = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(template)[0]:
        key = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
        if key not in flat:
            raise CheckpointError(f"{where}: no array for {key!r}; the checkpoint does not match its saved config")
        value = np.asarray(flat[key])
        if value.shape != tuple(leaf.shape):
            raise CheckpointError(f"{where}: {key!r} has shape {value.shape}, the model expects {tuple(leaf.shape)}")
        leaves.append(value.astype(leaf.dtype))
    return jax.tree.unflatten(jax.tree.structure(template), leaves)
