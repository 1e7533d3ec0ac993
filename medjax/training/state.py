"""The train state: a pytree of arrays only (parameters, optimizer state, step, base RNG key, non-finite counter),
plus a static :class:`ModelDef` (the NNX graph definition) that turns parameters back into a module.

Parameters are kept as plain nested dicts of arrays (``nnx.State.to_pure_dict()``) so checkpoints, optimizer
masks and digests see stable paths such as ``params/encoder/blocks/0/attn/qkv/kernel``.

The model's RNG streams (dropout, drop-path) are *not* carried: each step rebuilds them from the step key, so a
resumed run draws exactly the same randomness as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from medjax.config.dims import broadcast_size  # noqa: F401  (one home; also imported from here)
from medjax.config.schema import Config


@dataclasses.dataclass(frozen=True, eq=False)
class ModelDef:
    """Static description of the model: NNX graph definition plus the structure of its RNG streams.

    Hashed by identity, so a jitted step traces once per ``ModelDef``.
    """

    graphdef: Any
    rng_treedef: Any  # treedef of the model's nnx.RngState (None if the model keeps no RNG streams)
    rng_kinds: tuple[str, ...] = ()  # per RNG leaf: "key" (a PRNG key) or "count" (uint32 counter)

    def merge(self, params, model_state=None, key: jax.Array | None = None) -> nnx.Module:
        """The NNX module for ``params`` (pure dict); its RNG streams are seeded from ``key`` (a typed PRNG key)."""
        parts = [params]
        if self.rng_treedef is not None:
            key = jax.random.key(0) if key is None else key
            leaves = []
            for i, kind in enumerate(self.rng_kinds):
                if kind == "key":
                    leaves.append(jax.random.fold_in(key, i))
                else:
                    leaves.append(jnp.zeros((), jnp.uint32))
            parts.append(jax.tree.unflatten(self.rng_treedef, leaves))
        if model_state:
            parts.append(model_state)
        return nnx.merge(self.graphdef, *parts)


@struct.dataclass
class TrainState:
    """Everything a step reads and writes; a pytree of arrays (checkpointed as is).

    Attributes:
      step: ``()`` int32, optimizer steps taken (including skipped non-finite steps).
      params: nested dict of float32 parameter arrays.
      opt_state: optax state for ``params``.
      rng: ``(2,)`` uint32 base key data; step ``s`` uses ``fold_in(key, s)`` (masking, dropout).
      nonfinite_count: ``()`` int32, consecutive steps whose loss or gradient norm was not finite.
      model_state: nested dict of non-parameter, non-RNG model variables (empty for ViT/MAE).
    """

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
    nonfinite_count: jax.Array
    model_state: Any = struct.field(default_factory=dict)


def input_shape(cfg: Config) -> tuple[int, ...]:
    """Per-sample model input ``(*crop, C)`` in voxels, channels last."""
    return (*broadcast_size(cfg.data.crop_size, cfg.data.spatial_dims, "data.crop_size"), cfg.model.in_channels)


def build_model(cfg: Config, seed: int | None = None) -> nnx.Module:
    """The MAE described by ``cfg`` with parameters initialised from ``seed`` (default ``cfg.train.seed``)."""
    from medjax.models import MAE

    seed = cfg.train.seed if seed is None else seed
    return MAE(
        cfg.model,
        spatial_dims=cfg.data.spatial_dims,
        input_size=broadcast_size(cfg.data.crop_size, cfg.data.spatial_dims, "data.crop_size"),
        rngs=nnx.Rngs(seed),
    )


def split_model(model: nnx.Module) -> tuple[ModelDef, dict, dict]:
    """``(model_def, params, model_state)`` with params/model_state as pure dicts of arrays."""
    graphdef, params, rng_state, rest = nnx.split(model, nnx.Param, nnx.RngState, ...)
    leaves, treedef = jax.tree.flatten(rng_state)
    if leaves:
        kinds = tuple(
            "key" if jnp.issubdtype(getattr(leaf, "dtype", np.float32), jax.dtypes.prng_key) else "count"
            for leaf in leaves
        )
        model_def = ModelDef(graphdef, treedef, kinds)
    else:
        model_def = ModelDef(graphdef, None, ())
    return model_def, nnx.to_pure_dict(params), nnx.to_pure_dict(rest)


def abstract_model(build) -> tuple[ModelDef, dict, dict]:
    """``(model_def, params, model_state)`` of the model ``build()`` returns, traced under ``jax.eval_shape``:
    the two trees hold ``jax.ShapeDtypeStruct`` leaves (restore targets), nothing is allocated."""
    holder = {}

    def trace():
        model_def, params, model_state = split_model(build())
        holder["model_def"] = model_def
        return params, model_state

    params, model_state = jax.eval_shape(trace)
    return holder["model_def"], params, model_state


def init_train_state(model: nnx.Module, tx, seed: int) -> tuple[ModelDef, TrainState]:
    """Split ``model`` and build its :class:`TrainState` (step 0). Call under ``jax.jit``/``eval_shape`` for
    sharded creation (see :func:`create_train_state`)."""
    model_def, params, model_state = split_model(model)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        rng=jax.random.key_data(jax.random.key(seed)),
        nonfinite_count=jnp.zeros((), jnp.int32),
        model_state=model_state,
    )
    return model_def, state


# XLA options for compiling the step-0 init on the CPU (see StateSpec.init)
_CPU_INIT_OPTIONS = {"xla_backend_optimization_level": 0}


@dataclasses.dataclass(frozen=True, eq=False)
class StateSpec:
    """What is known about the train state before any array exists.

    Attributes:
      model_def: the static model description.
      abstract: TrainState of ``jax.ShapeDtypeStruct`` (no shardings).
      shardings: TrainState of ``NamedSharding`` (parameters by their logical axes, optimizer moments mirroring
        them, scalars replicated).
      mesh, rules: the mesh and logical-axis rules the shardings were derived with.
    """

    model_def: ModelDef
    abstract: Any
    shardings: Any
    mesh: Any
    rules: Any
    _init: Callable

    def init(self) -> TrainState:
        """Materialise the step-0 state directly sharded (``jit(init, out_shardings=shardings)``)."""
        from medjax.parallel.rules import use_mesh

        with use_mesh(self.mesh, self.rules):
            init = jax.jit(self._init, out_shardings=self.shardings)
            if all(d.platform == "cpu" for d in self.mesh.devices.flat):
                # init runs once: on the CPU, LLVM's optimisation of its random-number kernels took ~40 s for a
                # 90k-parameter model (5-10 s unoptimised). The values agree to float rounding.
                return init.lower().compile(compiler_options=_CPU_INIT_OPTIONS)()
            return init()

    def abstract_with_shardings(self):
        """``abstract`` with each ShapeDtypeStruct carrying its sharding (a checkpoint restore target)."""
        return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            self.abstract, self.shardings)


def train_state_spec(
    cfg: Config,
    mesh=None,
    *,
    tx=None,
    model_factory: Callable[[], nnx.Module] | None = None,
) -> StateSpec:
    """Trace the train state abstractly (``eval_shape``) and derive its shardings; nothing is allocated.

    Args:
      cfg: the run config (model, data.crop_size, train.seed and optimizer fields, mesh.rules).
      mesh: a ``jax.sharding.Mesh`` (default: from ``cfg.mesh``).
      tx: optax transformation (default :func:`medjax.training.optim.make_optimizer` of ``cfg.train``).
      model_factory: builds the module (default :func:`build_model` of ``cfg``).
    """
    from medjax.parallel.mesh import make_mesh
    from medjax.parallel.rules import logical_rules, use_mesh
    from medjax.parallel.sharding import logical_names, shardings_by_path
    from medjax.training.optim import make_optimizer

    tx = tx or make_optimizer(cfg.train)
    factory = model_factory or (lambda: build_model(cfg))
    mesh = mesh if mesh is not None else make_mesh(cfg.mesh)
    rules = logical_rules(cfg.mesh)
    holder: dict = {}

    def init():  # traced inside the mesh context: eval_shape now, jit in StateSpec.init
        model = factory()
        names = logical_names(nnx.state(model, nnx.Param))
        holder["logical_names"] = {f"params/{k}": v for k, v in names.items()}
        model_def, state = init_train_state(model, tx, cfg.train.seed)
        holder["model_def"] = model_def
        return state

    with use_mesh(mesh, rules):
        abstract = jax.eval_shape(init)
        # parameters by their logical names; optimizer moments mirror them; step, key and counters replicated
        shardings = shardings_by_path(abstract, holder["logical_names"], mesh, rules)
    return StateSpec(holder["model_def"], abstract, shardings, mesh, rules, init)


def create_train_state(cfg: Config, mesh=None, *, tx=None,
                       model_factory: Callable[[], nnx.Module] | None = None) -> tuple[ModelDef, TrainState, Any]:
    """Build the step-0 train state, sharded over ``mesh``; full parameters never sit on one device.

    ``eval_shape`` gives the abstract state and its logical-axis metadata, the shardings follow from the mesh
    rules (:mod:`medjax.parallel`), and ``jit(init, out_shardings=...)`` materialises each shard in place.
    Returns ``(model_def, state, state_shardings)``.
    """
    spec = train_state_spec(cfg, mesh, tx=tx, model_factory=model_factory)
    return spec.model_def, spec.init(), spec.shardings


def state_to_dict(state: TrainState) -> dict:
    """The checkpointed form: ``{"step", "params", "opt_state", "rng", "nonfinite_count"[, "model_state"]}``
    (``model_state`` only when the model has non-parameter variables)."""
    out = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
    if not jax.tree.leaves(out["model_state"]):
        del out["model_state"]
    return out


def state_from_dict(d: dict) -> TrainState:
    """Inverse of :func:`state_to_dict`."""
    d = dict(d)
    d.setdefault("model_state", {})
    return TrainState(**d)


def state_bytes(state) -> int:
    """Total bytes of all arrays in ``state`` (global, not per device)."""
    return int(sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(state)))
