"""Presets: small functions returning a :class:`~medjax.config.Config`.

Each preset module defines ``get_config() -> Config``. Look one up with :func:`get_preset` or load a config
by name or from a file with :func:`medjax.config.load_config`.
"""

from __future__ import annotations

import importlib
import pkgutil


def available() -> list[str]:
    """Names of the bundled presets."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def get_preset(name: str):
    """Return the config of preset ``name`` (e.g. ``"demo"``)."""
    from medjax.config.overrides import ConfigError

    if name not in available():
        raise ConfigError(f"unknown preset {name!r}; available presets: {', '.join(available())}")
    return importlib.import_module(f"{__name__}.{name}").get_config()
