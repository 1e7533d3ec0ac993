"""FedAvg's weighted mean, the server optimizers and the named-array exchange (no training, no Flower)."""

from __future__ import annotations

import numpy as np
import pytest

from medjax.config.federated_schema import FederatedConfig
from medjax.errors import ConfigError
from medjax.federated.aggregate import ServerOptimizer, weighted_mean
from medjax.federated.arrays import flatten, nbytes, shared, unflatten


def test_fedavg_is_the_sample_weighted_mean_exactly():
    a = {"w": np.array([1.0, 2.0, -4.0], np.float32), "b": np.array([[0.5]], np.float32)}
    b = {"w": np.array([3.0, 6.0, 4.0], np.float32), "b": np.array([[2.5]], np.float32)}
    out = weighted_mean([a, b], [1, 3])  # (1*a + 3*b) / 4, exactly representable
    np.testing.assert_array_equal(out["w"], np.array([2.5, 5.0, 2.0], np.float32))
    np.testing.assert_array_equal(out["b"], np.array([[2.0]], np.float32))
    assert out["w"].dtype == np.float32


def test_fedavg_matches_float64_reference_on_random_updates():
    rng = np.random.default_rng(0)
    ups = [{"k": rng.standard_normal((7, 5)).astype(np.float32)} for _ in range(3)]
    n = [12, 5, 31]
    ref = sum(w * u["k"].astype(np.float64) for w, u in zip(n, ups)) / sum(n)
    np.testing.assert_array_equal(weighted_mean(ups, n)["k"], ref.astype(np.float32))
    # one site: the mean is that site's parameters, bit for bit
    np.testing.assert_array_equal(weighted_mean(ups[:1], [7])["k"], ups[0]["k"])


def test_fedavg_rejects_mismatched_updates():
    with pytest.raises(ValueError, match="same parameters"):
        weighted_mean([{"a": np.zeros(2)}, {"b": np.zeros(2)}], [1, 1])
    with pytest.raises(ValueError, match="positive"):
        weighted_mean([{"a": np.zeros(2)}], [0])


def test_fedavg_and_fedprox_take_the_mean_as_the_global_model():
    g = {"w": np.zeros(3, np.float32)}
    m = {"w": np.array([1.0, -1.0, 2.0], np.float32)}
    for strategy in ("fedavg", "fedprox"):
        opt = ServerOptimizer(FederatedConfig(strategy=strategy), g)
        np.testing.assert_array_equal(opt.apply(g, m)["w"], m["w"])
        assert opt.state == {}


def test_fedadam_first_step_moves_each_coordinate_by_server_lr():
    g = {"w": np.zeros(3, np.float32)}
    m = {"w": np.array([1.0, -1.0, 2.0], np.float32)}
    fed = FederatedConfig(strategy="fedadam", server_lr=0.1, server_eps=1e-8)
    opt = ServerOptimizer(fed, g)
    out = opt.apply(g, m)
    # Adam's bias-corrected first step is lr * sign(gradient); the gradient is global - mean
    np.testing.assert_allclose(out["w"], 0.1 * np.sign(m["w"]), rtol=1e-5)
    # the state round-trips through its flat checkpointed form
    other = ServerOptimizer(fed, g)
    other.load_state(opt.state)
    np.testing.assert_array_equal(other.apply(out, m)["w"], opt.apply(out, m)["w"])
    with pytest.raises(ConfigError, match="same strategy"):
        ServerOptimizer(FederatedConfig(strategy="fedyogi"), g).load_state({"0000": np.zeros(1)})


def test_named_arrays_round_trip_and_local_keys_stay_home():
    tree = {"encoder": {"norm": {"scale": np.ones(4, np.float32)}, "blocks": {"0": {"kernel": np.zeros((2, 3))}}},
            "head": {"bias": np.arange(3.0)}}
    named = flatten(tree)
    assert sorted(named) == ["encoder/blocks/0/kernel", "encoder/norm/scale", "head/bias"]
    back = unflatten(named, tree)
    np.testing.assert_array_equal(back["head"]["bias"], tree["head"]["bias"])
    assert sorted(shared(named, ("norm", "^head/"))) == ["encoder/blocks/0/kernel"]
    assert nbytes(shared(named, ("norm",))) == 6 * 8 + 3 * 8
    with pytest.raises(ConfigError, match="shape"):
        unflatten({**named, "head/bias": np.zeros(4)}, tree)
    with pytest.raises(ConfigError, match="local_keys"):
        shared(named, ("(",))
