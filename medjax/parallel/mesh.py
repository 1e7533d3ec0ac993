"""The device mesh: three named axes ``("data", "fsdp", "tensor")`` sized from :class:`MeshConfig`.

- ``data``: pure data parallelism (parameters replicated, batch split).
- ``fsdp``: the batch is split *and* parameters/optimizer state are sharded (ZeRO-3 style).
- ``tensor``: heads and MLP hidden units are split across devices (Megatron style).

The mesh uses ``AxisType.Auto`` axes (GSPMD propagation): sharding is steered by ``out_shardings``, input
shardings and ``with_sharding_constraint`` through logical axis names (see :mod:`medjax.parallel.rules`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from medjax.config.schema import MeshConfig
from medjax.errors import ConfigError

AXES = ("data", "fsdp", "tensor")


def mesh_shape(mesh_cfg: MeshConfig, num_devices: int) -> tuple[int, int, int]:
    """Resolve ``(data, fsdp, tensor)`` sizes for ``num_devices``; a single ``-1`` takes the devices left over.

    Raises ConfigError naming ``mesh.data``/``mesh.fsdp``/``mesh.tensor`` when the sizes cannot cover exactly
    ``num_devices`` devices.
    """
    sizes = [mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.tensor]
    for name, size in zip(AXES, sizes):
        if not isinstance(size, int) or isinstance(size, bool) or (size < 1 and size != -1):
            raise ConfigError(f"mesh.{name}={size!r} is invalid; use a positive device count or -1 (the rest)")
    free = [name for name, size in zip(AXES, sizes) if size == -1]
    if len(free) > 1:
        raise ConfigError(
            f"mesh.{free[0]} and mesh.{free[1]} are both -1; at most one mesh axis may take the remaining devices"
        )
    fixed = math.prod(size for size in sizes if size != -1)
    described = " * ".join(f"mesh.{n}={s}" for n, s in zip(AXES, sizes))
    if free:
        if num_devices % fixed:
            raise ConfigError(
                f"{described}: {num_devices} devices are not divisible by {fixed}; "
                f"choose mesh sizes whose product divides {num_devices}"
            )
        sizes = [num_devices // fixed if size == -1 else size for size in sizes]
    elif fixed != num_devices:
        raise ConfigError(
            f"{described} = {fixed} devices, but {num_devices} are available; "
            f"make the product equal {num_devices} or set one axis (e.g. mesh.data) to -1"
        )
    return tuple(sizes)  # type: ignore[return-value]


def make_mesh(mesh_cfg: MeshConfig, devices: Sequence | None = None):
    """Build a ``jax.sharding.Mesh`` with axes ``("data", "fsdp", "tensor")`` over ``devices``.

    Args:
      mesh_cfg: sizes per axis (-1: the devices left over).
      devices: devices to use (default: ``jax.devices()``, i.e. every device of every process).

    Returns:
      A Mesh whose device array has shape ``(data, fsdp, tensor)`` and ``AxisType.Auto`` axes.
    """
    import jax
    from jax.sharding import AxisType

    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(mesh_cfg, len(devices))
    return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES), devices=devices)
