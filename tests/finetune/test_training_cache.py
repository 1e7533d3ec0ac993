"""Fine-tuning reads its training records from a prepared cache in WORKDIR/cache: the same batches (so the same
losses) as reading the volumes, reused across runs while it matches, rebuilt when the record set changes."""

import dataclasses
import json
import os

import pytest

from medjax.data.testing import write_tiny_dataset
from medjax.finetune.loop import finetune
from tests.finetune.conftest import tiny


def _cfg(data, **ft):
    cfg = tiny("segmentation", **ft)
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, dir=str(data), spacing=(2.0, 2.0, 2.0),
                                                           augment=True))


def _losses(workdir):
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


@pytest.mark.slow
def test_cached_run_equals_reading_volumes_and_is_reused(tmp_path):
    data = tmp_path / "data"
    write_tiny_dataset(data, n=4, layout="folder", with_labels=True)
    raw = finetune(_cfg(data, cache=False), tmp_path / "raw", progress=False, evaluate=False)
    cached = finetune(_cfg(data, cache=True), tmp_path / "cached", progress=False, evaluate=False)
    assert not (tmp_path / "raw" / "cache").exists()
    manifest = tmp_path / "cached" / "cache" / "manifest.json"
    assert json.loads(manifest.read_text())["summary"]["records"] == 4
    assert _losses(tmp_path / "raw") == _losses(tmp_path / "cached") and len(_losses(tmp_path / "raw")) >= 2
    assert raw["final_loss"] == cached["final_loss"]

    built = os.stat(manifest).st_mtime_ns
    finetune(_cfg(data, cache=True), tmp_path / "cached", restart=True, progress=False, evaluate=False)
    assert os.stat(manifest).st_mtime_ns == built  # same records and settings: reused, not rebuilt

    finetune(_cfg(data, cache=True, num_labeled=2), tmp_path / "cached", restart=True, progress=False,
             evaluate=False)
    ids = [e["id"] for e in json.loads(manifest.read_text())["records"]]
    assert len(ids) == 2 and ids == [r["id"] for r in json.loads((tmp_path / "cached" / "records_train.json")
                                                                 .read_text())]
