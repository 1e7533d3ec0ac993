"""Several task adapters over one base encoder held once in memory.

A PEFT run's checkpoint stores only what its method trains (task head, LoRA factors, adapters, prompts, or the
biases for BitFit) plus the base's ``params_digest`` (:mod:`medjax.peft.checkpoint`). :class:`AdapterBank` reads
the base encoder from its MAE checkpoint **once**, then for each adapter reads only that adapter's trainable
arrays and assembles its model over the same base arrays (shared, never copied or changed), after checking that
the base's digest is the one the adapter was trained on::

    bank = AdapterBank("runs/mae")
    bank.add("tissue", "runs/tissue_lora")       # a `medjax finetune` workdir with finetune.method=lora
    bank.add("lesion", "runs/lesion_adapter")
    cfg, model_def, params, model_state = bank.model("lesion")

``bank.base_loads`` counts the reads of the base checkpoint (1 however many adapters are added).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from medjax.errors import CheckpointError


@dataclasses.dataclass
class Adapter:
    """One task adapter: its config, ``model_def``, the trainable ``params`` it saved, ``model_state``, the
    ``method``, checkpoint ``step``, ``source`` (the checkpoint folder) and ``trainable_params`` (count)."""

    cfg: object
    model_def: object
    trainable: dict
    model_state: dict
    method: str
    step: int
    source: str
    trainable_params: int


def _base_mask(params: dict):
    """True for the encoder's base parameters (what an MAE checkpoint provides), False elsewhere."""
    import jax

    from medjax.peft.methods import _names, is_added

    return jax.tree_util.tree_map_with_path(lambda p, _: _names(p)[:1] == ("encoder",) and not is_added(p), params)


class AdapterBank:
    """Task adapters over one base encoder (an MAE workdir or checkpoint folder, read once).

    Attributes: ``base`` (absolute path of the base), ``encoder`` (the base encoder's parameters, nested dict of
    ``jax.Array``; None until the first adapter is added), ``adapters`` (name -> :class:`Adapter`, in the order
    added) and ``base_loads`` (how many times the base checkpoint was read).
    """

    def __init__(self, base):
        self.base = os.path.abspath(os.fspath(base))
        self.encoder: dict | None = None
        self.adapters: dict[str, Adapter] = {}
        self.base_loads = 0
        self._base_where = ""

    def _load_encoder(self, cfg) -> dict:
        """The base encoder, read from ``self.base`` the first time (in the layout of ``cfg``'s model)."""
        if self.encoder is None:
            from medjax.finetune.tasks import build_task_model
            from medjax.peft.checkpoint import load_base
            from medjax.peft.methods import select
            from medjax.training.state import abstract_model

            base_cfg = dataclasses.replace(cfg, finetune=dataclasses.replace(cfg.finetune, init_from=self.base))
            # the layout only (nothing initialised: every kept array is read from the base checkpoint)
            full, report = load_base(base_cfg, abstract_model(lambda: build_task_model(base_cfg))[1])
            self.encoder = select(full, _base_mask(full), True)["encoder"]
            self.base_loads += 1
            self._base_where = f"{report['source']} step {report['step']}" if report else self.base
        return self.encoder

    def add(self, name: str, checkpoint) -> Adapter:
        """Read the adapter saved by a PEFT fine-tuning run (workdir or ``WORKDIR/checkpoints/<step>``) as ``name``.

        Only the adapter's trainable arrays (and model state) are read. CheckpointError when the checkpoint is
        not a PEFT run's (it holds every parameter: load it with ``medjax predict``), when its encoder does not
        have the base's layout, or when the base's digest differs from the one it was trained on (both named).
        """
        import jax

        from medjax.config.overrides import from_dict
        from medjax.config.schema import Config
        from medjax.finetune.tasks import TASKS, build_task_model
        from medjax.peft.checkpoint import check_base, trainable_only
        from medjax.peft.methods import combine, resolve_method, select, trainable_mask
        from medjax.training.digest import count_params, params_digest
        from medjax.training.restore import open_checkpoint, restore_arrays
        from medjax.training.state import abstract_model

        saved = open_checkpoint(checkpoint)
        meta = saved.meta or {}
        if not meta.get("config"):
            raise CheckpointError(f"{saved.where}: no saved config; pass a `medjax finetune` workdir")
        cfg = from_dict(Config, meta["config"])
        if cfg.task not in TASKS:
            raise CheckpointError(f"{saved.where}: task={cfg.task!r} is not a fine-tuned model")
        if not meta.get("peft"):
            raise CheckpointError(f"{saved.where}: finetune.method={resolve_method(cfg.finetune)} checkpoint holds "
                                  "every parameter, not an adapter over a base; use it on its own "
                                  "(`medjax predict --checkpoint`), or fine-tune with finetune.method=lora, "
                                  "adapter, prompt, bitfit or linear")
        method = resolve_method(cfg.finetune)
        model_def, abs_params, abs_ms = abstract_model(lambda: build_task_model(cfg))
        encoder = self._load_encoder(cfg)
        want = select(abs_params, _base_mask(abs_params), True)["encoder"]
        same = jax.tree.structure(want) == jax.tree.structure(encoder) and all(
            tuple(a.shape) == tuple(b.shape) for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(encoder)))
        if not same:
            raise CheckpointError(f"{saved.where}: its encoder ({cfg.model.variant}, crop {cfg.data.crop_size}) does "
                                  f"not have the layout of the base loaded from {self.base}; every adapter of one "
                                  "bank needs the same encoder variant and input grid")
        base_params = {"encoder": encoder}
        frozen = select(base_params, trainable_mask(method, base_params), False)
        check_base(meta["peft"], {"method": method, "base": self.base, "base_digest": params_digest(frozen)},
                   saved.where)
        target = {"params": trainable_only(cfg, abs_params)}
        if abs_ms and saved.keys("model_state"):
            target["model_state"] = abs_ms
        out = restore_arrays(saved, target, exact=True)
        adapter = Adapter(cfg=cfg, model_def=model_def, trainable=out["params"],
                          model_state=out.get("model_state", abs_ms or {}), method=method, step=int(saved.step),
                          source=str(saved.where), trainable_params=count_params(out["params"]))
        # fail now, not at the first prediction, if the pieces do not make the model's tree
        if jax.tree.structure(combine(adapter.trainable, frozen)) != jax.tree.structure(abs_params):
            raise CheckpointError(f"{saved.where}: its trainable parameters and the base do not make up the "
                                  f"{cfg.task} model of its config")
        self.adapters[name] = adapter
        return adapter

    def model(self, name: str):
        """``(cfg, model_def, params, model_state)`` of adapter ``name``: its trainable arrays combined with the
        bank's base encoder arrays (the same objects for every adapter; nothing is copied)."""
        from medjax.peft.methods import combine, select, trainable_mask

        if name not in self.adapters:
            raise KeyError(f"no adapter {name!r}; added: {', '.join(self.adapters) or 'none'}")
        a = self.adapters[name]
        base_params = {"encoder": self.encoder}
        frozen = select(base_params, trainable_mask(a.method, base_params), False)
        return a.cfg, a.model_def, combine(a.trainable, frozen), a.model_state

    def __repr__(self) -> str:
        names = ", ".join(f"{k} ({a.method}, {a.trainable_params:,} params)" for k, a in self.adapters.items())
        return f"AdapterBank(base {Path(self.base).name}: {names or 'no adapters'})"
