"""`medjax bench infer` times medjax sliding-window segmentation and MONAI's on the same volume (MONAI and torch come
with the `interop` extra that `make test` installs)."""

import json

import pytest

from medjax.cli import main


@pytest.mark.slow  # compiles a UNETR forward and builds MONAI's (about 15 s on a loaded CPU)
def test_bench_infer_prints_one_json_line(capsys):
    # windows of 16 voxels: MONAI's UNETR always uses 16-voxel patches
    argv = ["bench", "infer", "--volume", "20", "18", "16", "--window", "16", "16", "16", "--variant", "Mu/8",
            "--features", "4", "--classes", "2", "--repeats", "1", "--batch", "2"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["volume"] == [20, 18, 16] and out["window"] == [16, 16, 16] and out["variant"] == "Mu/8"
    assert out["medjax_s"] > 0 and out["medjax_params"] > 0
    # MONAI and torch come with the interop extra that `make test` installs: the peer must have run
    assert "monai" not in out, f"the MONAI peer did not run: {out.get('monai')}"
    assert out["monai_s"] > 0 and out["monai_params"] > 0 and out["monai_version"]
    assert out["ratio_monai_over_medjax"] == pytest.approx(out["monai_s"] / out["medjax_s"], rel=0.02)


@pytest.mark.slow
def test_bench_infer_says_why_monai_cannot_take_a_small_window(capsys):
    argv = ["bench", "infer", "--volume", "10", "10", "8", "--window", "8", "8", "8", "--variant", "Mu/4",
            "--features", "4", "--classes", "2", "--repeats", "1", "--batch", "2"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["medjax_s"] > 0 and "monai_s" not in out
    assert out["monai"].startswith("MONAI UNETR cannot take --window 8 8 8") and "patch_size" in out["monai"]
