"""End to end through the CLI: a tiny `medjax pretrain`, `medjax finetune-compare` (classification, both arms),
`medjax finetune` (detection), then `medjax predict` of both on volumes stored in other orientations and
spacings: classification as predictions.json/.csv, detection as boxes.json/.csv in world mm and input voxels.

The CLI runs in-process (``medjax.cli.main``) so the tiny models compile once per test session."""

import csv
import json

import nibabel as nib
import numpy as np
import pytest

from medjax.cli import main
from medjax.data.io_nifti import write_nifti
from medjax.data.testing import make_volume, write_tiny_dataset
from medjax.finetune.predict import voxel_boxes_to_world

# the demo presets shrunk to a 2-block, 64-wide ViT on 8-voxel crops at 3 mm; blobs of the tiny set are lesions
TINY = ["model.variant=Mu/4", "model.decoder_width=16", "model.decoder_depth=1", "model.decoder_heads=2",
        "data.crop_size=8", "data.spacing=3.0,3.0,3.0", "data.samples_per_volume=1", "train.steps=2",
        "train.batch_size=2", "train.warmup_steps=0", "checkpoint.every_steps=2"]
FT = ["finetune.label_key=label", "finetune.val_records=2", "finetune.min_object_voxels=2",
      "finetune.det_hidden=8"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("clsdet")
    write_tiny_dataset(root / "train", n=5, layout="folder", with_labels=True)
    inputs = root / "in"  # prediction inputs: other orientations and spacings than the training set
    for i, (orient, spacing) in enumerate([("LPS", (1.2, 1.5, 2.0)), ("PIR", (2.0, 1.0, 1.6))]):
        write_nifti(str(inputs / f"vol{i}.nii.gz"), make_volume((26, 22, 18), spacing, orientation=orient,
                                                                seed=10 + i))
    return root


def _cli(*argv) -> int:
    return main([str(a) for a in argv])


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


@pytest.mark.slow
def test_classification_compare_then_predict(data, tmp_path, capsys):
    mae = tmp_path / "mae"
    assert _cli("pretrain", "--config", "demo", "--workdir", mae, "--no-progress", "--set",
                f"data.dir={data / 'train'}", *TINY) == 0
    cmp_dir = tmp_path / "cmp"
    capsys.readouterr()
    assert _cli("finetune-compare", "--config", "demo_cls", "--workdir", cmp_dir, "--init-from", mae,
                "--no-progress", "--seeds", "0", "--metric", "window_auroc", "--set", f"data.dir={data / 'train'}", "finetune.num_labeled=2",
                *TINY, *FT) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    saved = json.loads((cmp_dir / "compare.json").read_text())
    assert printed == saved
    assert saved["metric"] == "window_auroc" and saved["num_labeled"] == 2 and saved["num_val"] == 2
    assert saved["seeds"] == [0] and saved["steps"] == 2
    for arm in ("pretrained", "scratch"):
        run = saved[arm]["runs"][0]
        assert run["eval"]["task"] == "classification" and 0.0 <= run["eval"]["accuracy"] <= 1.0
        # window level: every sliding window of both held-out volumes (2 x 2 x 2 windows of 8 voxels on each
        # ~12 x 14 x 10 grid at 3 mm); the blobs are big here, so every window holds one and AUROC is undefined
        assert run["eval"]["windows"] == run["eval"]["window_positives"] == 16
        assert run["eval"]["window_auroc"] is None and run["eval"]["window_accuracy"] is not None
        assert run["metric"] is None and saved[arm]["per_seed"] == [None]
        assert np.isfinite(run["final_loss"])
    init = json.loads((cmp_dir / "pretrained" / "seed0" / "init.json").read_text())
    assert init["step"] == 2 and init["loaded"] > 0
    assert not (cmp_dir / "scratch" / "seed0" / "init.json").exists()
    # the training records: the first 2 labelled; the held-out ones are the last 2 (never trained on)
    train = json.loads((cmp_dir / "scratch" / "seed0" / "records_train.json").read_text())
    val = json.loads((cmp_dir / "scratch" / "seed0" / "records_val.json").read_text())
    assert [r["id"] for r in train] == ["case_000", "case_001"]
    assert [r["id"] for r in val] == ["case_003", "case_004"]

    out = tmp_path / "pred"
    assert _cli("predict", "--checkpoint", cmp_dir / "pretrained" / "seed0", data / "in", out) == 0
    rows = json.loads((out / "predictions.json").read_text())
    table = _read_csv(out / "predictions.csv")
    assert [r["id"] for r in rows] == ["vol0", "vol1"] and table[0] == ["id", "predicted", "p0", "p1"]
    for row, line in zip(rows, table[1:]):
        assert abs(sum(row["probs"]) - 1) < 1e-4 and row["predicted"] == int(np.argmax(row["probs"]))
        assert line[0] == row["id"] and int(line[1]) == row["predicted"]
        np.testing.assert_allclose([float(v) for v in line[2:]], row["probs"], atol=1e-6)


@pytest.mark.slow
def test_detection_finetune_then_predict_boxes(data, tmp_path):
    work = tmp_path / "det"
    # score threshold 0: the two-step model's candidates all reach NMS, so boxes are written
    assert _cli("finetune", "--config", "demo_det", "--workdir", work, "--no-progress", "--set",
                f"data.dir={data / 'train'}", *TINY, *FT, "finetune.det_score_threshold=0.0",
                "finetune.det_top_k=2") == 0
    ev = json.loads((work / "eval.json").read_text())
    assert ev["task"] == "detection" and [c["id"] for c in ev["cases"]] == ["case_003", "case_004"]
    assert all(c["reference"] == 1 for c in ev["cases"])  # one blob per case
    # score threshold 0: every held-out case gets boxes, and with a reference in each, AP and FROC are defined
    assert all(c["predicted"] >= 1 and 0.0 <= c["top_score"] <= 1.0 for c in ev["cases"])
    assert ev["froc"]["num_refs"] == 2 and ev["froc"]["num_cases"] == 2
    assert isinstance(ev["ap_iou0.1"], float) and 0.0 <= ev["ap_iou0.1"] <= 1.0
    assert all(0.0 <= v <= 1.0 for v in ev["froc"]["sensitivity"])

    out = tmp_path / "pred"
    assert _cli("predict", "--checkpoint", work / "checkpoints" / "2", data / "in", out) == 0
    rows = json.loads((out / "boxes.json").read_text())
    table = _read_csv(out / "boxes.csv")
    assert table[0][:3] == ["id", "score", "class"] and len(table) == len(rows) + 1
    assert {r["id"] for r in rows} == {"vol0", "vol1"}
    for row, line in zip(rows, table[1:]):
        src = nib.load(str(data / "in" / f"{row['id']}.nii.gz"))
        world, vox = np.asarray(row["box_world_mm"]), np.asarray(row["box_voxel"])
        np.testing.assert_allclose([float(v) for v in line[3:]], np.r_[world, vox])
        np.testing.assert_allclose(voxel_boxes_to_world(vox, src.affine)[0], world, atol=0.01)
        hi = np.asarray(src.shape[:3]) - 0.5
        assert np.all(vox[3:] > vox[:3]) and np.all(vox[:3] >= -0.5 - 1e-3) and np.all(vox[3:] <= hi + 1e-3)
