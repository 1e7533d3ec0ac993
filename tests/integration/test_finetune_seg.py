"""End to end: `medjax finetune` (tiny segmentation) then `medjax predict` gives masks in the inputs' original
space (same shape and affine, other orientations and spacings), with no header text copied."""

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from medjax.data.testing import write_tiny_dataset


@pytest.mark.slow
def test_finetune_then_predict_original_space(tmp_path):
    data = tmp_path / "data"
    write_tiny_dataset(data, n=3, layout="folder", with_labels=True)
    work = tmp_path / "run"
    cmd = [sys.executable, "-m", "medjax", "finetune", "--config", "demo_seg", "--workdir", str(work),
           "--no-progress", "--set", f"data.dir={data}", "model.variant=Mu/4", "data.crop_size=8",
           "data.spacing=2.0,2.0,2.0", "train.steps=2", "train.batch_size=2", "finetune.decoder_features=4",
           "finetune.val_records=1", "finetune.num_classes=2", "checkpoint.every_steps=1"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    ev = json.loads((work / "eval.json").read_text())
    assert ev["task"] == "segmentation" and 0.0 <= ev["mean_dice"] <= 1.0
    inputs = sorted(p for p in data.rglob("*.nii.gz") if "label" not in str(p.parent))
    out = tmp_path / "pred"
    r = subprocess.run([sys.executable, "-m", "medjax", "predict", "--checkpoint", str(work),
                        str(inputs[0].parent), str(out)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    for src in inputs:
        a, b = nib.load(str(src)), nib.load(str(out / src.name))
        assert b.shape == a.shape[:3]
        np.testing.assert_array_equal(b.affine, a.affine)
        assert b.header["descrip"].tobytes().strip(b"\0") == b""
