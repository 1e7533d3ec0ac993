"""PyTorch peers for ``medjax bench train --peer``: the same MAE training step in Hugging Face or MONAI.

- ``hf``: ``transformers.ViTMAEForPreTraining`` (2D), its own masking and norm-pix loss on masked patches.
- ``monai``: ``monai.networks.nets.MaskedAutoEncoderViT`` (2D or 3D, channels first); it returns predictions
  and the mask, and the norm-pix loss on masked patches is computed here as the MAE paper (and medjax) defines it.

Both get the config's encoder width/depth/heads/MLP width, decoder width/depth/heads (MLP 4x), patch, mask
ratio, in_channels, qkv bias, AdamW (lr, betas, weight decay) and gradient-norm clipping, on random input of
the crop size (channels first). ``dtype="bfloat16"`` runs the forward pass under ``torch.autocast`` with float32
master weights (as medjax does). torch, transformers and MONAI are imported only here, only when asked for;
they stay out of medjax's main install (the ``interop`` extra).
"""

from __future__ import annotations

import math
import time

import numpy as np

PEERS = ("hf", "monai")


class PeerUnavailable(RuntimeError):
    """The peer's library is not importable (the message says what to install)."""


def _torch():
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the install
        raise PeerUnavailable(f"torch is not importable ({e}); install medjax[interop] to compare") from None
    return torch


def _norm_pix_masked_mse(torch, pred, images, mask, patch):
    """MAE loss (norm-pix target, eps 1e-6) on masked patches; ``images`` (B, C, *S), ``pred`` (B, L, P)."""
    b, c = images.shape[:2]
    spatial = images.shape[2:]
    n = len(spatial)
    shape = [b, c]
    for s, p in zip(spatial, patch):
        shape += [s // p, p]
    x = images.reshape(shape)
    # (B, C, g1, p1, ..., gn, pn) -> (B, g1..gn, p1..pn, C)
    perm = [0] + [2 + 2 * i for i in range(n)] + [3 + 2 * i for i in range(n)] + [1]
    target = x.permute(perm).reshape(b, -1, math.prod(patch) * c)
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True, unbiased=False)
    target = (target - mean) / (var + 1e-6) ** 0.5
    per_patch = ((pred.float() - target) ** 2).mean(dim=-1)
    mask = mask.float()
    return (per_patch * mask).sum() / mask.sum()


def import_peer(peer: str) -> None:
    """Import the peer's library (raises :class:`PeerUnavailable` with what to install)."""
    _torch()
    try:
        if peer == "hf":
            import transformers  # noqa: F401
        else:
            import monai  # noqa: F401
    except ImportError as e:
        raise PeerUnavailable(f"{'transformers' if peer == 'hf' else 'monai'} is not importable ({e}); "
                              "install medjax[interop] to compare") from None


class TorchPeer:
    """One PyTorch MAE with AdamW on fixed random input; ``step()`` runs one optimizer step.

    Attributes: ``name`` ("hf" / "monai"), ``library`` (e.g. "transformers 5.0.0"), ``device`` ("cpu"/"cuda"),
    ``params`` (parameter count), ``batch``.
    """

    def __init__(self, peer: str, cfg, *, batch: int, compile: bool = False, seed: int = 0,
                 threads: int | None = None):
        from medjax.config.variants import decode_variant
        from medjax.training.state import broadcast_size

        if peer not in PEERS:
            raise ValueError(f"--peer {peer!r} is not supported; use one of {PEERS}")
        t_import = time.perf_counter()
        torch = _torch()
        import_peer(peer)
        self.import_s = time.perf_counter() - t_import  # not part of the peer's time to first step
        self.torch = torch
        if threads is not None:
            torch.set_num_threads(int(threads))
        self.name = peer
        self.batch = int(batch)
        dims = int(cfg.data.spatial_dims)
        size = decode_variant(cfg.model.variant, dims)
        crop = broadcast_size(cfg.data.crop_size, dims)
        m = cfg.model
        self.patch = tuple(size.patch)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.dtype = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[m.dtype]
        torch.manual_seed(seed)
        if peer == "hf":
            if dims != 2:
                raise ValueError(f"--peer hf runs Hugging Face ViTMAE, which is 2D; this config is {dims}D "
                                 "(use --peer monai)")
            if len(set(self.patch)) != 1 or len(set(crop)) != 1:
                raise ValueError(f"--peer hf needs a square patch and crop (got patch {self.patch}, crop {crop})")
            try:
                import transformers
                from transformers import ViTMAEConfig, ViTMAEForPreTraining
            except ImportError as e:
                raise PeerUnavailable(f"transformers is not importable ({e}); install medjax[interop]") from None
            hcfg = ViTMAEConfig(
                hidden_size=size.width, num_hidden_layers=size.depth, num_attention_heads=size.heads,
                intermediate_size=size.mlp_dim, image_size=crop[0], patch_size=self.patch[0],
                num_channels=int(m.in_channels), qkv_bias=True, decoder_hidden_size=int(m.decoder_width),
                decoder_num_hidden_layers=int(m.decoder_depth), decoder_num_attention_heads=int(m.decoder_heads),
                decoder_intermediate_size=4 * int(m.decoder_width), mask_ratio=float(m.mask_ratio),
                norm_pix_loss=bool(m.norm_pix_loss), layer_norm_eps=1e-6, hidden_act="gelu")
            self.model = ViTMAEForPreTraining(hcfg)
            self.library = f"transformers {transformers.__version__}"
        else:
            try:
                import monai
                from monai.networks.nets import MaskedAutoEncoderViT
            except ImportError as e:
                raise PeerUnavailable(f"monai is not importable ({e}); install medjax[interop]") from None
            # MONAI's sin-cos tables need widths divisible by 2 * dims (4 in 2D, 6 in 3D); tiny test widths
            # that are not fall back to learned tables (same FLOPs)
            def pos(width):
                return "sincos" if width % (2 * dims) == 0 else "learnable"

            self.model = MaskedAutoEncoderViT(
                in_channels=int(m.in_channels), img_size=crop, patch_size=self.patch, hidden_size=size.width,
                mlp_dim=size.mlp_dim, num_layers=size.depth, num_heads=size.heads, masking_ratio=float(m.mask_ratio),
                decoder_hidden_size=int(m.decoder_width), decoder_mlp_dim=4 * int(m.decoder_width),
                decoder_num_layers=int(m.decoder_depth), decoder_num_heads=int(m.decoder_heads),
                spatial_dims=dims, qkv_bias=True, pos_embed_type=pos(size.width),
                decoder_pos_embed_type=pos(int(m.decoder_width)))
            self.library = f"monai {monai.__version__}"
        if self.device == "cuda" and self.dtype is None:
            # float32 on a GPU: TF32 matmuls and convolutions, as XLA's default precision does for medjax
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.model.to(self.device).train()
        self.params = int(sum(p.numel() for p in self.model.parameters()))
        t = cfg.train
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=float(t.lr), betas=(float(t.b1), float(t.b2)),
                                     weight_decay=float(t.weight_decay))
        self.grad_clip = float(t.grad_clip)
        self.norm_pix = bool(m.norm_pix_loss)
        rng = np.random.default_rng(seed)
        images = rng.standard_normal((self.batch, int(m.in_channels), *crop), dtype=np.float32)
        self.images = torch.from_numpy(images).to(self.device)
        self.forward = self._loss
        if compile:
            self.forward = torch.compile(self._loss)

    def _loss(self, images):
        torch = self.torch
        if self.name == "hf":
            return self.model(pixel_values=images).loss
        pred, mask = self.model(images)
        if not self.norm_pix:
            raise ValueError("--peer monai times the norm-pix loss only; set model.norm_pix_loss=true")
        return _norm_pix_masked_mse(torch, pred, images, mask, self.patch)

    def step(self) -> float:
        """One optimizer step; returns the loss as a float only when asked to sync (see :meth:`run`)."""
        torch = self.torch
        self.opt.zero_grad(set_to_none=True)
        if self.dtype is not None:
            with torch.autocast(device_type=self.device, dtype=self.dtype):
                loss = self.forward(self.images)
        else:
            loss = self.forward(self.images)
        loss.backward()
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.opt.step()
        return loss

    def sync(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def first_step(self) -> tuple[float, float]:
        """The first step (compilation included); returns ``(seconds, loss)``."""
        t0 = time.perf_counter()
        loss = float(self.step().detach())
        self.sync()
        return time.perf_counter() - t0, loss

    def run(self, steps: int) -> tuple[float, float]:
        """``steps`` timed steps; returns ``(seconds, last loss)``."""
        t0 = time.perf_counter()
        loss = None
        for _ in range(steps):
            loss = self.step()
        self.sync()
        seconds = time.perf_counter() - t0
        return seconds, float(loss)
