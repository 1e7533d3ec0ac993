"""Running a medjax MAE on a given mask, to compare with PyTorch MAEs (which take ``noise`` or return indices)."""

from __future__ import annotations

import numpy as np


def masking_from_noise(noise, mask_ratio: float):
    """The :class:`medjax.models.Masking` that Hugging Face ViTMAE draws from ``noise`` (B, L): argsort, keep the
    first ``int(L * (1 - mask_ratio))`` (HF truncates; medjax's own masking rounds)."""
    from medjax.models.masking import Masking

    noise = np.asarray(noise)
    keep = int(noise.shape[1] * (1 - mask_ratio))
    return masking_from_keep(np.argsort(noise, axis=1, kind="stable")[:, :keep], noise.shape[1])


def masking_from_keep(ids_keep, num_patches: int):
    """The :class:`medjax.models.Masking` with visible patches ``ids_keep`` (B, K), in that order (MONAI's MAE
    returns them as ``selected_indices``)."""
    import jax.numpy as jnp

    from medjax.models.masking import Masking

    ids_keep = np.asarray(ids_keep, np.int64)
    b, k = ids_keep.shape
    shuffle = np.zeros((b, num_patches), np.int64)
    mask = np.ones((b, num_patches), np.float32)
    for i in range(b):
        rest = np.setdiff1d(np.arange(num_patches), ids_keep[i], assume_unique=False)
        shuffle[i] = np.concatenate([ids_keep[i], rest])
        mask[i, ids_keep[i]] = 0.0
    restore = np.argsort(shuffle, axis=1)
    return Masking(ids_keep=jnp.asarray(ids_keep, jnp.int32), ids_restore=jnp.asarray(restore, jnp.int32),
                   mask=jnp.asarray(mask))


def mae_forward(model, images, masking):
    """``(loss, pred, target)`` of medjax ``model`` (an MAE) on images (B, *S, C) with ``masking``."""
    from medjax.models.masking import masked_mse

    latent = model.encoder(images, visible_ids=masking.ids_keep)
    pred = model.decode(latent, masking.ids_restore)
    target = model.target(images)
    return masked_mse(pred, target, masking.mask), pred, target
