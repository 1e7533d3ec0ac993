"""medjax.training: train state, pure steps, optimizer, checkpoints, the pretraining loop and its logs.

Typical use::

    from medjax.config import load_config
    from medjax.training import pretrain
    summary = pretrain(load_config("demo"), "runs/demo")
"""

from medjax.training.optim import decay_mask, layerwise_lr_decay, make_optimizer, make_schedule, scale_by_tree
from medjax.training.state import (
    ModelDef,
    StateSpec,
    TrainState,
    build_model,
    create_train_state,
    state_from_dict,
    state_to_dict,
    train_state_spec,
)
from medjax.training.steps import make_train_step, mae_loss, train_step_fn


def pretrain(cfg, workdir, *, restart: bool = False, progress: bool = True) -> dict:
    """MAE pretraining (see :func:`medjax.training.pretraining.pretrain`)."""
    from medjax.training.pretraining import pretrain as _pretrain

    return _pretrain(cfg, workdir, restart=restart, progress=progress)


__all__ = [
    "ModelDef", "StateSpec", "TrainState", "build_model", "create_train_state", "decay_mask",
    "layerwise_lr_decay", "mae_loss", "make_optimizer", "make_schedule", "make_train_step", "pretrain",
    "scale_by_tree", "state_from_dict", "state_to_dict", "train_state_spec", "train_step_fn",
]
