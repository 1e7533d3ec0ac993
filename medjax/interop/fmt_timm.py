"""timm ``VisionTransformer`` key map (2D): fused ``blocks.N.attn.qkv`` (rows q, k, v), ``attn.proj``,
``mlp.fc1/fc2``, ``patch_embed.proj``, ``cls_token``, ``pos_embed`` (with the CLS row unless the model was built
with ``no_embed_class``), final ``norm``. LayerNorm eps 1e-6, exact GELU. Heads (``head.*``) are not imported;
layer scale (``ls1/ls2``), register tokens and ``fc_norm`` (global-average-pool models) have no medjax
counterpart and are refused by name.
"""

from __future__ import annotations

import numpy as np

from medjax.interop.arch import Arch, check
from medjax.interop.keymap import block_complete, default_heads, depth_of, native_size, rename

RULES = [(r"cls_token", "cls"), (r"pos_embed", "pos"), (r"patch_embed\.proj\.weight", "patch.w"),
         (r"patch_embed\.proj\.bias", "patch.b"), (r"norm\.weight", "norm.w"), (r"norm\.bias", "norm.b")]
for _src, _dst in (("norm1", "ln1"), ("norm2", "ln2"), ("attn\\.qkv", "qkv"), ("attn\\.proj", "o"),
                   ("mlp\\.fc1", "fc1"), ("mlp\\.fc2", "fc2")):
    RULES += [(rf"blocks\.(\d+)\.{_src}\.weight", rf"blocks.\1.{_dst}.w"),
              (rf"blocks\.(\d+)\.{_src}\.bias", rf"blocks.\1.{_dst}.b")]
IGNORE = (r"head\..*", r"head_drop\..*")


def read(sd: dict, config: dict | None, *, source: str, input_size=None, heads=None) -> tuple[Arch, dict, list[str]]:
    """``(arch, canonical, dropped keys)`` of a timm VisionTransformer state dict (sizes from the tensors)."""
    for key in sd:
        if key.startswith(("fc_norm.", "reg_token")) or ".ls1." in key or ".ls2." in key:
            raise ValueError(f"{source}: tensor {key!r} (timm fc_norm / register tokens / layer scale) has no medjax "
                             "counterpart; only plain ViTs with a final norm import exactly")
    c, dropped = rename(sd, RULES, ignore=IGNORE, source=source)
    check("patch.w" in c, f"{source}: no patch_embed.proj.weight: is this a timm VisionTransformer?")
    width, in_ch, *patch = c["patch.w"].shape
    depth = depth_of(c)
    qkv_bias = block_complete(c, depth, "blocks.", source)
    cls = "cls" in c
    prefix = 1 if cls else 0
    rows = c["pos"].shape[1]
    pcfg = (config or {}).get("pretrained_cfg", {}) if config else {}
    cfg_size = tuple(int(v) for v in pcfg["input_size"][1:]) if pcfg.get("input_size") else None
    grid_rows = rows - prefix if prefix and round((rows - prefix) ** 0.5) ** 2 == rows - prefix else rows
    size = native_size(grid_rows, hint=input_size, config_size=cfg_size, patch=patch, spatial_dims=2, source=source)
    grid_tokens = int(np.prod([s // p for s, p in zip(size, patch)]))
    if cls and rows == grid_tokens:  # no_embed_class: the CLS token gets no position
        c["pos"] = np.concatenate([np.zeros((1, 1, width), np.float32), c["pos"]], axis=1)
    check(c["pos"].shape[1] == prefix + grid_tokens, f"{source}: pos_embed has {rows} rows; input size {size} with "
                                                      f"patch {tuple(patch)} needs {grid_tokens} (+{prefix} CLS)")
    arch = Arch(spatial_dims=2, input_size=size, patch=tuple(patch), in_channels=in_ch, width=width, depth=depth,
                heads=default_heads(width, heads, source), mlp_dim=c["blocks.0.fc1.w"].shape[0] if depth else 4 * width,
                cls_token=cls, norm_eps=1e-6, qkv_bias=qkv_bias, norm_pix_loss=True)
    return arch, c, dropped


def write(arch: Arch, c: dict) -> tuple[dict, dict]:
    """``(state dict, config.json)`` for ``timm.models.vision_transformer.VisionTransformer`` (no head)."""
    check(arch.spatial_dims == 2, "timm-vit export needs a 2D model")
    sd = {"patch_embed.proj.weight": c["patch.w"], "patch_embed.proj.bias": c["patch.b"], "pos_embed": c["pos"],
          "norm.weight": c["norm.w"], "norm.bias": c["norm.b"]}
    if arch.cls_token:
        sd["cls_token"] = c["cls"]
    names = {"ln1": "norm1", "ln2": "norm2", "o": "attn.proj", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}
    for i in range(arch.depth):
        for part, name in names.items():
            sd[f"blocks.{i}.{name}.weight"] = c[f"blocks.{i}.{part}.w"]
            sd[f"blocks.{i}.{name}.bias"] = c[f"blocks.{i}.{part}.b"]
        sd[f"blocks.{i}.attn.qkv.weight"] = np.concatenate([c[f"blocks.{i}.{p}.w"] for p in "qkv"], axis=0)
        sd[f"blocks.{i}.attn.qkv.bias"] = np.concatenate([c[f"blocks.{i}.{p}.b"] for p in "qkv"], axis=0)
    config = {"architecture": "vit_custom", "num_classes": 0, "global_pool": "token" if arch.cls_token else "avg",
              "img_size": list(arch.input_size), "patch_size": arch.patch[0], "in_chans": arch.in_channels,
              "embed_dim": arch.width, "depth": arch.depth, "num_heads": arch.heads,
              "mlp_ratio": arch.mlp_dim / arch.width, "class_token": arch.cls_token, "qkv_bias": True}
    return sd, config
