"""`predict_folder` for classification and detection checkpoints: JSON and CSV agree, classification probabilities
are the model's, detection boxes come in world mm and in voxel indices of each input file (other orientations)."""

import csv
import json

import nibabel as nib
import numpy as np
import pytest

from medjax.config.overrides import to_dict
from medjax.data.io_nifti import write_nifti
from medjax.data.testing import make_volume
from medjax.finetune.predict import Predictor, preprocess_record, voxel_boxes_to_world
from medjax.finetune.predict_io import predict_folder
from medjax.finetune.tasks import build_task_model
from medjax.training.checkpoint import Checkpointer
from medjax.training.state import split_model

# small volumes in three orientations and anisotropic spacings; the tiny models use 8-voxel windows
_INPUTS = [("a_lps", "LPS", (1.5, 1.5, 2.0), (12, 10, 9)), ("b_pir", "PIR", (2.0, 1.2, 1.5), (9, 12, 10)),
           ("c_ras", "RAS", (1.0, 1.0, 1.0), (8, 8, 8))]


def _inputs(tmp_path):
    d = tmp_path / "in"
    for i, (name, orient, spacing, shape) in enumerate(_INPUTS):
        write_nifti(str(d / f"{name}.nii.gz"), make_volume(shape, spacing, orientation=orient, seed=i))
    return d


def _checkpoint(tmp_path, cfg):
    """A `medjax finetune`-style checkpoint (params, model state, saved config) of a freshly built model."""
    model_def, params, ms = split_model(build_task_model(cfg))
    state = {"params": params, **({"model_state": ms} if ms else {})}
    with Checkpointer(tmp_path / "run", keep=1) as ck:
        ck.save(1, state, meta={"config": to_dict(cfg), "step": 1}, force=True)
        ck.wait()
    return tmp_path / "run", model_def, params, ms


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_classification_predictions_json_and_csv(tmp_path, tiny_cfg):
    cfg = tiny_cfg("classification", num_classes=3, volume_reduce="mean")
    run, model_def, params, ms = _checkpoint(tmp_path, cfg)
    out = tmp_path / "out"
    res = predict_folder(run, _inputs(tmp_path), out)
    assert res["task"] == "classification" and res["cases"] == 3
    rows = json.loads((out / "predictions.json").read_text())
    assert [r["id"] for r in rows] == [n for n, *_ in _INPUTS]
    table = _csv(out / "predictions.csv")
    assert table[0] == ["id", "predicted", "p0", "p1", "p2"]
    pred = Predictor(cfg, model_def, params, ms)
    for row, line in zip(rows, table[1:]):
        p = np.asarray(row["probs"])
        assert p.shape == (3,) and abs(p.sum() - 1) < 1e-4 and row["predicted"] == int(np.argmax(p))
        assert line[0] == row["id"] and int(line[1]) == row["predicted"]
        np.testing.assert_allclose([float(v) for v in line[2:]], p, atol=1e-6)
        # the same numbers as the model on the preprocessed volume
        s = preprocess_record(cfg, {"id": row["id"], "image": str(tmp_path / "in" / f"{row['id']}.nii.gz")})
        np.testing.assert_allclose(p, pred.classify(s["image"]), atol=2e-6)


@pytest.mark.slow
def test_detection_boxes_world_and_voxel(tmp_path, tiny_cfg):
    # threshold 0: every decoded candidate survives to NMS, so an untrained model still reports boxes
    cfg = tiny_cfg("detection", num_classes=1, det_score_threshold=0.0, det_top_k=3, det_nms_iou=0.5)
    run, *_ = _checkpoint(tmp_path, cfg)
    out = tmp_path / "out"
    predict_folder(run, _inputs(tmp_path), out)
    rows = json.loads((out / "boxes.json").read_text())
    table = _csv(out / "boxes.csv")
    assert table[0] == ["id", "score", "class", "x0", "y0", "z0", "x1", "y1", "z1", "i0", "j0", "k0", "i1", "j1",
                        "k1"]
    assert len(table) == len(rows) + 1
    assert {r["id"] for r in rows} == {n for n, *_ in _INPUTS}
    for row, line in zip(rows, table[1:]):
        assert line[0] == row["id"] and float(line[1]) == row["score"] and int(line[2]) == row["class"] == 0
        np.testing.assert_allclose([float(v) for v in line[3:9]], row["box_world_mm"])
        np.testing.assert_allclose([float(v) for v in line[9:]], row["box_voxel"])
        src = nib.load(str(tmp_path / "in" / f"{row['id']}.nii.gz"))
        world, vox = np.asarray(row["box_world_mm"]), np.asarray(row["box_voxel"])
        assert np.all(world[3:] > world[:3]) and np.all(vox[3:] > vox[:3])
        # voxel box = the world box in the input file's own index space (its affine, its orientation)
        np.testing.assert_allclose(voxel_boxes_to_world(vox, src.affine)[0], world, atol=0.01)
        # boxes lie within the input's field of view (continuous indices, half-voxel margins)
        hi = np.asarray(src.shape[:3]) - 0.5
        assert np.all(vox[:3] >= -0.5 - 1e-3) and np.all(vox[3:] <= hi + 1e-3)
    for name, *_ in _INPUTS:  # per volume, scores decrease (NMS order)
        sc = [r["score"] for r in rows if r["id"] == name]
        assert sc == sorted(sc, reverse=True)
