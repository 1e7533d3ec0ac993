"""Downstream fine-tuning: tasks (classification, segmentation, detection), MAE encoder init, the training loop,
whole-volume prediction back in the input's original space, and pretrained-vs-scratch comparison."""

from medjax.finetune.init import load_encoder, resolve_checkpoint
from medjax.finetune.tasks import TASKS, build_task_model, detection_targets, loss_for, object_boxes, prepare_batch

__all__ = ["TASKS", "build_task_model", "compare", "detection_targets", "finetune", "load_encoder", "loss_for",
           "object_boxes", "predict_folder", "prepare_batch", "resolve_checkpoint"]


def __getattr__(name):
    if name == "finetune":
        from medjax.finetune.loop import finetune

        return finetune
    if name == "compare":
        from medjax.finetune.compare import compare

        return compare
    if name == "predict_folder":
        from medjax.finetune.predict_io import predict_folder

        return predict_folder
    raise AttributeError(f"module 'medjax.finetune' has no attribute {name!r}")
