"""mae2d_vitb16_224: MAE pretraining of a 2D ViT-B/16 on 224² axial slices at 1.0 mm in-plane spacing.

Slices are drawn along ``data.slice_axis`` (2: axial after reorientation to RAS). Decoder 512 wide, 8 deep,
mask ratio 0.75. Shrink for a CPU check with e.g.
``--set model.variant=Mu/8 data.crop_size=16 train.batch_size=2 train.steps=2``.
"""

from medjax.config.schema import CheckpointConfig, Config, DataConfig, ModelConfig, TrainConfig


def get_config() -> Config:
    return Config(
        name="mae2d_vitb16_224",
        task="mae",
        data=DataConfig(
            dir="data/demo",
            spatial_dims=2,
            crop_size=(224, 224),
            spacing=(1.0, 1.0, 1.0),
            intensity="mri",
            slice_axis=2,
            samples_per_volume=16,
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
        # lr = 1.5e-4 * batch / 256 (MAE linear scaling) for batch 256
        train=TrainConfig(steps=100_000, batch_size=256, lr=1.5e-4, min_lr=1e-6, warmup_steps=5_000,
                          weight_decay=0.05, b1=0.9, b2=0.95, grad_clip=1.0, log_every=50, image_every=5_000),
        checkpoint=CheckpointConfig(every_steps=2_000, keep=3),
    )
