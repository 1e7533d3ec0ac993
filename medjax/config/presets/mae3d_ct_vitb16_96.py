"""mae3d_ct_vitb16_96: MAE pretraining of a 3D ViT-B/16 on 96³ CT crops at 1.5 mm.

Intensities are Hounsfield units clipped to the window [-1000, 1000] HU and scaled to [0, 1] (air to dense
bone). Mask ratio 0.75 (0.9 is a common choice for CT: ``--set model.mask_ratio=0.9``). Shrink for a CPU
check with e.g. ``--set model.variant=Mu/8 data.crop_size=16 train.batch_size=2 train.steps=2``.
"""

from medjax.config.schema import CheckpointConfig, Config, DataConfig, ModelConfig, TrainConfig


def get_config() -> Config:
    return Config(
        name="mae3d_ct_vitb16_96",
        task="mae",
        data=DataConfig(
            dir="data/ct",
            spatial_dims=3,
            crop_size=(96, 96, 96),
            spacing=(1.5, 1.5, 1.5),
            intensity="ct",
            ct_window=(-1000.0, 1000.0),
            samples_per_volume=4,
            workers=4,
            prefetch=4,
        ),
        model=ModelConfig(
            variant="B/16",
            decoder_width=512,
            decoder_depth=8,
            decoder_heads=16,
            mask_ratio=0.75,
            norm_pix_loss=True,
            dtype="bfloat16",
        ),
        train=TrainConfig(steps=100_000, batch_size=64, lr=1.5e-4, min_lr=1e-6, warmup_steps=5_000,
                          weight_decay=0.05, b1=0.9, b2=0.95, grad_clip=1.0, log_every=50, image_every=5_000),
        checkpoint=CheckpointConfig(every_steps=2_000, keep=3),
    )
