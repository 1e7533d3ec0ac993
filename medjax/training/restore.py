"""Parameters from a checkpoint: the one place that reads model arrays (or a part of them) out of a run.

Fine-tuning (the MAE encoder into a task model, :mod:`medjax.finetune.init`), ``medjax predict`` (a fine-tuned
model, :mod:`medjax.finetune.predict_io`) and the viewers (an MAE run, :mod:`medjax.interactive.checkpoints`) all
go through here. Arrays are read onto *abstract targets*: pytrees of ``jax.ShapeDtypeStruct`` whose shardings say
where each array goes, so every device reads only its own shards and no full copy of the parameters is built on
one device or in host memory first. Only the subtrees asked for are read: a checkpoint's optimizer state
(typically twice the size of the parameters) is never loaded.

A checkpoint is named by its run directory ``WORKDIR`` (the latest step), ``WORKDIR/checkpoints``, or one step
``WORKDIR/checkpoints/<step>`` (see :func:`resolve_checkpoint`). The layout is that of
:class:`medjax.training.checkpoint.Checkpointer`: items ``state`` (the train-state pytree), ``meta`` (JSON with the
saved config) and ``data``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medjax.errors import CheckpointError

SUBDIR = "checkpoints"


def resolve_checkpoint(path) -> tuple[Path, int | None]:
    """``(workdir, step)`` named by ``path``: a run directory holding ``checkpoints/`` (step None: the latest),
    its ``checkpoints/`` folder, or one step folder ``WORKDIR/checkpoints/<step>``.

    Raises:
      CheckpointError naming the path when it is none of those.
    """
    p = Path(path).expanduser().absolute()
    if p.name.isdigit() and p.parent.name == SUBDIR and p.is_dir():
        return p.parent.parent, int(p.name)
    if p.name == SUBDIR and p.is_dir():
        return p.parent, None
    if (p / SUBDIR).is_dir():
        return p, None
    raise CheckpointError(f"{p}: not a run directory (WORKDIR with checkpoints/) nor a checkpoint folder "
                          "WORKDIR/checkpoints/<step>; pass the workdir of a `medjax pretrain` or `medjax finetune` "
                          "run")


@dataclass(frozen=True)
class SavedCheckpoint:
    """One step of a run, opened without reading any array.

    Attributes:
      workdir: the run directory.
      step: the checkpoint step.
      directory: ``WORKDIR/checkpoints``.
      meta: the ``meta`` JSON saved with the step (``{}`` when none); ``meta["config"]`` is the run's config.
      arrays: ``{"params/encoder/pos_embed": (shape, dtype), ...}`` of every saved state array.
    """

    workdir: Path
    step: int
    directory: Path
    meta: dict = field(default_factory=dict)
    arrays: dict = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"checkpoint at step {self.step} in {self.directory}"

    def keys(self, prefix: str) -> list[str]:
        """Saved array paths under ``prefix`` (e.g. ``"params"``), sorted."""
        head = prefix.rstrip("/") + "/"
        return sorted(k for k in self.arrays if k.startswith(head))

    def subtree(self, prefix: str) -> dict[str, tuple]:
        """``{path relative to prefix: (shape, dtype)}`` of the arrays under ``prefix``."""
        head = prefix.rstrip("/") + "/"
        return {k[len(head):]: v for k, v in self.arrays.items() if k.startswith(head)}


def _manager(directory: Path):
    """A read-only orbax CheckpointManager that can read part of the ``state`` item."""
    import orbax.checkpoint as ocp
    from absl import logging as absl_logging

    options = ocp.CheckpointManagerOptions(max_to_keep=None, save_interval_steps=0, create=False, read_only=True,
                                           cleanup_tmp_directories=False)
    # every item a checkpoint holds has a handler (an unknown "data" item makes orbax warn on each restore)
    handlers = {"state": ocp.PyTreeCheckpointHandler(), "meta": ocp.JsonCheckpointHandler(),
                "data": ocp.JsonCheckpointHandler()}
    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)  # orbax warns that a read-only manager will not save
    try:
        return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)
    finally:
        absl_logging.set_verbosity(verbosity)


def open_checkpoint(path, step: int | None = None) -> SavedCheckpoint:
    """Open the checkpoint named by ``path`` at ``step`` (default: the step ``path`` names, else the latest).

    Reads the step list, the meta JSON and the array metadata (shapes and dtypes), no array data.

    Raises:
      CheckpointError: not a run, no checkpoint yet, or no checkpoint at ``step`` (listing the available ones).
    """
    import jax
    import orbax.checkpoint as ocp

    from medjax.parallel.sharding import path_str

    workdir, named = resolve_checkpoint(path)
    directory = workdir / SUBDIR
    mgr = _manager(directory)
    try:
        steps = sorted(int(s) for s in mgr.all_steps())
        if not steps:
            raise CheckpointError(f"no checkpoint in {directory}; the run has not saved one yet")
        step = (named if step is None else int(step))
        step = steps[-1] if step is None else step
        if step not in steps:
            raise CheckpointError(f"no checkpoint at step {step} in {directory}; available steps: {steps}")
        tree = mgr.item_metadata(step)["state"]
        tree = getattr(tree, "tree", tree)
        arrays = {path_str(p): (tuple(m.shape), m.dtype)
                  for p, m in jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))[0]}
        meta = None
        if (directory / str(step) / "meta").exists():
            meta = mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    finally:
        mgr.close()
    return SavedCheckpoint(workdir=workdir, step=step, directory=directory, meta=dict(meta or {}), arrays=arrays)


def abstract_like(tree, sharding=None):
    """``jax.ShapeDtypeStruct`` leaves for ``tree`` (arrays or structs), keeping each leaf's sharding, else
    ``sharding``, else the default device."""
    import jax

    default = sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])

    def one(x):
        return jax.ShapeDtypeStruct(tuple(x.shape), x.dtype, sharding=getattr(x, "sharding", None) or default)

    return jax.tree.map(one, tree)


def restore_arrays(saved: SavedCheckpoint, target: dict, *, exact: bool = False) -> dict:
    """Read the arrays of ``target`` from ``saved``, straight into their shardings.

    Args:
      saved: from :func:`open_checkpoint`.
      target: nested dicts mirroring the saved state from its top level, e.g. ``{"params": {"encoder": {...}}}``
        or ``{"params": ..., "model_state": ...}``, whose leaves are ``jax.ShapeDtypeStruct`` (a leaf without a
        sharding goes to the default device). Arrays are cast to the target dtypes. Empty subtrees are skipped.
      exact: also require that the checkpoint holds nothing under each top-level key of ``target`` that the
        target lacks (a model restored whole); without it a subtree may be read (an encoder out of an MAE).

    Returns:
      ``target``'s structure with ``jax.Array`` leaves.

    Raises:
      CheckpointError naming the checkpoint and the parameter: a path the checkpoint lacks, a shape that differs
      (both shapes), or (``exact``) saved arrays the target lacks.
    """
    import jax
    import orbax.checkpoint as ocp

    from medjax.parallel.sharding import path_str

    default = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda x: x if getattr(x, "sharding", None) is not None
                          else jax.ShapeDtypeStruct(tuple(x.shape), x.dtype, sharding=default), target)
    wanted = {path_str(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(target)[0]}
    if not wanted:
        return target
    for key, leaf in sorted(wanted.items()):
        if key not in saved.arrays:
            raise CheckpointError(f"{saved.where} lacks parameter {key!r}; it was written for another model "
                                  "(compare model.variant, model.cls_token, model.pos_embed and the task with its "
                                  "saved config: `medjax checkpoint info`)")
        shape = saved.arrays[key][0]
        if shape != tuple(leaf.shape):
            raise CheckpointError(f"{saved.where}: parameter {key!r} has shape {shape}, the model expects "
                                  f"{tuple(leaf.shape)}; build the model from the config the checkpoint was saved "
                                  "with")
    if exact:
        tops = {k.split("/", 1)[0] for k in wanted}
        extra = sorted(k for top in tops for k in saved.keys(top) if k not in wanted)
        if extra:
            raise CheckpointError(f"{saved.where} has parameters the model lacks: {extra[:5]}")
    args = ocp.args.PyTreeRestore(item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                                  partial_restore=True)
    mgr = _manager(saved.directory)
    try:
        out = mgr.restore(saved.step, args=ocp.args.Composite(state=args))["state"]
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{saved.where} could not be read onto the model: {e}") from e
    finally:
        mgr.close()
    return jax.tree.map(lambda _, v: v, target, out)


def read_arrays(path, prefixes=("params",), *, step: int | None = None) -> tuple[dict, SavedCheckpoint]:
    """The saved subtrees ``prefixes`` as nested dicts of host ``np.ndarray`` (as saved: shapes, dtypes, string
    keys), without a model: for tools that write the arrays elsewhere (weight export, inspection).

    Returns ``({prefix: tree, ...}, saved)``; a prefix the checkpoint lacks is absent from the dict.
    """
    import jax
    import numpy as np

    saved = path if isinstance(path, SavedCheckpoint) else open_checkpoint(path, step)
    cpu = jax.sharding.SingleDeviceSharding(jax.local_devices(backend="cpu")[0])
    target: dict = {}
    for key, (shape, dtype) in saved.arrays.items():
        parts = key.split("/")
        if parts[0] not in prefixes:
            continue
        node = target
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = jax.ShapeDtypeStruct(shape, dtype, sharding=cpu)
    out = restore_arrays(saved, target) if target else {}
    return jax.tree.map(np.asarray, out), saved


def restore_model(path, abstract_params, abstract_model_state=None, *, step: int | None = None
                  ) -> tuple[Any, Any, SavedCheckpoint]:
    """``(params, model_state, saved)`` of a whole model saved in the train state at ``path`` (a run or step
    folder, or a :class:`SavedCheckpoint` already opened).

    ``abstract_params`` / ``abstract_model_state``: the model's pure-dict trees (from
    :func:`medjax.training.state.split_model` under ``jax.eval_shape``), leaves with or without shardings.
    The checkpoint must hold exactly the model's parameters.
    """
    saved = path if isinstance(path, SavedCheckpoint) else open_checkpoint(path, step)
    target = {"params": abstract_params}
    if abstract_model_state:
        import jax

        if jax.tree.leaves(abstract_model_state) and not saved.keys("model_state"):
            raise CheckpointError(f"{saved.where} lacks the model state (e.g. normalisation statistics)")
        target["model_state"] = abstract_model_state
    out = restore_arrays(saved, target, exact=True)
    return out["params"], out.get("model_state", abstract_model_state or {}), saved
