"""Fine-tuning settings (the ``finetune`` section of :class:`~medjax.config.Config`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FinetuneConfig:
    init_from: str = ""  # MAE workdir or checkpoint directory whose encoder initialises the model; "" = from scratch
    num_classes: int = 2  # classification: classes; segmentation: labels incl. background; detection: object classes
    multi_label: bool = False  # classification: one independent sigmoid per class instead of a softmax
    mode: str = "full"  # "full" fine-tuning, or "linear" probing on the frozen encoder
    layer_decay: float = 0.75  # layer-wise learning-rate decay for full fine-tuning (1.0 disables)
    class_weights: tuple[float, ...] = ()  # per-class loss weights; () weighs classes equally
    num_labeled: int = 0  # use only the first N labelled records (few-label experiments); 0 uses all
