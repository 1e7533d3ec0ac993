"""The step loop shared by pretraining and fine-tuning: step, log, checkpoint, stop on a signal, guard divergence.

Both :func:`medjax.training.pretraining.pretrain` and :func:`medjax.finetune.loop.finetune` set up their own model,
data and state, then hand the loop to :func:`run_steps` with a few callbacks:

- ``next_batch()``: the next global batch (already placed with the batch sharding);
- ``save(step, state, host, force)``: start a checkpoint (periodic ones with ``force=False``);
- ``on_step(step, state, batch, done)``: optional per-step extra (e.g. TensorBoard previews);
- ``before_final_save(state, stopped)``: optional last change of the state before the final checkpoint (e.g.
  the linear probe's feature statistics); not called when a signal stopped the run.

The host reads a step's metrics one step late (while the next step runs), and at the first step, checkpoint
steps and the last step right away; with several processes the stop-signal collective runs every
:data:`STOP_CHECK_EVERY` steps (and at checkpoints and the end). The step function must hold the state once
the non-finite streak reaches ``train.max_nonfinite`` (``make_train_step(..., max_nonfinite=...)``), so the
step dispatched before the host saw the streak changes nothing.

What the loop guarantees, for both: ``metrics.jsonl``/TensorBoard/progress every ``train.log_every`` steps (and on
the first, the last and every step with a non-finite update) with samples/s measured from the step after
compilation; a checkpoint every ``checkpoint.every_steps`` and at the end or on SIGTERM/SIGINT (the run then
stops at a step boundary, every process at the same one); after ``train.max_nonfinite`` consecutive non-finite
steps the state is saved and :class:`~medjax.errors.TrainingDivergedError` names that checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from medjax.errors import TrainingDivergedError

# steps between the cross-process checks for a stop signal (one collective each); every step with one process
STOP_CHECK_EVERY = 10


@dataclass
class LoopResult:
    """End of :func:`run_steps`: the final ``state`` and ``step``; ``host`` (the last step's metrics as floats,
    with ``samples_per_s``), ``first_loss`` (of the first step run here), ``compile_s`` (wall seconds of that
    first step, compilation included; None when no step ran) and ``stopped`` (the
    :class:`~medjax.training.signals.StopRequest` of a signal that stopped the run, else None)."""

    state: Any
    step: int
    host: dict
    first_loss: float | None
    compile_s: float | None
    stopped: Any


def run_steps(cfg, state, step_fn, *, start: int, next_batch: Callable[[], dict], save: Callable, ckpt, logger,
              mesh, rules, on_step: Callable | None = None, before_final_save: Callable | None = None,
              profile_steps: int = 0, profile_dir=None) -> LoopResult:
    """Run ``step_fn`` from step ``start`` to ``cfg.train.steps`` (see the module doc for the callbacks).

    Args:
      cfg: the run config (``train.steps``, ``train.log_every``, ``train.batch_size``, ``train.max_nonfinite``,
        ``checkpoint.every_steps``).
      state: the train state; ``step_fn(state, batch) -> (state, metrics)`` (jitted, donating the state).
      start: the step ``state`` is at.
      ckpt: the run's :class:`~medjax.training.checkpoint.Checkpointer` (waited on before returning).
      logger: the run's :class:`~medjax.training.logging.RunLogger`.
      mesh, rules: the device mesh and logical-axis rules active while stepping.
      profile_steps, profile_dir: record a JAX profiler trace of ``profile_steps`` steps, starting after the
        first (compiling) step, into ``profile_dir`` (TensorBoard's profile plugin reads it:
        ``profile_dir/plugins/profile/<run>/*.xplane.pb``); 0 = no trace.

    Raises :class:`TrainingDivergedError` after ``cfg.train.max_nonfinite`` consecutive non-finite steps (the
    state is saved first and the logger closed).
    """
    import jax

    from medjax.parallel import distributed as _dist
    from medjax.parallel.rules import use_mesh
    from medjax.training.signals import StopRequest

    host: dict = {}
    first_loss = compile_s = stopped = None
    step = start
    t_mark, step_mark = time.time(), start
    every = max(1, cfg.train.log_every)
    pending: list = []  # [(step, device metrics)] dispatched but not yet read by the host

    def settle() -> None:
        """Read the pending step's metrics (blocks until that step is done): log, guard divergence."""
        nonlocal host, t_mark, step_mark
        if not pending:
            return
        s, metrics = pending.pop()
        host = {k: float(v) for k, v in jax.device_get(metrics).items()}
        bad = int(host["nonfinite_count"])
        if s % every == 0 or s == cfg.train.steps or s == start + 1 or bad:
            now = time.time()
            sps = (s - step_mark) * cfg.train.batch_size / (now - t_mark) if s > step_mark else None
            host["samples_per_s"] = sps or 0.0
            logger.log(s, host)
            if s > step_mark:
                t_mark, step_mark = now, s
        logger.progress(s, host["loss"], host.get("samples_per_s"))
        if bad >= cfg.train.max_nonfinite:
            # steps dispatched after s were no-ops (the step holds the state once the streak reaches the limit)
            save(s, state, host, True)
            ckpt.wait()
            logger.close()
            raise TrainingDivergedError(
                f"{bad} consecutive non-finite steps at step {s} (loss {host['loss']}, grad norm "
                f"{host['grad_norm']}); last good checkpoint: {ckpt.directory / str(s)} "
                f"(parameters of step {s - bad}); lower train.lr, raise train.warmup_steps or check "
                "the data (`medjax data check`)")

    profiler = _Profiler(profile_steps, profile_dir)
    with StopRequest() as stop, profiler:
        while step < cfg.train.steps:
            t0 = time.time()
            profiler.before_step(step - start)
            batch = next_batch()
            with use_mesh(mesh, rules):
                if compile_s is None and jax.process_count() > 1:
                    # compile everywhere, then start together: gloo collectives wait only 30 s for peers
                    step_fn = step_fn.lower(state, batch).compile()
                    _dist.barrier("medjax-step-compiled")
                state, metrics = step_fn(state, batch)
            step += 1
            # the previous step's metrics are read while this one runs: the host never waits for the device
            # before dispatching the next step, except where it needs this step's values now (below)
            settle()
            pending.append((step, metrics))
            done = step == cfg.train.steps
            checkpoint = step % cfg.checkpoint.every_steps == 0
            if compile_s is None:
                settle()
                compile_s = time.time() - t0
                t_mark, step_mark = time.time(), step
                first_loss = host["loss"]
            if checkpoint or done:
                settle()
            if checkpoint:
                save(step, state, host, False)
            if on_step is not None:
                on_step(step, state, batch, done)
            # a signal may reach the processes at different steps: all stop together at the first check after
            # any got one (a collective with several processes, so only every STOP_CHECK_EVERY steps)
            if jax.process_count() == 1 or step % STOP_CHECK_EVERY == 0 or checkpoint or done:
                if _dist.any_process(stop.requested):
                    settle()
                    stopped = stop
                    break
        settle()
        profiler.stop()
        if before_final_save is not None and stopped is None and step > start:
            state = before_final_save(state)
        save(step, state, host, True)
        ckpt.wait()
    return LoopResult(state=state, step=step, host=host, first_loss=first_loss, compile_s=compile_s,
                      stopped=stopped)


class _Profiler:
    """Start a ``jax.profiler`` trace before step ``start + 1`` (after compilation) and stop it ``steps`` steps
    later (waiting for the device), at the end of the loop, or on an error."""

    def __init__(self, steps: int, directory):
        if steps < 0:
            raise ValueError(f"--profile {steps}: must be >= 0 steps")
        self.steps, self.directory, self.active, self.done = int(steps), directory, False, False
        if self.steps and directory is None:
            raise ValueError("profiling needs a directory for the trace")

    def before_step(self, i: int) -> None:
        """Called before the ``i``-th step of this run (0-based)."""
        if not self.steps or self.done:
            return
        if i == 1 and not self.active:
            import jax

            jax.profiler.start_trace(str(self.directory))
            self.active = True
        elif self.active and i == 1 + self.steps:
            self.stop()

    def stop(self) -> None:
        if self.active:
            import jax

            jax.effects_barrier()
            for a in jax.live_arrays():
                a.block_until_ready()
            jax.profiler.stop_trace()
            self.active, self.done = False, True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        return False
