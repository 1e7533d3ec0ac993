"""mae3d_vitb16_96: MAE pretraining of a 3D ViT-B/16 on 96³ MRI crops at 1.5 mm (MAE paper recipe, adapted).

Mask ratio 0.75 as in the MAE paper; 3D volumes are more redundant and 0.9 also works well
(``--set model.mask_ratio=0.9``). Decoder 512 wide, 8 deep. Shrink for a CPU check with e.g.
``--set model.variant=Mu/8 data.crop_size=16 train.batch_size=2 train.steps=2``.
"""

from medjax.config.schema import CheckpointConfig, Config, DataConfig, ModelConfig, TrainConfig


def get_config() -> Config:
    return Config(
        name="mae3d_vitb16_96",
        task="mae",
        data=DataConfig(
            dir="data/demo",
            spatial_dims=3,
            crop_size=(96, 96, 96),
            spacing=(1.5, 1.5, 1.5),
            intensity="mri",
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
        # lr = 1.5e-4 * batch / 256 (MAE linear scaling) for batch 64
        train=TrainConfig(steps=100_000, batch_size=64, lr=1.5e-4 * 64 / 256, min_lr=1e-6, warmup_steps=5_000,
                          weight_decay=0.05, b1=0.9, b2=0.95, grad_clip=1.0, log_every=50, image_every=5_000),
        checkpoint=CheckpointConfig(every_steps=2_000, keep=3),
    )
