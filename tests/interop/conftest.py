"""Shared helpers for weight round-trip tests: seeded random PyTorch weights saved as safetensors."""

from __future__ import annotations

import numpy as np
import pytest


def torch_or_skip():
    return pytest.importorskip("torch")


def randomise(module, seed: int = 0, *, skip=("position", "pos_embed", "decoder_pos"), scale: float = 0.1) -> None:
    """Overwrite every trainable tensor with seeded noise of std ``scale`` (biases and norms included), so each one
    matters. Base-size networks use ``scale=0.02`` (the usual ViT initialisation) to keep activations realistic."""
    torch = torch_or_skip()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if any(s in name for s in skip):
                continue
            if name.endswith("weight") and ("norm" in name or "layernorm" in name):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(scale * torch.randn(p.shape, generator=g))


def save_state(module, path) -> None:
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v.detach().cpu().numpy()) for k, v in module.state_dict().items()}, str(path))


def nhwc(x) -> np.ndarray:
    """(B, C, *S) torch tensor -> (B, *S, C) numpy."""
    a = x.detach().cpu().numpy()
    return np.moveaxis(a, 1, -1)
