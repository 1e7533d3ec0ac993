"""medjax.models: Flax NNX ViT and MAE for 2D and 3D images, with logical-axis sharding names."""

from medjax.models.attention import MultiHeadAttention, attention_implementation
from medjax.models.block import Block, Mlp
from medjax.models.layers import compute_dtype, constrain, logical_to_spec, param_init
from medjax.models.mae import MAE
from medjax.models.masking import Masking, masked_mse, num_visible, random_masking
from medjax.models.patch_embed import PatchEmbed, patch_grid, patchify, unpatchify
from medjax.models.posembed import resize_pos_embed, sincos_pos_embed
from medjax.config.variants import SIZES, ViTSize, decode_variant
from medjax.config.dims import broadcast_size
from medjax.models.vit import ViT

__all__ = [
    "MAE",
    "SIZES",
    "Block",
    "Masking",
    "Mlp",
    "MultiHeadAttention",
    "PatchEmbed",
    "ViT",
    "ViTSize",
    "attention_implementation",
    "broadcast_size",
    "compute_dtype",
    "constrain",
    "decode_variant",
    "logical_to_spec",
    "masked_mse",
    "num_visible",
    "param_init",
    "patch_grid",
    "patchify",
    "random_masking",
    "resize_pos_embed",
    "sincos_pos_embed",
    "unpatchify",
]
