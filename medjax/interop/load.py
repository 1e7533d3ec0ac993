"""``medjax.interop.load``: weights of another library -> a medjax model computing the same function.

Pipeline: read the file (:mod:`~medjax.interop.files`), rename to canonical tensors with the format's key map
(``fmt_hf``, ``fmt_timm``, ``fmt_monai``), decide learned vs fixed sin-cos positions
(:func:`~medjax.interop.canonical.resolve_pos`), optionally adapt (:mod:`~medjax.interop.adapt`), convert layouts
(:func:`~medjax.interop.canonical.to_medjax`) and copy into a freshly built NNX model, checking every shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from medjax.interop.arch import Arch, check
from medjax.interop.files import WeightsError

FORMATS = ("hf-vitmae", "hf-vit", "timm-vit", "monai-vit", "monai-mae", "monai-unetr")


@dataclass
class Imported:
    """What :func:`read` found: the architecture, canonical tensors and a report (dropped tensors, adaptations)."""

    arch: Arch
    tensors: dict
    report: dict = field(default_factory=dict)


def read(src, format: str, *, spatial_dims: int | None = None, input_size=None, in_channels: int | None = None,
         inflate: str = "repeat", depth_patch: int | None = None, decoder: bool = True, heads: int | None = None,
         decoder_heads: int | None = None, allow_pickle: bool = False) -> Imported:
    """Read ``src`` in ``format`` and apply the requested adaptations (see :func:`load`)."""
    from medjax.interop import adapt, fmt_hf, fmt_monai, fmt_timm
    from medjax.interop.canonical import resolve_pos
    from medjax.interop.files import read_weights

    if format not in FORMATS:
        raise WeightsError(f"--format {format!r}: use one of {', '.join(FORMATS)}")
    sd, config, path = read_weights(src, allow_pickle=allow_pickle)
    source = str(path)
    native_size = input_size  # a hint: used as the native size only when the position table fits it
    try:
        if format in ("hf-vitmae", "hf-vit"):
            arch, c, dropped = fmt_hf.read(sd, config, kind=format[3:], source=source, input_size=native_size,
                                           heads=heads, decoder_heads=decoder_heads, keep_decoder=decoder)
        elif format == "timm-vit":
            arch, c, dropped = fmt_timm.read(sd, config, source=source, input_size=native_size, heads=heads)
        else:
            kind = format.split("-")[1]
            sd_dims = None if spatial_dims == 3 and kind != "unetr" and _is_2d_monai(sd) else spatial_dims
            arch, c, dropped = fmt_monai.read(sd, config, kind=kind, source=source, spatial_dims=sd_dims,
                                              input_size=native_size, heads=heads, decoder_heads=decoder_heads,
                                              keep_decoder=decoder)
    except ValueError as e:
        if isinstance(e, WeightsError):
            raise
        raise WeightsError(str(e)) from None
    arch = resolve_pos(c, arch, source=source)
    report = {"source": source, "format": format, "dropped": dropped, "adapted": []}
    if spatial_dims is not None and spatial_dims != arch.spatial_dims:
        check(spatial_dims == 3 and arch.spatial_dims == 2,
              f"{source}: a {arch.spatial_dims}D network cannot be adapted to spatial_dims={spatial_dims}")
        size3 = tuple(input_size) if input_size is not None else None
        dp = int(depth_patch or arch.patch[0])
        depth_size = int(size3[-1]) if size3 is not None and len(size3) == 3 else dp
        c, arch = adapt.inflate_3d(c, arch, depth=dp, mode=inflate, depth_size=depth_size)
        report["adapted"].append(f"inflated 2D -> 3D ({inflate}, depth patch {dp})")
        if size3 is not None and len(size3) == 3:
            input_size = size3
    if input_size is not None:
        from medjax.models.vit import broadcast_size

        size = broadcast_size(input_size, arch.spatial_dims)
        if size != tuple(arch.input_size):
            old = arch.grid
            c, arch = adapt.resize_positions(c, arch, size)
            report["adapted"].append(f"positions {old} -> {arch.grid}")
    if in_channels is not None and in_channels != arch.in_channels:
        old = arch.in_channels
        c, arch = adapt.adapt_channels(c, arch, in_channels)
        report["adapted"].append(f"in_channels {old} -> {arch.in_channels}")
    if not decoder and arch.decoder is not None:
        c, arch = adapt.drop_decoder(c, arch)
        arch = arch.replace(decoder=None)
    report["decoder"] = "imported" if arch.decoder is not None else "none"
    return Imported(arch, c, report)


def _is_2d_monai(sd: dict) -> bool:
    for k, v in sd.items():
        if k.endswith("patch_embedding.patch_embeddings.weight"):
            return v.ndim == 4
    return False


def assign(model, flat: dict, *, source: str = "weights") -> list[str]:
    """Copy ``flat`` ({path tuple: array}) into the NNX ``model``'s parameters; every array must match a
    parameter of the same shape (errors name the tensor). Returns the model parameters left as initialised."""
    import jax.numpy as jnp
    from flax import nnx

    state = nnx.state(model, nnx.Param)
    target = {tuple(str(p) for p in k): (k, v) for k, v in nnx.to_flat_state(state)}
    updates = {}
    for key, value in flat.items():
        name = "/".join(key)
        if key not in target:
            raise WeightsError(f"{source}: tensor for {name} has no place in the medjax model (shape {value.shape})")
        path, var = target[key]
        shape = tuple(var[...].shape)
        if tuple(value.shape) != shape:
            raise WeightsError(f"{source}: {name} has shape {tuple(value.shape)} in the weights but {shape} in the "
                               "medjax model")
        updates[path] = var.replace(jnp.asarray(value, jnp.float32))
    nnx.update(model, nnx.from_flat_state(updates))
    return sorted("/".join(k) for k in target if k not in flat)


def build(imported: Imported, cfg=None, *, seed: int = 0, with_decoder: bool | None = None):
    """``(config, model)``: the medjax model of ``imported`` with its weights in place.

    The model is an :class:`~medjax.models.MAE` when the import has a decoder (or ``with_decoder``), else a
    :class:`~medjax.models.ViT`. ``cfg`` (a ``Config``) supplies settings the weights do not decide (e.g. the
    decoder size when none is imported); its model/data geometry is replaced by the import's.
    """
    from flax import nnx

    from medjax.interop.arch import run_config
    from medjax.interop.canonical import to_medjax
    from medjax.models import MAE, ViT

    arch = imported.arch
    cfg = run_config(arch, name=f"import-{imported.report.get('format', 'weights')}", base=cfg)
    flat = to_medjax(imported.tensors, arch)
    mae = arch.decoder is not None if with_decoder is None else with_decoder
    if mae:
        model = MAE(cfg.model, spatial_dims=arch.spatial_dims, input_size=arch.input_size, rngs=nnx.Rngs(seed))
    else:
        model = ViT(cfg.model, spatial_dims=arch.spatial_dims, input_size=arch.input_size, rngs=nnx.Rngs(seed))
        flat = {k[1:]: v for k, v in flat.items() if k[0] == "encoder"}
    left = assign(model, flat, source=imported.report.get("source", "weights"))
    imported.report["initialised"] = left
    return cfg, model


def load(src, format: str, *, spatial_dims: int | None = None, input_size=None, in_channels: int | None = None,
         inflate: str = "repeat", depth_patch: int | None = None, decoder: bool = True, heads: int | None = None,
         decoder_heads: int | None = None, allow_pickle: bool = False, cfg=None, seed: int = 0):
    """Load weights of another library as a medjax model: returns ``(config, model)``.

    Args:
      src: ``.safetensors`` file or Hugging Face folder (``config.json`` + ``model.safetensors``).
      format: one of :data:`FORMATS`.
      spatial_dims: 3 inflates a 2D network to volumes (:func:`medjax.interop.adapt.inflate_3d`, ``inflate`` =
        "repeat" or "centre", ``depth_patch`` voxels deep, default the in-plane patch).
      input_size: pixels/voxels per spatial dim the model is built for (learned positions are interpolated);
        default: the size the weights were trained at (from the config or the position table).
      in_channels: adapt the patch embedding to this many input channels (C -> 1 sums, 1 -> N repeats / N).
      decoder: keep an MAE decoder when the weights have one (``False`` drops it).
      heads, decoder_heads: attention heads of the encoder / MAE decoder when no config says them (the weights do
        not record them; default: 64-wide heads).
      allow_pickle: read ``.bin/.pt/.pth/.ckpt`` through ``torch.load(weights_only=True)``.
      cfg: a medjax ``Config`` whose other settings (training, data folder) the returned config keeps.
      seed: initialises parameters the weights do not provide (a dropped or missing decoder).

    The model is an MAE (encoder at ``model.encoder``) when a decoder was imported, else a ViT. ``config`` is a
    full medjax ``Config`` (task "mae", ``data.crop_size`` = the input size) that rebuilds the same model.
    """
    imported = read(src, format, spatial_dims=spatial_dims, input_size=input_size, in_channels=in_channels,
                    inflate=inflate, depth_patch=depth_patch, decoder=decoder, heads=heads, decoder_heads=decoder_heads,
                    allow_pickle=allow_pickle)
    return build(imported, cfg, seed=seed)


def as_numpy(x) -> np.ndarray:
    return np.asarray(x, np.float32)
