"""The frozen teacher: its encoder read from a run (an MAE, a distilled student, an imported network) onto the
mesh, built for the student's crops.

The teacher's architecture comes from the config saved with its checkpoint; only ``params/encoder`` is read (no
decoder, no optimizer state), straight into the shardings of its parameters (:mod:`medjax.training.restore`). A
learned position embedding saved for another crop size is resized to the student's patch grid, as fine-tuning
does (:func:`medjax.finetune.init.load_encoder`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from medjax.errors import CheckpointError, ConfigError


@dataclasses.dataclass(frozen=True)
class Teacher:
    """``model_def`` (static; ``model_def.merge(params).encoder`` is the ViT), ``params`` (``{"encoder": ...}``,
    placed on the mesh), ``shardings`` (like ``params``), ``width`` (D), ``grid`` (patches per spatial dim),
    ``num_prefix`` (CLS tokens), ``source`` (checkpoint folder read), ``config`` (its saved config dict) and
    ``depth`` (blocks)."""

    model_def: Any
    params: Any
    shardings: Any
    width: int
    grid: tuple
    num_prefix: int
    source: str
    config: dict
    depth: int = 0


def teacher_model_config(saved_cfg: dict, where: str):
    """The teacher's :class:`~medjax.config.schema.ModelConfig` from the config dict saved with its checkpoint."""
    from medjax.config.overrides import from_dict
    from medjax.config.schema import ModelConfig

    if not saved_cfg or "model" not in saved_cfg:
        raise CheckpointError(f"{where} saved no model config; distillation needs the teacher's architecture "
                              "(pass a run written by `medjax pretrain`, `medjax distill` or `medjax import-weights`)")
    try:
        return from_dict(ModelConfig, saved_cfg["model"], "model")
    except (ConfigError, TypeError, ValueError) as e:  # a config of another medjax version
        raise CheckpointError(f"{where}: the saved config cannot be read ({e})") from None


def load_teacher(source, cfg, mesh, rules) -> Teacher:
    """Read the teacher encoder of run ``source`` for the student config ``cfg`` (its data: crop size, spatial dims).

    Raises:
      CheckpointError: no checkpoint / no encoder / unreadable config at ``source``.
      ConfigError: input channels differ from ``model.in_channels``.
    """
    from flax import nnx

    from medjax.config.dims import broadcast_size
    from medjax.distill.student import EncoderOnly
    from medjax.finetune.init import load_encoder
    from medjax.training.restore import open_checkpoint

    if not source:
        raise ConfigError("distill.teacher is empty: pass --teacher WORKDIR (a `medjax pretrain` run or checkpoint)")
    saved = open_checkpoint(source)
    model_cfg = teacher_model_config(saved.meta.get("config") or {}, saved.where)
    if model_cfg.in_channels != cfg.model.in_channels:
        raise ConfigError(f"the teacher ({saved.where}) takes {model_cfg.in_channels} input channel(s), "
                          f"model.in_channels={cfg.model.in_channels}; both must see the same volumes")
    size = broadcast_size(cfg.data.crop_size, cfg.data.spatial_dims, "data.crop_size")
    model_def, target, _, shardings, m = placed_abstract(
        lambda: EncoderOnly(model_cfg, spatial_dims=cfg.data.spatial_dims, input_size=size, rngs=nnx.Rngs(0)),
        mesh, rules)
    width, grid, prefix = m.encoder.width, tuple(m.encoder.grid), m.encoder.num_prefix_tokens
    params, _ = load_encoder(target, saved.directory / str(saved.step), grid=grid, num_prefix=prefix,
                             spatial_dims=cfg.data.spatial_dims)
    return Teacher(model_def=model_def, params=params, shardings=shardings["params"], width=width, grid=grid,
                   num_prefix=prefix, source=str(saved.directory / str(saved.step)), config=saved.meta.get("config"),
                   depth=len(m.encoder.blocks))


def placed_abstract(build, mesh, rules):
    """``(model_def, params, model_state, shardings, module)`` of the module ``build()`` makes, without allocating
    it: ``params`` and ``model_state`` are ``jax.ShapeDtypeStruct`` trees carrying their shardings on ``mesh``
    (parameters by their logical axes, the rest replicated), ready for :mod:`medjax.training.restore`;
    ``shardings`` covers ``{"params": ..., "model_state": ...}``; ``module`` is the abstract module (for its
    static attributes only)."""
    import jax
    from flax import nnx

    from medjax.parallel.rules import use_mesh
    from medjax.parallel.sharding import logical_names, shardings_by_path
    from medjax.training.state import split_model

    holder: dict = {}

    def init():
        m = build()
        holder["names"] = {f"params/{k}": v for k, v in logical_names(nnx.state(m, nnx.Param)).items()}
        model_def, params, model_state = split_model(m)
        holder["model_def"], holder["module"] = model_def, m
        return {"params": params, "model_state": model_state}

    with use_mesh(mesh, rules):
        abstract = jax.eval_shape(init)
        shardings = shardings_by_path(abstract, holder["names"], mesh, rules)
    placed = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    return holder["model_def"], placed["params"], placed["model_state"], shardings, holder["module"]
