"""The probe as a pretraining callback (``train.probe_every`` with ``train.probe_config``): every N steps, the
linear probe of :mod:`medjax.finetune.probe` on the current encoder's frozen features, logged as
``probe_<level>_auroc`` / ``probe_<level>_accuracy`` (level ``window`` and ``volume``). The probe volumes are read,
preprocessed and tiled once, at start; each call embeds them with the current parameters and refits the probe.
"""

from __future__ import annotations

from medjax.errors import ConfigError


class ProbeCallback:
    """The linear probe of the current encoder on ``train.probe_config`` (see module doc)."""

    def __init__(self, cfg):
        from medjax.config import load_config
        from medjax.finetune.features import encoder_config
        from medjax.finetune.loop import split_records
        from medjax.finetune.probe import check_probe_config, prepare

        pcfg = load_config(cfg.train.probe_config)
        check_probe_config(pcfg)
        # the encoder is the pretraining model's: its model section, the probe's data and windows
        self.cfg = encoder_config(pcfg, {"config": {"model": _model_dict(cfg)}})
        if cfg.model.pos_embed == "learned" and tuple(self.cfg.data.crop_size) != tuple(cfg.data.crop_size):
            raise ConfigError("train.probe_every with model.pos_embed=learned needs the probe config's "
                              "data.crop_size equal to pretraining's; probe checkpoints with `medjax probe` instead")
        train, val = split_records(pcfg)
        self.train, self.val = prepare(self.cfg, train), prepare(self.cfg, val)

    def __call__(self, state) -> dict:
        """``{"probe_window_auroc": ..., "probe_volume_auroc": ..., ...}`` of the current parameters."""
        import jax

        from medjax.finetune.features import Encoder
        from medjax.finetune.probe import embed, probe_one

        enc = Encoder(name="checkpoint", source="live", seed=None, step=None, loss=None, cfg=self.cfg,
                      params=jax.device_get(state.params["encoder"]))
        train, test = embed(self.train, [enc], ("mean",)), embed(self.val, [enc], ("mean",))
        metrics = probe_one(0, train, test, "linear", max(2, self.cfg.finetune.num_classes), 20, "mean")
        return {f"probe_{level}_{k}": m[k] for level, m in metrics.items() for k in ("auroc", "accuracy")}


def _model_dict(cfg) -> dict:
    from medjax.config.overrides import to_dict

    return to_dict(cfg)["model"]
