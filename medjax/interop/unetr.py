"""MONAI UNETR weights, encoder and decoder, as a medjax model with the same logits.

``load()`` with ``format="monai-unetr"`` gives the ViT encoder only (medjax's own UNETR decoder is a different
network); :func:`load_unetr` gives the whole network as a
:class:`~medjax.models.heads.unetr_monai.MonaiUNETR` (the MONAI decoder run in JAX on the imported encoder).
"""

from __future__ import annotations


def load_unetr(src, *, heads: int | None = None, input_size=None, allow_pickle: bool = False, seed: int = 0):
    """``(config, model)``: MONAI UNETR weights in ``src`` as a :class:`MonaiUNETR` computing the same logits
    (images (B, *S, C) channels last -> logits (B, *S, K))."""
    from flax import nnx

    from medjax.interop.arch import run_config
    from medjax.interop.canonical import to_medjax
    from medjax.interop.files import read_weights
    from medjax.interop.load import assign, read
    from medjax.models.heads.unetr_monai import MonaiUNETR, monai_decoder_weights

    imported = read(src, "monai-unetr", heads=heads, input_size=input_size, allow_pickle=allow_pickle)
    arch = imported.arch
    sd, _, path = read_weights(src, allow_pickle=allow_pickle)
    cfg = run_config(arch, name="import-monai-unetr")
    model = MonaiUNETR(cfg.model, spatial_dims=arch.spatial_dims, input_size=arch.input_size,
                       weights=monai_decoder_weights(sd), rngs=nnx.Rngs(seed))
    flat = {k: v for k, v in to_medjax(imported.tensors, arch).items() if k[0] == "encoder"}
    assign(model, flat, source=str(path))
    return cfg, model
