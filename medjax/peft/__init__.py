"""Parameter-efficient fine-tuning: which parameters train (one rule per method), LoRA, bottleneck adapters,
BitFit, prompt tokens, small checkpoints over a base, and merging LoRA back into the base weights."""

from medjax.peft.methods import (METHODS, check_method, is_added, is_trainable, nnx_filter, resolve_method,
                                 trainable_mask)

__all__ = ["METHODS", "apply_peft", "check_method", "is_added", "is_trainable", "nnx_filter", "resolve_method",
           "trainable_mask"]


def __getattr__(name):
    if name == "apply_peft":
        from medjax.peft.inject import apply_peft

        return apply_peft
    raise AttributeError(f"module 'medjax.peft' has no attribute {name!r}")
