"""The step loop reads metrics one step late and stays exact: the held state at the divergence limit, the logged
non-finite counts, the checkpointed step and the error."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np
import pytest

from medjax.errors import TrainingDivergedError
from medjax.training.digest import params_digest
from medjax.training.driver import run_steps
from medjax.training.optim import make_optimizer, make_schedule
from medjax.training.state import state_to_dict, train_state_spec
from medjax.training.steps import make_train_step


def _setup(cfg, factory, **kw):
    schedule = make_schedule(cfg.train)
    tx = make_optimizer(cfg.train, schedule=schedule)
    spec = train_state_spec(cfg, tx=tx, model_factory=lambda: factory(0))
    step = make_train_step(spec.model_def, tx, schedule, state_shardings=spec.shardings, **kw)
    return spec, step


def _good(seed):
    rng = np.random.default_rng(seed)
    return {"image": rng.normal(size=(4, 4, 4, 4, 1)).astype(np.float32)}


_BAD = {"image": np.full((4, 4, 4, 4, 1), np.nan, np.float32)}


def test_step_holds_the_state_at_the_nonfinite_limit(tiny_cfg, tiny_model_factory):
    spec, step = _setup(tiny_cfg, tiny_model_factory, max_nonfinite=2)
    state, _ = step(spec.init(), _good(0))
    d1 = params_digest(state.params)
    counts = []
    for _ in range(4):  # two bad steps reach the limit; the next ones change nothing
        state, m = step(state, _BAD)
        counts.append(int(m["nonfinite_count"]))
    assert counts == [1, 2, 2, 2]
    assert int(state.step) == 3 and int(state.nonfinite_count) == 2
    assert params_digest(state.params) == d1
    state, m = step(state, _good(1))  # still held: the loop stops at the limit
    assert int(state.step) == 3 and params_digest(state.params) == d1


class _Logger:
    def __init__(self):
        self.records, self.progress_steps, self.closed = [], [], False

    def log(self, step, host):
        self.records.append((step, dict(host)))

    def progress(self, step, loss, sps):
        self.progress_steps.append(step)

    def close(self):
        self.closed = True


class _Ckpt:
    directory = Path("/ckpt")

    def __init__(self):
        self.saved = []

    def wait(self):
        pass


def _run(cfg, step, state, batches, *, max_nonfinite, every=100, log_every=1):
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=len(batches), log_every=log_every,
                                                             max_nonfinite=max_nonfinite),
                              checkpoint=dataclasses.replace(cfg.checkpoint, every_steps=every))
    it = iter(batches)
    logger, ckpt = _Logger(), _Ckpt()

    def save(s, st, host, force):
        d = jax.device_get(state_to_dict(st))
        ckpt.saved.append((s, int(d["step"]), int(d["nonfinite_count"]), params_digest(d["params"]), force,
                           host.get("loss")))

    try:
        result = run_steps(cfg, state, step, start=0, next_batch=lambda: next(it), save=save, ckpt=ckpt,
                           logger=logger, mesh=None, rules=())
        err = None
    except TrainingDivergedError as e:
        result, err = None, e
    return result, err, logger, ckpt


def test_divergence_is_exact_with_lagged_reads(tiny_cfg, tiny_model_factory):
    spec, step = _setup(tiny_cfg, tiny_model_factory, max_nonfinite=3)
    init = spec.init()
    ref, _ = step(spec.init(), _good(0))
    d1 = params_digest(ref.params)
    batches = [_good(0), _BAD, _BAD, _BAD, _BAD, _good(1), _good(2)]
    result, err, logger, ckpt = _run(tiny_cfg, step, init, batches, max_nonfinite=3)
    assert err is not None and "3 consecutive non-finite steps at step 4" in str(err)
    assert "parameters of step 1" in str(err) and logger.closed
    # the saved state is that of step 4 (the step after it was held), with the good parameters of step 1
    s, state_step, count, digest, force, _ = ckpt.saved[-1]
    assert (s, state_step, count, force) == (4, 4, 3, True) and digest == d1
    assert [h["nonfinite_count"] for _, h in logger.records] == [0, 1, 2, 3]
    assert [s for s, _ in logger.records] == [1, 2, 3, 4]


def test_lagged_loop_logs_every_step_and_checkpoints_with_that_steps_loss(tiny_cfg, tiny_model_factory):
    spec, step = _setup(tiny_cfg, tiny_model_factory, max_nonfinite=10)
    batches = [_good(i) for i in range(6)]
    ref = spec.init()
    losses = []
    for b in batches:
        ref, m = step(ref, b)
        losses.append(float(m["loss"]))
    result, err, logger, ckpt = _run(tiny_cfg, step, spec.init(), batches, max_nonfinite=10, every=2, log_every=2)
    assert err is None and result.step == 6
    assert [s for s, _ in logger.records] == [1, 2, 4, 6]  # the first, every log_every-th and the last
    assert logger.progress_steps == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose([h["loss"] for _, h in logger.records], [losses[i - 1] for i in (1, 2, 4, 6)])
    # periodic checkpoints at 2, 4, 6 and the final one at 6, each with its own step's state and loss
    assert [(s, st) for s, st, *_ in ckpt.saved] == [(2, 2), (4, 4), (6, 6), (6, 6)]
    assert [c[5] for c in ckpt.saved] == pytest.approx([losses[1], losses[3], losses[5], losses[5]])
    assert params_digest(result.state.params) == params_digest(ref.params)
    assert result.host["loss"] == pytest.approx(losses[-1]) and result.first_loss == pytest.approx(losses[0])
