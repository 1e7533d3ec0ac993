"""Whole-batch pipeline elements (crops written into the batch): the same batches and states as the general
per-sample layout, for prepared caches and raw volumes, 3D and 2D, labels and classes."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from medjax.config.schema import DataConfig
from medjax.data.batch_crops import LAYOUT_BATCHES, LAYOUT_SAMPLES, convert_state
from medjax.data.cache import prepare
from medjax.data.pipeline import make_iterator
from medjax.data.testing import write_tiny_dataset
from medjax.errors import DataError


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """5 labelled cases with a class each (JSON manifest) and their prepared cache."""
    root = tmp_path_factory.mktemp("tiny")
    src = write_tiny_dataset(root, n=5, layout="json", shape=(14, 12, 10), spacing=(2.0, 2.0, 2.0))
    cfg = DataConfig(dir=src, crop_size=(8,), spacing=(2.0,), samples_per_volume=2, workers=0, intensity="mri")
    cache = str(root / "cache")
    prepare(src, cache, cfg, workers=0)
    return cfg, cache


def _both(cfg, *, batch_size, num_epochs=2, take=None, **kw):
    """Batches of the per-sample layout (forced by skip_bad, which only it supports) and the batch layout."""
    out = {}
    for layout, c in ((LAYOUT_SAMPLES, dataclasses.replace(cfg, skip_bad=True)), (LAYOUT_BATCHES, cfg)):
        with make_iterator(c, batch_size=batch_size, seed=3, num_epochs=num_epochs, **kw) as it:
            assert it.layout == layout
            out[layout] = list(itertools.islice(it, take)) if take else list(it)
    return out[LAYOUT_SAMPLES], out[LAYOUT_BATCHES]


def _assert_same(a, b):
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            assert x[k].dtype == y[k].dtype and x[k].shape == y[k].shape, k
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


@pytest.mark.parametrize("cached", [True, False])
@pytest.mark.parametrize("batch_size", [2, 4, 6])
def test_batch_layout_equals_per_sample_layout(dataset, cached, batch_size):
    cfg, cache = dataset
    cfg = dataclasses.replace(cfg, cache_dir=cache if cached else "")
    a, b = _both(cfg, batch_size=batch_size, num_epochs=3)
    assert len(b) == 5 * 3 * 2 // batch_size  # drop_remainder drops the same tail
    _assert_same(a, b)
    first = b[0]
    assert set(first) == {"image", "label", "class"}
    assert first["image"].shape == (batch_size, 8, 8, 8, 1) and first["image"].dtype == np.float32
    assert first["label"].shape == (batch_size, 8, 8, 8) and first["label"].dtype == np.int32
    assert first["class"].shape == (batch_size,) and first["class"].dtype == np.int32


def test_batch_layout_2d_threads_and_endless(dataset):
    cfg, cache = dataset
    cfg2d = dataclasses.replace(cfg, spatial_dims=2, crop_size=(6, 6), samples_per_volume=3)
    a, b = _both(cfg2d, batch_size=3, num_epochs=None, take=12)
    _assert_same(a, b)
    assert b[0]["image"].shape == (3, 6, 6, 1)
    threads = dataclasses.replace(cfg, cache_dir=cache, workers=2)
    _assert_same(*_both(threads, batch_size=4, num_epochs=2))


def test_batch_size_not_a_multiple_uses_the_per_sample_layout(dataset):
    cfg, cache = dataset
    with make_iterator(dataclasses.replace(cfg, cache_dir=cache), batch_size=3, seed=0, num_epochs=1) as it:
        assert it.layout == LAYOUT_SAMPLES
        assert len(list(it)) == 5 * 2 // 3


@pytest.mark.parametrize("have, want", [(LAYOUT_SAMPLES, LAYOUT_BATCHES), (LAYOUT_BATCHES, LAYOUT_SAMPLES)])
@pytest.mark.parametrize("taken", [0, 1, 3])
def test_states_restore_across_layouts(dataset, have, want, taken):
    """A checkpoint's iterator state written by either layout resumes the other at the same sample."""
    cfg, cache = dataset
    cfgs = {LAYOUT_SAMPLES: dataclasses.replace(cfg, cache_dir=cache, skip_bad=True),
            LAYOUT_BATCHES: dataclasses.replace(cfg, cache_dir=cache)}
    with make_iterator(cfgs[have], batch_size=4, seed=1) as it:
        for _ in range(taken):
            next(it)
        state = it.get_state()
        expected = [next(it) for _ in range(4)]
    assert state["layout"] == have
    with make_iterator(cfgs[want], batch_size=4, seed=1) as other:
        other.set_state(state)
        _assert_same(expected, [next(other) for _ in range(4)])


def test_convert_state_positions():
    spv, bs = 2, 4
    assert convert_state({"parent": {"next_index": 5}, "next_index_in_buffer": 2}, LAYOUT_SAMPLES, LAYOUT_BATCHES,
                         batch_size=bs, samples_per_volume=spv) == {"next_index": 3}  # 12 samples
    assert convert_state({"next_index": 3}, LAYOUT_BATCHES, LAYOUT_SAMPLES, batch_size=bs,
                         samples_per_volume=spv) == {"parent": {"next_index": 5}, "next_index_in_buffer": 2}
    same = {"next_index": 7}
    assert convert_state(same, LAYOUT_BATCHES, LAYOUT_BATCHES, batch_size=bs, samples_per_volume=spv) is same


def test_states_of_older_medjax_restore(dataset):
    """States written before layouts existed (no "layout" key) are per-sample states."""
    cfg, cache = dataset
    c = dataclasses.replace(cfg, cache_dir=cache)
    with make_iterator(dataclasses.replace(c, skip_bad=True), batch_size=2, seed=0) as it:
        next(it)
        state = it.get_state()
        expected = next(it)
    del state["layout"]
    with make_iterator(c, batch_size=2, seed=0) as other:
        other.set_state(state)
        _assert_same([expected], [next(other)])


def test_records_with_and_without_labels_in_one_batch_are_refused(tmp_path):
    from medjax.data.testing import write_blob_volumes

    src = write_blob_volumes(tmp_path / "vols", n=2, shape=(12, 12, 12))
    import json
    import os

    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps([{"image": os.path.join(src, "vol00.nii.gz"), "label": None},
                                    {"image": os.path.join(src, "vol01.nii.gz"), "class": 1}]))
    cfg = DataConfig(dir=str(manifest), crop_size=(8,), spacing=(2.0,), samples_per_volume=1, workers=0,
                     intensity="none", shuffle=False)
    with make_iterator(cfg, batch_size=2, seed=0, num_epochs=1) as it:
        with pytest.raises(DataError, match="some volumes have a 'class' and others do not"):
            next(it)
