"""Device mesh, logical-axis rules and shardings for data, FSDP and tensor parallelism.

Typical use::

    mesh = make_mesh(cfg.mesh)
    rules = logical_rules(cfg.mesh)
    model = create_sharded(lambda: Model(cfg.model, rngs=nnx.Rngs(0)), mesh, rules)
    with use_mesh(mesh, rules):
        step = jax.jit(train_step, ...)   # model code's constrain(x, names) becomes sharding constraints
"""

from medjax.parallel.mesh import AXES, make_mesh, mesh_shape
from medjax.parallel.rules import (
    RULES_DP,
    RULES_FSDP,
    RULES_TP,
    Rules,
    active,
    constrain,
    logical_rules,
    logical_to_spec,
    mesh_config_for,
    rules_for,
    use_mesh,
)
from medjax.parallel.sharding import (
    batch_sharding,
    compiled_memory,
    create_sharded,
    device_bytes,
    path_str,
    per_device_bytes,
    sharded_bytes,
    state_shardings,
    with_shardings,
)

__all__ = [
    "AXES",
    "RULES_DP",
    "RULES_FSDP",
    "RULES_TP",
    "Rules",
    "active",
    "batch_sharding",
    "compiled_memory",
    "constrain",
    "create_sharded",
    "device_bytes",
    "logical_rules",
    "logical_to_spec",
    "make_mesh",
    "mesh_config_for",
    "mesh_shape",
    "path_str",
    "per_device_bytes",
    "rules_for",
    "sharded_bytes",
    "state_shardings",
    "use_mesh",
    "with_shardings",
]
