"""Task distillation (``medjax finetune --set finetune.teacher=WORKDIR``) for classification, segmentation and
detection: the loss is the task's own plus ``finetune.distill_weight`` x a term against the frozen teacher's outputs
on the same batch (:mod:`medjax.distill.task_losses`: soft-target KL with temperature ``finetune.temperature`` on
class logits or per voxel on segmentation logits, optionally decoder feature matching; the teacher's heat map and
confident boxes for detection).

The teacher is a fine-tuned run of the same task (its architecture from its saved config, built for the student's
crops, so both see exactly the same window); its parameters and model state are arguments of the jitted step
(:func:`medjax.distill.step.make_teacher_step`): one pass over the data, no teacher outputs stored, no gradient and
no optimizer state for the teacher.
"""

from __future__ import annotations

import dataclasses
from functools import partial

from medjax.distill.task_losses import classification_distill_loss, task_distill_loss_fn  # noqa: F401 (re-export)
from medjax.errors import CheckpointError, ConfigError


@dataclasses.dataclass(frozen=True)
class TaskTeacher:
    """``model_def``; ``arrays`` = ``{"params", "model_state"}`` on the mesh; ``shardings`` like ``arrays``;
    ``source`` (checkpoint folder read)."""

    model_def: object
    arrays: dict
    shardings: dict
    source: str


def check_task_distill(cfg) -> None:
    """ConfigError naming the key when ``finetune.teacher`` is set for a task or setting not supported."""
    ft = cfg.finetune
    if cfg.task not in ("classification", "segmentation", "detection"):
        raise ConfigError(f"finetune.teacher is set for task={cfg.task!r}; task distillation needs classification, "
                          "segmentation or detection")
    if cfg.task == "classification" and ft.multi_label:
        raise ConfigError("finetune.teacher with finetune.multi_label=true: the soft-target KL is defined over one "
                          "softmax; distil single-label classifiers")
    if ft.temperature <= 0:
        raise ConfigError(f"finetune.temperature={ft.temperature}: must be > 0")
    if ft.distill_weight < 0:
        raise ConfigError(f"finetune.distill_weight={ft.distill_weight}: must be >= 0")
    if ft.distill_feature_weight < 0:
        raise ConfigError(f"finetune.distill_feature_weight={ft.distill_feature_weight}: must be >= 0")
    if ft.distill_feature_weight > 0 and cfg.task != "segmentation":
        raise ConfigError(f"finetune.distill_feature_weight={ft.distill_feature_weight} matches decoder features, "
                          f"which only segmentation has (task={cfg.task!r}); set it to 0")
    if not 0.0 < ft.distill_box_threshold <= 1.0:
        raise ConfigError(f"finetune.distill_box_threshold={ft.distill_box_threshold}: must be in (0, 1]")


def load_task_teacher(source, cfg, mesh, rules) -> TaskTeacher:
    """The task model of run ``source`` (saved by ``medjax finetune`` with ``finetune.method=full``, or merged),
    built for ``cfg``'s crops, read onto ``mesh``.

    Raises CheckpointError / ConfigError naming the run and what differs (task, classes, channels, method).
    """
    from medjax.config.overrides import from_dict
    from medjax.config.schema import Config
    from medjax.distill.teacher import placed_abstract
    from medjax.finetune.tasks import build_task_model
    from medjax.peft import resolve_method
    from medjax.training.restore import open_checkpoint, restore_model

    saved = open_checkpoint(source)
    try:
        tcfg = from_dict(Config, saved.meta.get("config") or {})
    except (ConfigError, TypeError, ValueError) as e:
        raise CheckpointError(f"{saved.where}: the saved config cannot be read as a teacher's ({e})") from None
    if tcfg.task != cfg.task or tcfg.finetune.num_classes != cfg.finetune.num_classes:
        raise ConfigError(f"finetune.teacher {saved.where} is a {tcfg.task} model with {tcfg.finetune.num_classes} "
                          f"classes; the student is {cfg.task} with {cfg.finetune.num_classes}")
    if tcfg.model.in_channels != cfg.model.in_channels:
        raise ConfigError(f"finetune.teacher {saved.where} takes {tcfg.model.in_channels} input channel(s), "
                          f"model.in_channels={cfg.model.in_channels}")
    method = resolve_method(tcfg.finetune)
    if method not in ("full", "linear"):
        raise ConfigError(f"finetune.teacher {saved.where} is a finetune.method={method} run whose checkpoint holds "
                          "only its trainable parameters; `medjax merge` it (LoRA) and pass the merged run")
    if method == "linear" and not saved.keys("params/encoder"):
        raise ConfigError(f"finetune.teacher {saved.where} is a linear-probe run without its encoder; fine-tune it "
                          "with finetune.method=full to use it as a teacher")
    tcfg = dataclasses.replace(tcfg, data=cfg.data)  # the teacher sees the student's crops
    model_def, params, model_state, shardings, _ = placed_abstract(lambda: build_task_model(tcfg), mesh, rules)
    params, model_state, _ = restore_model(saved, params, model_state)
    return TaskTeacher(model_def=model_def, arrays={"params": params, "model_state": model_state},
                       shardings=shardings, source=str(saved.directory / str(saved.step)))


def make_task_distill_step(cfg, model_def, tx, schedule, teacher: TaskTeacher, *, state_shardings=None,
                           batch_sharding=None, grad_accum: int = 1, max_nonfinite=None, trainable=None):
    """The jitted fine-tuning step with the frozen ``teacher`` inside (see the module doc)."""
    from medjax.distill.step import make_teacher_step

    loss = task_distill_loss_fn(cfg)

    def make_loss(arrays):
        return partial(loss, teacher_def=teacher.model_def, teacher_arrays=arrays)

    return make_teacher_step(model_def, tx, schedule, make_loss, teacher.arrays, teacher.shardings,
                             state_shardings=state_shardings, batch_sharding=batch_sharding, grad_accum=grad_accum,
                             max_nonfinite=max_nonfinite, trainable=trainable)
