"""Shardings for training state and batches, sharded creation, and per-device memory accounting.

State shardings come from the logical axis names NNX variables carry (``nnx.with_partitioning(init, names)``
stores them as ``out_sharding`` metadata): each parameter's names go through the rules to a
``PartitionSpec``; optimizer moments either carry the same metadata (``nnx.Optimizer``) or mirror the parameter
whose key path they end with and whose shape they share; everything else (step counters, scalars, RNG keys)
is replicated.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from medjax.parallel.rules import Rules, logical_to_spec, normalize_rules, use_mesh

BATCH_AXES = ("data", "fsdp")


def path_str(path) -> str:
    """A key path as ``"a/b/0/value"``: dict keys, attribute names and indices joined by ``/``.

    The same parameter gets the same string whether it sits in an ``nnx.State`` (``.value`` attribute) or in
    the nested dicts a checkpoint restores without a target (``["value"]`` key).
    """
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def _is_var(x) -> bool:
    from flax import nnx

    return isinstance(x, nnx.Variable)


def _leaf_shape_names(x):
    """(shape, logical names or None) of a state leaf (a Variable, an array or a ShapeDtypeStruct)."""
    if _is_var(x):
        names = x.get_metadata().get("out_sharding")
        value = x.get_value() if hasattr(x, "get_value") else x.value
        return tuple(getattr(value, "shape", ())), (tuple(names) if names else None)
    return tuple(getattr(x, "shape", ())), None


def logical_names(state) -> dict[str, tuple]:
    """``{key path: logical names}`` of every ``nnx.Variable`` in ``state`` that carries ``out_sharding`` metadata.

    Paths are :func:`path_str` strings of the Variables' positions (e.g. ``"encoder/blocks/0/fc1/kernel"`` in
    ``nnx.state(model, nnx.Param)``).
    """
    import jax

    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(state, is_leaf=_is_var)[0]:
        _, names = _leaf_shape_names(leaf)
        if names is not None:
            out[path_str(path)] = names
    return out


def shardings_by_path(abstract, names: dict[str, tuple], mesh, rules: Rules):
    """NamedSharding per leaf of ``abstract`` (arrays / ShapeDtypeStructs), from logical names looked up by path.

    A leaf whose :func:`path_str` is in ``names`` gets :func:`~medjax.parallel.rules.logical_to_spec` of those
    names (dims that do not divide their mesh axes replicated); a leaf that mirrors one (an optimizer moment: same
    shape, and its path ends with the longest unique annotated path suffix) gets that leaf's spec; the rest
    (step counters, RNG keys, scalars) is replicated.
    """
    import jax
    from jax.sharding import NamedSharding

    rules = normalize_rules(rules)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract)
    annotated: dict[tuple, list] = {}
    specs: dict[int, Any] = {}
    for i, (path, leaf) in enumerate(leaves):
        key = path_str(path)
        if key in names:
            shape = tuple(leaf.shape)
            specs[i] = logical_to_spec(names[key], rules, shape=shape, mesh=mesh)
            parts = tuple(key.split("/"))
            for j in range(len(parts)):
                annotated.setdefault(parts[j:], []).append((shape, specs[i]))
    out = []
    for i, (path, leaf) in enumerate(leaves):
        spec = specs.get(i)
        if spec is None:
            spec = _mirror(tuple(path_str(path).split("/")), tuple(getattr(leaf, "shape", ())), annotated)
        out.append(NamedSharding(mesh, spec))
    return jax.tree_util.tree_unflatten(treedef, out)


def state_shardings(abstract_state, mesh, rules: Rules):
    """NamedSharding for every leaf of ``abstract_state`` (same tree structure, Variables kept as wrappers).

    Args:
      abstract_state: pytree of ``nnx.Variable`` / arrays / ``jax.ShapeDtypeStruct`` (e.g. from
        ``nnx.eval_shape`` + ``nnx.split``, or the train-state dict holding params and optimizer state).
      mesh: the ``jax.sharding.Mesh``.
      rules: logical -> mesh axes rules (see :func:`medjax.parallel.rules.logical_rules`).

    Returns:
      A pytree like ``abstract_state`` whose leaves are ``NamedSharding`` (see :func:`shardings_by_path`);
      usable as ``jit`` ``out_shardings`` or to attach shardings to ``ShapeDtypeStruct`` targets
      (:func:`with_shardings`).
    """
    import jax

    leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract_state, is_leaf=_is_var)
    values = [jax.ShapeDtypeStruct(_leaf_shape_names(leaf)[0], "float32") for _, leaf in leaves]  # shapes only
    flat = {path_str(p): v for (p, _), v in zip(leaves, values)}
    shardings = shardings_by_path(flat, logical_names(abstract_state), mesh, rules)
    out = [leaf.replace(shardings[path_str(p)]) if _is_var(leaf) else shardings[path_str(p)] for p, leaf in leaves]
    return jax.tree_util.tree_unflatten(treedef, out)


def _mirror(parts: tuple, shape: tuple, annotated: dict):
    """Spec of the unique annotated leaf with the longest shared key-path suffix and the same shape."""
    from jax.sharding import PartitionSpec

    if not shape:
        return PartitionSpec()
    for i in range(len(parts)):
        suffix = parts[i:]
        if suffix in (("value",),):
            break
        candidates = {spec for s, spec in annotated.get(suffix, ()) if s == shape}
        if len(candidates) == 1:
            return candidates.pop()
        if len(candidates) > 1:
            break
    return PartitionSpec()


def with_shardings(abstract_state, shardings):
    """Attach ``shardings`` (from :func:`state_shardings`) to ``abstract_state`` as ``jax.ShapeDtypeStruct`` leaves.

    The result is the ``abstract_state`` that :meth:`medjax.training.checkpoint.Checkpointer.restore` expects.
    """
    import jax

    def attach(x, s):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)

    return jax.tree.map(attach, abstract_state, shardings)


def batch_sharding(mesh):
    """Sharding of a global batch: dim 0 split over ``("data", "fsdp")``, other dims replicated."""
    from jax.sharding import NamedSharding, PartitionSpec

    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def create_sharded(init_fn: Callable[[], Any], mesh, rules: Rules):
    """Run ``init_fn`` under ``jit`` with ``out_shardings`` so no full copy of the state lands on one device.

    ``init_fn`` takes no arguments and returns a pytree of arrays or an NNX graph node (module, optimizer, or a
    tuple of them). The state is traced with ``eval_shape``, its shardings derived by :func:`state_shardings`,
    and then created directly sharded. Returns what ``init_fn`` returns (graph nodes are rebuilt with
    ``nnx.merge``), with every array sharded over ``mesh``.
    """
    import jax
    from flax import nnx

    with use_mesh(mesh, rules):
        graphdef, abstract_state = _split_if_graph(nnx.eval_shape(init_fn))
        shardings = state_shardings(abstract_state, mesh, rules)
        state = jax.jit(lambda: _split_if_graph(init_fn())[1], out_shardings=shardings)()
    return state if graphdef is None else nnx.merge(graphdef, state)


def _split_if_graph(out):
    """``nnx.split(out)`` when ``out`` holds NNX graph nodes (modules, optimizers), else ``(None, out)``."""
    import jax
    from flax import nnx

    nodes = jax.tree.leaves(out, is_leaf=lambda x: isinstance(x, nnx.Pytree) or _is_var(x))
    if any(isinstance(x, nnx.Pytree) and not _is_var(x) for x in nodes):
        return nnx.split(out)
    return None, out


def device_bytes(arrays) -> dict[int, int]:
    """Bytes each device holds for the arrays of a pytree: ``{device_id: bytes}`` (addressable shards only)."""
    import jax

    out: dict[int, int] = {}
    for leaf in jax.tree.leaves(arrays):
        for shard in getattr(leaf, "addressable_shards", ()):
            out[shard.device.id] = out.get(shard.device.id, 0) + shard.data.nbytes
    return out


def per_device_bytes(compiled_or_arrays) -> int:
    """Peak bytes per device.

    For a ``jax.stages.Compiled`` (``jax.jit(f).lower(...).compile()``): arguments + outputs + temporaries
    - aliased (donated) bytes, from XLA's memory analysis. For a pytree of ``jax.Array``: the largest total of
    shard bytes held by one device.
    """
    analysis = getattr(compiled_or_arrays, "memory_analysis", None)
    if callable(analysis):
        m = analysis()
        if m is None:
            raise ValueError("this backend gives no memory analysis for the compiled function")
        return int(
            m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
        )
    sizes = device_bytes(compiled_or_arrays)
    return max(sizes.values()) if sizes else 0


def sharded_bytes(abstract, shardings) -> dict[str, int]:
    """Bytes of a pytree laid out by ``shardings``, computed without allocating anything.

    Args:
      abstract: pytree of ``jax.ShapeDtypeStruct`` (or arrays); shardings: matching pytree of ``Sharding``.

    Returns:
      ``{"total": global bytes, "per_device": the most bytes any one device holds, "replicated": bytes of
      leaves every device holds whole}``. Under FSDP over ``N`` devices ``per_device`` is about ``total / N``
      plus the replicated remainder (scalars, small or indivisible leaves).
    """
    import math

    import jax
    import numpy as np

    per: dict = {}
    total = replicated = 0
    for leaf, sh in zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings)):
        shape = tuple(leaf.shape)
        item = np.dtype(leaf.dtype).itemsize
        size = math.prod(shape) * item
        total += size
        if sh.is_fully_replicated:
            replicated += size
        for device, index in sh.devices_indices_map(shape).items():
            n = math.prod(len(range(*s.indices(d))) for s, d in zip(index, shape)) * item if shape else item
            per[device] = per.get(device, 0) + n
    return {"total": int(total), "per_device": int(max(per.values())) if per else 0, "replicated": int(replicated)}


def compiled_memory(compiled) -> dict[str, int]:
    """XLA's per-device memory analysis of a ``jax.stages.Compiled``: ``argument``, ``output``, ``temp``,
    ``alias`` (donated, counted once) and ``total`` = argument + output + temp - alias, in bytes."""
    m = compiled.memory_analysis()
    if m is None:
        raise ValueError("this backend gives no memory analysis for the compiled function")
    out = {"argument": int(m.argument_size_in_bytes), "output": int(m.output_size_in_bytes),
           "temp": int(m.temp_size_in_bytes), "alias": int(m.alias_size_in_bytes)}
    out["total"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
    return out
