"""demo_det: 3D lesion boxes on the demo set (CenterNet-style heat map + size on the 8-voxel patch grid).

Boxes are taken from the connected components of each crop's lesion mask, so they follow crops and flips;
predictions come back in voxel and world (RAS+, mm) coordinates after 3D NMS. The encoder matches the ``demo``
MAE preset (ViT-Ti/8).
"""

from medjax.config.finetune_schema import FinetuneConfig
from medjax.config.schema import CheckpointConfig, Config, DataConfig, ModelConfig, TrainConfig


def get_config() -> Config:
    return Config(
        name="demo_det",
        task="detection",
        data=DataConfig(dir="data/demo", spatial_dims=3, crop_size=(32, 32, 32), spacing=(3.0, 3.0, 3.0),
                        intensity="mri", samples_per_volume=4, workers=0),
        model=ModelConfig(variant="Ti/8", decoder_width=96, decoder_depth=2, decoder_heads=3, drop_path=0.1),
        train=TrainConfig(steps=200, batch_size=8, lr=1e-3, warmup_steps=20, weight_decay=0.05, b2=0.999,
                          log_every=10),
        checkpoint=CheckpointConfig(every_steps=100, keep=2),
        finetune=FinetuneConfig(num_classes=1, mode="full", layer_decay=0.75, label_key="lesion",
                                min_object_voxels=8, det_top_k=10, det_score_threshold=0.05, det_nms_iou=0.1,
                                val_records=4, eval_overlap=0.25),
    )
