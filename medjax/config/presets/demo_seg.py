"""demo_seg: brain tissue segmentation (background, CSF, grey and white matter) on the demo set with a UNETR.

The encoder matches the ``demo`` MAE preset (ViT-Ti/8, sin-cos positions), so ``--init-from`` a ``demo``
pretraining workdir loads it; crops are smaller (32³ at 3 mm) to stay fast on 2 CPU cores.
"""

from medjax.config.finetune_schema import FinetuneConfig
from medjax.config.schema import CheckpointConfig, Config, DataConfig, ModelConfig, TrainConfig


def get_config() -> Config:
    return Config(
        name="demo_seg",
        task="segmentation",
        data=DataConfig(dir="data/demo", spatial_dims=3, crop_size=(32, 32, 32), spacing=(3.0, 3.0, 3.0),
                        intensity="mri", samples_per_volume=2, workers=0),
        model=ModelConfig(variant="Ti/8", decoder_width=96, decoder_depth=2, decoder_heads=3, drop_path=0.1),
        train=TrainConfig(steps=200, batch_size=4, lr=1e-3, warmup_steps=20, weight_decay=0.05, b2=0.999,
                          log_every=10),
        checkpoint=CheckpointConfig(every_steps=100, keep=2),
        finetune=FinetuneConfig(num_classes=4, mode="full", layer_decay=0.75, decoder_features=16,
                                val_records=2, eval_overlap=0.25),
    )
