"""Shardings of the train state and batches, from the mesh and the logical-axis rules of the config.

Parameters carry logical axis names (``out_sharding`` metadata, e.g. ``("embed", "mlp")``); the rules in
``cfg.mesh.rules`` map them to mesh axes (:func:`medjax.parallel.rules.logical_to_spec`). Optimizer-state leaves
that mirror a parameter (AdamW's ``mu``/``nu``: same trailing path and shape) get that parameter's sharding;
everything else (counters, the step, the RNG key) is replicated.
"""

from __future__ import annotations

import contextlib
from typing import Any

import jax
from jax.sharding import NamedSharding, PartitionSpec

from medjax.training.optim import path_str


def default_mesh(cfg=None):
    """Mesh from ``cfg.mesh`` (default: all devices on the ``data`` axis)."""
    from medjax.config.schema import MeshConfig
    from medjax.parallel.mesh import make_mesh

    return make_mesh(cfg.mesh if cfg is not None else MeshConfig())


def rules_of(cfg) -> tuple:
    from medjax.parallel.rules import logical_rules

    return logical_rules(cfg.mesh)


def activate(mesh, rules):
    """Context in which models are built and traced: mesh + logical rules active (see :mod:`medjax.parallel`)."""
    try:
        from medjax.parallel.rules import use_mesh
    except ImportError:  # pragma: no cover - parallel always ships use_mesh
        return contextlib.nullcontext()
    return use_mesh(mesh, rules)


def param_logical_names(abstract_params) -> dict:
    """Pure dict of logical axis names (tuple or None) per parameter, from an ``nnx.State`` of Params."""
    from flax import nnx

    out: dict = {}
    for path, var in nnx.to_flat_state(abstract_params):
        meta = var.get_metadata() if hasattr(var, "get_metadata") else {}
        names = meta.get("out_sharding") or meta.get("sharding_names") or meta.get("sharding")
        node = out
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = tuple(names) if names else None
    return out


def param_shardings(abstract_params_pure, logical_names, mesh, rules) -> Any:
    """NamedSharding per parameter (pure dict); parameters without names are replicated."""
    from medjax.parallel.rules import logical_to_spec

    def one(path, leaf):
        node = logical_names
        try:
            for k in path:
                node = node[getattr(k, "key", getattr(k, "idx", k))]
        except (KeyError, TypeError, IndexError):
            node = None
        if not node:
            return NamedSharding(mesh, PartitionSpec())
        return NamedSharding(mesh, logical_to_spec(node, rules, shape=leaf.shape, mesh=mesh))

    return jax.tree_util.tree_map_with_path(one, abstract_params_pure)


def train_state_shardings(abstract_state, names, mesh, rules):
    """Shardings for a whole :class:`~medjax.training.state.TrainState` (same pytree structure); ``names`` from
    :func:`param_logical_names`."""
    p_sh = param_shardings(abstract_state.params, names, mesh, rules)
    by_path = {}
    for path, sh in jax.tree_util.tree_flatten_with_path(p_sh)[0]:
        by_path[path_str(path)] = sh
    shapes = {path_str(p): leaf.shape for p, leaf in jax.tree_util.tree_flatten_with_path(abstract_state.params)[0]}
    replicated = NamedSharding(mesh, PartitionSpec())

    def opt_leaf(path, leaf):
        parts = path_str(path).split("/")
        for i in range(len(parts)):  # longest parameter path that the leaf's path ends with
            pp = "/".join(parts[i:])
            if pp in by_path and shapes[pp] == leaf.shape:
                return by_path[pp]
        return replicated

    return abstract_state.replace(
        step=replicated,
        params=p_sh,
        opt_state=jax.tree_util.tree_map_with_path(opt_leaf, abstract_state.opt_state),
        rng=replicated,
        nonfinite_count=replicated,
        model_state=jax.tree.map(lambda _: replicated, abstract_state.model_state),
    )


def batch_sharding(mesh) -> NamedSharding:
    """Leading (batch) dim split over ``("data", "fsdp")``; the rest replicated."""
    try:
        from medjax.parallel import batch_sharding as _bs  # type: ignore[attr-defined]

        return _bs(mesh)
    except ImportError:
        return NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
