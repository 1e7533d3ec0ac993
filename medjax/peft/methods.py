"""Which parameters a fine-tuning method trains: one path predicate per method, used everywhere.

Methods (``finetune.method``):

=========  ===================================================================================================
full       every parameter (with layer-wise LR decay over the encoder)
linear     the task head only; the encoder is frozen (``finetune.mode=linear`` is the older spelling)
lora       the task head plus low-rank updates ``lora_*`` on the chosen projections (:mod:`medjax.peft.lora`)
adapter    the task head plus bottleneck adapters ``adapter`` in every block (:mod:`medjax.peft.adapters`)
bitfit     the task head plus every bias and LayerNorm scale of the encoder
prompt     the task head plus learnable prompt tokens ``prompt`` of the encoder (:mod:`medjax.peft.prompts`)
=========  ===================================================================================================

"Task head" is every parameter outside the top-level ``encoder`` subtree (classifier, UNETR decoder, detection
head). A path is a tuple of keys (``("encoder", "blocks", 0, "attn", "q_kernel")``); :func:`is_trainable` is the
single rule; :func:`nnx_filter` hands it to flax (``nnx.state(model, filter)``) and :func:`trainable_mask` to optax.
This module imports neither jax nor flax at import time (config validation uses it).
"""

from __future__ import annotations

from medjax.errors import ConfigError

METHODS = ("full", "linear", "lora", "adapter", "bitfit", "prompt")
PEFT_METHODS = ("lora", "adapter", "prompt")  # methods that add parameters to the encoder
LORA_TARGETS = ("q", "k", "v", "out", "mlp")
ADAPTER_MODES = ("serial", "parallel")
# path components that name parameters added by a PEFT method (never present in a base checkpoint)
_ADDED = ("lora_", "adapter", "prompt")


def resolve_method(ft) -> str:
    """The method of a ``FinetuneConfig``: ``finetune.method``, with the older ``finetune.mode=linear`` read as
    ``method=linear``. ConfigError names the keys when they disagree or a value is unknown."""
    method = getattr(ft, "method", "full") or "full"
    mode = getattr(ft, "mode", "full")
    if method not in METHODS:
        raise ConfigError(f"finetune.method={method!r}: use one of {', '.join(METHODS)}")
    if mode not in ("full", "linear"):
        raise ConfigError(f"finetune.mode={mode!r}: use finetune.method (one of {', '.join(METHODS)}) instead")
    if mode == "linear":
        if method not in ("full", "linear"):
            raise ConfigError(f"finetune.mode=linear and finetune.method={method} disagree: finetune.mode is the older "
                              "key; drop it and set only finetune.method")
        return "linear"
    return method


def check_method(ft) -> str:
    """Validate the method's settings (ConfigError naming the key); returns the resolved method."""
    method = resolve_method(ft)
    if method == "lora":
        if int(ft.lora_rank) < 1:
            raise ConfigError(f"finetune.lora_rank={ft.lora_rank}: must be >= 1")
        if not float(ft.lora_alpha) > 0:
            raise ConfigError(f"finetune.lora_alpha={ft.lora_alpha}: must be > 0")
        if not 0.0 <= float(ft.lora_dropout) < 1.0:
            raise ConfigError(f"finetune.lora_dropout={ft.lora_dropout}: must be in [0, 1)")
        bad = [t for t in ft.lora_targets if t not in LORA_TARGETS]
        if bad or not ft.lora_targets:
            raise ConfigError(f"finetune.lora_targets={tuple(ft.lora_targets)}: choose one or more of {LORA_TARGETS}")
    if method == "adapter":
        if int(ft.adapter_dim) < 1:
            raise ConfigError(f"finetune.adapter_dim={ft.adapter_dim}: must be >= 1")
        if ft.adapter_mode not in ADAPTER_MODES:
            raise ConfigError(f"finetune.adapter_mode={ft.adapter_mode!r}: use one of {ADAPTER_MODES}")
    if method == "prompt" and int(ft.prompt_tokens) < 1:
        raise ConfigError(f"finetune.prompt_tokens={ft.prompt_tokens}: must be >= 1")
    return method


def _name(key) -> str:
    """A key-path entry as a string: jax DictKey/SequenceKey/GetAttrKey, or a plain str/int."""
    for attr in ("key", "idx", "name"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _names(path) -> tuple[str, ...]:
    names = tuple(_name(k) for k in path)
    return names[:-1] if names and names[-1] == "value" else names


def is_added(path) -> bool:
    """True for parameters a PEFT method added (``lora_*``, ``adapter``, ``prompt``): not in a base checkpoint."""
    return any(n.startswith(_ADDED) for n in _names(path))


def is_trainable(method: str, path) -> bool:
    """Whether ``method`` trains the parameter at ``path`` (tuple of keys; see module doc)."""
    names = _names(path)
    if method == "full":
        return True
    if not names or names[0] != "encoder":
        return True  # the task head always trains
    if method == "linear":
        return False
    if method == "bitfit":
        leaf = names[-1]
        return leaf == "bias" or leaf.endswith("_bias") or (leaf == "scale" and any("norm" in n for n in names))
    if method in PEFT_METHODS:
        return is_added(path)
    raise ConfigError(f"finetune.method={method!r}: use one of {', '.join(METHODS)}")


def nnx_filter(method: str):
    """``is_trainable`` as a flax NNX filter: ``nnx.state(model, nnx.All(nnx.Param, nnx_filter(m)))``."""
    return lambda path, value: is_trainable(method, path)


def trainable_mask(method: str, params):
    """Pytree of bools like ``params`` (nested dict): True where ``method`` trains the parameter."""
    import jax

    return jax.tree_util.tree_map_with_path(lambda p, _: is_trainable(method, p), params)


def select(params, mask, keep: bool = True) -> dict:
    """The nested dict of ``params`` leaves whose ``mask`` entry equals ``keep`` (empty branches dropped)."""
    if isinstance(params, dict):
        out = {}
        for k, v in params.items():
            sub = select(v, mask[k], keep)
            if not isinstance(sub, dict) or sub:
                out[k] = sub
        return out
    return params if bool(mask) == keep else {}


def combine(a: dict, b: dict) -> dict:
    """Union of two nested dicts with disjoint leaves (inverse of two :func:`select` calls)."""
    out = dict(a)
    for k, v in b.items():
        out[k] = combine(out[k], v) if k in out and isinstance(v, dict) else v
    return out
