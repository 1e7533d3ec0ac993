"""The grain pipeline: shapes, determinism, sharding, save/restore, bad files, global batches, bench CLI."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace

import nibabel as nib
import numpy as np
import pytest

from medjax.config.schema import DataConfig
from medjax.data.pipeline import make_iterator, to_global_batch
from medjax.errors import DataError

# LPS-oriented 2 mm grid: the pipeline must reorient it
_AFFINE = np.array([[-2.0, 0, 0, 30], [0, -2.0, 0, 40], [0, 0, 2.0, -20], [0, 0, 0, 1]])


def write_msd(root, n=4, shape=(14, 12, 10), *, constant=False, seed=0):
    """A tiny MSD folder (dataset.json, imagesTr, labelsTr) of int16 volumes with a labelled blob.

    With ``constant`` every voxel of volume ``i`` but one (0) is ``i + 1``: a crop's maximum names its volume.
    """
    rng = np.random.default_rng(seed)
    os.makedirs(root / "imagesTr", exist_ok=True)
    os.makedirs(root / "labelsTr", exist_ok=True)
    training = []
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
    centre = np.array(shape)[:, None, None, None] / 2
    for i in range(n):
        if constant:
            image = np.full(shape, i + 1, np.int16)
            image[0, 0, 0] = 0
            label = np.ones(shape, np.uint8)
        else:
            blob = ((grid - centre) ** 2).sum(0) < (min(shape) / 3) ** 2
            image = (rng.normal(100, 20, shape) + 300 * blob).astype(np.int16)
            label = blob.astype(np.uint8)
        name = f"case_{i:02d}.nii.gz"
        nib.save(nib.Nifti1Image(image, _AFFINE), root / "imagesTr" / name)
        nib.save(nib.Nifti1Image(label, _AFFINE), root / "labelsTr" / name)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    meta = {"name": "tiny", "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "blob"},
            "numTraining": n, "training": training, "test": []}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def cfg_for(root, **kw) -> DataConfig:
    base = dict(dir=str(root), crop_size=(8,), spacing=(2.0,), samples_per_volume=2, workers=0, prefetch=2,
                intensity="mri")
    base.update(kw)
    return DataConfig(**base)


def take(it, n):
    return [next(it) for _ in range(n)]


def assert_same(batches_a, batches_b):
    assert len(batches_a) == len(batches_b)
    for a, b in zip(batches_a, batches_b):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.fixture(scope="module")
def msd(tmp_path_factory):
    return write_msd(tmp_path_factory.mktemp("msd"))


def test_batch_shapes_and_dtypes_3d(msd):
    with make_iterator(cfg_for(msd), batch_size=2, seed=0, num_epochs=1) as it:
        batches = list(it)
    assert len(batches) == 4  # 4 volumes x 2 crops / batch 2
    for b in batches:
        assert set(b) == {"image", "label"}
        assert b["image"].shape == (2, 8, 8, 8, 1) and b["image"].dtype == np.float32
        assert b["label"].shape == (2, 8, 8, 8) and b["label"].dtype == np.int32
        assert np.isfinite(b["image"]).all()
        assert set(np.unique(b["label"])) <= {0, 1}


def test_batch_shapes_2d(msd):
    cfg = cfg_for(msd, spatial_dims=2, crop_size=(6,), samples_per_volume=3)
    with make_iterator(cfg, batch_size=3, seed=0, num_epochs=1) as it:
        batches = list(it)
    assert len(batches) == 4
    assert batches[0]["image"].shape == (3, 6, 6, 1) and batches[0]["image"].dtype == np.float32
    assert batches[0]["label"].shape == (3, 6, 6) and batches[0]["label"].dtype == np.int32


def test_same_seed_same_batches_other_seed_differs(msd):
    cfg = cfg_for(msd)
    with make_iterator(cfg, batch_size=2, seed=3, num_epochs=2) as a, \
            make_iterator(cfg, batch_size=2, seed=3, num_epochs=2) as b, \
            make_iterator(cfg, batch_size=2, seed=4, num_epochs=2) as c:
        ba, bb, bc = list(a), list(b), list(c)
    assert len(ba) == 8
    assert_same(ba, bb)
    assert any(not np.array_equal(x["image"], y["image"]) for x, y in zip(ba, bc))
    # epochs differ too (reshuffled, new crops)
    assert not all(np.array_equal(x["image"], y["image"]) for x, y in zip(ba[:4], ba[4:]))


def _volume_ids(batches):
    return [int(round(float(s.max()))) for b in batches for s in b["image"]]


def test_process_shards_are_disjoint_and_cover_all(tmp_path):
    root = write_msd(tmp_path / "const", n=5, shape=(10, 10, 10), constant=True)
    cfg = cfg_for(root, intensity="none", spacing=(), crop_foreground=False, augment=False,
                  samples_per_volume=1, crop_size=(4,))
    seen = []
    for p in range(2):
        with make_iterator(cfg, batch_size=1, seed=0, process_index=p, process_count=2, num_epochs=1) as it:
            ids = _volume_ids(list(it))
        assert len(ids) == len(set(ids))
        seen.append(set(ids))
    assert seen[0].isdisjoint(seen[1])
    assert seen[0] | seen[1] == {1, 2, 3, 4, 5}
    assert seen[0] == {1, 3, 5}  # records[0::2]


def test_holdout_last_keeps_the_last_records_out(tmp_path):
    from medjax.errors import ConfigError

    root = write_msd(tmp_path / "const", n=5, shape=(10, 10, 10), constant=True)
    cfg = cfg_for(root, intensity="none", spacing=(), crop_foreground=False, augment=False,
                  samples_per_volume=1, crop_size=(4,), holdout_last=2)
    with make_iterator(cfg, batch_size=1, seed=0, num_epochs=1) as it:
        assert sorted(_volume_ids(list(it))) == [1, 2, 3]  # volumes 4 and 5 (the last two records) never read
    with pytest.raises(ConfigError, match="data.holdout_last=5"):
        make_iterator(replace(cfg, holdout_last=5), batch_size=1, seed=0, num_epochs=1)


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_restore_mid_epoch_yields_the_remaining_stream(msd, workers):
    cfg = cfg_for(msd, workers=workers)
    with make_iterator(cfg, batch_size=2, seed=1) as it:
        take(it, 3)  # mid-epoch: 4 batches per epoch
        state = it.get_state()
        json.dumps(state)  # JSON-serialisable
        expected = take(it, 4)  # crosses into the next epoch
    with make_iterator(cfg, batch_size=2, seed=1) as fresh:
        fresh.set_state(state)
        restored = take(fresh, 4)
    assert_same(restored, expected)


@pytest.mark.slow  # starts worker processes
def test_restore_mid_epoch_with_worker_processes(msd):
    cfg = cfg_for(msd, workers=2)
    with make_iterator(cfg, batch_size=2, seed=1, worker_mode="processes") as it:
        take(it, 3)
        state = it.get_state()
        expected = take(it, 4)
    with make_iterator(cfg, batch_size=2, seed=1, worker_mode="processes") as fresh:
        fresh.set_state(state)
        restored = take(fresh, 4)
    assert_same(restored, expected)
    with make_iterator(cfg, batch_size=2, seed=1) as threads, pytest.raises(Exception, match="worker_mode"):
        threads.set_state(state)  # a state of the process pipeline does not fit the thread pipeline


@pytest.mark.slow  # starts worker processes
def test_augmentation_does_not_depend_on_worker_count_or_mode(msd):
    def samples(workers, mode="threads"):
        cfg = cfg_for(msd, workers=workers)
        with make_iterator(cfg, batch_size=1, seed=5, num_epochs=1, worker_mode=mode) as it:
            return [b["image"].tobytes() for b in it]

    base = samples(0)
    assert samples(1) == base and samples(2) == base  # same order too: the stream does not depend on workers
    assert sorted(samples(2, "processes")) == sorted(base)  # worker processes interleave their batches


def _with_bad_file(tmp_path):
    root = write_msd(tmp_path / "bad", n=3)
    bad = root / "imagesTr" / "case_01.nii.gz"
    bad.write_bytes(b"this is not a NIfTI file" * 10)
    return root, str(bad)


def test_skip_bad_drops_the_file_and_logs_it_once(tmp_path, caplog):
    root, bad = _with_bad_file(tmp_path)
    cfg = cfg_for(root, skip_bad=True)
    with caplog.at_level(logging.WARNING):
        with make_iterator(cfg, batch_size=2, seed=0, num_epochs=3) as it:
            batches = list(it)
    assert len(batches) == 3 * 2 * 2 // 2  # 2 good volumes x 2 crops x 3 epochs / batch 2
    warnings = [r for r in caplog.records if bad in r.getMessage()]
    assert len(warnings) == 1


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_bad_file_raises_data_error_naming_it(tmp_path, workers):
    root, bad = _with_bad_file(tmp_path)
    with pytest.raises(DataError) as err:
        with make_iterator(cfg_for(root, workers=workers), batch_size=2, seed=0, num_epochs=1) as it:
            list(it)
    assert os.path.samefile(err.value.path, bad)
    assert "case_01.nii.gz" in str(err.value)


def test_to_global_batch_single_process(msd):
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    with make_iterator(cfg_for(msd), batch_size=2, seed=0, num_epochs=1) as it:
        batch = next(it)
    out = to_global_batch(batch, sharding)
    assert set(out) == {"image", "label"}
    assert isinstance(out["image"], jax.Array) and out["image"].shape == (2, 8, 8, 8, 1)
    np.testing.assert_array_equal(np.asarray(out["label"]), batch["label"])


def test_state_from_other_settings_is_refused(msd):
    from medjax.errors import ConfigError

    with make_iterator(cfg_for(msd), batch_size=2, seed=0) as it:
        next(it)
        state = it.get_state()
    with make_iterator(cfg_for(msd), batch_size=4, seed=0) as other:
        with pytest.raises(ConfigError, match="batch_size"):
            other.set_state(state)


def test_bench_cli_prints_one_json_line(msd, tmp_path, capsys):
    from medjax.cli import main

    rc = main(["bench", "data", str(msd), "--crop", "8", "--spacing", "2", "--batch", "2", "--workers", "0",
               "--epochs", "1", "--cache", str(tmp_path / "cache"), "--peer", "monai"])
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["samples"] == 8 and result["source"] == "cache"
    assert result["samples_per_s"] > 0 and result["seconds"] > 0
    assert result["settings"]["crop"] == 8
    # MONAI (the interop extra `make test` installs) must have run: same samples, positive rates, the ratio
    assert "peer_error" not in result, result.get("peer_error")
    assert result["peer_samples"] == 8  # 4 volumes x 2 crops, one epoch, as medjax
    assert result["peer_samples_per_s"] > 0 and result["peer_seconds"] > 0
    assert result["ratio"] == pytest.approx(result["samples_per_s"] / result["peer_samples_per_s"], rel=1e-2)
    assert result["ratio"] > 0
