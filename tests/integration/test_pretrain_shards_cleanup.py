"""Pretraining runs: a resumed run keeps the checkpoint's number of data shards, and a run that fails midway
closes what it opened (logger with its TensorBoard thread and progress bar, checkpointer, data iterator)."""

from __future__ import annotations

import threading

import pytest

from medjax.config import apply_overrides, get_preset
from medjax.data import global_batches
from medjax.training.pretraining import pretrain

pytestmark = pytest.mark.slow

TINY = [
    "model.variant=Mu/8", "model.decoder_width=32", "model.decoder_depth=1", "model.decoder_heads=2",
    "data.crop_size=16", "data.spacing=2.0,2.0,2.0", "data.samples_per_volume=2", "data.workers=0",
    "train.batch_size=4", "train.warmup_steps=2", "train.lr=2e-3", "train.log_every=1", "train.image_every=0",
    "checkpoint.every_steps=2", "checkpoint.keep=10",
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from medjax.data.testing import write_tiny_dataset

    return write_tiny_dataset(tmp_path_factory.mktemp("data"), n=3, layout="folder", with_labels=False)


def _cfg(dataset, *extra):
    return apply_overrides(get_preset("demo"), TINY + [f"data.dir={dataset}", *extra])


def test_resume_takes_the_checkpoints_data_shards(dataset, tmp_path):
    import shutil

    whole = pretrain(_cfg(dataset, "train.steps=4"), tmp_path / "whole", progress=False, data_shards=2)
    shutil.copytree(tmp_path / "whole", tmp_path / "split")
    shutil.rmtree(tmp_path / "split" / "checkpoints" / "4")  # as if stopped after the step-2 checkpoint
    # resumed without --data-shards: the checkpoint's 2 shards are kept, so the batches are the same
    again = pretrain(_cfg(dataset, "train.steps=4"), tmp_path / "split", progress=False)
    assert again["resumed_from"] == 2 and again["step"] == 4
    assert again["params_digest"] == whole["params_digest"]
    assert again["final_loss"] == whole["final_loss"]


def test_a_run_failing_midway_closes_what_it_opened(dataset, tmp_path, monkeypatch):
    # start the process-wide pools and tqdm's monitor thread, which outlive any one run by design
    pretrain(_cfg(dataset, "train.steps=1"), tmp_path / "warm", progress=True)
    before = set(threading.enumerate())
    closed = []
    real_next = global_batches.ShardedBatchIterator.__next__
    real_close = global_batches.ShardedBatchIterator.close
    calls = {"n": 0}

    def failing_next(self):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("disk went away")
        return real_next(self)

    def recording_close(self):
        closed.append("data")
        real_close(self)

    monkeypatch.setattr(global_batches.ShardedBatchIterator, "__next__", failing_next)
    monkeypatch.setattr(global_batches.ShardedBatchIterator, "close", recording_close)
    with pytest.raises(RuntimeError, match="disk went away"):
        pretrain(_cfg(dataset, "train.steps=6"), tmp_path / "fails", progress=True)
    assert closed == ["data"]
    left = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    assert left == [], f"threads left running after the failed run: {[t.name for t in left]}"
    # the checkpoint of step 2 was committed before the failure and the metrics file was closed
    from medjax.training.checkpoint import Checkpointer
    from medjax.training.logging import read_metrics

    assert Checkpointer(tmp_path / "fails", read_only=True).all_steps() == [2]
    assert [r["step"] for r in read_metrics(tmp_path / "fails" / "metrics.jsonl")] == [1, 2]
