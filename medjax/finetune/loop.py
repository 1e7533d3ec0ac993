"""The fine-tuning loop: records -> (optional MAE encoder init) -> train with the shared pure step -> evaluate.

It reuses the pretraining machinery: the train state and its shardings (:mod:`medjax.training.state`), the
jitted pure step with a task loss (:mod:`medjax.training.steps`), the optimizer with layer-wise LR decay
(:mod:`medjax.training.optim`), checkpoints with the data-iterator position (resumable), metrics.jsonl,
TensorBoard and the progress bar (:mod:`medjax.training.logging`), and graceful SIGTERM/SIGINT stops.

WORKDIR holds, besides the pretraining layout: ``records_train.json`` / ``records_val.json`` (the records used,
with the label map chosen by ``finetune.label_key``), ``init.json`` (what was loaded from the MAE checkpoint),
``eval.json`` (held-out metrics) and ``summary.json``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from medjax.errors import ConfigError, DataError


# ------------------------------------------------------------------------------------------- records
def split_records(cfg) -> tuple[list[dict], list[dict]]:
    """``(train, val)`` records of ``cfg.data.dir``: those with the task's targets, label map from
    ``finetune.label_key``; the last ``finetune.val_records`` held out, then the first ``num_labeled`` kept."""
    from medjax.data.sources import load_records

    ft = cfg.finetune
    records = load_records(cfg.data.dir, split=cfg.data.split)
    base = cfg.data.dir if os.path.isdir(cfg.data.dir) else os.path.dirname(os.path.abspath(cfg.data.dir))
    out = []
    for r in records:
        r = dict(r)
        if ft.label_key != "label":
            p = r.get(ft.label_key)
            r["label"] = os.path.normpath(os.path.join(base, p)) if isinstance(p, str) and p else None
        needs_label = cfg.task in ("segmentation", "detection") or ft.class_from_label
        if needs_label and not r.get("label"):
            continue
        if cfg.task == "classification" and not ft.class_from_label and r.get("class") is None:
            continue
        out.append({k: r.get(k) for k in ("id", "image", "label", "class", "boxes")})
    if len(out) <= ft.val_records:
        raise DataError(cfg.data.dir, f"{len(out)} usable records for task={cfg.task} (label_key="
                                      f"{ft.label_key!r}) but finetune.val_records={ft.val_records}; add data or "
                                      "lower finetune.val_records")
    val = out[len(out) - ft.val_records:] if ft.val_records else []
    train = out[: len(out) - ft.val_records]
    if ft.num_labeled:
        train = train[: ft.num_labeled]
    return train, val


def _write_manifest(path: Path, records: list[dict]) -> str:
    path.write_text(json.dumps(records, indent=1) + "\n")
    return str(path)


def training_cache(data_cfg, workdir: Path, records: list[dict]) -> str:
    """A prepared cache of ``records`` (the manifest ``data_cfg.dir``) in ``WORKDIR/cache``: reused when it
    holds the same records with the same settings and unchanged source files, otherwise (re)built.

    Reading memory-mapped prepared volumes instead of decompressing and resampling every volume at every visit
    makes few-label fine-tuning compute-bound; the batches are the same (the cache stores what ``preprocess``
    returns). With several processes each one prepares its own folder (``cache_p<i>``), never one shared.
    """
    import jax

    from medjax.data.cache import ensure_prepared

    name = "cache" if jax.process_count() == 1 else f"cache_p{jax.process_index()}"
    out = str(workdir / name)
    # a few-label set prepares faster in this process than worker processes start up
    ensure_prepared(data_cfg.dir, out, data_cfg, workers=data_cfg.workers if len(records) > 16 else 0,
                    ids=[r.get("id") for r in records])
    return out


# ------------------------------------------------------------------------------------------- optimizer
def make_finetune_optimizer(cfg, abstract_params, schedule):
    """AdamW of ``cfg.train`` for ``finetune.method`` (:func:`medjax.peft.optim.make_method_optimizer`):
    layer-wise LR decay over the encoder for full fine-tuning; otherwise optimizer state only for the
    parameters the method trains (frozen ones are never updated)."""
    from medjax.finetune.tasks import num_encoder_layers
    from medjax.peft.optim import make_method_optimizer

    return make_method_optimizer(cfg, abstract_params, schedule, num_layers=num_encoder_layers(cfg))


# ------------------------------------------------------------------------------------------- main loop
def require_single_process() -> None:
    """Fine-tuning runs in one process (on all of its devices); raise ConfigError under several processes.

    Multi-process fine-tuning would need every process to read its own data shards and only process 0 to write
    the records, caches, evaluation and summary; until then it is refused before anything is written.
    """
    import jax

    if jax.process_count() > 1:
        raise ConfigError(
            f"fine-tuning runs in a single process, but this is process {jax.process_index()} of "
            f"{jax.process_count()}; start `medjax finetune` once, without --coordinator/--num-processes or "
            "MEDJAX_* variables (it uses every local device), or pretrain across processes with `medjax pretrain`")


def finetune(cfg, workdir, *, init_from: str | None = None, restart: bool = False, progress: bool = True,
             evaluate: bool = True, measure_memory: bool = False, stop_at: int | None = None,
             on_start=None, on_end=None, proximal_mu: float = 0.0) -> dict:
    """Fine-tune ``cfg.task`` in ``workdir`` (resuming from its latest checkpoint unless ``restart``).

    Args:
      cfg: config with ``task`` in classification/segmentation/detection and the ``finetune`` section.
      workdir: run directory.
      init_from: MAE workdir/checkpoint for the encoder (overrides ``cfg.finetune.init_from``; "" = scratch).
      restart: delete the workdir's checkpoints and logs first.
      progress: show the progress bar.
      evaluate: score the held-out records at the end (``eval.json``).
      measure_memory: after the first step, XLA's memory analysis of the compiled train step
        (:func:`medjax.parallel.sharding.compiled_memory`, bytes per device) goes into the summary as
        ``step_memory`` (None when the step function cannot be lowered).
      stop_at: stop (and checkpoint) at this step instead of ``train.steps``, which still sets the LR schedule's
        length; a later call resumes from there (a federated site trains its rounds this way).
      on_start: ``on_start(state) -> state`` on the restored or fresh train state before the first step (a
        federated site puts the global parameters in).
      on_end: ``on_end(state)`` with the final train state, after its checkpoint is written.
      proximal_mu: FedProx (a federated site, ``federated.strategy=fedprox``): the loss gains
        ``proximal_mu/2 * ||w - w_start||^2`` over the travelling parameters
        (:func:`medjax.federated.arrays.travelling_names`), ``w_start`` being the parameters after ``on_start``
        (the round's global model); 0 = off.

    Returns the summary dict (also ``WORKDIR/summary.json``): ``workdir``, ``checkpoint``, ``step``,
    ``first_loss``, ``final_loss``, ``init`` (report or None), ``eval`` (metrics or None), ``seconds``,
    ``num_train_records``, ``num_val_records``, ``exit_code``, ``signal``, ``params_digest`` (SHA-256 of the
    final parameters, all of them: equal digests mean bit-identical models).
    """
    import dataclasses

    import jax

    from medjax.config.overrides import to_dict
    from medjax.data.pipeline import make_iterator, to_global_batch
    from medjax.finetune.tasks import build_task_model, check_task, loss_for, prepare_batch
    from medjax.parallel.rules import use_mesh
    from medjax.peft import resolve_method, trainable_mask
    from medjax.peft.checkpoint import base_reference, is_peft_run, restore_run_state, trainable_only
    from medjax.training.digest import params_digest
    from medjax.training.driver import run_steps
    from medjax.training.optim import make_schedule
    from medjax.training.setup import open_run, prepare_workdir
    from medjax.training.state import split_model, state_to_dict
    from medjax.training.steps import make_train_step

    t_start = time.time()
    require_single_process()
    if init_from is not None:
        cfg = dataclasses.replace(cfg, finetune=dataclasses.replace(cfg.finetune, init_from=init_from))
    check_task(cfg)
    workdir = prepare_workdir(cfg, workdir, restart=restart, extra_files=("eval.json", "init.json"))
    train_recs, val_recs = split_records(cfg)
    manifest = _write_manifest(workdir / "records_train.json", train_recs)
    _write_manifest(workdir / "records_val.json", val_recs)
    data_cfg = dataclasses.replace(cfg.data, dir=manifest, cache_dir="", split="training", holdout_last=0)
    if cfg.finetune.cache:
        data_cfg = dataclasses.replace(data_cfg, cache_dir=training_cache(data_cfg, workdir, train_recs))
    run_cfg = dataclasses.replace(cfg, data=data_cfg)

    schedule = make_schedule(cfg.train)
    factory = lambda: build_task_model(cfg)  # noqa: E731
    abstract_params = jax.eval_shape(lambda: split_model(factory())[1])
    tx = make_finetune_optimizer(cfg, abstract_params, schedule)
    method = resolve_method(cfg.finetune)
    trainable = None if method == "full" else trainable_mask(method, abstract_params)
    init_report = None

    def on_init(state, spec):
        nonlocal init_report
        if not cfg.finetune.init_from:
            return state
        state, init_report = _init_encoder(cfg, state, spec)
        (workdir / "init.json").write_text(json.dumps(init_report, indent=1) + "\n")
        return state

    peft_ref = None  # PEFT runs: checkpoints hold the trainable parameters and this base reference

    def fresh_base(state, spec):
        nonlocal peft_ref
        state = on_init(state, spec)
        if is_peft_run(cfg):
            peft_ref = base_reference(cfg, state.params)
        return state

    def restore_peft(ckpt, step, spec):  # checks the base's digest against the checkpoint's
        return restore_run_state(cfg, ckpt, step, spec, fresh_base(spec.init(), spec))

    def make_data(saved):
        return make_iterator(data_cfg, batch_size=cfg.train.batch_size, seed=cfg.train.seed)

    with open_run(cfg, workdir, tx=tx, model_factory=factory, make_data=make_data, on_init=fresh_base,
                  progress=progress, desc="finetune", restore=restore_peft if is_peft_run(cfg) else None) as run:
        spec, ckpt, data, logger, bsh, mesh = run.spec, run.ckpt, run.data, run.logger, run.batch_sharding, run.mesh
        resumed_from = run.resumed_from
        if resumed_from is not None and (workdir / "init.json").is_file():
            init_report = json.loads((workdir / "init.json").read_text())
        meta = {"config": to_dict(cfg), "task": cfg.task, "init": init_report}
        with use_mesh(mesh, spec.rules):
            step_fn = make_train_step(spec.model_def, tx, schedule, state_shardings=spec.shardings,
                                      batch_sharding=bsh, loss_fn=loss_for(cfg), grad_accum=cfg.train.grad_accum,
                                      max_nonfinite=cfg.train.max_nonfinite, trainable=trainable)
            if cfg.finetune.teacher:  # task distillation: the frozen teacher runs inside the same jitted step
                from medjax.distill.task import check_task_distill, load_task_teacher, make_task_distill_step

                check_task_distill(cfg)
                teacher = load_task_teacher(cfg.finetune.teacher, cfg, mesh, spec.rules)
                meta["teacher"] = teacher.source
                step_fn = make_task_distill_step(cfg, spec.model_def, tx, schedule, teacher,
                                                 state_shardings=spec.shardings, batch_sharding=bsh,
                                                 grad_accum=cfg.train.grad_accum,
                                                 max_nonfinite=cfg.train.max_nonfinite, trainable=trainable)

        if peft_ref is not None:
            meta["peft"] = peft_ref

        def save(s: int, st, host: dict, force: bool) -> None:
            d = state_to_dict(st)
            if peft_ref is not None:
                d["params"] = trainable_only(cfg, d["params"])
            ckpt.save(s, d, data_state=data.get_state(),
                      meta={**meta, "step": int(s), "loss": host.get("loss")}, force=force)

        def next_batch() -> dict:
            return to_global_batch(prepare_batch(run_cfg, next(data)), bsh)

        def probe_statistics(st):  # linear probing: BatchNorm statistics of the frozen encoder's features
            linear = cfg.task == "classification" and method == "linear"
            return _precise_feature_norm(run_cfg, spec, st, run.per_process) if linear else st

        step_memory = None

        def measure(s: int, st, batch, done) -> None:  # the step's arguments have the shapes of (st, batch)
            nonlocal step_memory
            if step_memory is None and hasattr(step_fn, "lower"):
                from medjax.parallel.sharding import compiled_memory

                with use_mesh(mesh, spec.rules):
                    args = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding),
                                        (st, batch))
                    step_memory = compiled_memory(step_fn.lower(*args).compile())

        loop_cfg = cfg
        if stop_at is not None:
            if not 0 < stop_at <= cfg.train.steps:
                raise ConfigError(f"stop_at={stop_at}: must be in 1..train.steps={cfg.train.steps}")
            loop_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=int(stop_at)))
        state0 = on_start(run.state) if on_start is not None else run.state
        if proximal_mu > 0:
            step_fn = _proximal(cfg, spec, tx, schedule, proximal_mu, trainable, state0, mesh)
        result = run_steps(loop_cfg, state0, step_fn, start=run.start, next_batch=next_batch, save=save, ckpt=ckpt,
                           logger=logger, mesh=mesh, rules=spec.rules, before_final_save=probe_statistics,
                           on_step=measure if measure_memory else None)
        ckpt.wait()
        if on_end is not None:
            on_end(result.state)
        if result.stopped is not None:
            logger.write(f"received {result.stopped.name}: saved checkpoint {ckpt.directory / str(result.step)}; "
                         "run the same command to resume")
        checkpoint_dir = ckpt.directory
    state, step, host, stopped = result.state, result.step, result.host, result.stopped
    first_loss = result.first_loss
    eval_metrics = None
    if evaluate and val_recs and stopped is None:
        from medjax.finetune.evaluate import evaluate_records

        eval_metrics = evaluate_records(cfg, spec.model_def, jax.device_get(state.params),
                                        jax.device_get(state.model_state), val_recs)
        (workdir / "eval.json").write_text(json.dumps(eval_metrics, indent=1) + "\n")
    summary = {
        "workdir": str(workdir),
        "task": cfg.task,
        "checkpoint": str(checkpoint_dir / str(step)),
        "step": step,
        "resumed_from": resumed_from,
        "first_loss": first_loss,
        "final_loss": host.get("loss"),
        "init": init_report,
        "eval": eval_metrics,
        "num_train_records": len(train_recs),
        "num_val_records": len(val_recs),
        "seconds": time.time() - t_start,
        "step_memory": step_memory,
        "metrics": str(workdir / "metrics.jsonl"),
        "tensorboard": f"tensorboard --logdir {workdir / 'tb'}",
        "signal": stopped.name if stopped is not None else None,
        "exit_code": stopped.exit_code if stopped is not None else 0,
        "params_digest": params_digest(state.params),
    }
    (workdir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def _proximal(cfg, spec, tx, schedule, mu: float, trainable, state0, mesh):
    """``step(state, batch)`` of the task loss plus FedProx's ``mu/2 * ||w - w_start||^2`` (``w_start``: a copy of
    ``state0``'s parameters, taken before the first step donates them)."""
    import jax

    from medjax.federated.arrays import travelling_names
    from medjax.federated.local import check_proximal, prox_step
    from medjax.finetune.tasks import loss_for
    from medjax.parallel.rules import use_mesh

    check_proximal(cfg)
    anchor = jax.tree.map(lambda x: x.copy(), state0.params)
    with use_mesh(mesh, spec.rules):
        fn = prox_step(spec.model_def, tx, schedule, mu, loss_fn=loss_for(cfg), trainable=trainable,
                       names=travelling_names(cfg, state0.params), state_shardings=spec.shardings,
                       max_nonfinite=cfg.train.max_nonfinite)
    return lambda st, b: fn(st, b, anchor)


def _init_encoder(cfg, state, spec):
    """Load the MAE encoder into ``state.params``, read straight into the state's shardings."""
    del spec
    from medjax.peft.checkpoint import load_base

    new, report = load_base(cfg, state.params)  # PEFT-added parameters keep their initialisation
    return state.replace(params=new), report


def _precise_feature_norm(cfg, spec, state, batch_size: int, batches: int = 8):
    """Linear probing: set the probe BatchNorm's statistics from the frozen encoder's features of
    ``batches`` training batches (mean and variance over all of them)."""
    import jax

    from medjax.data.pipeline import make_iterator

    model_def = spec.model_def

    @jax.jit
    def feats(params, model_state, images):
        return model_def.merge(params, model_state).features(images, deterministic=True)

    out = []
    with make_iterator(cfg.data, batch_size=batch_size, seed=cfg.train.seed + 1) as it:
        for _ in range(batches):
            out.append(np.asarray(jax.device_get(feats(state.params, state.model_state,
                                                       np.asarray(next(it)["image"])))))
    f = np.concatenate(out).astype(np.float64)
    ms = jax.device_get(state.model_state)
    if "probe_norm" not in ms:
        raise ConfigError("linear probing model has no probe_norm statistics")
    ms = dict(ms)
    ms["probe_norm"] = {"mean": f.mean(0).astype(np.float32), "var": f.var(0).astype(np.float32)}
    ms = jax.tree.map(lambda a, old: jax.device_put(a, old.sharding), ms, state.model_state)
    return state.replace(model_state=ms)
