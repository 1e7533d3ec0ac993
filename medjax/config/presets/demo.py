"""demo: a tiny 3D MAE on the bundled demo dataset; finishes on 2 CPU cores in a few minutes."""

from medjax.config.schema import CheckpointConfig, Config, DataConfig, ModelConfig, TrainConfig


def get_config() -> Config:
    return Config(
        name="demo",
        task="mae",
        data=DataConfig(
            dir="data/demo",
            spatial_dims=3,
            crop_size=(48, 48, 48),
            spacing=(3.0, 3.0, 3.0),
            intensity="mri",
            samples_per_volume=2,
            workers=0,
        ),
        model=ModelConfig(
            variant="Ti/8",
            decoder_width=96,
            decoder_depth=2,
            decoder_heads=3,
            mask_ratio=0.75,
        ),
        train=TrainConfig(steps=200, batch_size=8, lr=1e-3, warmup_steps=20, log_every=10),
        checkpoint=CheckpointConfig(every_steps=100, keep=3),
    )
