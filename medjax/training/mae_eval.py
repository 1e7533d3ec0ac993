"""Pretraining curves a researcher reads: the MAE loss on held-out volumes, and a frozen-feature probe, every N steps.

- ``train.eval_every`` > 0 with ``data.val_dir`` (a folder, MSD folder or manifest of volumes that pretraining
  never trains on): :class:`HeldOutLoss` draws a fixed set of ``train.eval_samples`` crops from those volumes once
  (preprocessed like the training data, seeded, no augmentation) and a fixed mask; every ``eval_every`` steps
  (and at the end) the MAE loss of the current parameters on them is logged as ``val_loss``. Same crops and
  masks every time, so the curve moves only with the parameters.
- ``train.probe_every`` > 0 with ``train.probe_config``: the linear probe of the current encoder
  (:class:`medjax.finetune.probe_callback.ProbeCallback`, handed to :func:`~medjax.training.pretraining.pretrain`
  by the ``medjax pretrain`` command, since ``training`` does not import ``finetune``).

Both run only at their steps (the loss is one device read per evaluation, after that step's metrics were read)
and need a single process: with several processes they are refused with a ConfigError.
"""

from __future__ import annotations

import numpy as np

from medjax.errors import ConfigError, DataError


def check_eval_config(cfg) -> None:
    """ConfigError naming the key for unusable evaluation settings."""
    import jax

    t = cfg.train
    if t.eval_every < 0 or t.probe_every < 0:
        raise ConfigError(f"train.eval_every={t.eval_every} / train.probe_every={t.probe_every}: use 0 (off) or a "
                          "positive number of steps")
    if t.eval_every and not cfg.data.val_dir:
        raise ConfigError("train.eval_every > 0 needs data.val_dir: a folder or manifest of held-out volumes that "
                          "data.dir does not contain")
    if t.probe_every and not t.probe_config:
        raise ConfigError("train.probe_every > 0 needs train.probe_config: a classification config (e.g. demo_cls "
                          "or a .json file) naming the labelled volumes to probe on")
    if (t.eval_every or t.probe_every) and jax.process_count() > 1:
        raise ConfigError("train.eval_every / train.probe_every run in a single process for now; set them to 0 "
                          "for multi-process pretraining and probe the checkpoints with `medjax probe`")
    if t.eval_every and t.eval_samples < 1:
        raise ConfigError(f"train.eval_samples={t.eval_samples}: at least one held-out crop is needed")


def fixed_crops(data_cfg, n: int, seed: int, records: list[dict] | None = None) -> np.ndarray:
    """``n`` crops ``(n, *crop, C)`` float32 from the volumes of ``data_cfg.val_dir`` (or from ``records``, e.g. a
    federated site's held-out records): each volume preprocessed as in training, ``samples_per_volume`` crops
    drawn per volume with ``np.random.default_rng([seed, i])`` and no augmentation, volumes visited in turn until
    ``n`` crops are drawn."""
    import dataclasses

    from medjax.data.pipeline import read_sample
    from medjax.data.sources import load_records
    from medjax.data.transforms.recipes import preprocess, random_crops

    if records is None:
        records = load_records(data_cfg.val_dir, split=data_cfg.split)
    if not records:
        raise DataError(data_cfg.val_dir or data_cfg.dir, "no held-out volumes to score the MAE loss on; point "
                        "data.val_dir at held-out volumes (or hold some out with data.holdout_last)")
    cfg = dataclasses.replace(data_cfg, augment=False)
    prepared = [preprocess(read_sample({"id": r["id"], "image": r["image"]}, mmap=False), cfg) for r in records]
    crops, rnd = [], 0
    while len(crops) < n:
        for i, s in enumerate(prepared):
            rng = np.random.default_rng([seed, i, rnd])
            crops += [c["image"] for c in random_crops({"image": s["image"], "id": s.get("id")}, cfg, rng)]
        rnd += 1
    return np.stack(crops[:n]).astype(np.float32)


class HeldOutLoss:
    """The MAE loss on fixed held-out crops (see module doc); ``__call__(state) -> float``, or
    :meth:`of_params` for bare parameters. ``records``: score these volumes instead of ``data.val_dir``'s."""

    def __init__(self, cfg, spec, records: list[dict] | None = None):
        import jax

        self.images = fixed_crops(cfg.data, cfg.train.eval_samples, cfg.train.seed, records)
        self.batch = max(1, min(cfg.train.batch_size, len(self.images)))
        pad = (-len(self.images)) % self.batch
        self.valid = len(self.images)
        if pad:
            self.images = np.concatenate([self.images, np.zeros((pad, *self.images.shape[1:]), np.float32)])
        model_def = spec.model_def
        key = jax.random.fold_in(jax.random.key(cfg.train.seed), 0x5EED)

        def batch_loss(params, model_state, images, i):
            model = model_def.merge(params, model_state)
            loss, _ = model(images, mask_key=jax.random.fold_in(key, i), deterministic=True)
            return loss

        self._fn = jax.jit(batch_loss)
        self._mesh, self._rules = spec.mesh, spec.rules

    def __call__(self, state) -> float:
        """Mean MAE loss over the held-out crops (each batch's loss weighted by its real crops)."""
        return self.of_params(state.params, state.model_state)

    def of_params(self, params, model_state) -> float:
        """:meth:`__call__` for a parameter and model-state tree of the spec's model."""
        import jax

        from medjax.parallel.rules import use_mesh

        losses, weights = [], []
        with use_mesh(self._mesh, self._rules):
            for i in range(0, len(self.images), self.batch):
                losses.append(self._fn(params, model_state, self.images[i:i + self.batch], i))
                weights.append(min(self.batch, self.valid - i))
        vals = np.asarray(jax.device_get(losses), np.float64)  # one read for all batches
        return float((vals * np.asarray(weights)).sum() / sum(weights))
