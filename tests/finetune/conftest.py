"""Tiny fine-tuning configs (Mu/4 ViT on 8-voxel crops) that compile and train in seconds on a CPU."""

import pytest

from medjax.config.finetune_schema import FinetuneConfig
from medjax.config.schema import Config, DataConfig, ModelConfig, TrainConfig


def tiny(task: str, **ft) -> Config:
    return Config(
        name=f"tiny_{task}", task=task,
        data=DataConfig(spatial_dims=3, crop_size=(8,), spacing=(), augment=False),
        model=ModelConfig(variant="Mu/4", pos_embed="learned"),
        train=TrainConfig(steps=3, batch_size=2, lr=1e-2, warmup_steps=0, grad_clip=1.0),
        finetune=FinetuneConfig(decoder_features=4, det_hidden=8, val_records=0,
                                **{"num_classes": 3 if task == "segmentation" else 2, **ft}),
    )


@pytest.fixture
def tiny_cfg():
    return tiny
