"""Content digest and size of a parameter pytree, independent of sharding and container type.

The digest is SHA-256 over every leaf in sorted key-path order; each leaf contributes its path string, dtype,
shape and raw little-endian bytes. An ``nnx.State`` (leaves under ``.value``), the nested dicts a checkpoint
restores without a target (``["value"]``) and ``nnx.to_pure_dict`` output all give the same digest: a final
``value`` path component is dropped. Sharded arrays are gathered to the host first (all processes must call).
"""

from __future__ import annotations

import hashlib

import numpy as np

from medjax.parallel.sharding import path_str


def _items(tree) -> list[tuple[str, object]]:
    import jax

    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        key = path_str(path)
        if key == "value" or key.endswith("/value"):
            key = key[: -len("value")].rstrip("/")
        out.append((key, leaf))
    out.sort(key=lambda kv: kv[0])
    return out


def _host_array(x) -> np.ndarray:
    import jax

    if isinstance(x, jax.Array):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        if not x.is_fully_addressable:
            from jax.experimental import multihost_utils

            x = multihost_utils.process_allgather(x, tiled=True)
    a = np.asarray(x)
    return a.astype(a.dtype.newbyteorder("<"), copy=False)


def params_digest(params_state) -> str:
    """SHA-256 hex digest of a parameter pytree (any mix of jax/numpy arrays; sharded or not)."""
    h = hashlib.sha256()
    for key, leaf in _items(params_state):
        a = np.ascontiguousarray(_host_array(leaf))
        h.update(key.encode() + b"\0" + a.dtype.str.encode() + b"\0" + repr(tuple(a.shape)).encode() + b"\0")
        h.update(a.tobytes())
    return h.hexdigest()


def count_params(state) -> int:
    """Total number of scalar entries over the array leaves of ``state``."""
    import jax

    return int(sum(int(np.prod(getattr(x, "shape", ()))) for x in jax.tree.leaves(state)))
