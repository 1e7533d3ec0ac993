"""Per-axis broadcasting (medjax.config.dims), and that loading a config stays free of jax and flax."""

import json
import subprocess
import sys

import numpy as np
import pytest

from medjax.config.dims import broadcast, broadcast_size
from medjax.errors import ConfigError


def test_broadcast_scalars_one_and_n_entries():
    assert broadcast(1.5, 3) == (1.5, 1.5, 1.5)
    assert broadcast(np.float64(2.0), 2) == (2.0, 2.0)
    assert broadcast((4,), 3) == (4, 4, 4)
    assert broadcast([1, 2, 3], 3) == (1, 2, 3)
    assert broadcast(np.array([5, 6]), 2) == (5, 6)
    with pytest.raises(ConfigError, match=r"data\.crop_size=\(1, 2\): give 1 value or 3"):
        broadcast((1, 2), 3, "data.crop_size")
    with pytest.raises(ValueError):  # ConfigError is a ValueError for callers that catch those
        broadcast((), 2)


def test_broadcast_size_ints_and_positive():
    assert broadcast_size(16, 3) == (16, 16, 16)
    assert broadcast_size((np.int64(8), 4.0), 2) == (8, 4)
    with pytest.raises(ConfigError, match="input_size=.*positive"):
        broadcast_size((0,), 2)


def _modules_after(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code + "\nimport json, sys\n"
                          "print(json.dumps({m: m in sys.modules for m in ('jax', 'flax', 'optax', 'orbax')}))"],
                         capture_output=True, text=True, check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_loading_a_preset_imports_neither_jax_nor_flax():
    code = ("import medjax.config as c\n"
            "cfg = c.load_config('demo', ['model.variant=S/16'])\n"
            "assert cfg.model.variant == 'S/16'\n"
            "try:\n"
            "    c.load_config('demo', ['model.variant=Q/16'])\n"
            "except c.ConfigError as e:\n"
            "    assert 'model.variant' in str(e)\n"
            "else:\n"
            "    raise SystemExit('a bad variant was accepted')\n")
    assert _modules_after(code) == {"jax": False, "flax": False, "optax": False, "orbax": False}
    # the probe itself can see those modules: importing the models package does pull in flax
    assert _modules_after("import medjax.models")["flax"] is True
