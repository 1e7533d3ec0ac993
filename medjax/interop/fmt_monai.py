"""MONAI ``ViT``, ``UNETR`` (its ``vit.`` encoder) and ``MaskedAutoEncoderViT`` key maps (2D and 3D).

MONAI blocks fuse q, k, v in ``attn.qkv`` (rows q, k, v; no bias unless ``qkv_bias=True``), name the output
``attn.out_proj`` and the MLP ``mlp.linear1/linear2``, and store unused ``norm_cross_attn``/``cross_attn.*``
tensors (dropped). The position table ``patch_embedding.position_embeddings`` has no CLS row (MONAI adds no
position to the CLS token: imported as a zero row). LayerNorm eps is 1e-5. MONAI's sin-cos tables put the
second grid axis first (``sincos_axes=(1, 0)`` in 2D, ``(1, 0, 2)`` in 3D). The MAE keeps its final norms as the
last entry of ``blocks`` / ``decoder_blocks``. UNETR's convolutional decoder (``encoder1..4``, ``decoder2..5``,
``out``) has no medjax counterpart and is dropped (reported).
"""

from __future__ import annotations

import re

import numpy as np

from medjax.interop.arch import Arch, Decoder, check
from medjax.interop.keymap import block_complete, default_heads, depth_of, native_size, rename

MONAI_EPS = 1e-5


def _rules(pre: str):
    rules = [(pre + r"cls_token", "cls"), (pre + r"patch_embedding\.position_embeddings", "pos"),
             (pre + r"patch_embedding\.patch_embeddings\.weight", "patch.w"),
             (pre + r"patch_embedding\.patch_embeddings\.bias", "patch.b"),
             (pre + r"norm\.weight", "norm.w"), (pre + r"norm\.bias", "norm.b"),
             (r"decoder_embed\.weight", "dec.embed.w"), (r"decoder_embed\.bias", "dec.embed.b"),
             (r"mask_tokens", "dec.mask"), (r"decoder_pos_embedding", "dec.pos"),
             (r"decoder_pred\.weight", "dec.pred.w"), (r"decoder_pred\.bias", "dec.pred.b"),
             (r"decoder_norm\.weight", "dec.norm.w"), (r"decoder_norm\.bias", "dec.norm.b")]
    for src, dst in (("norm1", "ln1"), ("norm2", "ln2"), ("attn\\.qkv", "qkv"), ("attn\\.out_proj", "o"),
                     ("mlp\\.linear1", "fc1"), ("mlp\\.linear2", "fc2")):
        for wb, c in (("weight", "w"), ("bias", "b")):
            rules.append((pre + rf"blocks\.(\d+)\.{src}\.{wb}", rf"blocks.\1.{dst}.{c}"))
            rules.append((rf"decoder_blocks\.(\d+)\.{src}\.{wb}", rf"dec.blocks.\1.{dst}.{c}"))
    return rules


IGNORE = (r".*norm_cross_attn\..*", r".*cross_attn\..*", r"(?:vit\.)?classification_head\..*",
          r"(?:encoder\d|decoder\d|out)\..*")


def _final_norms(sd: dict) -> dict:
    """MaskedAutoEncoderViT keeps its final LayerNorms as the last ``blocks.N`` / ``decoder_blocks.N``."""
    out = dict(sd)
    for stem, name in (("blocks", "norm"), ("decoder_blocks", "decoder_norm")):
        idx = [int(m.group(1)) for k in sd for m in [re.fullmatch(rf"{stem}\.(\d+)\.weight", k)] if m]
        if idx:
            n = max(idx)
            out[f"{name}.weight"] = out.pop(f"{stem}.{n}.weight")
            out[f"{name}.bias"] = out.pop(f"{stem}.{n}.bias")
    return out


def read(sd: dict, config: dict | None, *, kind: str, source: str, spatial_dims=None, input_size=None, heads=None,
         decoder_heads=None, keep_decoder: bool = True) -> tuple[Arch, dict, list[str]]:
    """``(arch, canonical, dropped keys)`` for kind "vit", "unetr" or "mae". ``config`` may hold the MONAI
    constructor arguments (as :func:`write` records them)."""
    args = (config or {}).get("args", config or {})
    if kind == "mae":
        sd = _final_norms(sd)
    c, dropped = rename(sd, _rules(r"vit\." if kind == "unetr" else ""), ignore=IGNORE, source=source)
    check("patch.w" in c, f"{source}: no patch_embedding.patch_embeddings.weight (MONAI proj_type='conv'); is this a "
                          f"MONAI {kind} state dict? (proj_type='perceptron' is not supported)")
    width, in_ch, *patch = c["patch.w"].shape
    n = len(patch)
    check(spatial_dims in (None, n), f"{source}: the patch embedding is {n}D but spatial_dims={spatial_dims}")
    depth = depth_of(c)
    qkv_bias = block_complete(c, depth, "blocks.", source)
    cls = "cls" in c
    tokens = c["pos"].shape[1]
    size = native_size(tokens, hint=input_size, config_size=args.get("img_size"), patch=patch, spatial_dims=n,
                       source=source)
    check(tokens == int(np.prod([s // p for s, p in zip(size, patch)])),
          f"{source}: patch_embedding.position_embeddings has {tokens} rows, input size {size} / patch "
          f"{tuple(patch)} needs {int(np.prod([s // p for s, p in zip(size, patch)]))}")
    if cls:
        c["pos"] = np.concatenate([np.zeros((1, 1, width), np.float32), c["pos"]], axis=1)
    decoder = None
    if kind == "mae" and keep_decoder:
        dw = c["dec.embed.w"].shape[0]
        ddepth = depth_of(c, "dec.blocks.")
        block_complete(c, ddepth, "dec.blocks.", source)
        c["dec.pos"] = np.concatenate([np.zeros((1, 1, dw), np.float32), c["dec.pos"]], axis=1)
        decoder = Decoder(width=dw, depth=ddepth,
                          heads=int(args.get("decoder_num_heads") or default_heads(dw, decoder_heads, source)),
                          mlp_dim=c["dec.blocks.0.fc1.w"].shape[0] if ddepth else 4 * dw)
    else:
        dropped += sorted(k for k in c if k.startswith("dec."))
        c = {k: v for k, v in c.items() if not k.startswith("dec.")}
    arch = Arch(spatial_dims=n, input_size=size, patch=tuple(patch), in_channels=in_ch, width=width, depth=depth,
                heads=int(args.get("num_heads") or default_heads(width, heads, source)),
                mlp_dim=c["blocks.0.fc1.w"].shape[0] if depth else 4 * width, cls_token=cls, norm_eps=MONAI_EPS,
                qkv_bias=qkv_bias, decoder=decoder, mask_ratio=float(args.get("masking_ratio", 0.75)),
                norm_pix_loss=True)
    return arch, c, dropped


def _any_qkv_bias(c: dict) -> bool:
    return any(np.any(v != 0) for k, v in c.items() if k.endswith((".q.b", ".k.b", ".v.b")))


def _blocks(c: dict, src: str, dst: str, depth: int, bias: bool, norm_cross: bool = False) -> dict:
    sd = {}
    names = {"ln1": "norm1", "ln2": "norm2", "o": "attn.out_proj", "fc1": "mlp.linear1", "fc2": "mlp.linear2"}
    for i in range(depth):
        for part, name in names.items():
            sd[f"{dst}.{i}.{name}.weight"] = c[f"{src}.{i}.{part}.w"]
            sd[f"{dst}.{i}.{name}.bias"] = c[f"{src}.{i}.{part}.b"]
        sd[f"{dst}.{i}.attn.qkv.weight"] = np.concatenate([c[f"{src}.{i}.{p}.w"] for p in "qkv"], axis=0)
        if bias:
            sd[f"{dst}.{i}.attn.qkv.bias"] = np.concatenate([c[f"{src}.{i}.{p}.b"] for p in "qkv"], axis=0)
        if norm_cross:  # MONAI's transformer blocks hold an unused cross-attention LayerNorm: written at its init
            width = c[f"{src}.{i}.ln1.w"].shape[0]
            sd[f"{dst}.{i}.norm_cross_attn.weight"] = np.ones((width,), np.float32)
            sd[f"{dst}.{i}.norm_cross_attn.bias"] = np.zeros((width,), np.float32)
    return sd


def write(arch: Arch, c: dict, *, kind: str) -> tuple[dict, dict]:
    """``(state dict, {"class": ..., "args": constructor arguments})`` for MONAI ``ViT`` (kind "vit") or
    ``MaskedAutoEncoderViT`` (kind "mae"). Position tables are written as stored values ("learnable"), so a
    ``load_state_dict`` reproduces them exactly; q/k/v biases are written (``qkv_bias=True``) unless all zero."""
    bias = _any_qkv_bias(c)
    prefix = 1 if arch.cls_token else 0
    pos = c["pos"]
    cls = c.get("cls")
    if prefix:
        cls = cls + pos[:, :1]  # MONAI adds no position to the CLS token: fold a learned CLS row into the token
    sd = {"patch_embedding.patch_embeddings.weight": c["patch.w"],
          "patch_embedding.patch_embeddings.bias": c["patch.b"],
          "patch_embedding.position_embeddings": pos[:, prefix:]}
    args = {"in_channels": arch.in_channels, "img_size": list(arch.input_size), "patch_size": list(arch.patch),
            "hidden_size": arch.width, "mlp_dim": arch.mlp_dim, "num_layers": arch.depth, "num_heads": arch.heads,
            "proj_type": "conv", "pos_embed_type": "learnable", "dropout_rate": 0.0,
            "spatial_dims": arch.spatial_dims, "qkv_bias": bool(bias)}
    sd.update(_blocks(c, "blocks", "blocks", arch.depth, bias, norm_cross=True))
    if kind == "vit":
        sd.update({"norm.weight": c["norm.w"], "norm.bias": c["norm.b"]})
        if prefix:
            # MONAI ViT has a CLS token only with classification=True, which adds a head: written as zeros
            sd["cls_token"] = cls
            sd["classification_head.0.weight"] = np.zeros((1, arch.width), np.float32)
            sd["classification_head.0.bias"] = np.zeros((1,), np.float32)
            args.update(classification=True, num_classes=1, post_activation="Tanh")
        return sd, {"class": "monai.networks.nets.ViT", "args": args}
    check(arch.cls_token, "monai-mae export needs a model with a CLS token (MONAI's MAE always has one)")
    check(arch.decoder is not None and "dec.embed.w" in c, "monai-mae export needs the MAE decoder")
    d = arch.decoder
    sd.update({"cls_token": cls, f"blocks.{arch.depth}.weight": c["norm.w"], f"blocks.{arch.depth}.bias": c["norm.b"],
               "decoder_embed.weight": c["dec.embed.w"], "decoder_embed.bias": c["dec.embed.b"],
               "mask_tokens": c["dec.mask"], "decoder_pos_embedding": c["dec.pos"][:, prefix:],
               f"decoder_blocks.{d.depth}.weight": c["dec.norm.w"], f"decoder_blocks.{d.depth}.bias": c["dec.norm.b"],
               "decoder_pred.weight": c["dec.pred.w"], "decoder_pred.bias": c["dec.pred.b"]})
    sd.update(_blocks(c, "dec.blocks", "decoder_blocks", d.depth, bias, norm_cross=True))
    args.update(masking_ratio=arch.mask_ratio, decoder_hidden_size=d.width, decoder_mlp_dim=d.mlp_dim,
                decoder_num_layers=d.depth, decoder_num_heads=d.heads, decoder_pos_embed_type="learnable")
    return sd, {"class": "monai.networks.nets.MaskedAutoEncoderViT", "args": args}
