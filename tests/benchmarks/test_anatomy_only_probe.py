"""benchmarks/anatomy_only_probe.py: tissue-map features per window, on the same windows and fits as `medjax probe`."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "anatomy_only_probe.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("anatomy_only_probe", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_anatomy_maps_and_window_means(script):
    # a 40 mm cube of white matter (2 mm voxels) around a 12 mm cube of CSF, in background
    tissue = np.zeros((30, 30, 30), np.int64)
    tissue[5:25, 5:25, 5:25] = 3
    tissue[12:18, 12:18, 12:18] = 1
    tissue[6, 14, 14] = 1  # a CSF voxel 4 mm inside the brain
    maps = script.anatomy_maps(tissue, (2.0, 2.0, 2.0))
    assert maps.shape == (6, 30, 30, 30) and maps.dtype == np.float32
    np.testing.assert_array_equal(maps[:4].sum(0), 1.0)  # the four tissue indicators partition the volume
    deep = maps[4].astype(bool)
    # the CSF cube is 16-20 mm inside the brain (deep); the lone CSF voxel 4 mm (not deep)
    assert deep[12:18, 12:18, 12:18].all() and deep.sum() == 6**3 and not deep[6, 14, 14]
    near = maps[5].astype(bool)
    assert near[10, 14, 14] and not near[5, 5, 5] and not near[14, 14, 14]  # white, 8 mm / 30+ mm / CSF
    # window means over axial (slice_axis=2) 10x10 windows; a window hanging off the volume counts zeros there
    means = script.window_means(maps, [(14, (10, 10)), (0, (25, 25))], (10, 10), slice_axis=2)
    assert means.shape == (2, 6)
    np.testing.assert_allclose(means[0, 1], (6 * 6) / 100)  # CSF cube section 12:18 inside window 10:20
    np.testing.assert_allclose(means[0, 3], (10 * 10 - 6 * 6) / 100)  # the rest of that window is white matter
    np.testing.assert_allclose(means[1, 0], 25 / 100)  # 5x5 of the window lies in the volume, all background


def test_same_windows_and_targets_as_the_probe(script, tmp_path, capsys):
    from medjax.config import load_config
    from medjax.data.demo import build_demo
    from medjax.finetune.loop import split_records
    from medjax.finetune.probe import prepare, probe_grid

    build_demo(tmp_path, subjects=4, lesion_prior="periventricular")
    overrides = [f"data.dir={tmp_path}", "model.variant=Mu/4", "data.crop_size=32,32", "finetune.val_records=2"]
    assert script.main(["--config", "demo_cls2d", "--random-init", "0", "--set", *overrides]) == 0
    out = json.loads(capsys.readouterr().out)
    cfg = load_config("demo_cls2d", overrides)
    train, held_out = split_records(cfg)
    for name, recs in (("train", train), ("held_out", held_out)):
        prepared = prepare(cfg, recs)
        assert out[name]["volumes"] == len(recs) == 2
        assert out[name]["windows"] == sum(len(p["positions"]) for p in prepared)
        assert out[name]["window_positives"] == sum(int(p["wy"].sum()) for p in prepared)
    assert out["window"]["n"] == out["held_out"]["windows"]
    assert out["held_out"]["window_positives"] > 0 and 0.0 <= out["window"]["auroc"] <= 1.0
    assert len(out["features"]) == 6
    # the encoder alone is exactly `medjax probe --random-init`'s linear, mean-pooled window probe
    (enc,) = out["encoders"]
    assert enc["encoder"] == "random-init" and enc["seed"] == 0
    reference = probe_grid(cfg, random_init=True, seeds=(0,))[0]["random_init"]["runs"][0]["metrics"]["window"]
    assert enc["alone"] == reference
    assert enc["with_anatomy"]["n"] == out["window"]["n"] and 0.0 <= enc["with_anatomy"]["auroc"] <= 1.0
