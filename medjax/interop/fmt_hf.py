"""Hugging Face ``transformers`` ViT (``ViTModel``) and ViTMAE (``ViTMAEForPreTraining``) key maps.

Both the module names of transformers 5 (``vit.layers.N.attention.q_proj``, ``mlp.fc1``) and the Hub names
(``vit.encoder.layer.N.attention.attention.query``, ``intermediate.dense``, ``output.dense``; transformers 5 still
saves these) are read; exports write the Hub names, which transformers 4 and 5 load. HF ViTs use exact GELU and
LayerNorm eps 1e-12 (from ``config.json``); ViTMAE's fixed sin-cos tables put the column (x) axis first
(``sincos_axes=(1, 0)``) and its norm-pix target uses the unbiased variance. The ViT pooler and classifier heads
are not imported.
"""

from __future__ import annotations

from medjax.interop.arch import Arch, Decoder, check
from medjax.interop.keymap import block_complete, default_heads, depth_of, native_size, rename, size_tuple

_BLOCK = [
    (r"attention\.(?:attention\.query|q_proj)", "q"), (r"attention\.(?:attention\.key|k_proj)", "k"),
    (r"attention\.(?:attention\.value|v_proj)", "v"), (r"attention\.(?:output\.dense|o_proj)", "o"),
    (r"layernorm_before", "ln1"), (r"layernorm_after", "ln2"),
    (r"(?:intermediate\.dense|mlp\.fc1)", "fc1"), (r"(?:output\.dense|mlp\.fc2)", "fc2"),
]


def _rules():
    enc = r"(?:vit\.)?"
    rules = [(enc + r"embeddings\.cls_token", "cls"), (enc + r"embeddings\.position_embeddings", "pos"),
             (enc + r"embeddings\.patch_embeddings\.projection\.weight", "patch.w"),
             (enc + r"embeddings\.patch_embeddings\.projection\.bias", "patch.b"),
             (enc + r"layernorm\.weight", "norm.w"), (enc + r"layernorm\.bias", "norm.b"),
             (r"decoder\.mask_token", "dec.mask"), (r"decoder\.decoder_pos_embed", "dec.pos")]
    for part in ("embed", "norm", "pred"):
        rules += [(rf"decoder\.decoder_{part}\.weight", f"dec.{part}.w"),
                  (rf"decoder\.decoder_{part}\.bias", f"dec.{part}.b")]
    for src, dst in _BLOCK:
        for wb, c in (("weight", "w"), ("bias", "b")):
            rules.append((enc + rf"(?:encoder\.layer|layers)\.(\d+)\.{src}\.{wb}", rf"blocks.\1.{dst}.{c}"))
            rules.append((rf"decoder\.decoder_(?:layers|encoder\.layer)\.(\d+)\.{src}\.{wb}",
                          rf"dec.blocks.\1.{dst}.{c}"))
    return rules


IGNORE = (r"(?:vit\.)?pooler\..*", r"classifier\..*", r"(?:vit\.)?embeddings\.mask_token")


def read(sd: dict, config: dict | None, *, kind: str, source: str, input_size=None, heads=None,
         decoder_heads=None, keep_decoder: bool = True) -> tuple[Arch, dict, list[str]]:
    """``(arch, canonical, dropped keys)`` of a HF ViT (``kind="vit"``) or ViTMAE (``kind="vitmae"``) state dict."""
    c, dropped = rename(sd, _rules(), ignore=IGNORE, source=source)
    cfg = config or {}
    if cfg.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"{source}: config.json hidden_act={cfg['hidden_act']!r}; only exact 'gelu' is supported")
    check("patch.w" in c, f"{source}: no patch embedding (embeddings.patch_embeddings.projection.weight): is this "
                          f"a Hugging Face {kind} checkpoint?")
    width, in_ch, *patch = c["patch.w"].shape
    check(len(patch) == 2, f"{source}: patch embedding {c['patch.w'].shape} is not 2D")
    depth = depth_of(c)
    qkv_bias = block_complete(c, depth, "blocks.", source)
    if "cls" not in c:
        raise ValueError(f"{source}: no embeddings.cls_token")
    n = 2
    tokens = c["pos"].shape[1] - 1
    size = native_size(tokens, hint=input_size, config_size=cfg.get("image_size"), patch=patch, spatial_dims=n,
                       source=source)
    if cfg.get("patch_size") is not None:
        check(size_tuple(cfg["patch_size"], n) == tuple(patch), f"{source}: config patch_size {cfg['patch_size']} "
                                                                f"!= patch embedding kernel {tuple(patch)}")
    width_cfg = cfg.get("hidden_size", width)
    check(width_cfg == width, f"{source}: config hidden_size {width_cfg} != patch embedding width {width}")
    heads = cfg.get("num_attention_heads") or default_heads(width, heads, source)
    mlp = c["blocks.0.fc1.w"].shape[0] if depth else 4 * width
    decoder = None
    if kind == "vitmae" and keep_decoder and "dec.embed.w" in c:
        dw = c["dec.embed.w"].shape[0]
        ddepth = depth_of(c, "dec.blocks.")
        block_complete(c, ddepth, "dec.blocks.", source)
        decoder = Decoder(width=dw, depth=ddepth,
                          heads=int(cfg.get("decoder_num_attention_heads") or default_heads(dw, decoder_heads, source)),
                          mlp_dim=c["dec.blocks.0.fc1.w"].shape[0] if ddepth else 4 * dw)
    elif kind == "vitmae":
        dropped += sorted(k for k in c if k.startswith("dec."))
    c = {k: v for k, v in c.items() if decoder is not None or not k.startswith("dec.")}
    arch = Arch(spatial_dims=n, input_size=size, patch=tuple(patch), in_channels=in_ch, width=width, depth=depth,
                heads=int(heads), mlp_dim=mlp, cls_token=True, norm_eps=float(cfg.get("layer_norm_eps", 1e-12)),
                qkv_bias=qkv_bias, decoder=decoder, mask_ratio=float(cfg.get("mask_ratio", 0.75)),
                norm_pix_loss=bool(cfg.get("norm_pix_loss", False)), norm_pix_ddof=1)
    return arch, c, dropped


def write(arch: Arch, c: dict, *, kind: str) -> tuple[dict, dict]:
    """``(state dict, config.json dict)`` in the Hub names for ``ViTModel`` (kind "vit") or
    ``ViTMAEForPreTraining`` (kind "vitmae")."""
    check(arch.spatial_dims == 2, f"hf-{kind} export needs a 2D model (this one has spatial_dims={arch.spatial_dims}); "
                                  "export 3D models as monai-vit or monai-mae")
    check(arch.cls_token, f"hf-{kind} export needs a model with a CLS token (model.cls_token=true)")
    check(len(set(arch.input_size)) == 1 and len(set(arch.patch)) == 1,
          f"hf-{kind} export needs square images and patches, got {arch.input_size} / {arch.patch}")
    pre = "vit." if kind == "vitmae" else ""
    names = {"q": "attention.attention.query", "k": "attention.attention.key", "v": "attention.attention.value",
             "o": "attention.output.dense", "ln1": "layernorm_before", "ln2": "layernorm_after",
             "fc1": "intermediate.dense", "fc2": "output.dense"}
    sd = {f"{pre}embeddings.cls_token": c["cls"], f"{pre}embeddings.position_embeddings": c["pos"],
          f"{pre}embeddings.patch_embeddings.projection.weight": c["patch.w"],
          f"{pre}embeddings.patch_embeddings.projection.bias": c["patch.b"],
          f"{pre}layernorm.weight": c["norm.w"], f"{pre}layernorm.bias": c["norm.b"]}
    for key, v in c.items():
        if key.startswith(("blocks.", "dec.blocks.")):
            parts = key.split(".")
            dec = parts[0] == "dec"
            i, part, wb = parts[-3], parts[-2], parts[-1]
            stem = f"decoder.decoder_layers.{i}" if dec else f"{pre}encoder.layer.{i}"
            sd[f"{stem}.{names[part]}.{'weight' if wb == 'w' else 'bias'}"] = v
    config = {"model_type": "vit", "architectures": ["ViTModel"], "hidden_size": arch.width,
              "num_hidden_layers": arch.depth, "num_attention_heads": arch.heads, "intermediate_size": arch.mlp_dim,
              "hidden_act": "gelu", "layer_norm_eps": arch.norm_eps, "image_size": arch.input_size[0],
              "patch_size": arch.patch[0], "num_channels": arch.in_channels, "qkv_bias": True,
              "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    if kind == "vitmae":
        check(arch.decoder is not None and "dec.embed.w" in c, "hf-vitmae export needs the MAE decoder")
        d = arch.decoder
        sd.update({"decoder.mask_token": c["dec.mask"], "decoder.decoder_pos_embed": c["dec.pos"],
                   "decoder.decoder_embed.weight": c["dec.embed.w"], "decoder.decoder_embed.bias": c["dec.embed.b"],
                   "decoder.decoder_norm.weight": c["dec.norm.w"], "decoder.decoder_norm.bias": c["dec.norm.b"],
                   "decoder.decoder_pred.weight": c["dec.pred.w"], "decoder.decoder_pred.bias": c["dec.pred.b"]})
        config.update({"model_type": "vit_mae", "architectures": ["ViTMAEForPreTraining"],
                       "decoder_hidden_size": d.width, "decoder_num_hidden_layers": d.depth,
                       "decoder_num_attention_heads": d.heads, "decoder_intermediate_size": d.mlp_dim,
                       "mask_ratio": arch.mask_ratio, "norm_pix_loss": arch.norm_pix_loss})
    return sd, config
