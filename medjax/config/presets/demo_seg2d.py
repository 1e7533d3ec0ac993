"""demo_seg2d: lesion segmentation (background, lesion) on 64² axial windows at 2 mm with a 2D UNETR.

Unlike ``demo_seg`` (tissue classes, which the UNETR's skip path on the image solves from intensity alone), a
hypointense lesion looks like CSF voxel by voxel, so the decoder needs the encoder's context. The encoder matches
the ``demo2d`` MAE. Crops are label-balanced (half centred on a lesion); the last 16 records are held out, and a
held-out volume without lesions scores Dice 1 only if nothing is predicted in it. Measured: with 2 labelled
volumes and these 200 steps neither a pretrained nor a scratch encoder segments a lesion (nothing is predicted;
docs/results/label_efficiency.md), so raise ``train.steps`` or set ``finetune.class_weights`` before comparing.
"""

import dataclasses

from medjax.config.presets import demo_seg
from medjax.config.schema import Config


def get_config() -> Config:
    base = demo_seg.get_config()
    data = dataclasses.replace(base.data, dir="data/demo96", spatial_dims=2, crop_size=(64, 64),
                               spacing=(2.0, 2.0, 2.0), slice_axis=2, samples_per_volume=16)
    train = dataclasses.replace(base.train, batch_size=8)
    finetune = dataclasses.replace(base.finetune, num_classes=2, label_key="lesion", val_records=16,
                                   eval_overlap=0.25, eval_batch=64)
    return dataclasses.replace(base, name="demo_seg2d", data=data, train=train, finetune=finetune)
