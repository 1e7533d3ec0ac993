"""mae3d_ct_vitb16_96: MAE pretraining of a 3D ViT-B/16 on 96³ CT crops at 1.5 mm.

The ``mae3d_vitb16_96`` recipe with CT intensities: Hounsfield units clipped to the window [-1000, 1000] HU and
scaled to [0, 1] (air to dense bone). Mask ratio 0.75 (0.9 is a common choice for CT:
``--set model.mask_ratio=0.9``). Shrink for a CPU check with e.g.
``--set model.variant=Mu/8 data.crop_size=16 train.batch_size=2 train.steps=2``.
"""

import dataclasses

from medjax.config.presets import mae3d_vitb16_96
from medjax.config.schema import Config


def get_config() -> Config:
    base = mae3d_vitb16_96.get_config()
    data = dataclasses.replace(base.data, dir="data/ct", intensity="ct", ct_window=(-1000.0, 1000.0))
    return dataclasses.replace(base, name="mae3d_ct_vitb16_96", data=data)
