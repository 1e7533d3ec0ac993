"""Loading runs for the viewers and preparing their input as training does."""

from __future__ import annotations

import numpy as np
import pytest

from medjax.errors import CheckpointError
from medjax.interactive.checkpoints import list_checkpoints, list_runs, load_run, model_input, resolve_run


def test_load_run_restores_the_saved_parameters(run3d):
    from flax import nnx

    from medjax.models import MAE
    from medjax.training.digest import params_digest

    run = load_run(run3d["workdir"])
    assert isinstance(run.model, MAE)
    assert run.step == 0 and run.meta["loss"] == 1.25
    assert run.input_size == (16, 16, 16)
    assert params_digest(nnx.state(run.model, nnx.Param)) == run3d["digest"]
    same = load_run(run3d["workdir"] / "checkpoints" / "0")
    assert same.step == 0 and same.workdir == run.workdir
    assert load_run(run) is run


def test_listing_and_errors(run3d, tmp_path):
    entries = list_checkpoints(run3d["workdir"])
    assert [(e.step, e.loss) for e in entries] == [(0, 1.25)]
    assert list_runs(run3d["workdir"].parent) == [run3d["workdir"]]
    (tmp_path / "checkpoints" / "5.orbax-checkpoint-tmp-123").mkdir(parents=True)  # half-written: not listed
    assert list_checkpoints(tmp_path) == []
    assert resolve_run(run3d["workdir"] / "checkpoints" / "0") == (run3d["workdir"], 0)
    with pytest.raises(CheckpointError, match="config.json"):
        load_run(tmp_path)
    with pytest.raises(CheckpointError, match="no checkpoint at step 7"):
        load_run(run3d["workdir"], step=7)
    with pytest.raises(CheckpointError, match="not a run directory"):
        load_run(tmp_path / "missing")


def test_model_input_is_orientation_independent(run3d, volumes, tmp_path):
    import nibabel as nib

    from medjax.data.transforms import reorient

    run = load_run(run3d["workdir"])
    path = volumes / "vol00.nii.gz"
    x, aff = model_input(run, str(path))
    assert x.shape == (16, 16, 16, 1) and x.dtype == np.float32
    img = nib.load(str(path))
    arr, lps_aff = reorient(np.asarray(img.dataobj), img.affine, "LPS", has_channels=False)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(arr), lps_aff), str(tmp_path / "lps.nii.gz"))
    x2, aff2 = model_input(run, str(tmp_path / "lps.nii.gz"))
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_allclose(aff, aff2)
    # preprocessed as in training: z-scored foreground, 2 mm voxels, RAS
    np.testing.assert_allclose(np.sqrt((aff[:3, :3] ** 2).sum(0)), 2.0)
    assert abs(float(x[x != 0].mean())) < 0.5


def test_model_input_2d_takes_the_centre_slice(run2d, volumes):
    """The 2D input is the centre axial slice of the volume preprocessed as in training, centre-cropped (or
    zero-padded) to 16 x 16: every pixel, mapped through the returned affine into the preprocessed volume, lands
    on the centre slice and holds that voxel's value (0 where it falls in the padding)."""
    from medjax.data.transforms import preprocess
    from medjax.interactive.checkpoints import volume_sample

    run = load_run(run2d["workdir"])
    path = str(volumes / "vol01.nii.gz")
    x, aff = model_input(run, path)
    assert x.shape == (16, 16, 1) and x.dtype == np.float32
    assert aff.shape == (4, 4)
    pre = preprocess(volume_sample(path), run.cfg.data)
    vol, vol_aff = np.asarray(pre["image"], np.float32), pre["affine"]
    assert run.cfg.data.slice_axis == 2
    ij = np.stack(np.meshgrid(np.arange(16), np.arange(16), indexing="ij"), -1).reshape(-1, 2)
    world = aff @ np.c_[ij, np.zeros(len(ij)), np.ones(len(ij))].T
    vox = np.linalg.solve(vol_aff, world)[:3].T
    np.testing.assert_allclose(vox, np.round(vox), atol=1e-4)  # on the voxel grid of the preprocessed volume
    vox = np.round(vox).astype(int)
    assert np.all(vox[:, 2] == (vol.shape[2] - 1) // 2)  # the centre slice
    inside = np.all((vox >= 0) & (vox < np.asarray(vol.shape[:3])), axis=1)
    assert inside.sum() >= 100  # most of the window shows the volume
    got = x[ij[:, 0], ij[:, 1], 0]
    np.testing.assert_array_equal(got[inside], vol[vox[inside, 0], vox[inside, 1], vox[inside, 2], 0])
    assert np.all(got[~inside] == 0)
    assert np.abs(got[inside]).max() > 0  # real content, not an empty slice
