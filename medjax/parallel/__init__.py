"""Device mesh, logical-axis rules and shardings for data, FSDP and tensor parallelism.

Typical use::

    mesh = make_mesh(cfg.mesh)
    rules = logical_rules(cfg.mesh)
    model = create_sharded(lambda: Model(cfg.model, rngs=nnx.Rngs(0)), mesh, rules)   # or, for a train state,
    shardings = shardings_by_path(abstract_state, names_by_path, mesh, rules)          # (training.state does)
    with use_mesh(mesh, rules):
        step = jax.jit(train_step, ...)   # model code's constrain(x, names) becomes sharding constraints
"""

from medjax.parallel.mesh import AXES, make_mesh, mesh_shape
from medjax.parallel.rules import (
    Rules,
    active,
    constrain,
    logical_rules,
    logical_to_spec,
    use_mesh,
)
from medjax.parallel.sharding import (
    batch_sharding,
    compiled_memory,
    create_sharded,
    device_bytes,
    logical_names,
    path_str,
    per_device_bytes,
    sharded_bytes,
    shardings_by_path,
    state_shardings,
    with_shardings,
)

__all__ = [
    "AXES",
    "Rules",
    "active",
    "batch_sharding",
    "compiled_memory",
    "constrain",
    "create_sharded",
    "device_bytes",
    "logical_names",
    "logical_rules",
    "logical_to_spec",
    "make_mesh",
    "mesh_shape",
    "path_str",
    "per_device_bytes",
    "sharded_bytes",
    "shardings_by_path",
    "state_shardings",
    "use_mesh",
    "with_shardings",
]
