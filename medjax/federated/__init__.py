"""Federated training across sites that keep their data: Flower's ServerApp/ClientApp around medjax's own pure
train steps. Only :mod:`medjax.federated.server_app`, :mod:`medjax.federated.client_app` and
:mod:`medjax.federated.simulate` touch Flower (the ``federated`` extra); the rest is plain numpy/JAX.

- :mod:`~medjax.federated.arrays`: parameters as named arrays, ``federated.local_keys``.
- :mod:`~medjax.federated.aggregate`: FedAvg weighted mean, FedAdam/FedYogi server optimizers.
- :mod:`~medjax.federated.local`: one site's round of local training (FedProx term inside the jitted step).
- :mod:`~medjax.federated.privacy`: update clipping, Gaussian noise, privacy accountant.
- :mod:`~medjax.federated.server`: the server's round loop, checkpoints and metrics.
- :mod:`~medjax.federated.inprocess`: sites inside one process (tests, quick comparisons).
"""
