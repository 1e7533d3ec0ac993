"""Representation distillation (`medjax distill`): a student encoder learns the frozen teacher's tokens on the
unlabeled volumes (the pretraining data pipeline), through the shared step loop.

Set-up, checkpoints, resume, logging, sharding and signals are pretraining's (:func:`medjax.training.setup.open_run`,
:func:`medjax.training.driver.run_steps`); only the model (:class:`~medjax.distill.student.Student`) and the loss
(:mod:`medjax.distill.step`) differ. WORKDIR is an ordinary run directory (``config.json``, ``checkpoints/<step>/``
with the student at ``params/encoder`` and the projection at ``params/proj``, ``metrics.jsonl``, ``tb/``), so
``medjax finetune --init-from WORKDIR`` starts a task model from the student's encoder.

A resumed run reads the teacher again from ``distill.teacher``; pin it to one step with
``--teacher TEACHER/checkpoints/<step>`` when the teacher run may still be writing checkpoints.
"""

from __future__ import annotations

import json
import time

from medjax.config.schema import Config
from medjax.errors import ConfigError
from medjax.parallel.rules import use_mesh


def distill(cfg: Config, workdir, *, restart: bool = False, progress: bool = True, data_shards: int | None = None,
            profile_steps: int = 0) -> dict:
    """Distil the teacher ``cfg.distill.teacher`` into the student ``cfg.model`` in ``workdir`` (resuming from its
    latest checkpoint unless ``restart``).

    Returns the summary (also written to ``WORKDIR/summary.json``): ``workdir``, ``checkpoint``, ``step``,
    ``resumed_from``, ``first_loss``, ``final_loss``, ``seconds``, ``compile_s``, ``samples_per_s``, ``signal``,
    ``exit_code``, ``num_params`` (student encoder + projection), ``params_digest`` (SHA-256 of the student's
    parameters), ``teacher`` (checkpoint folder read), ``teacher_params_digest`` (of the teacher's encoder after
    the run: equal to the one before, the teacher is never updated), ``teacher_width``, ``student_width``.

    Raises:
      ConfigError: no teacher, an unknown ``distill.loss``, a patch grid or channel count unlike the teacher's.
      CheckpointError / DataError / TrainingDivergedError: as :func:`medjax.training.pretraining.pretrain`.
    """
    import jax

    from medjax.config.overrides import to_dict
    from medjax.config.variants import decode_variant
    from medjax.data.global_batches import check_process_rows, gather_data_state, make_data_iterator, saved_num_shards
    from medjax.data.pipeline import to_global_batch
    from medjax.distill.losses import FEATURE_LOSSES
    from medjax.distill.step import make_distill_step
    from medjax.distill.student import build_student
    from medjax.distill.teacher import load_teacher
    from medjax.parallel.mesh import make_mesh
    from medjax.parallel.rules import logical_rules
    from medjax.training.digest import count_params, params_digest
    from medjax.training.driver import run_steps
    from medjax.training.optim import make_optimizer, make_schedule
    from medjax.training.setup import open_run, prepare_workdir
    from medjax.training.state import state_to_dict

    t_start = time.time()
    dcfg = cfg.distill
    if dcfg.loss not in FEATURE_LOSSES:
        raise ConfigError(f"distill.loss={dcfg.loss!r} is not supported; use one of {FEATURE_LOSSES}")
    if not 0.0 <= dcfg.mask_ratio < 1.0:
        raise ConfigError(f"distill.mask_ratio={dcfg.mask_ratio}: must be in [0, 1)")
    if not dcfg.teacher:
        raise ConfigError("distill.teacher is empty: pass --teacher WORKDIR (a `medjax pretrain` run or checkpoint)")
    if dcfg.layer_weight < 0 or dcfg.attention_weight < 0:
        raise ConfigError(f"distill.layer_weight={dcfg.layer_weight}, distill.attention_weight="
                          f"{dcfg.attention_weight}: must be >= 0")
    # the teacher first: a bad teacher fails before the workdir is touched
    teacher = load_teacher(dcfg.teacher, cfg, make_mesh(cfg.mesh), logical_rules(cfg.mesh))
    if dcfg.layers:  # a ConfigError naming distill.layers for a bad entry, before the workdir is touched
        from medjax.distill.layers import layer_pairs

        layer_pairs(dcfg.layers, decode_variant(cfg.model.variant, cfg.data.spatial_dims).depth, teacher.depth)
    teacher_digest = params_digest(teacher.params)
    workdir = prepare_workdir(cfg, workdir, restart=restart)
    schedule = make_schedule(cfg.train)
    tx = make_optimizer(cfg.train, schedule=schedule)

    def make_data(saved: dict | None):
        shards = data_shards if data_shards is not None else saved_num_shards(saved)
        if shards is not None and shards % jax.process_count():
            raise ConfigError(f"the checkpoint in {workdir} was written with {shards} data shard(s), which "
                              f"{jax.process_count()} processes cannot split evenly; pass --data-shards or --restart")
        return make_data_iterator(cfg.data, global_batch=cfg.train.batch_size, seed=cfg.train.seed, num_shards=shards)

    def init_student(state, spec):
        if not dcfg.init_from:
            return state
        from medjax.finetune.init import load_encoder

        enc = spec.model_def.merge(state.params).encoder
        params, _ = load_encoder(state.params, dcfg.init_from, grid=enc.grid, num_prefix=enc.num_prefix_tokens,
                                 spatial_dims=cfg.data.spatial_dims)
        return state.replace(params=params)

    def student_factory():
        return build_student(cfg, teacher.width, teacher_depth=teacher.depth)

    with open_run(cfg, workdir, tx=tx, model_factory=student_factory, make_data=make_data,
                  on_init=init_student, progress=progress, desc="distill") as run:
        spec, ckpt, data, logger, bsh, mesh = run.spec, run.ckpt, run.data, run.logger, run.batch_sharding, run.mesh
        num_params = count_params(run.state.params)
        student_width = decode_variant(cfg.model.variant, cfg.data.spatial_dims).width
        meta = {"config": to_dict(cfg), "num_params": int(num_params), "task": "distill",
                "teacher": teacher.source, "teacher_params_digest": teacher_digest}
        with use_mesh(mesh, spec.rules):
            step_fn = make_distill_step(spec.model_def, tx, schedule, teacher, dcfg, state_shardings=spec.shardings,
                                        batch_sharding=bsh, grad_accum=cfg.train.grad_accum,
                                        max_nonfinite=cfg.train.max_nonfinite)
        check_process_rows(bsh, run.per_process * jax.process_count())

        def save(s: int, st, host: dict, force: bool) -> None:
            ckpt.save(s, state_to_dict(st), data_state=gather_data_state(data),
                      meta={**meta, "step": int(s), "loss": host.get("loss")}, force=force)

        def next_batch() -> dict:
            return to_global_batch(next(data), bsh)

        result = run_steps(cfg, run.state, step_fn, start=run.start, next_batch=next_batch, save=save, ckpt=ckpt,
                           logger=logger, mesh=mesh, rules=spec.rules, profile_steps=profile_steps,
                           profile_dir=workdir / "tb")
        ckpt.wait()
        stopped = result.stopped
        last_dir = ckpt.directory / str(result.step)
        if stopped is not None:
            logger.write(f"received {stopped.name}: saved checkpoint {last_dir}; run the same command to resume")
        summary = {
            "workdir": str(workdir), "checkpoint": str(last_dir), "step": result.step,
            "resumed_from": run.resumed_from, "first_loss": result.first_loss, "final_loss": result.host.get("loss"),
            "seconds": time.time() - t_start, "compile_s": result.compile_s,
            "samples_per_s": result.host.get("samples_per_s"), "metrics": str(workdir / "metrics.jsonl"),
            "tensorboard": f"tensorboard --logdir {workdir / 'tb'}",
            "signal": stopped.name if stopped is not None else None,
            "exit_code": stopped.exit_code if stopped is not None else 0,
            "num_params": int(num_params), "params_digest": params_digest(result.state.params),
            "teacher": teacher.source, "teacher_params_digest": params_digest(teacher.params),
            "teacher_width": teacher.width, "student_width": student_width,
        }
    if jax.process_index() == 0:
        (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
