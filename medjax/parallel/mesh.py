"""The device mesh: three named axes ``("data", "fsdp", "tensor")`` sized from :class:`MeshConfig`.

- ``data``: pure data parallelism (parameters replicated, batch split).
- ``fsdp``: the batch is split *and* parameters/optimizer state are sharded (ZeRO-3 style).
- ``tensor``: heads and MLP hidden units are split across devices (Megatron style).

Hybrid meshes (ICI within a TPU slice, DCN across slices): with ``mesh.dcn_data = S`` > 1 the sizes above
describe one slice and the ``data`` axis spans the S slices as well (``S * data`` in all), slices outermost, so
only the data-parallel gradient reduction crosses the slow data-centre network; FSDP and tensor traffic stay on
a slice's ICI (the MaxText layout). Slices are read from ``device.slice_index`` (TPU multi-slice); devices
without it form S equal groups in process order (GPU hosts, or fake CPU devices in tests).

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


def dcn_slices(mesh_cfg: MeshConfig) -> int:
    """``mesh.dcn_data`` (1 when the config has no such field); ConfigError unless a positive int."""
    n = getattr(mesh_cfg, "dcn_data", 1)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ConfigError(f"mesh.dcn_data={n!r} is invalid; use the number of slices (1: a single slice)")
    return n


def hybrid_device_array(mesh_cfg: MeshConfig, devices: Sequence):
    """``(S * data, fsdp, tensor)`` device array for ``S = mesh.dcn_data`` slices (see the module doc).

    Raises ConfigError when the devices do not split into S equal slices.
    """
    import numpy as np

    slices_n = dcn_slices(mesh_cfg)
    devices = list(devices)
    if len(devices) % slices_n:
        raise ConfigError(f"mesh.dcn_data={slices_n}: {len(devices)} devices do not split into {slices_n} equal "
                          "slices; set mesh.dcn_data to the number of slices")
    per = len(devices) // slices_n
    ici = mesh_shape(mesh_cfg, per)
    if all(hasattr(d, "slice_index") for d in devices):
        groups: dict = {}
        for d in devices:
            groups.setdefault(d.slice_index, []).append(d)
        if len(groups) != slices_n or any(len(g) != per for g in groups.values()):
            raise ConfigError(f"mesh.dcn_data={slices_n} but the devices form {len(groups)} slice(s) of sizes "
                              f"{sorted(len(g) for g in groups.values())}; set mesh.dcn_data={len(groups)}")
        from jax.experimental import mesh_utils

        return mesh_utils.create_hybrid_device_mesh(ici, (slices_n, 1, 1), devices,
                                                    allow_split_physical_axes=True)
    ordered = sorted(devices, key=lambda d: (d.process_index, d.id))
    blocks = [np.asarray(ordered[i * per:(i + 1) * per], dtype=object).reshape(ici) for i in range(slices_n)]
    return np.concatenate(blocks, axis=0)


def make_mesh(mesh_cfg: MeshConfig, devices: Sequence | None = None):
    """Build a ``jax.sharding.Mesh`` with axes ``("data", "fsdp", "tensor")`` over ``devices``.

    Args:
      mesh_cfg: sizes per axis (-1: the devices left over).
      devices: devices to use (default: ``jax.devices()``, i.e. every device of every process).

    Returns:
      A Mesh whose device array has shape ``(data, fsdp, tensor)`` (``(dcn_data * data, fsdp, tensor)`` for a
      hybrid mesh) and ``AxisType.Auto`` axes.
    """
    import jax
    from jax.sharding import AxisType

    devices = list(jax.devices() if devices is None else devices)
    if dcn_slices(mesh_cfg) > 1:
        return jax.sharding.Mesh(hybrid_device_array(mesh_cfg, devices), AXES,
                                 axis_types=(AxisType.Auto,) * len(AXES))
    shape = mesh_shape(mesh_cfg, len(devices))
    return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES), devices=devices)
