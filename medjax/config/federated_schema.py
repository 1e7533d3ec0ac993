"""Federated-training settings (the ``federated`` section of :class:`~medjax.config.Config`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FederatedConfig:
    strategy: str = "fedavg"  # server rule: "fedavg", "fedprox" (fedavg + proximal term at the sites), "fedadam", "fedyogi"
    task: str = "pretrain"  # what the sites train: "pretrain" (MAE) or "finetune" (the config's task and finetune.method)
    rounds: int = 10  # federated rounds (each: send the global model, train locally, aggregate)
    local_steps: int = 5  # optimizer steps each site takes per round on its own data
    fraction: float = 1.0  # fraction of connected sites asked to train each round (at least min_sites)
    min_sites: int = 1  # a round proceeds once this many sites answered and round_timeout passed
    round_timeout: float = 600.0  # seconds the server waits for all sampled sites before going on with those that answered
    proximal_mu: float = 0.01  # fedprox: weight mu of the proximal term mu/2 * ||w - w_global||^2 in the site loss
    local_keys: tuple[str, ...] = ()  # parameter-path regexes kept at each site, never sent (e.g. "norm" for FedBN-style, "head")
    server_lr: float = 0.01  # fedadam/fedyogi: server learning rate on the averaged update
    server_b1: float = 0.9  # fedadam/fedyogi: first-moment decay
    server_b2: float = 0.99  # fedadam/fedyogi: second-moment decay
    server_eps: float = 1e-3  # fedadam/fedyogi: adaptivity epsilon tau (Reddi et al. 2021)
    dp_clip: float = 0.0  # L2 norm each site's update is clipped to before noise; 0 turns differential privacy off
    dp_noise: float = 1.0  # Gaussian noise multiplier z (noise std = z * dp_clip), applied at each site when dp_clip > 0
    dp_delta: float = 1e-5  # delta of the (epsilon, delta) budget reported per round and in total
