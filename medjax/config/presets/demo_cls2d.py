"""demo_cls2d: "does this slice window hold a lesion?" on 64² axial windows at 2 mm, the task of ``demo_cls`` in 2D.

The encoder matches the ``demo2d`` MAE (ViT-Ti/8 on 64² slices), so ``--init-from`` a ``demo2d`` run loads it
with the same patch grid. A window is positive when it holds at least 8 lesion pixels; a volume's score is the
highest lesion probability over its windows. The last 16 records are held out (use ``data/demo96``, built with
``medjax data demo data/demo96 --subjects 96``).
"""

import dataclasses

from medjax.config.presets import demo_cls
from medjax.config.schema import Config


def get_config() -> Config:
    base = demo_cls.get_config()
    data = dataclasses.replace(base.data, dir="data/demo96", spatial_dims=2, crop_size=(64, 64),
                               spacing=(2.0, 2.0, 2.0), slice_axis=2, samples_per_volume=16)
    train = dataclasses.replace(base.train, batch_size=16)
    finetune = dataclasses.replace(base.finetune, val_records=16, eval_batch=64)
    return dataclasses.replace(base, name="demo_cls2d", data=data, train=train, finetune=finetune)
