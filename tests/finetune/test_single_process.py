"""Fine-tuning refuses to run under several processes, before it writes anything."""

from __future__ import annotations

import jax
import pytest

from medjax.errors import ConfigError
from medjax.finetune.loop import finetune
from tests.finetune.conftest import tiny


def test_finetune_refuses_several_processes(tmp_path, monkeypatch):
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    work = tmp_path / "run"
    with pytest.raises(ConfigError, match="fine-tuning runs in a single process, but this is process 1 of 2"):
        finetune(tiny("classification"), work, progress=False, restart=True)
    assert not work.exists()
