"""demo_det: 3D lesion boxes on the demo set (CenterNet-style heat map + size on the 8-voxel patch grid).

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
                                min_object_voxels=8, det_top_k=10, det_score_threshold=0.05, det_nms_iou=0.1,
                                val_records=4, eval_overlap=0.25),
    )
