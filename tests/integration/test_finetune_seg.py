"""End to end: `medjax finetune` (tiny segmentation) then `medjax predict` gives masks in the inputs' original
space (same shape and affine, other orientations and spacings), with no header text copied.

The CLI runs in-process (``medjax.cli.main``), which saves a JAX start-up per command."""

import json

import nibabel as nib
import numpy as np
import pytest

from medjax.cli import main
from medjax.data.io_nifti import write_nifti
from medjax.data.testing import make_volume, write_tiny_dataset


@pytest.mark.slow
def test_finetune_then_predict_original_space(tmp_path):
    data = tmp_path / "data"
    write_tiny_dataset(data, n=3, layout="folder", with_labels=True)
    work = tmp_path / "run"
    cmd = ["finetune", "--config", "demo_seg", "--workdir", str(work),
           "--no-progress", "--set", f"data.dir={data}", "model.variant=Mu/4", "data.crop_size=8",
           "data.spacing=2.0,2.0,2.0", "train.steps=2", "train.batch_size=2", "finetune.decoder_features=4",
           "finetune.val_records=1", "finetune.num_classes=2", "checkpoint.every_steps=1"]
    assert main(cmd) == 0
    ev = json.loads((work / "eval.json").read_text())
    assert ev["task"] == "segmentation" and len(ev["cases"]) == 1  # finetune.val_records=1
    case_dice = ev["cases"][0]["dice"]
    assert set(case_dice) == set(ev["dice_per_label"]) == {"1"}  # one foreground label
    assert ev["dice_per_label"]["1"] == pytest.approx(case_dice["1"]) and 0.0 <= case_dice["1"] <= 1.0
    assert ev["mean_dice"] == pytest.approx(case_dice["1"])
    vox = ev["cases"][0]["voxels"]["1"]  # one case: the pooled Dice is that case's Dice
    assert ev["global_dice"] == pytest.approx(case_dice["1"]) == pytest.approx(ev["global_dice_per_label"]["1"])
    assert vox["reference"] > 0 and vox["predicted"] >= 0
    in_dir = tmp_path / "in"  # inputs stored in other orientations and spacings than the training set
    for i, (orient, spacing) in enumerate([("LPS", (1.2, 1.5, 2.0)), ("PIR", (2.0, 1.0, 1.6)), ("RAS", (1.5,) * 3)]):
        write_nifti(str(in_dir / f"vol{i}.nii.gz"), make_volume((26, 22, 18), spacing, orientation=orient, seed=i))
    inputs = sorted(in_dir.glob("*.nii.gz"))
    out = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(work), str(in_dir), str(out)]) == 0
    for src in inputs:
        a, b = nib.load(str(src)), nib.load(str(out / src.name))
        assert b.shape == a.shape[:3] and b.get_data_dtype() == np.uint8
        assert set(np.unique(np.asarray(b.dataobj)).tolist()) <= {0, 1}  # labels of a 2-class model
        np.testing.assert_array_equal(b.affine, a.affine)
        assert int(b.header["qform_code"]) == 1 and int(b.header["sform_code"]) == 1
        assert b.header["descrip"].tobytes().strip(b"\0") == b""
