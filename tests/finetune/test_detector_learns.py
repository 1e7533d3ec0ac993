"""The detector learns: trained for 150 steps on 6 small volumes with one bright blob each, it finds the blob of
both held-out volumes (AP at IoU 0.1 and FROC sensitivity at 1 false positive per volume above 0.5)."""

import dataclasses

import pytest

from medjax.data.testing import write_tiny_dataset
from medjax.finetune.loop import finetune
from tests.finetune.conftest import tiny


@pytest.mark.slow
def test_detector_finds_held_out_blobs(tmp_path):
    write_tiny_dataset(tmp_path / "data", n=8, layout="folder", with_labels=True)
    cfg = tiny("detection", num_classes=1, min_object_voxels=2, det_top_k=5, det_score_threshold=0.05)
    cfg = dataclasses.replace(
        cfg, finetune=dataclasses.replace(cfg.finetune, val_records=2),
        data=dataclasses.replace(cfg.data, dir=str(tmp_path / "data"), spacing=(2.0, 2.0, 2.0), crop_size=(16,),
                                 augment=True),
        train=dataclasses.replace(cfg.train, steps=150, lr=3e-3, warmup_steps=10, batch_size=4, log_every=50))
    summary = finetune(cfg, tmp_path / "run", progress=False)
    ev = summary["eval"]
    assert summary["final_loss"] < summary["first_loss"] / 4
    assert ev["froc"]["num_refs"] == 2 and ev["froc"]["num_cases"] == 2
    assert ev["ap_iou0.1"] > 0.5
    assert ev["froc"]["sensitivity"][ev["froc"]["fps_per_case"].index(1.0)] > 0.5
