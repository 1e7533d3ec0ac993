"""Parameters as named arrays: the only thing a site and the server exchange.

A parameter tree (nested dicts, as in :class:`medjax.training.state.TrainState`) travels as a flat
``{name: np.ndarray}`` with ``name`` the ``/``-joined path (``"encoder/blocks/0/attn/qkv/kernel"``), so a message
carries parameter names and values and nothing else (no file names, paths or headers).

``federated.local_keys`` are regular expressions matched (``re.search``) against these names: matching
parameters never leave a site (FedBN-style personalisation: e.g. ``"norm"`` keeps every LayerNorm local).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import numpy as np

from medjax.errors import ConfigError


def flatten(tree: Mapping) -> dict[str, np.ndarray]:
    """``{path: host array}`` of a nested dict of arrays (jax or numpy), in sorted path order."""
    import jax

    from medjax.parallel.sharding import path_str

    flat = {path_str(p): np.asarray(jax.device_get(x)) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}
    return dict(sorted(flat.items()))


def unflatten(named: Mapping[str, np.ndarray], like: Mapping) -> dict:
    """The nested dict shaped like ``like`` with the leaves of ``named`` (every path of ``like`` must be present,
    with the same shape; dtypes follow ``like``)."""
    import jax

    from medjax.parallel.sharding import path_str

    def leaf(path, ref):
        name = path_str(path)
        if name not in named:
            raise ConfigError(f"parameter {name!r} missing from the received arrays; the server and the site must "
                              "run the same model config")
        value = np.asarray(named[name])
        if tuple(value.shape) != tuple(np.shape(ref)):
            raise ConfigError(f"parameter {name!r}: received shape {value.shape}, the model has {np.shape(ref)}; "
                              "the server and the site must run the same model config")
        return value.astype(np.asarray(ref).dtype if not hasattr(ref, "dtype") else ref.dtype, copy=False)

    return jax.tree_util.tree_map_with_path(leaf, like)


def compile_keys(patterns: Iterable[str]) -> list[re.Pattern]:
    """Compiled ``federated.local_keys``; ConfigError names the bad pattern."""
    out = []
    for p in patterns:
        try:
            out.append(re.compile(p))
        except re.error as e:
            raise ConfigError(f"federated.local_keys: {p!r} is not a regular expression ({e})") from None
    return out


def is_local(name: str, patterns: Iterable[re.Pattern]) -> bool:
    """Whether parameter ``name`` stays at the site (matches one of the ``local_keys`` patterns)."""
    return any(p.search(name) for p in patterns)


def shared(named: Mapping[str, np.ndarray], local_keys: Iterable[str]) -> dict[str, np.ndarray]:
    """The entries of ``named`` that travel (not matched by ``local_keys``)."""
    pats = compile_keys(local_keys)
    return {k: v for k, v in named.items() if not is_local(k, pats)}


def nbytes(named: Mapping[str, np.ndarray]) -> int:
    """Bytes of array data in ``named`` (the payload of one message, without framing)."""
    return int(sum(np.asarray(v).nbytes for v in named.values()))


def travelling_names(cfg, params: Mapping) -> list[str]:
    """Names of the parameters of ``params`` (the model's nested dict) that the server and the sites exchange.

    Not matched by ``federated.local_keys``; and when the sites fine-tune with a parameter-efficient
    ``finetune.method`` (``federated.task=finetune``), only the parameters that method trains: the frozen base
    is the same at every site (loaded from ``finetune.init_from``) and never travels.
    """
    import jax

    from medjax.parallel.sharding import path_str

    pats = compile_keys(cfg.federated.local_keys)
    trains = lambda path: True  # noqa: E731
    if cfg.federated.task == "finetune":
        from medjax.peft.methods import is_trainable, resolve_method

        method = resolve_method(cfg.finetune)
        trains = lambda path: is_trainable(method, path)  # noqa: E731
    names = [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0] if trains(p)]
    return sorted(n for n in names if not is_local(n, pats))
