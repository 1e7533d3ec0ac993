"""Server-side rules turning the sites' parameters into the next global model.

- :func:`weighted_mean`: FedAvg (McMahan et al. 2017): the sample-weighted mean of the sites' parameters,
  accumulated in float64 and cast back to each parameter's dtype. FedProx aggregates the same way (its
  difference is the proximal term in each site's loss, :mod:`medjax.federated.local`).
- :class:`ServerOptimizer`: FedAdam / FedYogi (Reddi et al. 2021, "Adaptive Federated Optimization"): the
  averaged change ``delta = mean - global`` is treated as a negative gradient and fed to optax's Adam / Yogi
  with ``federated.server_lr``; its state is a flat dict of arrays, checkpointed with the global model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from medjax.errors import ConfigError

STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedyogi")


def weighted_mean(updates: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float]) -> dict[str, np.ndarray]:
    """``sum_i w_i * x_i / sum_i w_i`` per name; every update must hold the same names and shapes.

    Args:
      updates: one ``{name: array}`` per site.
      weights: per site, e.g. its number of training examples (> 0).
    """
    if not updates:
        raise ValueError("no site updates to aggregate")
    if len(updates) != len(weights):
        raise ValueError(f"{len(updates)} updates but {len(weights)} weights")
    w = np.asarray(weights, np.float64)
    if not np.all(w > 0):
        raise ValueError(f"aggregation weights must be positive, got {list(weights)}")
    names = set(updates[0])
    for i, u in enumerate(updates[1:], 1):
        if set(u) != names:
            raise ValueError(f"site update {i} holds parameters {sorted(set(u) ^ names)[:5]} the first does not "
                             "(or lacks them); every site must send the same parameters")
    total = w.sum()
    out = {}
    for name in sorted(names):
        acc = np.zeros(np.shape(updates[0][name]), np.float64)
        for wi, u in zip(w, updates):
            acc += wi * np.asarray(u[name], np.float64)
        out[name] = (acc / total).astype(np.asarray(updates[0][name]).dtype)
    return out


def check_strategy(name: str) -> str:
    if name not in STRATEGIES:
        raise ConfigError(f"federated.strategy={name!r}: use one of {', '.join(STRATEGIES)}")
    return name


class ServerOptimizer:
    """FedAdam / FedYogi on named arrays (``fedavg``/``fedprox``: the mean becomes the global model as is).

    ``state`` is a flat ``{str: np.ndarray}`` (the optax state's leaves by index), so it checkpoints like the
    parameters; :meth:`load_state` puts a restored one back.
    """

    def __init__(self, fed_cfg, template: Mapping[str, np.ndarray]):
        import optax

        self.strategy = check_strategy(fed_cfg.strategy)
        self.tx = None
        if self.strategy == "fedadam":
            self.tx = optax.adam(fed_cfg.server_lr, b1=fed_cfg.server_b1, b2=fed_cfg.server_b2, eps=fed_cfg.server_eps)
        elif self.strategy == "fedyogi":
            self.tx = optax.yogi(fed_cfg.server_lr, b1=fed_cfg.server_b1, b2=fed_cfg.server_b2, eps=fed_cfg.server_eps)
        self._opt = self.tx.init({k: np.asarray(v, np.float32) for k, v in template.items()}) if self.tx else None

    @property
    def state(self) -> dict[str, np.ndarray]:
        import jax

        if self._opt is None:
            return {}
        return {f"{i:04d}": np.asarray(x) for i, x in enumerate(jax.tree.leaves(self._opt))}

    def load_state(self, flat: Mapping[str, np.ndarray]) -> None:
        import jax
        import jax.numpy as jnp

        if self._opt is None:
            return
        leaves, treedef = jax.tree.flatten(self._opt)
        if len(flat) != len(leaves):
            raise ConfigError(f"the checkpointed server-optimizer state has {len(flat)} arrays, "
                              f"federated.strategy={self.strategy} needs {len(leaves)}; resume with the same strategy")
        self._opt = jax.tree.unflatten(treedef, [jnp.asarray(flat[k]) for k in sorted(flat)])

    def apply(self, global_named: Mapping[str, np.ndarray], mean: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The next global model from the current one and the sites' weighted mean (same names)."""
        if self.tx is None:
            return dict(mean)
        import optax

        grads = {k: np.asarray(global_named[k], np.float32) - np.asarray(mean[k], np.float32) for k in mean}
        params = {k: np.asarray(global_named[k], np.float32) for k in mean}
        updates, self._opt = self.tx.update(grads, self._opt, params)
        new = optax.apply_updates(params, updates)
        return {k: np.asarray(new[k]).astype(np.asarray(global_named[k]).dtype) for k in mean}
