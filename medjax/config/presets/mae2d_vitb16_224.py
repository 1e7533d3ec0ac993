"""mae2d_vitb16_224: MAE pretraining of a 2D ViT-B/16 on 224² axial slices at 1.0 mm in-plane spacing.

The ``mae3d_vitb16_96`` recipe on 2D slices drawn along ``data.slice_axis`` (2: axial after reorientation to
RAS), 16 slices per volume, batch 256 (the MAE paper's per-host batch; lr scaled as 1.5e-4 * batch / 256).
Decoder 512 wide, 8 deep, mask ratio 0.75. Shrink for a CPU check with e.g.
``--set model.variant=Mu/8 data.crop_size=16 train.batch_size=2 train.steps=2``.
"""

import dataclasses

from medjax.config.presets import mae3d_vitb16_96
from medjax.config.schema import Config


def get_config() -> Config:
    base = mae3d_vitb16_96.get_config()
    data = dataclasses.replace(base.data, spatial_dims=2, crop_size=(224, 224), spacing=(1.0, 1.0, 1.0),
                               slice_axis=2, samples_per_volume=16)
    train = dataclasses.replace(base.train, batch_size=256, lr=1.5e-4)
    return dataclasses.replace(base, name="mae2d_vitb16_224", data=data, train=train)
