"""Task heads on the ViT encoder: classification, UNETR-style segmentation and CenterNet-style detection.

Each model keeps its encoder at ``.encoder`` (a :class:`~medjax.models.vit.ViT`), so MAE encoder weights load
directly (:mod:`medjax.finetune.init`).
"""

from medjax.models.heads.classification import FeatureNorm, ViTClassifier
from medjax.models.heads.detection import ViTDetector, decode_boxes
from medjax.models.heads.unetr import UNETR, ConvBlock, UpBlock, skip_layers

__all__ = ["UNETR", "ConvBlock", "FeatureNorm", "UpBlock", "ViTClassifier", "ViTDetector", "decode_boxes",
           "skip_layers"]
