"""Client-side DP: clipping bound, noise scale, and the accountant against dp-accounting called directly."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medjax.federated.privacy import (
    PrivacyAccountant,
    add_gaussian_noise,
    aggregate_noise_std,
    clip_update,
    update_norm,
)


def _update(seed: int = 0, scale: float = 1.0, dtype=np.float32) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "encoder/block0/attn/kernel": (scale * rng.standard_normal((64, 192))).astype(dtype),
        "encoder/block0/attn/bias": (scale * rng.standard_normal(192)).astype(dtype),
        "head/kernel": (scale * rng.standard_normal((3, 4, 5))).astype(dtype),
    }


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("clip", [0.1, 1.0, 7.3])
def test_clipping_bounds_the_global_norm_exactly(clip, dtype):
    for seed in range(6):
        update = _update(seed, scale=3.0, dtype=dtype)
        before = math.sqrt(sum(float((a.astype(np.float64) ** 2).sum()) for a in update.values()))
        clipped, norm = clip_update(update, clip)
        assert norm == pytest.approx(before, rel=1e-12)
        assert update_norm(clipped) <= clip  # no tolerance
        assert update_norm(clipped) == pytest.approx(clip, rel=1e-6)  # clipped to C, not far below
        # one factor for every array: the direction is kept
        factors = {k: float(clipped[k].astype(np.float64).ravel() @ update[k].astype(np.float64).ravel()
                            / (update[k].astype(np.float64) ** 2).sum()) for k in update}
        assert max(factors.values()) == pytest.approx(min(factors.values()), rel=1e-6)
        assert {k: (v.shape, v.dtype) for k, v in clipped.items()} == {k: (v.shape, v.dtype) for k, v in update.items()}


def test_small_updates_are_left_untouched():
    update = _update(1, scale=1e-3)
    norm = update_norm(update)
    clipped, reported = clip_update(update, norm * 1.01)
    assert reported == norm
    for k in update:
        assert clipped[k] is update[k]
    clipped, _ = clip_update(update, norm)  # exactly at the bound: unchanged too
    assert all(np.array_equal(clipped[k], update[k]) for k in update)


def test_bad_updates_and_settings_are_named():
    with pytest.raises(ValueError, match="clip_norm"):
        clip_update(_update(), 0.0)
    bad = _update()
    bad["head/kernel"][0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="head/kernel"):
        clip_update(bad, 1.0)
    with pytest.raises(ValueError, match="dtype int64"):
        clip_update({"step": np.arange(3)}, 1.0)
    with pytest.raises(ValueError, match="noise_multiplier"):
        add_gaussian_noise(_update(), 1.0, -1.0, np.random.default_rng(0))


def test_noise_has_the_configured_std_per_coordinate():
    clip, sigma = 0.5, 1.3
    zeros = {"a": np.zeros((300, 500), np.float32), "b": np.zeros(100_000, np.float64)}
    noised = add_gaussian_noise(zeros, clip, sigma, np.random.default_rng(1234))
    std = clip * sigma
    for key, a in noised.items():
        n = a.size
        assert a.dtype == zeros[key].dtype and a.shape == zeros[key].shape
        # sample std of n normals: relative standard error 1 / sqrt(2 n); allow 5 of them
        assert abs(a.std() / std - 1.0) < 5.0 / math.sqrt(2 * n)
        assert abs(a.mean()) < 5.0 * std / math.sqrt(n)
    # coordinates of different arrays are independent draws
    corr = np.corrcoef(noised["a"].ravel()[:100_000].astype(np.float64), noised["b"])[0, 1]
    assert abs(corr) < 5.0 / math.sqrt(100_000)
    # noise is added to the update (not replacing it), deterministic for a seed
    update = _update(3)
    one = add_gaussian_noise(update, clip, sigma, np.random.default_rng(7))
    two = add_gaussian_noise(update, clip, sigma, np.random.default_rng(7))
    assert all(np.array_equal(one[k], two[k]) for k in update)
    diff = np.concatenate([(one[k].astype(np.float64) - update[k]).ravel() for k in update])
    assert abs(diff.std() / std - 1.0) < 5.0 / math.sqrt(2 * diff.size)
    assert np.array_equal(add_gaussian_noise(update, clip, 0.0, np.random.default_rng(0))["head/kernel"],
                          update["head/kernel"])


def test_per_site_noise_averages_to_sigma_c_over_sqrt_n():
    """Every site adds the full sigma*C; the mean of n noised updates then carries sigma*C/sqrt(n)."""
    clip, sigma, sites = 1.0, 2.0, 4
    zeros = {"w": np.zeros(50_000, np.float64)}
    mean = sum(add_gaussian_noise(zeros, clip, sigma, np.random.default_rng([9, s]))["w"] for s in range(sites)) / sites
    expected = aggregate_noise_std(clip, sigma, sites)
    assert expected == pytest.approx(1.0)
    assert abs(mean.std() / expected - 1.0) < 5.0 / math.sqrt(2 * mean.size)


@pytest.mark.parametrize("sigma,q,delta,rounds,one_by_one",
                         [(1.1, 1.0, 1e-5, 5, True), (2.0, 0.1, 1e-6, 40, False), (0.8, 0.3, 1e-5, 1, False)])
def test_accountant_matches_dp_accounting_called_directly(sigma, q, delta, rounds, one_by_one):
    from dp_accounting import dp_event
    from dp_accounting.rdp import rdp_privacy_accountant

    direct = rdp_privacy_accountant.RdpAccountant()
    event = dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma))
    for _ in range(rounds) if one_by_one else range(1):
        direct.compose(event, 1 if one_by_one else rounds)
    expected = direct.get_epsilon(delta)

    acc = PrivacyAccountant(sigma, q, delta)
    for _ in range(rounds):  # one round at a time, as the server steps it
        acc.step()
    assert acc.rounds == rounds
    assert acc.epsilon() == pytest.approx(expected, rel=1e-9)
    assert PrivacyAccountant(sigma, q, delta).step(rounds).epsilon() == pytest.approx(expected, rel=1e-9)


def test_epsilon_grows_with_rounds_and_shrinks_with_noise():
    acc = PrivacyAccountant(1.5, 1.0, 1e-5)
    assert acc.epsilon() == 0.0
    eps = [acc.step().epsilon() for _ in range(6)]
    assert all(b > a for a, b in zip(eps, eps[1:]))
    assert acc.round_epsilon() == pytest.approx(eps[0])
    assert eps[-1] <= 6 * eps[0]  # composition is never worse than adding up
    by_noise = [PrivacyAccountant(s, 1.0, 1e-5).step(10).epsilon() for s in (0.8, 1.5, 3.0, 6.0)]
    assert all(b < a for a, b in zip(by_noise, by_noise[1:]))
    assert PrivacyAccountant(0.0, 1.0, 1e-5).step(1).epsilon() == math.inf
    with pytest.raises(ValueError, match="sampling_rate"):
        PrivacyAccountant(1.0, 0.0, 1e-5)
    with pytest.raises(ValueError, match="delta"):
        PrivacyAccountant(1.0, 1.0, 1.0)
