"""The pure train step on a small stand-in model: learning, determinism, resume keys, accumulation, NaN guard."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medjax.training.digest import params_digest
from medjax.training.optim import make_optimizer, make_schedule
from medjax.training.state import state_from_dict, state_to_dict, train_state_spec
from medjax.training.steps import make_train_step


def _setup(cfg, factory, *, grad_accum=1, loss_fn=None, seed=0):
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, grad_accum=grad_accum, seed=seed))
    schedule = make_schedule(cfg.train)
    tx = make_optimizer(cfg.train, schedule=schedule)
    spec = train_state_spec(cfg, tx=tx, model_factory=lambda: factory(seed))
    kw = {"loss_fn": loss_fn} if loss_fn else {}
    step = make_train_step(spec.model_def, tx, schedule, state_shardings=spec.shardings, grad_accum=grad_accum, **kw)
    return spec, step


def _batches(n, b=4, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(1, 4, 4, 4, 1)).astype(np.float32)
    return [{"image": base + 0.05 * rng.normal(size=(b, 4, 4, 4, 1)).astype(np.float32)} for _ in range(n)]


_CACHE: dict = {}


def _default(cfg, factory):
    """The step for the default tiny settings, compiled once per module."""
    if "default" not in _CACHE:
        _CACHE["default"] = _setup(cfg, factory)
    return _CACHE["default"]


def test_state_layout_and_step_counter(tiny_cfg, tiny_model_factory):
    spec, step = _default(tiny_cfg, tiny_model_factory)
    state = spec.init()
    assert state.step.dtype == jnp.int32 and int(state.step) == 0
    assert state.rng.dtype == jnp.uint32
    assert set(state.params) == {"enc", "norm", "dec", "mask_token"}
    d = state_to_dict(state)
    assert set(d) == {"step", "params", "opt_state", "rng", "nonfinite_count"}
    state, m = step(state, _batches(1)[0])
    assert int(state.step) == 1
    assert set(m) == {"loss", "grad_norm", "lr", "nonfinite_count"}
    assert float(m["lr"]) == 0.0  # warm-up starts at 0


def test_loss_falls(tiny_cfg, tiny_model_factory):
    spec, step = _default(tiny_cfg, tiny_model_factory)
    state = spec.init()
    losses = []
    for b in _batches(20):
        state, m = step(state, b)
        losses.append(float(m["loss"]))
    assert np.mean(losses[-4:]) < 0.7 * np.mean(losses[:4]), losses


def test_bit_identical_runs_and_resume_mid_run(tiny_cfg, tiny_model_factory):
    """Two runs give bit-identical parameters, the second with a step function built and compiled afresh; a
    run stopped after 3 steps (state through host copies, as a checkpoint does) and continued in that fresh step
    function ends on the same parameters too."""
    batches = _batches(6)
    cached = _default(tiny_cfg, tiny_model_factory)
    fresh = _setup(tiny_cfg, tiny_model_factory)
    assert fresh[1] is not cached[1]
    digests = []
    for spec, step in (cached, fresh):
        state = spec.init()
        for b in batches:
            state, _ = step(state, b)
        digests.append(params_digest(state.params))
    assert digests[0] == digests[1]
    spec, step = cached
    state = spec.init()
    for b in batches[:3]:
        state, _ = step(state, b)
    host = jax.device_get(state_to_dict(state))
    _, step2 = fresh
    state2 = state_from_dict(jax.tree.map(jnp.asarray, host))
    for b in batches[3:]:
        state2, _ = step2(state2, b)
    assert params_digest(state2.params) == digests[0]


def test_masks_depend_on_step(tiny_cfg, tiny_model_factory):
    # same batch twice: the second step draws a different mask, so the losses of two fresh states differ
    spec, step = _default(tiny_cfg, tiny_model_factory)
    b = _batches(1)[0]
    s0 = spec.init()
    _, m0 = step(s0, b)
    s1 = spec.init().replace(step=jnp.ones((), jnp.int32))
    _, m1 = step(s1, b)
    assert float(m0["loss"]) != float(m1["loss"])


def _plain_mse(model, batch, key):
    x = batch["image"].reshape(batch["image"].shape[0], -1)
    pred = model.dec(jax.nn.gelu(model.norm(model.enc(x))))
    return jnp.mean((pred - x) ** 2), {}


def test_grad_accumulation_matches_big_batch(tiny_cfg, tiny_model_factory):
    batches = _batches(3, b=8)
    out = {}
    for accum in (1, 4):
        spec, step = _setup(tiny_cfg, tiny_model_factory, grad_accum=accum, loss_fn=_plain_mse)
        state = spec.init()
        losses = []
        for b in batches:
            state, m = step(state, b)
            losses.append(float(m["loss"]))
        out[accum] = (jax.device_get(state.params), losses)
    for accum in (4,):
        np.testing.assert_allclose(out[accum][1], out[1][1], rtol=1e-5)
        for a, b in zip(jax.tree.leaves(out[accum][0]), jax.tree.leaves(out[1][0])):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_nonfinite_guard_keeps_params_and_counts(tiny_cfg, tiny_model_factory):
    spec, step = _default(tiny_cfg, tiny_model_factory)
    state = spec.init()
    good = _batches(2)
    state, _ = step(state, good[0])
    before = jax.device_get(state_to_dict(state))
    bad = {"image": np.full((4, 4, 4, 4, 1), np.nan, np.float32)}
    for k in (1, 2, 3):
        state, m = step(state, bad)
        assert int(m["nonfinite_count"]) == k
        assert not np.isfinite(float(m["loss"]))
    after = jax.device_get(state_to_dict(state))
    assert int(after["step"]) == 4
    for a, b in zip(jax.tree.leaves(after["params"]), jax.tree.leaves(before["params"])):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(after["opt_state"]), jax.tree.leaves(before["opt_state"])):
        np.testing.assert_array_equal(a, b)
    state, m = step(state, good[1])
    assert int(m["nonfinite_count"]) == 0
    assert np.isfinite(float(m["loss"]))


def test_infinite_lr_is_caught_by_the_guard(tiny_cfg, tiny_model_factory):
    cfg = dataclasses.replace(tiny_cfg, train=dataclasses.replace(tiny_cfg.train, lr=float("inf"), warmup_steps=0))
    spec, step = _setup(cfg, tiny_model_factory)
    state = spec.init()
    d0 = params_digest(state.params)
    for b in _batches(2):
        state, m = step(state, b)
    assert int(m["nonfinite_count"]) == 2
    assert params_digest(state.params) == d0


def test_grad_accum_must_divide(tiny_cfg, tiny_model_factory):
    spec, step = _setup(tiny_cfg, tiny_model_factory, grad_accum=3)
    with pytest.raises(ValueError, match=r"batch of 4 samples .* train\.grad_accum=3"):
        step(spec.init(), _batches(1, b=4)[0])
