"""Typed, frozen configuration: one field, one comment, one place.

A :class:`Config` is a tree of frozen dataclasses. Presets (``medjax.config.presets``) are small functions
returning a ``Config``; the CLI applies ``--set section.field=value`` overrides with type checks
(:mod:`medjax.config.overrides`). Units are stated in each comment.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from medjax.config.distill_schema import DistillConfig
from medjax.config.federated_schema import FederatedConfig
from medjax.config.finetune_schema import FinetuneConfig


@dataclass(frozen=True)
class DataConfig:
    dir: str = "data/demo"  # dataset: a folder of volumes, an MSD folder (dataset.json) or a CSV/JSON manifest
    cache_dir: str = ""  # prepared cache from `medjax data prepare`; "" reads the raw sources
    split: str = "training"  # MSD split to read: "training" or "test"
    spatial_dims: int = 3  # 3: volumes; 2: 2D slices drawn from the volumes
    crop_size: tuple[int, ...] = (96, 96, 96)  # voxels per random crop, one entry per spatial dim
    spacing: tuple[float, ...] = (1.5, 1.5, 1.5)  # target voxel spacing in mm (x, y, z); () keeps native spacing
    orientation: str = "RAS"  # canonical orientation code the volumes are reoriented to
    intensity: str = "mri"  # "ct": HU window; "mri": z-score over voxels > 0 (the zero background excluded); "none": as stored
    ct_window: tuple[float, float] = (-1000.0, 1000.0)  # HU range clipped and scaled to [0, 1] when intensity="ct"
    crop_foreground: bool = True  # crop to the foreground bounding box before random crops
    samples_per_volume: int = 2  # random crops drawn from each volume per epoch
    foreground_position: str = "centre"  # labelled data: where a crop drawn on a foreground voxel puts it, "centre" or "anywhere" (uniform in the crop: window classifiers then see objects where sliding windows do)
    slice_axis: int = 2  # for spatial_dims=2: the volume axis slices are drawn along (after reorientation)
    augment: bool = True  # random flips, 90-degree rotations and intensity jitter
    workers: int = 2  # parallel read workers (threads by default; 0: read in the calling thread)
    prefetch: int = 2  # batches buffered per worker
    skip_bad: bool = False  # drop unreadable/invalid volumes (logged once) instead of raising
    shuffle: bool = True  # shuffle records every epoch (seeded)
    val_dir: str = ""  # held-out volumes (folder or manifest) for pretraining's val_loss (train.eval_every); "": none
    holdout_last: int = 0  # pretraining/distillation skip the last N records (a fine-tuning preset's held-out ones)


@dataclass(frozen=True)
class ModelConfig:
    variant: str = "B/16"  # ViT size/patch: "Ti/16", "S/16", "B/16", "L/16", "H/14", "B/16x16x8"; see config.variants
    in_channels: int = 1  # input channels (e.g. several MRI sequences)
    pos_embed: str = "sincos"  # "sincos" (fixed) or "learned"
    cls_token: bool = True  # prepend a CLS token to the encoder sequence
    decoder_width: int = 512  # MAE decoder embedding width
    decoder_depth: int = 8  # MAE decoder blocks
    decoder_heads: int = 16  # MAE decoder attention heads
    mask_ratio: float = 0.75  # fraction of patches hidden from the encoder
    norm_pix_loss: bool = True  # MAE target: patch pixels normalised per patch
    dtype: str = "float32"  # compute dtype: "float32" or "bfloat16" (parameters stay float32)
    attention: str = "xla"  # jax.nn.dot_product_attention implementation: "xla", "cudnn" or "auto"
    dropout: float = 0.0  # dropout rate in the encoder blocks
    drop_path: float = 0.0  # stochastic depth rate (linearly increasing over blocks)
    remat: str = "none"  # recompute block activations in the backward pass: "none", "full", "dots", "dots_no_batch"
    scan_blocks: bool = False  # one lax.scan over the (stacked) blocks: one compiled block body, far shorter compiles
    # numerics of imported networks (medjax.interop); the defaults are medjax's own
    norm_eps: float = 1e-6  # LayerNorm epsilon (Hugging Face ViT: 1e-12, MONAI: 1e-5, timm: 1e-6)
    sincos_axes: tuple[int, ...] = ()  # sin-cos channel blocks by grid axis; () = (0, 1[, 2]); HF MAE: (1, 0)
    decoder_mlp_dim: int = 0  # MAE decoder MLP hidden width; 0: 4 * decoder_width
    norm_pix_ddof: int = 0  # norm-pix target variance: 0 biased; 1 unbiased (as the MAE reference and HF)


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000  # optimizer steps
    batch_size: int = 8  # global batch (samples per optimizer step, across all devices and hosts)
    grad_accum: int = 1  # micro-batches accumulated per optimizer step (batch_size must divide by it)
    seed: int = 0  # seeds parameters, masking, data order and augmentation
    lr: float = 1.5e-4  # peak learning rate
    min_lr: float = 0.0  # learning rate at the end of the cosine decay
    warmup_steps: int = 100  # linear warm-up steps
    weight_decay: float = 0.05  # AdamW decoupled weight decay (skipped for norms, biases, embeddings)
    b1: float = 0.9  # AdamW beta1
    b2: float = 0.95  # AdamW beta2
    grad_clip: float = 1.0  # global gradient-norm clip; 0 disables
    max_nonfinite: int = 10  # consecutive non-finite steps tolerated before the run stops
    log_every: int = 10  # steps between metrics.jsonl / TensorBoard scalar records
    image_every: int = 0  # steps between TensorBoard reconstruction images; 0: only at the end
    eval_every: int = 0  # pretraining: steps between MAE losses on data.val_dir (val_loss); 0: off
    eval_samples: int = 16  # pretraining: fixed held-out crops (and masks) the val_loss is averaged over
    probe_every: int = 0  # pretraining: steps between linear probes of the encoder on train.probe_config; 0: off
    probe_config: str = ""  # pretraining: classification config (preset or file) the probe callback uses


@dataclass(frozen=True)
class CheckpointConfig:
    every_steps: int = 500  # steps between checkpoints (one is also written at the end and on SIGTERM/SIGINT)
    keep: int = 3  # most recent checkpoints kept


@dataclass(frozen=True)
class MeshConfig:
    data: int = -1  # data-parallel axis size (-1: the devices left over)
    fsdp: int = 1  # parameter/optimizer-state sharding axis size (ZeRO-3 style)
    tensor: int = 1  # tensor-parallel axis size (heads and MLP)
    dcn_data: int = 1  # slices over DCN (TPU multi-slice): data/fsdp/tensor size one slice; data spans the slices too
    # logical axis -> mesh axes; models name logical axes only
    rules: tuple[tuple[str, tuple[str, ...]], ...] = (
        ("batch", ("data", "fsdp")),
        ("length", ()),
        ("embed", ("fsdp",)),
        ("mlp", ("tensor",)),
        ("heads", ("tensor",)),
        ("kv", ()),
        ("vocab", ()),
        ("patch", ()),
    )


@dataclass(frozen=True)
class Config:
    name: str = "custom"  # preset name this config came from
    task: str = "mae"  # "mae" (pretraining), "classification", "segmentation" or "detection"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    federated: FederatedConfig = field(default_factory=FederatedConfig)


SECTIONS = ("data", "model", "train", "checkpoint", "mesh", "finetune", "distill", "federated")


def replace(cfg, **changes):
    """``dataclasses.replace`` re-exported for convenience in presets."""
    return dataclasses.replace(cfg, **changes)
