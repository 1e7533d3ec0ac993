"""The architecture of an imported network, format-neutral, and its medjax configuration.

:class:`Arch` holds what the weights alone do not say (input size, LayerNorm epsilon, position-embedding kind)
plus what they do (sizes). :func:`model_config` turns it into a :class:`medjax.config.schema.ModelConfig`;
:func:`arch_from_config` reads a medjax run's config back (for export).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from medjax.interop.files import WeightsError


@dataclass(frozen=True)
class Decoder:
    width: int  # decoder token width
    depth: int  # decoder blocks
    heads: int  # decoder attention heads
    mlp_dim: int  # decoder MLP hidden width


@dataclass(frozen=True)
class Arch:
    spatial_dims: int  # 2 or 3
    input_size: tuple[int, ...]  # pixels/voxels per spatial dim
    patch: tuple[int, ...]  # patch size per spatial dim
    in_channels: int
    width: int
    depth: int
    heads: int
    mlp_dim: int
    cls_token: bool
    pos_embed: str = "learned"  # "learned" or "sincos" (a fixed table in the layout sincos_axes)
    sincos_axes: tuple[int, ...] = ()
    norm_eps: float = 1e-6
    qkv_bias: bool = True  # False: the source has no q/k/v biases (imported as zeros)
    decoder: Decoder | None = None
    mask_ratio: float = 0.75
    norm_pix_loss: bool = True
    norm_pix_ddof: int = 0

    @property
    def grid(self) -> tuple[int, ...]:
        return tuple(s // p for s, p in zip(self.input_size, self.patch))

    def replace(self, **changes) -> Arch:
        return dataclasses.replace(self, **changes)


def variant_string(arch: Arch) -> str:
    """A ``model.variant`` string that decodes to exactly these sizes (``B/16:width=..,depth=..,...``)."""
    patch = "x".join(str(p) for p in arch.patch) if len(set(arch.patch)) > 1 else str(arch.patch[0])
    return f"B/{patch}:width={arch.width},depth={arch.depth},heads={arch.heads},mlp_dim={arch.mlp_dim}"


def model_config(arch: Arch, base=None):
    """``ModelConfig`` (fields of ``base`` kept where the weights do not decide) for ``arch``."""
    from medjax.config.schema import ModelConfig

    base = base or ModelConfig()
    changes = dict(variant=variant_string(arch), in_channels=arch.in_channels, pos_embed=arch.pos_embed,
                   cls_token=arch.cls_token, norm_eps=float(arch.norm_eps), sincos_axes=tuple(arch.sincos_axes),
                   mask_ratio=float(arch.mask_ratio), norm_pix_loss=bool(arch.norm_pix_loss),
                   norm_pix_ddof=int(arch.norm_pix_ddof))
    if arch.decoder is not None:
        d = arch.decoder
        changes.update(decoder_width=d.width, decoder_depth=d.depth, decoder_heads=d.heads,
                       decoder_mlp_dim=0 if d.mlp_dim == 4 * d.width else d.mlp_dim)
    return dataclasses.replace(base, **changes)


def run_config(arch: Arch, *, name: str, base=None):
    """A full medjax ``Config`` (task "mae") whose data crop is the import's input size."""
    from medjax.config.schema import Config, DataConfig

    base = base or Config()
    data = dataclasses.replace(base.data if base is not None else DataConfig(), spatial_dims=arch.spatial_dims,
                               crop_size=tuple(arch.input_size))
    return dataclasses.replace(base, name=name, task="mae", data=data, model=model_config(arch, base.model))


def arch_from_config(cfg) -> Arch:
    """:class:`Arch` of a medjax ``Config`` (the model it builds; decoder included)."""
    from medjax.models import decode_variant
    from medjax.models.vit import broadcast_size

    n = int(cfg.data.spatial_dims)
    m = cfg.model
    size = decode_variant(m.variant, n)
    dec = Decoder(int(m.decoder_width), int(m.decoder_depth), int(m.decoder_heads),
                  int(getattr(m, "decoder_mlp_dim", 0)) or 4 * int(m.decoder_width))
    return Arch(spatial_dims=n, input_size=broadcast_size(tuple(cfg.data.crop_size), n), patch=tuple(size.patch),
                in_channels=int(m.in_channels), width=size.width, depth=size.depth, heads=size.heads,
                mlp_dim=size.mlp_dim, cls_token=bool(m.cls_token), pos_embed=m.pos_embed,
                sincos_axes=tuple(getattr(m, "sincos_axes", ())), norm_eps=float(getattr(m, "norm_eps", 1e-6)),
                decoder=dec, mask_ratio=float(m.mask_ratio), norm_pix_loss=bool(m.norm_pix_loss),
                norm_pix_ddof=int(getattr(m, "norm_pix_ddof", 0)))


def check(cond: bool, message: str) -> None:
    """Raise :class:`WeightsError` with ``message`` unless ``cond``."""
    if not cond:
        raise WeightsError(message)
