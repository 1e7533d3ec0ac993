"""demo2d: a 2D MAE on axial slices of the demo set (ViT-Ti/8, 64² windows at 2 mm), for the label-efficiency
measurement on 2 CPU cores (docs/results/label_efficiency.md).

The ``demo`` recipe on slices instead of 48³ crops: 64 tokens per slice window (16 visible at mask 0.75), batch 64,
1,500 steps (about 20 minutes on 2 idle cores). ``data/demo96`` is ``medjax data demo data/demo96 --subjects 96``;
``data.holdout_last=16`` keeps the MAE off the 16 volumes that ``demo_cls2d`` and ``demo_seg2d`` score on.
"""

import dataclasses

from medjax.config.presets import demo
from medjax.config.schema import Config


def get_config() -> Config:
    base = demo.get_config()
    data = dataclasses.replace(base.data, dir="data/demo96", spatial_dims=2, crop_size=(64, 64),
                               spacing=(2.0, 2.0, 2.0), slice_axis=2, samples_per_volume=16, holdout_last=16)
    train = dataclasses.replace(base.train, steps=1500, batch_size=64, warmup_steps=100, log_every=50)
    checkpoint = dataclasses.replace(base.checkpoint, every_steps=250)
    return dataclasses.replace(base, name="demo2d", data=data, train=train, checkpoint=checkpoint)
