"""Typed configs, presets and overrides."""

from __future__ import annotations

import importlib.util
import json
import os

from medjax.config.overrides import ConfigError, apply_overrides, from_dict, set_value, to_dict, to_json
from medjax.config.presets import available as available_presets
from medjax.config.presets import get_preset
from medjax.config.schema import CheckpointConfig, Config, DataConfig, MeshConfig, ModelConfig, TrainConfig, replace

__all__ = [
    "CheckpointConfig", "Config", "ConfigError", "DataConfig", "MeshConfig", "ModelConfig", "TrainConfig",
    "apply_overrides", "available_presets", "from_dict", "get_preset", "load_config", "replace", "set_value",
    "to_dict", "to_json",
]


def load_config(name_or_file: str, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a preset by name, a ``.py`` file defining ``get_config()``, or a ``.json`` config; then apply overrides.

    Raises :class:`ConfigError` naming the preset, file or key that is wrong.
    """
    if os.path.isfile(name_or_file):
        if name_or_file.endswith(".json"):
            with open(name_or_file) as f:
                try:
                    data = json.load(f)
                except json.JSONDecodeError as e:
                    raise ConfigError(f"{name_or_file}: not valid JSON ({e})") from None
            cfg = from_dict(Config, data)
        elif name_or_file.endswith(".py"):
            spec = importlib.util.spec_from_file_location("_medjax_user_config", name_or_file)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            if not hasattr(module, "get_config"):
                raise ConfigError(f"{name_or_file}: a config file must define get_config() returning a medjax Config")
            cfg = module.get_config()
        else:
            raise ConfigError(f"{name_or_file}: config files are .py (with get_config()) or .json")
    else:
        cfg = get_preset(name_or_file)
    cfg = apply_overrides(cfg, overrides)
    _check_variant(cfg)
    return cfg


def _check_variant(cfg: Config) -> None:
    """ConfigError naming ``model.variant`` when it does not decode (caught here, not when the model is built)."""
    from medjax.config.variants import decode_variant

    try:
        decode_variant(cfg.model.variant, cfg.data.spatial_dims)
    except ValueError as e:
        raise ConfigError(f"model.variant: {e}") from None
