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


@pytest.mark.slow
def test_a_finetune_failing_midway_closes_what_it_opened(tmp_path, monkeypatch):
    """finetune-compare runs many fine-tunings in one process: none may leave threads or writers behind."""
    import dataclasses
    import threading

    from medjax.data import pipeline
    from medjax.data.testing import write_tiny_dataset
    from medjax.training.checkpoint import Checkpointer

    data = write_tiny_dataset(tmp_path / "data", n=3, layout="folder", with_labels=True)
    cfg = tiny("classification", class_from_label=True, min_object_voxels=1)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, dir=str(data), spacing=(2.0, 2.0, 2.0)),
                              train=dataclasses.replace(cfg.train, steps=4, log_every=1),
                              checkpoint=dataclasses.replace(cfg.checkpoint, every_steps=1))
    finetune(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=1)), tmp_path / "warm",
             progress=True, evaluate=False)  # process-wide pools and tqdm's monitor start once
    before = set(threading.enumerate())
    real_next, calls, closed = pipeline.BatchIterator.__next__, {"n": 0}, []
    real_close = pipeline.BatchIterator.close

    def failing_next(self):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("volume unreadable")
        return real_next(self)

    def recording_close(self):
        closed.append(True)
        real_close(self)

    monkeypatch.setattr(pipeline.BatchIterator, "__next__", failing_next)
    monkeypatch.setattr(pipeline.BatchIterator, "close", recording_close)
    with pytest.raises(RuntimeError, match="volume unreadable"):
        finetune(cfg, tmp_path / "fails", progress=True, evaluate=False)
    assert closed == [True]
    left = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    assert left == [], f"threads left running after the failed run: {[t.name for t in left]}"
    assert Checkpointer(tmp_path / "fails", read_only=True).all_steps() == [1, 2]
