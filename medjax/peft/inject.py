"""Add a PEFT method's modules to a task model (one entry point for every method)."""

from __future__ import annotations

from flax import nnx

from medjax.peft.methods import check_method

# PEFT parameters draw from their own seed offset, so adding them never changes the base model's initialisation
_SEED_OFFSET = 7919


def apply_peft(model: nnx.Module, ft, seed: int = 0) -> nnx.Module:
    """``model`` (with a ViT at ``.encoder``) with the modules of ``finetune.method`` added in place.

    ``full``, ``linear`` and ``bitfit`` add nothing (they only choose what trains, :mod:`medjax.peft.methods`);
    ``lora`` wraps the chosen projections (:mod:`medjax.peft.lora`), ``adapter`` the blocks' MLPs
    (:mod:`medjax.peft.adapters`) and ``prompt`` adds prompt tokens (:mod:`medjax.peft.encoder`). The base
    parameters keep their paths and values; every added module is the identity at step 0 except prompts.
    """
    from medjax.peft.adapters import inject_adapters
    from medjax.peft.encoder import PeftViT
    from medjax.peft.lora import inject_lora

    method = check_method(ft)
    if method not in ("lora", "adapter", "prompt"):
        return model
    rngs = nnx.Rngs(params=int(seed) + _SEED_OFFSET, dropout=int(seed) + _SEED_OFFSET + 1)
    encoder = model.encoder
    if method == "lora":
        inject_lora(encoder, targets=ft.lora_targets, rank=ft.lora_rank, alpha=ft.lora_alpha,
                    dropout=ft.lora_dropout, rngs=rngs)
    elif method == "adapter":
        inject_adapters(encoder, dim=ft.adapter_dim, mode=ft.adapter_mode, rngs=rngs)
    model.encoder = PeftViT(encoder, prompt_tokens=ft.prompt_tokens if method == "prompt" else 0,
                            prompt_deep=bool(ft.prompt_deep), rngs=rngs)
    return model
