"""MAE pretraining (`medjax pretrain`): set up the run, hand it to the step loop, write figures and the summary.

WORKDIR layout::

    config.json              the resolved config of the run
    checkpoints/<step>/      train state + data-iterator state + meta (config, parameter count)
    metrics.jsonl            one JSON record per logged step
    tb/                      TensorBoard events (scalars, reconstruction images)
    reconstructions/step_XXXXXX.png, loss.png

Guarantees (CPU, same config): the same seed gives bit-identical parameters; a run killed at any moment
(even SIGKILL) and started again resumes from its last checkpoint at exactly the next batch and mask, and ends
with the same parameters as an uninterrupted run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from medjax.config.schema import Config
from medjax.errors import ConfigError
from medjax.parallel.rules import use_mesh


def _sync(name: str) -> None:
    from medjax.parallel.distributed import barrier

    barrier(name)


class _Previewer:
    """Jitted reconstruction of the first ``n`` samples of a batch, replicated on every device."""

    def __init__(self, model_def, spec, n: int = 2):
        import jax
        from jax.sharding import NamedSharding, PartitionSpec

        self.n = n
        replicated = NamedSharding(spec.mesh, PartitionSpec())

        def fn(params, model_state, rng, images):
            key = jax.random.fold_in(jax.random.wrap_key_data(rng), 0x7FFFFFFF)
            model = model_def.merge(params, model_state, key)
            _, aux = model(images, mask_key=key, deterministic=True)
            r = model.reconstruct(images, aux["pred"], aux["mask"])
            return {"input": images[:n], "masked": r["masked"][:n], "recon": r["recon"][:n]}

        self._fn = jax.jit(fn, out_shardings=replicated)
        self._spec = spec

    def __call__(self, state, images) -> dict:
        import jax

        from medjax.parallel.rules import use_mesh

        with use_mesh(self._spec.mesh, self._spec.rules):
            out = self._fn(state.params, state.model_state, state.rng, images)
        return {k: np.asarray(jax.device_get(v)) for k, v in out.items()}


def _tb_images(preview: dict) -> dict:
    from medjax.training.figures import PLANES_3D, mid_slices, tensorboard_image

    out = {}
    for i in range(preview["input"].shape[0]):
        cols = [mid_slices(preview[k][i, ..., 0]) for k in ("input", "masked", "recon")]
        planes = PLANES_3D if len(cols[0]) == 3 else ("slice",)
        for p, plane in enumerate(planes):
            out[f"reconstruction/sample{i}_{plane}"] = tensorboard_image([c[p] for c in cols])
    return out


def pretrain(cfg: Config, workdir, *, restart: bool = False, progress: bool = True,
             data_shards: int | None = None, profile_steps: int = 0, probe=None) -> dict:
    """Pretrain the MAE of ``cfg`` in ``workdir``, resuming from its latest checkpoint unless ``restart``.

    Returns a summary dict: ``workdir``, ``checkpoint`` (directory of the last checkpoint), ``step``,
    ``first_loss``, ``final_loss``, ``seconds``, ``compile_s``, ``samples_per_s``, ``tensorboard`` (command),
    ``reconstruction_png``, ``loss_png``, ``signal`` (name of a SIGTERM/SIGINT that stopped the run, or None),
    ``exit_code`` (0; 130 after SIGINT), ``resumed_from`` (step or None) and ``params_digest`` (SHA-256 of the
    final parameters). The summary is also written to ``WORKDIR/summary.json``.

    Multi-process (after :func:`medjax.parallel.distributed.setup`): every process runs this function; each
    reads its data shards, only process 0 logs and writes files, checkpoints are written once by all together.
    ``data_shards`` (default: the resumed checkpoint's, else the process count) fixes the global batch
    independently of the process count (rule in :mod:`medjax.data.global_batches`): 2 processes and 1 process
    with ``data_shards=2`` see the same batches. ``profile_steps`` > 0 records a JAX profiler trace of that
    many steps (after the compiling first step) into ``WORKDIR/tb`` for TensorBoard's profile tab.
    ``train.eval_every`` > 0 logs the MAE loss on fixed crops of ``data.val_dir`` (``val_loss``,
    :mod:`medjax.training.mae_eval`) every that many steps and at the end; ``probe`` (a callable ``state ->
    {name: float}``, e.g. :class:`medjax.finetune.probe_callback.ProbeCallback`) is called every
    ``train.probe_every`` steps and at the end, and its values logged the same way (``metrics.jsonl`` records
    without ``loss``, TensorBoard ``eval/<name>``).

    Raises:
      TrainingDivergedError: ``cfg.train.max_nonfinite`` consecutive non-finite steps (state saved first).
      ConfigError / DataError / CheckpointError: bad settings, data or checkpoints, naming the key or file.
    """
    import jax

    from medjax.config.overrides import to_dict
    from medjax.data.global_batches import check_process_rows, gather_data_state, make_data_iterator, saved_num_shards
    from medjax.data.pipeline import to_global_batch
    from medjax.training.digest import count_params, params_digest
    from medjax.training.driver import run_steps
    from medjax.training.logging import read_metrics
    from medjax.training.optim import make_optimizer, make_schedule
    from medjax.training.setup import open_run, prepare_workdir
    from medjax.training.state import state_to_dict
    from medjax.training.steps import make_train_step

    t_start = time.time()
    if cfg.task != "mae":
        raise ConfigError(f"task={cfg.task!r}: `pretrain` trains MAE models; set task=mae or use a fine-tuning command")
    from medjax.training.mae_eval import check_eval_config

    check_eval_config(cfg)
    if probe is not None and not cfg.train.probe_every:
        raise ConfigError("a probe callback was given but train.probe_every=0; set train.probe_every")
    workdir = prepare_workdir(cfg, workdir, restart=restart)
    main = jax.process_index() == 0
    schedule = make_schedule(cfg.train)
    tx = make_optimizer(cfg.train, schedule=schedule)

    def make_data(saved: dict | None):
        # a resumed run keeps the checkpoint's number of data shards unless told otherwise
        shards = data_shards if data_shards is not None else saved_num_shards(saved)
        if shards is not None and shards % jax.process_count():
            raise ConfigError(
                f"the checkpoint in {workdir} was written with {shards} data shard(s), which {jax.process_count()} "
                f"processes cannot split evenly; resume with a process count that divides {shards}, or pass "
                "--data-shards (the data order then changes) or --restart")
        return make_data_iterator(cfg.data, global_batch=cfg.train.batch_size, seed=cfg.train.seed,
                                  num_shards=shards)

    with open_run(cfg, workdir, tx=tx, make_data=make_data, progress=progress, desc="pretrain") as run:
        spec, ckpt, data, logger, bsh = run.spec, run.ckpt, run.data, run.logger, run.batch_sharding
        resumed_from, mesh = run.resumed_from, run.mesh
        num_params = count_params(run.state.params)
        meta = {"config": to_dict(cfg), "num_params": int(num_params), "task": "mae"}
        with use_mesh(mesh, spec.rules):
            step_fn = make_train_step(spec.model_def, tx, schedule, state_shardings=spec.shardings,
                                      batch_sharding=bsh, grad_accum=cfg.train.grad_accum,
                                      max_nonfinite=cfg.train.max_nonfinite)
        check_process_rows(bsh, run.per_process * jax.process_count())
        previewer = _Previewer(spec.model_def, spec)
        last: dict = {"batch": None}

        def save(s: int, st, host: dict, force: bool) -> None:
            ckpt.save(s, state_to_dict(st), data_state=gather_data_state(data),
                      meta={**meta, "step": int(s), "loss": host.get("loss")}, force=force)

        def next_batch() -> dict:
            last["batch"] = to_global_batch(next(data), bsh)
            return last["batch"]

        held_out = None
        if cfg.train.eval_every:
            from medjax.training.mae_eval import HeldOutLoss

            held_out = HeldOutLoss(cfg, spec)

        def previews(s: int, st, batch: dict, done: bool) -> None:
            if cfg.train.image_every and s % cfg.train.image_every == 0 and not done:
                logger.images(s, _tb_images(previewer(st, batch["image"])))
            # held-out curves: read from the device only at their own steps
            values = {}
            if held_out is not None and (s % cfg.train.eval_every == 0 or done):
                values["val_loss"] = held_out(st)
            if probe is not None and (s % cfg.train.probe_every == 0 or done):
                values.update(probe(st))
            if values and main:
                logger.log_eval(s, values)

        result = run_steps(cfg, run.state, step_fn, start=run.start, next_batch=next_batch, save=save, ckpt=ckpt,
                           logger=logger, mesh=mesh, rules=spec.rules, on_step=previews,
                           profile_steps=profile_steps, profile_dir=workdir / "tb")
        ckpt.wait()
        summary = _finish(cfg, workdir, result, last["batch"], previewer, logger, ckpt, resumed_from,
                          num_params, t_start, params_digest, read_metrics, main)
    if main:
        (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _finish(cfg, workdir, result, batch, previewer, logger, ckpt, resumed_from, num_params, t_start,
            params_digest, read_metrics, main) -> dict:
    """The summary of a finished run, with the last reconstructions and the loss curve (process 0 writes)."""
    state, step, host, stopped, compile_s = result.state, result.step, result.host, result.stopped, result.compile_s
    first_loss = result.first_loss
    exit_code = stopped.exit_code if stopped is not None else 0
    last_dir = ckpt.directory / str(step)
    if stopped is not None:
        logger.write(f"received {stopped.name}: saved checkpoint {last_dir}; run the same command to resume")

    summary = {
        "workdir": str(workdir),
        "checkpoint": str(last_dir),
        "step": step,
        "resumed_from": resumed_from,
        "first_loss": first_loss,
        "final_loss": host.get("loss"),
        "seconds": time.time() - t_start,
        "compile_s": compile_s,
        "samples_per_s": host.get("samples_per_s"),
        "tensorboard": f"tensorboard --logdir {workdir / 'tb'}",
        "metrics": str(workdir / "metrics.jsonl"),
        "reconstruction_png": None,
        "loss_png": None,
        "signal": stopped.name if stopped is not None else None,
        "exit_code": exit_code,
        "num_params": int(num_params),
        "params_digest": params_digest(state.params),
    }
    if batch is not None:
        _sync("medjax-preview")
        preview = previewer(state, batch["image"])
        if main:
            from medjax.training.figures import save_loss_curve, save_reconstructions

            logger.images(step, _tb_images(preview))
            png = workdir / "reconstructions" / f"step_{step:06d}.png"
            summary["reconstruction_png"] = save_reconstructions(
                png, preview["input"], preview["masked"], preview["recon"], title=f"{cfg.name}: step {step}")
            records = [r for r in read_metrics(workdir / "metrics.jsonl") if r.get("loss") is not None]
            if records:
                summary["loss_png"] = save_loss_curve(workdir / "loss.png", [r["step"] for r in records],
                                                      [r["loss"] for r in records], title=f"{cfg.name}: MAE loss")
                summary["first_loss"] = records[0]["loss"]
    return summary
