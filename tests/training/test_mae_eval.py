"""Pretraining curves: the held-out MAE loss (fixed crops and masks) and the probe callback, logged at their steps."""

import dataclasses
import json

import pytest

from medjax.config.schema import Config, DataConfig, ModelConfig, TrainConfig
from medjax.errors import ConfigError
from medjax.training.logging import read_metrics
from tests.finetune.probe_data import cube_data, probe_cfg  # noqa: F401  (module-scoped fixture)


def _mae_cfg(root, **train) -> Config:
    return Config(
        name="tiny_mae_eval", task="mae",
        data=DataConfig(dir=str(root / "data.json"), val_dir=str(root / "data.json"), spatial_dims=3,
                        crop_size=(8,), spacing=(), intensity="none", crop_foreground=False, augment=False,
                        samples_per_volume=1, workers=0),
        model=ModelConfig(variant="Mu/4", decoder_width=16, decoder_depth=1, decoder_heads=2),
        train=TrainConfig(**{"steps": 4, "batch_size": 2, "warmup_steps": 0, "log_every": 1, "eval_every": 2,
                             "eval_samples": 3, **train}),
    )


def test_eval_settings_are_checked():
    from medjax.training.mae_eval import check_eval_config

    cfg = Config(train=TrainConfig(eval_every=5))
    with pytest.raises(ConfigError, match="data.val_dir"):
        check_eval_config(cfg)
    with pytest.raises(ConfigError, match="train.probe_config"):
        check_eval_config(Config(train=TrainConfig(probe_every=5)))


def test_pretraining_logs_val_loss_and_probe_at_their_steps(cube_data, tmp_path):  # noqa: F811
    from medjax.finetune.probe_callback import ProbeCallback
    from medjax.training.mae_eval import fixed_crops
    from medjax.training.pretraining import pretrain

    pcfg = tmp_path / "probe.json"
    from medjax.config.overrides import to_dict

    pcfg.write_text(json.dumps(to_dict(probe_cfg(cube_data))))
    cfg = _mae_cfg(cube_data, probe_every=4, probe_config=str(pcfg))
    crops = fixed_crops(cfg.data, 3, 0)
    assert crops.shape == (3, 8, 8, 8, 1) and (crops == fixed_crops(cfg.data, 3, 0)).all()  # the same crops
    summary = pretrain(cfg, tmp_path / "run", progress=False, probe=ProbeCallback(cfg))
    assert summary["step"] == 4
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    evals = [r for r in records if "val_loss" in r or "probe_window_auroc" in r]
    assert [r["step"] for r in evals] == [2, 4] and all(r["val_loss"] > 0 for r in evals)
    assert "probe_window_auroc" not in evals[0] and 0.0 <= evals[1]["probe_window_auroc"] <= 1.0
    assert "loss" not in evals[0] and [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]


def test_held_out_loss_is_deterministic_for_the_same_parameters(cube_data):  # noqa: F811
    from medjax.training.mae_eval import HeldOutLoss
    from medjax.training.state import train_state_spec

    cfg = _mae_cfg(cube_data)
    spec = train_state_spec(cfg)
    state = spec.init()
    loss = HeldOutLoss(cfg, spec)
    assert loss.images.shape == (4, 8, 8, 8, 1) and loss.valid == 3  # 3 crops padded to whole batches of 2
    first = loss(state)
    assert first > 0 and loss(state) == first
