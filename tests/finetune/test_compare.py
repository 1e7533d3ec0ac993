"""Summary statistics and the printed table of `medjax finetune-compare` results."""

import math

from medjax.finetune.compare import _mean_std, format_compare


def test_mean_std_over_seeds_skips_missing_values():
    mean, std = _mean_std([0.5, None, 0.7, float("nan")])
    assert math.isclose(mean, 0.6) and math.isclose(std, math.sqrt(0.02))  # sample std of (0.5, 0.7)
    assert _mean_std([0.4]) == (0.4, 0.0)
    assert _mean_std([None]) == (None, None)


def test_format_compare_lists_both_arms_and_delta():
    result = {"config": "demo_seg", "metric": "mean_dice", "num_labeled": 2, "num_val": 4, "steps": 100,
              "seeds": [0, 1], "delta": 0.05,
              "pretrained": {"per_seed": [0.6, 0.7], "mean": 0.65, "std": 0.0707},
              "scratch": {"per_seed": [0.6, None], "mean": 0.6, "std": 0.0}}
    text = format_compare(result)
    assert "| demo_seg | pretrained | 2 | 100 | 0.650 ± 0.071 | 0.600, 0.700 |" in text
    assert "| demo_seg | scratch | 2 | 100 | 0.600 ± 0.000 | 0.600, n/a |" in text
    assert text.splitlines()[0] == "mean_dice (held-out 4 volumes, seeds [0, 1])"
    assert text.endswith("delta (pretrained - scratch): +0.050")
