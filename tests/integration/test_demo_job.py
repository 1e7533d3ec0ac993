"""`make demo`'s job (``python -m medjax.demo_job``) on a tiny MSD dataset: it prepares the volumes once into
DATA_prepared, pretrains from that cache, reuses the cache on the next run and rebuilds it when a volume changes."""

import json
import os

import pytest

from medjax import demo_job
from medjax.data.testing import write_tiny_dataset

TINY = ["model.variant=Mu/4", "model.decoder_width=16", "model.decoder_depth=1", "model.decoder_heads=2",
        "data.crop_size=8", "data.spacing=3.0,3.0,3.0", "train.steps=2", "train.batch_size=2",
        "train.warmup_steps=0", "checkpoint.every_steps=2"]


@pytest.mark.slow
def test_demo_job_prepares_once_and_pretrains_from_the_cache(tmp_path, capsys):
    data = tmp_path / "demo"
    write_tiny_dataset(data, n=3, layout="msd")
    args = ["--data", str(data), "--workdir", str(tmp_path / "run"), "--no-progress", "--set", *TINY]
    assert demo_job.main(args) == 0
    manifest = tmp_path / "demo_prepared" / "manifest.json"
    assert json.loads(manifest.read_text())["summary"]["records"] == 3
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["data"]["cache_dir"] == str(tmp_path / "demo_prepared")
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["step"] == 2
    built = os.stat(manifest).st_mtime_ns

    assert demo_job.main([*args[:-len(TINY)], *TINY, "train.steps=3"]) == 0  # resumes; cache still fresh
    assert os.stat(manifest).st_mtime_ns == built

    image = data / "imagesTr" / "case_000.nii.gz"
    os.utime(image, ns=(built + 10**9, built + 10**9))  # a changed source volume makes the cache stale
    assert demo_job.main([*args[:-len(TINY)], *TINY, "train.steps=4"]) == 0
    assert os.stat(manifest).st_mtime_ns != built
    assert "prepared 3 volumes" in capsys.readouterr().err
