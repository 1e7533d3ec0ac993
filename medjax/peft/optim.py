"""The optimizer of a fine-tuning method: optimizer state only for the parameters it trains.

Frozen parameters are labelled ``"freeze"`` in an ``optax.multi_transform`` (``optax.set_to_zero``, no state);
the trainable ones get the AdamW chain of :func:`medjax.training.optim.make_optimizer` over a masked tree, so the
Adam moments exist only for them and optimizer memory shrinks with the trainable share.
"""

from __future__ import annotations

import jax
import optax

from medjax.peft.methods import resolve_method, trainable_mask


def make_method_optimizer(cfg, abstract_params, schedule, *, num_layers: int) -> optax.GradientTransformation:
    """AdamW of ``cfg.train`` for ``finetune.method``: ``full`` with layer-wise LR decay over the encoder;
    every other method trains only :func:`medjax.peft.methods.is_trainable` parameters (no LR decay)."""
    from medjax.training.optim import layerwise_lr_decay, make_optimizer

    method = resolve_method(cfg.finetune)
    if method == "full":
        mult = layerwise_lr_decay(abstract_params, cfg.finetune.layer_decay, num_layers, root="encoder")
        return make_optimizer(cfg.train, lr_multipliers=mult, schedule=schedule)
    labels = jax.tree.map(lambda m: "train" if m else "freeze", trainable_mask(method, abstract_params))
    return optax.multi_transform({"train": make_optimizer(cfg.train, schedule=schedule),
                                  "freeze": optax.set_to_zero()}, labels)
