"""Logical axis names -> mesh axes, and the active (mesh, rules) context that model code consults.

Models name axes logically (``("embed", "mlp")`` on a kernel, ``("batch", "length", "embed")`` on activations);
a rules table maps each logical name to a tuple of mesh axes (``()``: replicated). The table comes from
``MeshConfig.rules``; the mesh sizes decide the strategy, so one table serves DP, FSDP and TP alike (an axis of
size 1 shards nothing): ``--set mesh.data=1 mesh.fsdp=-1`` is FSDP, ``mesh.tensor=2`` adds tensor parallelism.

One translator: :func:`logical_to_spec` turns names into a ``PartitionSpec`` for parameters (their
``out_sharding`` metadata, in :func:`medjax.parallel.sharding.state_shardings` and at creation through
:func:`medjax.models.layers.param_init`) and for activations (:func:`constrain`) alike, so both agree on every
edge: a name without a rule is an error, a mesh axis shards at most one dim, and a dim that does not divide its
mesh axes drops them (a 3-head attention on ``mesh.tensor=2`` keeps heads replicated in parameters *and*
activations). flax's own translation (``nnx.get_partition_spec``) is not used: it passes unknown names through
as mesh axes and does not check divisibility.

The active context is flax's and JAX's own: :func:`use_mesh` is ``jax.set_mesh(mesh)`` plus
``nnx.logical_axis_rules(rules)``, and :func:`active` reads both back. Model code calls
``constrain(x, ("batch", "length", "embed"))``; without a mesh and rules it returns ``x`` unchanged. The context
is read at trace time, so ``jax.jit`` must trace the function inside ``use_mesh``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Sequence

from medjax.errors import ConfigError
from medjax.parallel.mesh import AXES

Rules = tuple[tuple[str, tuple[str, ...]], ...]

def logical_rules(mesh_cfg) -> Rules:
    """Validated rules from ``mesh_cfg.rules``: ``((logical, (mesh_axis, ...)), ...)``.

    A bare string mesh axis is accepted and wrapped into a 1-tuple; mesh axes must be among
    ``("data", "fsdp", "tensor")``; raises ConfigError naming ``mesh.rules`` otherwise.
    """
    return normalize_rules(mesh_cfg.rules, where="mesh.rules")


def normalize_rules(rules: Iterable, *, where: str = "rules") -> Rules:
    out: list[tuple[str, tuple[str, ...]]] = []
    seen: set[str] = set()
    for entry in rules:
        try:
            name, axes = entry
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: entry {entry!r} is not a (logical_name, mesh_axes) pair") from None
        if axes is None:
            axes = ()
        elif isinstance(axes, str):
            axes = (axes,)
        axes = tuple(axes)
        bad = [a for a in axes if a not in AXES]
        if bad:
            raise ConfigError(f"{where}: logical axis {name!r} maps to unknown mesh axes {bad}; use {AXES}")
        if name in seen:
            raise ConfigError(f"{where}: logical axis {name!r} appears twice; keep one rule per name")
        seen.add(name)
        out.append((str(name), axes))
    return tuple(out)


def logical_to_spec(names: Sequence[str | None], rules: Rules, *, shape: Sequence[int] | None = None, mesh=None):
    """Map logical axis names (one per array dim, ``None``: replicated) to a ``PartitionSpec``.

    A mesh axis already used by an earlier dim is dropped (an axis can split only one dim). With ``shape`` and
    ``mesh`` given, trailing mesh axes are dropped from a dim until its size divides their product, so e.g. a
    3-class bias stays replicated instead of failing. Unknown logical names raise ConfigError.
    """
    from jax.sharding import PartitionSpec

    table = dict(rules)
    if shape is not None and len(shape) != len(names):
        raise ConfigError(f"logical axes {tuple(names)} name {len(names)} dims but the array has shape {tuple(shape)}")
    used: set[str] = set()
    spec: list = []
    for i, name in enumerate(names):
        if name is None:
            spec.append(None)
            continue
        if name not in table:
            raise ConfigError(
                f"logical axis {name!r} has no rule in mesh.rules {tuple(table)}; add (\"{name}\", (...)) to mesh.rules"
            )
        axes = [a for a in table[name] if a not in used]
        if shape is not None and mesh is not None:
            while axes and shape[i] % math.prod(mesh.shape[a] for a in axes):
                axes.pop()
        used.update(axes)
        spec.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
    return PartitionSpec(*spec)


ACTIVATION_PREFIX = "activation_"


def activation_spec(names: Sequence[str | None], rules: Rules, *, shape: Sequence[int] | None = None, mesh=None):
    """:func:`logical_to_spec` for an activation: a name ``n`` uses the rule ``"activation_n"`` when the table has
    one, else the rule ``n`` that parameters use.

    Activations and parameters that must shard differently get separate names this way without the model
    naming them twice: e.g. ``("activation_embed", ())`` keeps the residual stream unsplit while ``embed``
    parameters shard over ``fsdp``, whatever the batch size (without it, ``embed`` on an activation is kept off
    ``fsdp`` only because ``batch`` already took that axis, which a batch too small to split does not).
    """
    table = dict(rules)
    mapped = [None if n is None else (ACTIVATION_PREFIX + n if ACTIVATION_PREFIX + n in table else n) for n in names]
    return logical_to_spec(mapped, rules, shape=shape, mesh=mesh)


def flax_rules(rules: Rules) -> tuple[tuple[str, str | tuple[str, ...] | None], ...]:
    """``rules`` in the form flax's ``nnx.logical_axis_rules`` expects (``None``/str/tuple values)."""
    return tuple((n, None if not a else a[0] if len(a) == 1 else tuple(a)) for n, a in rules)


def active() -> tuple | None:
    """The ``(mesh, rules)`` in effect, or None: the mesh set by ``jax.set_mesh`` (an abstract mesh) and the
    logical-axis rules set by ``nnx.logical_axis_rules`` (normalised), both needed."""
    import jax
    import flax.linen as nn

    mesh = jax.sharding.get_abstract_mesh()
    rules = nn.get_logical_axis_rules()
    if mesh is None or mesh.empty or not rules:
        return None
    return mesh, normalize_rules(rules, where="nnx.logical_axis_rules")


@contextlib.contextmanager
def use_mesh(mesh, rules: Rules | Iterable):
    """Activate ``mesh`` and logical ``rules`` for model creation, tracing and :func:`constrain`.

    The same as ``with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):`` (rules validated first): inside,
    parameters made with :func:`medjax.models.layers.param_init` are created sharded and :func:`constrain` emits
    sharding constraints, both through :func:`logical_to_spec`.
    """
    import jax
    from flax import nnx

    rules = normalize_rules(rules)
    with jax.set_mesh(mesh), nnx.logical_axis_rules(flax_rules(rules)):
        yield mesh


def spec_for(x, names: Sequence[str | None], *, rules: Rules | Iterable | None = None, activation: bool = True):
    """``(mesh, PartitionSpec)`` for array ``x`` named ``names`` under the active mesh and rules (``rules``
    overrides the active ones), or None when no mesh or no rules are active. ``activation``: translate with
    :func:`activation_spec` (else :func:`logical_to_spec`, as for parameters)."""
    import jax

    if len(names) != len(x.shape):
        raise ValueError(f"{len(names)} logical axis names {tuple(names)} for an array of rank {len(x.shape)} "
                         f"(shape {tuple(x.shape)}); give one name (or None) per dim")
    ctx = active()
    if rules is not None:
        mesh = jax.sharding.get_abstract_mesh()
        if mesh is None or mesh.empty:
            return None
        ctx = (mesh, normalize_rules(rules))
    if ctx is None:
        return None
    mesh, rules = ctx
    translate = activation_spec if activation else logical_to_spec
    return mesh, translate(names, rules, shape=x.shape, mesh=mesh)


def constrain(x, names: Sequence[str | None], *, rules: Rules | Iterable | None = None):
    """Constrain array ``x`` (any shape) to the sharding its logical axis ``names`` (one per dim) map to.

    Identity when no mesh or no rules are active (single-device code runs unchanged). Inside
    :func:`use_mesh` (or ``jax.set_mesh`` + ``nnx.logical_axis_rules``): ``jax.lax.with_sharding_constraint``
    (``jax.sharding.reshard`` on an explicit mesh) with the spec of :func:`activation_spec`: the translation
    parameters get (so a dim that does not divide its mesh axes stays replicated in both), with
    ``activation_<name>`` rules taking precedence where the table has them.
    """
    return _apply(x, spec_for(x, names, rules=rules))


def place_param(x, names: Sequence[str | None]):
    """Place a freshly created parameter ``x`` on the sharding its logical ``names`` map to (parameter rules, no
    ``activation_`` overrides); identity without an active mesh and rules. Used by
    :func:`medjax.models.layers.param_init`."""
    return _apply(x, spec_for(x, names, activation=False))


def _apply(x, found):
    if found is None:
        return x
    import jax

    mesh, spec = found
    if mesh.are_all_axes_explicit:
        return jax.sharding.reshard(x, spec)
    return jax.lax.with_sharding_constraint(x, spec)
