"""Fine-tuning settings (the ``finetune`` section of :class:`~medjax.config.Config`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FinetuneConfig:
    init_from: str = ""  # MAE workdir or checkpoint directory whose encoder initialises the model; "" = from scratch
    num_classes: int = 2  # classification: classes; segmentation: labels incl. background; detection: object classes
    multi_label: bool = False  # classification: one independent sigmoid per class instead of a softmax
    mode: str = "full"  # older key: "linear" means method=linear; set finetune.method instead
    method: str = "full"  # full|linear|lora|adapter|bitfit|prompt: which parameters train (medjax.peft.methods)
    lora_rank: int = 8  # lora: rank r of each low-rank update
    lora_alpha: float = 16.0  # lora: updates are scaled by lora_alpha / lora_rank
    lora_dropout: float = 0.0  # lora: dropout on the input of the low-rank branch while training
    lora_targets: tuple[str, ...] = ("q", "v")  # lora: projections to adapt, any of q, k, v, out, mlp
    adapter_dim: int = 16  # adapter: bottleneck width of the adapter in each block
    adapter_mode: str = "serial"  # adapter: "serial" (after the MLP) or "parallel" (beside the MLP)
    prompt_tokens: int = 8  # prompt: learnable tokens inserted after the CLS token
    prompt_deep: bool = False  # prompt: new prompt tokens at every block (deep) instead of the input only
    layer_decay: float = 0.75  # layer-wise learning-rate decay for full fine-tuning (1.0 disables)
    class_weights: tuple[float, ...] = ()  # per-class loss weights; () weighs classes equally
    num_labeled: int = 0  # use only the first N labelled records (few-label experiments); 0 uses all
    label_key: str = "label"  # record key of the label map to train on (e.g. "lesion" for the demo lesion masks)
    class_from_label: bool = False  # classification: the target of a crop is 1 when its label map holds an object
    min_object_voxels: int = 4  # voxels an object needs inside a crop to count (class_from_label, detection boxes)
    val_records: int = 2  # the last N records are held out for evaluation (never trained on); 0: no evaluation
    pool: str = "mean"  # classification pooling: "mean" or "max" over the patch tokens, or the "cls" token
    volume_reduce: str = "mean"  # classification of a whole volume from its windows: "mean" or "max" probability
    decoder_features: int = 16  # UNETR decoder / detection neck channels at full resolution (doubling per level)
    dice_weight: float = 1.0  # segmentation: weight of the soft Dice loss added to the cross-entropy
    det_hidden: int = 128  # detection: hidden width of the per-cell head
    det_stride: int = 0  # detection: voxels per heat-map cell, a power of two below the patch (neck); 0 = patch grid
    det_top_k: int = 20  # detection: candidate boxes kept per window before NMS
    det_score_threshold: float = 0.1  # detection: minimum centre probability of a reported box
    det_nms_iou: float = 0.1  # detection: 3D NMS suppresses boxes overlapping a better one by more than this IoU
    eval_overlap: float = 0.5  # sliding-window overlap (fraction of the window) at evaluation and prediction
    eval_batch: int = 4  # windows per model call at evaluation and prediction
    cache: bool = True  # prepare the training records once into WORKDIR/cache (memory-mapped; same batches)
    teacher: str = ""  # fine-tuned run of the same task whose outputs the student also learns (distillation); "": none
    distill_weight: float = 1.0  # weight of the distillation term added to the task loss when finetune.teacher is set
    temperature: float = 2.0  # softmax temperature T of the soft-target KL (the KL is scaled by T^2)
    distill_feature_weight: float = 0.0  # segmentation: weight of matching the teacher's last decoder features; 0: off
    distill_box_threshold: float = 0.5  # detection: teacher centre probability from which its boxes are targets
