"""The prepared cache: round trip against the raw pipeline, manifest, stale detection, NIfTI export, CLI."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import nibabel as nib
import numpy as np
import pytest

from medjax.config.schema import DataConfig
from medjax.data.cache import open_cache, prepare, read_manifest
from medjax.data.pipeline import make_iterator
from medjax.errors import DataError, StaleCacheError

# RAI-oriented, anisotropic grid: preprocessing reorients and resamples it
_AFFINE = np.array([[1.5, 0, 0, -10], [0, 2.0, 0, 5], [0, 0, -2.5, 30], [0, 0, 0, 1]])


def write_msd(root, n=3, shape=(16, 12, 9), seed=0):
    """A tiny MSD folder of int16 volumes (noise + a bright labelled ball) with uint8 labels."""
    rng = np.random.default_rng(seed)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")).astype(float)
    training = []
    for i in range(n):
        centre = np.array(shape)[:, None, None, None] / 2 + rng.uniform(-1, 1, (3, 1, 1, 1))
        ball = ((grid - centre) ** 2).sum(0) < 16
        image = (rng.normal(200, 30, shape) * (grid[0] > 1) + 500 * ball).astype(np.int16)
        name = f"vol_{i}.nii.gz"
        nib.save(nib.Nifti1Image(image, _AFFINE), root / "imagesTr" / name)
        nib.save(nib.Nifti1Image(ball.astype(np.uint8), _AFFINE), root / "labelsTr" / name)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    (root / "dataset.json").write_text(json.dumps({"name": "tiny", "modality": {"0": "MRI"},
                                                   "labels": {"0": "bg", "1": "ball"}, "numTraining": n,
                                                   "training": training, "test": []}))
    return root


def cfg_for(root, **kw) -> DataConfig:
    base = dict(dir=str(root), crop_size=(8,), spacing=(2.0,), samples_per_volume=2, workers=0, intensity="mri")
    base.update(kw)
    return DataConfig(**base)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = write_msd(tmp_path_factory.mktemp("src"))
    out = tmp_path_factory.mktemp("cache") / "c"
    cfg = cfg_for(root)
    manifest = prepare(str(root), str(out), cfg, workers=2, export_nifti=True)
    return root, out, cfg, manifest


def test_manifest_describes_every_record(prepared):
    root, out, cfg, manifest = prepared
    assert manifest == read_manifest(str(out))
    assert manifest["summary"]["records"] == 3 and manifest["summary"]["skipped"] == 0
    assert len(manifest["fingerprint"]) == 64
    for e in manifest["records"]:
        assert e["original_shape"] == [16, 12, 9]
        np.testing.assert_allclose(e["original_affine"], _AFFINE)
        image = np.load(out / e["image"], mmap_mode="r")
        assert image.dtype == np.float32 and list(image.shape) == e["shape"] and image.shape[-1] == 1
        assert all(s >= 8 for s in image.shape[:3])  # padded to the crop size
        label = np.load(out / e["label"])
        assert label.shape == image.shape[:3] and label.dtype == np.uint8
        affine = np.asarray(e["affine"])
        np.testing.assert_allclose(np.sqrt((affine[:3, :3] ** 2).sum(0)), [2.0, 2.0, 2.0], atol=1e-6)
        assert "".join(nib.aff2axcodes(affine)) == "RAS"
        assert not any(n.endswith(".tmp") or ".tmp" in n for n in os.listdir(out / os.path.dirname(e["image"])))


def test_cache_batches_equal_raw_pipeline_batches(prepared):
    root, out, cfg, _ = prepared
    with make_iterator(cfg, batch_size=2, seed=7, num_epochs=2) as raw_it:
        raw = list(raw_it)
    with make_iterator(replace(cfg, cache_dir=str(out)), batch_size=2, seed=7, num_epochs=2) as cache_it:
        cached = list(cache_it)
    assert len(raw) == len(cached) == 6
    for a, b in zip(raw, cached):
        assert a.keys() == b.keys()
        np.testing.assert_allclose(a["image"], b["image"], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(a["label"], b["label"])


def test_export_nifti_has_the_prepared_affine(prepared):
    _, out, _, manifest = prepared
    for e in manifest["records"]:
        folder = out / os.path.dirname(e["image"])
        img = nib.load(folder / "image.nii.gz")
        np.testing.assert_allclose(img.affine, e["affine"], atol=1e-5)
        np.testing.assert_allclose(img.get_fdata(dtype=np.float32), np.load(out / e["image"])[..., 0], atol=1e-6)
        lab = nib.load(folder / "label.nii.gz")
        np.testing.assert_array_equal(np.asarray(lab.dataobj), np.load(out / e["label"]))
        assert img.header["descrip"].tobytes().strip(b"\x00") == b""


def test_open_cache_returns_memmappable_records(prepared):
    _, out, cfg, _ = prepared
    records = open_cache(str(out), cfg)
    assert len(records) == 3
    assert all(os.path.isfile(r["image"]) and os.path.isfile(r["label"]) for r in records)
    for r in records:  # the foreground voxel list the crops draw from, without scanning the label
        fg = np.load(r["foreground"], mmap_mode="r")
        assert fg.dtype == np.int32 and fg.shape[1] == 3 and len(fg) > 0
        np.testing.assert_array_equal(fg, np.argwhere(np.load(r["label"]) > 0))


def test_changed_settings_are_stale(prepared):
    _, out, cfg, _ = prepared
    with pytest.raises(StaleCacheError) as err:
        open_cache(str(out), replace(cfg, spacing=(1.5,)))
    msg = str(err.value)
    assert "spacing" in msg and "[2.0, 2.0, 2.0]" in msg and "medjax data prepare" in msg and "--spacing 1.5" in msg
    with pytest.raises(StaleCacheError, match="intensity"):
        open_cache(str(out), replace(cfg, intensity="ct"))
    with pytest.raises(StaleCacheError, match="pad"):
        open_cache(str(out), replace(cfg, crop_size=(10,)))


def test_touched_source_file_is_stale(tmp_path):
    root = write_msd(tmp_path / "src", n=2)
    out = tmp_path / "cache"
    cfg = cfg_for(root)
    prepare(str(root), str(out), cfg, workers=0)
    open_cache(str(out), cfg)  # fresh
    src = root / "imagesTr" / "vol_1.nii.gz"
    st = os.stat(src)
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    with pytest.raises(StaleCacheError) as err:
        open_cache(str(out), cfg)
    assert "vol_1.nii.gz" in str(err.value) and "modified" in str(err.value)
    # the pipeline refuses it as well
    with pytest.raises(StaleCacheError):
        make_iterator(replace(cfg, cache_dir=str(out)), batch_size=2, seed=0)
    os.remove(src)
    with pytest.raises(StaleCacheError, match="missing"):
        open_cache(str(out), cfg)


def test_missing_cache_names_the_folder(tmp_path):
    with pytest.raises(DataError, match="no manifest.json"):
        open_cache(str(tmp_path / "nothing"), DataConfig())


def test_bad_file_fails_prepare_or_is_skipped(tmp_path):
    root = write_msd(tmp_path / "src", n=3)
    bad = root / "imagesTr" / "vol_2.nii.gz"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(DataError, match="vol_2.nii.gz"):
        prepare(str(root), str(tmp_path / "c1"), cfg_for(root), workers=0)
    assert not (tmp_path / "c1" / "manifest.json").exists()
    manifest = prepare(str(root), str(tmp_path / "c2"), cfg_for(root, skip_bad=True), workers=0)
    assert manifest["summary"]["records"] == 2 and manifest["summary"]["skipped"] == 1
    assert manifest["skipped"][0]["path"].endswith("vol_2.nii.gz")


def test_prepare_cli(tmp_path, capsys):
    from medjax.cli import main

    root = write_msd(tmp_path / "src", n=2)
    out = tmp_path / "cache"
    rc = main(["data", "prepare", str(root), str(out), "--spacing", "2", "--crop", "8", "--workers", "0",
               "--export-nifti"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "prepared 2 records" in printed and "MB" in printed
    assert f"--set data.dir={root} data.cache_dir={out}" in printed  # both: the cache is checked against data.dir
    records = open_cache(str(out), cfg_for(root))
    assert len(records) == 2
    assert os.path.isfile(os.path.join(os.path.dirname(records[0]["image"]), "image.nii.gz"))


# ---------------------------------------------------------------------------------------------------------------
# The cache is checked against data.dir: the dataset it came from, its record list and its files


def _folder_cache(tmp_path, n=3):
    from medjax.data.testing import write_blob_volumes

    root = write_blob_volumes(tmp_path / "vols", n=n, shape=(12, 12, 12))
    out = tmp_path / "cache"
    cfg = cfg_for(root, intensity="none")
    prepare(str(root), str(out), cfg, workers=0)
    return root, out, cfg


def test_manifest_stores_source_records_and_fingerprints(tmp_path):
    root, out, cfg = _folder_cache(tmp_path)
    manifest = read_manifest(str(out))
    assert manifest["format"] == 3
    assert manifest["source"] == {"path": os.path.realpath(root), "kind": "folder"}
    assert [r["id"] for r in manifest["source_records"]] == ["vol00", "vol01", "vol02"]
    for path, fp in manifest["sources"].items():
        size, mtime_ns, head = fp
        st = os.stat(path)
        assert (size, mtime_ns) == (st.st_size, st.st_mtime_ns) and len(head) == 16


def test_cache_from_another_folder_is_refused(tmp_path):
    import shutil

    root, out, cfg = _folder_cache(tmp_path)
    other = tmp_path / "other"
    shutil.copytree(root, other)  # even an identical copy is another dataset
    with pytest.raises(StaleCacheError) as err:
        open_cache(str(out), replace(cfg, dir=str(other)))
    msg = str(err.value)
    assert f"prepared from {os.path.realpath(root)}" in msg and f"data.dir is {os.path.realpath(other)}" in msg
    assert f"medjax data prepare {other} {out} --spacing 2 " in msg
    # the training pipeline opens caches through the same check
    with pytest.raises(StaleCacheError, match="data.dir is"):
        make_iterator(replace(cfg, dir=str(other), cache_dir=str(out)), batch_size=2, seed=0)
    # the dataset it was built from (and an empty data.dir, meaning "the cache's own source") still open
    assert len(open_cache(str(out), cfg)) == 3
    assert len(open_cache(str(out), replace(cfg, dir=""))) == 3
    assert len(open_cache(str(out), cfg, src=os.path.join(root, "."))) == 3  # same folder, other spelling


def test_added_or_removed_volume_is_refused(tmp_path):
    import shutil

    root, out, cfg = _folder_cache(tmp_path)
    shutil.copy(os.path.join(root, "vol00.nii.gz"), os.path.join(root, "vol03.nii.gz"))
    with pytest.raises(StaleCacheError) as err:
        open_cache(str(out), cfg)
    assert "1 new record(s): vol03" in str(err.value) and "medjax data prepare" in str(err.value)
    with pytest.raises(StaleCacheError, match="new record"):
        make_iterator(replace(cfg, cache_dir=str(out)), batch_size=2, seed=0)
    os.remove(os.path.join(root, "vol03.nii.gz"))
    open_cache(str(out), cfg)
    os.remove(os.path.join(root, "vol01.nii.gz"))
    with pytest.raises(StaleCacheError, match=r"1 removed record\(s\): vol01"):
        open_cache(str(out), cfg)


def test_replaced_file_with_same_size_and_time_is_refused(tmp_path):
    """An uncompressed volume overwritten by another of the same size, its time preserved (``cp -p``)."""
    from medjax.data.io_nifti import write_nifti

    root = tmp_path / "vols"
    for i in range(2):
        write_nifti(root / f"v{i}.nii", np.random.default_rng(i).normal(size=(12, 12, 12)).astype(np.float32),
                    np.diag([2.0, 2.0, 2.0, 1.0]))
    out = tmp_path / "cache"
    cfg = cfg_for(root, intensity="none")
    prepare(str(root), str(out), cfg, workers=0)
    target, other = root / "v0.nii", root / "v1.nii"
    st = os.stat(target)
    target.write_bytes(other.read_bytes())
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(target).st_size == st.st_size and os.stat(target).st_mtime_ns == st.st_mtime_ns
    with pytest.raises(StaleCacheError, match="modified since preparing: .*v0.nii"):
        open_cache(str(out), cfg)


def test_manifest_record_changes_are_refused_but_a_rewritten_manifest_is_fresh(tmp_path):
    """Fine-tuning rewrites its record manifest each run: same records -> fresh; another class -> stale."""
    from medjax.data.testing import write_blob_volumes

    vols = write_blob_volumes(tmp_path / "vols", n=2, shape=(12, 12, 12))
    entries = [{"image": os.path.join(vols, f"vol0{i}.nii.gz"), "class": i} for i in range(2)]
    manifest = tmp_path / "records.json"
    manifest.write_text(json.dumps(entries))
    out = tmp_path / "cache"
    cfg = cfg_for(manifest, intensity="none")
    prepare(str(manifest), str(out), cfg, workers=0)
    manifest.write_text(json.dumps(entries, indent=2))  # rewritten, same records
    st = os.stat(manifest)
    os.utime(manifest, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert [r["class"] for r in open_cache(str(out), cfg)] == [0, 1]
    entries[1]["class"] = 0
    manifest.write_text(json.dumps(entries))
    with pytest.raises(StaleCacheError, match=r"1 changed record\(s\): vol01 \(class\)"):
        open_cache(str(out), cfg)


def test_cache_from_an_older_medjax_is_refused(tmp_path):
    root, out, cfg = _folder_cache(tmp_path, n=2)
    path = out / "manifest.json"
    old = json.loads(path.read_text())
    old["format"] = 2
    for key in ("source", "source_records"):
        del old[key]
    path.write_text(json.dumps(old))
    with pytest.raises(StaleCacheError) as err:
        open_cache(str(out), cfg)
    msg = str(err.value)
    assert "older medjax (cache format 2" in msg and f"medjax data prepare {root} {out}" in msg


def test_edited_manifest_is_refused(tmp_path):
    root, out, cfg = _folder_cache(tmp_path, n=2)
    path = out / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["source_records"].pop()  # hide a record from the check
    path.write_text(json.dumps(manifest))
    with pytest.raises(StaleCacheError, match="fingerprint does not match"):
        open_cache(str(out), cfg)


def test_ensure_prepared_rebuilds_for_another_folder(tmp_path):
    from medjax.data.cache import ensure_prepared
    from medjax.data.testing import write_blob_volumes

    root, out, cfg = _folder_cache(tmp_path)
    records, rebuilt = ensure_prepared(str(root), str(out), cfg, workers=0)
    assert not rebuilt and len(records) == 3
    other = write_blob_volumes(tmp_path / "other", n=2, shape=(12, 12, 12), seed=5)
    records, rebuilt = ensure_prepared(other, str(out), replace(cfg, dir=other), workers=0)
    assert rebuilt and len(records) == 2
    assert read_manifest(str(out))["source"]["path"] == os.path.realpath(other)


def test_file_added_to_a_dicom_series_is_refused(tmp_path):
    import shutil

    from medjax.data.io_dicom_write import write_dicom_series

    vol = (np.arange(10 * 9 * 6).reshape(10, 9, 6) % 97).astype(np.int16)
    root = tmp_path / "src"
    for name in ("s1", "s2"):
        write_dicom_series(str(root / name), vol, np.diag([2.0, 2.0, 2.0, 1.0]), modality="MR")
    out = tmp_path / "cache"
    cfg = cfg_for(root, intensity="none")
    prepare(str(root), str(out), cfg, workers=0)
    assert [r["id"] for r in open_cache(str(out), cfg)] == ["s1", "s2"]
    first = sorted(os.listdir(root / "s1"))[0]
    shutil.copy(root / "s1" / first, root / "s1" / "extra.dcm")
    with pytest.raises(StaleCacheError, match=r"new files: .*s1/extra.dcm"):
        open_cache(str(out), cfg)
