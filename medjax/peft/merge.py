"""Fold LoRA updates into the base kernels: a plain model (no PEFT modules) that computes the same function.

Per adapted projection ``W' = W + (alpha / r) * A @ B``, reshaped to the kernel's layout: q/k/v kernels
(D, heads, head_dim), the out kernel (heads, head_dim, D), Dense kernels (in, out). ``linear`` and ``bitfit``
runs add no modules, so their parameters are already plain. Adapters and prompt tokens change the network's
structure and cannot be folded (an error says so; predict with the PEFT checkpoint directly).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from medjax.errors import ConfigError
from medjax.peft.methods import resolve_method


def _fold(node: dict, scale: float) -> dict:
    """One module's parameter dict with its ``lora_*`` pairs added into the kernels they adapt (float64 sums)."""
    out = {k: v for k, v in node.items() if not k.startswith("lora_")}
    pairs = [("lora_a", "lora_b", "kernel")] + [(f"lora_{t}_a", f"lora_{t}_b", f"{t}_kernel")
                                                 for t in ("q", "k", "v", "out")]
    for a, b, kernel in pairs:
        if a in node:
            w = np.asarray(node[kernel])
            delta = np.asarray(node[a], np.float64) @ np.asarray(node[b], np.float64) * scale
            out[kernel] = (w.astype(np.float64) + delta.reshape(w.shape)).astype(w.dtype)
    return out


def merge_lora(params: dict, ft) -> dict:
    """Host parameters of a ``finetune.method=lora`` model (nested dict of arrays) -> the parameters of the same
    model without LoRA (every ``lora_*`` leaf folded into its kernel). ``linear``/``bitfit``/``full`` parameters
    come back unchanged. ConfigError for adapter/prompt runs."""
    method = resolve_method(ft)
    if method in ("adapter", "prompt"):
        raise ConfigError(f"finetune.method={method}: {method}s change the network and cannot be merged into the "
                          "base weights; predict with the run's checkpoint (`medjax predict --checkpoint WORKDIR`)")
    scale = float(ft.lora_alpha) / float(ft.lora_rank)

    def walk(node):
        if not isinstance(node, dict):
            return node
        folded = _fold(node, scale) if any(str(k).startswith("lora_") for k in node) else node
        return {k: walk(v) for k, v in folded.items()}

    return walk(params)


def merged_config(cfg):
    """The config of the merged model: no PEFT modules and no ``init_from`` (the checkpoint is self-contained,
    every parameter saved): ``finetune.method=full``, or ``linear`` for a linear probe (whose classifier keeps
    its parameter-free feature normalisation)."""
    method = "linear" if resolve_method(cfg.finetune) == "linear" else "full"
    ft = dataclasses.replace(cfg.finetune, method=method, mode="full", init_from="")
    return dataclasses.replace(cfg, finetune=ft)


def merge_checkpoint(workdir, out, *, step: int | None = None) -> dict:
    """Write ``OUT/checkpoints/<step>``: the fine-tuned model of ``workdir`` with LoRA folded in, as a plain
    checkpoint (``params`` and ``model_state``; no optimizer state) that ``medjax predict`` reads like any other.

    Returns a summary: ``checkpoint``, ``step``, ``method``, ``num_params``, ``params_digest``, ``merged_from``.
    """
    import jax

    from medjax.config.overrides import to_dict
    from medjax.finetune.predict_io import load_finetuned
    from medjax.training.checkpoint import Checkpointer
    from medjax.training.digest import count_params, params_digest
    from pathlib import Path

    source = Path(workdir) if step is None else Path(workdir) / "checkpoints" / str(step)
    cfg, _, params, model_state, saved_step = load_finetuned(source)
    merged = merge_lora(jax.tree.map(np.asarray, jax.device_get(params)), cfg.finetune)
    plain = merged_config(cfg)
    state = {"params": merged}
    if jax.tree.leaves(model_state):
        state["model_state"] = jax.tree.map(np.asarray, jax.device_get(model_state))
    meta = {"config": to_dict(plain), "task": cfg.task, "step": int(saved_step),
            "merged_from": {"checkpoint": str(source), "method": resolve_method(cfg.finetune)}}
    with Checkpointer(out, keep=1) as ck:
        ck.save(int(saved_step), state, meta=meta, force=True)
        ck.wait()
        directory = ck.directory
    return {"checkpoint": str(directory / str(saved_step)), "step": int(saved_step),
            "method": meta["merged_from"]["method"], "num_params": count_params(merged),
            "params_digest": params_digest(merged), "merged_from": str(source)}
