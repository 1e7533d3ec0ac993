"""finetune-compare --methods reporting: exact parameter counts per method (from abstract shapes), the Markdown
table's columns and percentages of full, and the metric-against-trainable-parameters PNG."""

from __future__ import annotations

import numpy as np
import pytest

from medjax.peft.compare import format_methods, parameter_counts
from medjax.peft.plot import plot_methods
from tests.peft.conftest import tiny_method

D, DEPTH = 64, 2  # Mu/4: width 64, 2 blocks


@pytest.fixture(scope="module")
def counts():
    return {m: parameter_counts(tiny_method("segmentation", m)) for m in
            ("full", "linear", "lora", "adapter", "prompt", "bitfit")}


def test_trainable_counts_are_exact(counts):
    full = counts["full"]
    assert full["trainable_params"] == full["total_params"] and full["trainable_percent"] == 100.0
    assert full["encoder_trainable_params"] == full["encoder_params"] > 0
    head = full["total_params"] - full["encoder_params"]  # the UNETR decoder: trains in every method
    assert counts["linear"]["trainable_params"] == head and counts["linear"]["encoder_trainable_params"] == 0
    expected_added = {
        "lora": DEPTH * 2 * (8 * D + 8 * D),  # q and v: A (D, 8) and B (8, D) per block
        "adapter": DEPTH * (D * 16 + 16 + 16 * D + D),  # down (D, 16) + bias, up (16, D) + bias per block
        "prompt": 8 * D,  # 8 shallow prompt tokens
    }
    for method, added in expected_added.items():
        c = counts[method]
        assert c["encoder_params"] == full["encoder_params"], method  # the base encoder is the same
        assert c["encoder_trainable_params"] == added, method
        assert c["total_params"] == full["total_params"] + added, method
        assert c["trainable_params"] == head + added, method
        assert c["encoder_trainable_percent"] == pytest.approx(100.0 * added / full["encoder_params"])
    bitfit = counts["bitfit"]
    assert 0 < bitfit["encoder_trainable_params"] < counts["lora"]["encoder_trainable_params"]
    assert bitfit["total_params"] == full["total_params"]


def _result(counts):
    methods = {}
    for i, m in enumerate(("full", "lora", "linear")):
        methods[m] = {"per_seed": [0.5 + 0.01 * i, 0.52 + 0.01 * i], "seconds": [10.0, 11.0], **counts[m],
                      "checkpoint_bytes": [8 * 2 ** 20, 2 ** 20, 2 ** 19][i], "optimizer_bytes": 1024,
                      "seconds_per_step": 0.5, "step_memory_bytes": [4 * 2 ** 20, 2 ** 20, None][i]}
    methods["prompt"] = {"per_seed": [], "seconds": []}  # not run yet: no row, no point
    return {"config": "tiny", "metric": "mean_dice", "steps": 3, "seeds": [0, 1], "methods": methods}


def test_table_has_every_cost_column_and_shares_of_full(counts):
    table = format_methods(_result(counts))
    lines = table.splitlines()
    assert "step memory, XLA args + outputs + temps − donated" in lines[1]
    rows = {line.split("|")[1].strip(): line for line in lines[3:]}
    assert set(rows) == {"full", "lora", "linear"}
    lora = rows["lora"].split("|")
    assert lora[2].strip() == "0.520 ± 0.014 (2)"
    assert lora[3].strip() == f"{counts['lora']['trainable_params']:,} ({counts['lora']['trainable_percent']:.2f}%)"
    assert lora[5].strip() == "1.0 MiB (12.5%)" and lora[7].strip() == "1.0 MiB (25.0%)"
    assert rows["linear"].split("|")[7].strip() == "n/a"


def test_plot_is_a_png_with_one_point_per_finished_method(tmp_path, counts):
    from PIL import Image

    out = plot_methods(_result(counts), tmp_path / "m.png")
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 200
        pixels = np.asarray(im.convert("RGB"))
    assert pixels.std() > 10  # something is drawn
    with pytest.raises(ValueError, match="no method has a finished run"):
        plot_methods({"metric": "mean_dice", "methods": {"full": {"per_seed": [None]}}}, tmp_path / "none.png")
