"""Tiny PEFT configs: the fine-tuning test configs (Mu/4 ViT on 8-voxel crops) with a chosen finetune.method."""

import dataclasses

from tests.finetune.conftest import tiny


def tiny_method(task: str, method: str, spatial_dims: int = 3, **ft):
    cfg = tiny(task, method=method, **ft)
    if spatial_dims == 2:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, spatial_dims=2, crop_size=(16,)))
    return cfg
