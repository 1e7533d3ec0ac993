"""Per-spatial-dimension values (crop sizes, spacings, margins, input sizes), broadcast in one place.

A config or an argument may give one value for every spatial axis (``crop_size=(96,)``, ``spacing=1.5``) or one
per axis (``(96, 96, 64)``). :func:`broadcast` turns either into exactly ``n`` entries and names the key when the
length is wrong. Plain Python: importing it imports neither numpy nor jax.
"""

from __future__ import annotations

import numbers

from medjax.errors import ConfigError


def broadcast(values, n: int, name: str = "value") -> tuple:
    """``values`` as an ``n``-tuple: a scalar or a 1-sequence repeats, an ``n``-sequence passes through.

    Raises:
      ConfigError (a ValueError) naming ``name`` when ``values`` has another length.
    """
    if isinstance(values, (numbers.Number, str)) or getattr(values, "ndim", None) == 0:
        return (values,) * n
    values = tuple(values)
    if len(values) == 1:
        return values * n
    if len(values) != n:
        raise ConfigError(f"{name}={values!r}: give 1 value or {n} (one per spatial axis)")
    return values


def broadcast_size(size, n: int, name: str = "input_size") -> tuple[int, ...]:
    """Sizes in voxels/pixels as an ``n``-tuple of positive ints (see :func:`broadcast`)."""
    out = tuple(int(s) for s in broadcast(size, n, name))
    if any(s < 1 for s in out):
        raise ConfigError(f"{name}={out}: sizes must be positive voxel counts")
    return out
