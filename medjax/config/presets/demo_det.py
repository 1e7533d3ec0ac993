"""demo_det: 3D lesion boxes on the demo set (CenterNet-style heat map + size on a 2-voxel grid).

The heat map, sizes and offsets live on cells of 2 voxels (``finetune.det_stride=2``: an upsampling neck from the
8-voxel patch grid with a skip from the image). The demo lesions are 1-5 voxels in radius at 3 mm, and on the
patch grid itself (``det_stride=0``) the detector found none of them. The measurement is in
``docs/results/detection.md``.

Boxes are taken from the connected components of each crop's lesion mask, so they follow crops and flips;
predictions come back in voxel and world (RAS+, mm) coordinates after 3D NMS. The encoder matches the ``demo``
MAE preset (ViT-Ti/8).
"""

import dataclasses

from medjax.config.finetune_schema import FinetuneConfig
from medjax.config.presets import demo_cls
from medjax.config.schema import Config


def get_config() -> Config:
    """The ``demo_cls`` data, encoder and schedule, with the detection head's settings."""
    return dataclasses.replace(
        demo_cls.get_config(),
        name="demo_det",
        task="detection",
        finetune=FinetuneConfig(num_classes=1, mode="full", layer_decay=0.75, label_key="lesion",
                                min_object_voxels=8, det_stride=2, det_top_k=10, det_score_threshold=0.05,
                                det_nms_iou=0.1, val_records=4, eval_overlap=0.25),
    )
