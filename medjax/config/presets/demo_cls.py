"""demo_cls: "is there a lesion in this crop/volume?" on the demo set (lesion masks give the crop targets).

Label-balanced crops (half centred on a lesion) give both classes; a volume's score is the highest lesion
probability over its windows. ``--set finetune.mode=linear`` runs linear probing on the frozen encoder
(BatchNorm without affine before the Linear head). The encoder matches the ``demo`` MAE preset (ViT-Ti/8).
"""

from medjax.config.finetune_schema import FinetuneConfig
from medjax.config.schema import CheckpointConfig, Config, DataConfig, ModelConfig, TrainConfig


def get_config() -> Config:
    return Config(
        name="demo_cls",
        task="classification",
        data=DataConfig(dir="data/demo", spatial_dims=3, crop_size=(32, 32, 32), spacing=(3.0, 3.0, 3.0),
                        intensity="mri", samples_per_volume=4, workers=0),
        model=ModelConfig(variant="Ti/8", decoder_width=96, decoder_depth=2, decoder_heads=3, drop_path=0.1),
        train=TrainConfig(steps=200, batch_size=8, lr=1e-3, warmup_steps=20, weight_decay=0.05, b2=0.999,
                          log_every=10),
        checkpoint=CheckpointConfig(every_steps=100, keep=2),
        finetune=FinetuneConfig(num_classes=2, mode="full", layer_decay=0.75, label_key="lesion",
                                class_from_label=True, min_object_voxels=8, volume_reduce="max", val_records=4,
                                eval_overlap=0.25),
    )
