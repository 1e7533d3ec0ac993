"""`medjax bench infer` times medjax sliding-window segmentation and reports MONAI when importable."""

import json

import pytest

from medjax.cli import main


@pytest.mark.slow  # compiles a UNETR forward (about 10 s on a loaded CPU)
def test_bench_infer_prints_one_json_line(capsys):
    argv = ["bench", "infer", "--volume", "12", "12", "10", "--window", "8", "8", "8", "--variant", "Mu/4",
            "--features", "4", "--classes", "2", "--repeats", "1", "--batch", "2"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["volume"] == [12, 12, 10] and out["window"] == [8, 8, 8] and out["variant"] == "Mu/4"
    assert out["medjax_s"] > 0 and out["medjax_params"] > 0
    # either MONAI ran (ratio reported) or the reason it did not is stated
    assert ("ratio_monai_over_medjax" in out and out["monai_s"] > 0) or isinstance(out.get("monai"), str)
