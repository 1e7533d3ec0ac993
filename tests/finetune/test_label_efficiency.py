"""`medjax experiment label-efficiency`: the grid's rows, table, plot and resume on a tiny real run."""

import json

import pytest

from medjax.finetune.label_efficiency import format_table, summarise
from tests.finetune.probe_data import cube_data, mae_run, probe_cfg  # noqa: F401  (module-scoped fixtures)


def test_summary_flags_help_only_beyond_two_pooled_std():
    rows = [{"labeled": 1, "arm": a, "seed": s, "value": v} for a, vals in
            (("pretrained", (0.80, 0.82, 0.84)), ("scratch", (0.60, 0.62, 0.64))) for s, v in enumerate(vals)]
    rows += [{"labeled": 4, "arm": a, "seed": s, "value": v} for a, vals in
             (("pretrained", (0.70, 0.75, 0.80)), ("scratch", (0.69, 0.74, 0.79))) for s, v in enumerate(vals)]
    one, four = summarise(rows, (1, 4), "auroc")
    assert one["delta"] == pytest.approx(0.20) and one["delta_std"] == pytest.approx(10.0) and one["helps"]
    assert four["delta"] == pytest.approx(0.01) and not four["helps"]
    assert one["pretrained"]["values"] == [0.80, 0.82, 0.84] and one["scratch"]["seeds"] == 3


def test_tiny_grid_writes_table_json_and_plot_then_resumes(cube_data, mae_run, tmp_path):  # noqa: F811
    import dataclasses

    from medjax.finetune.label_efficiency import label_efficiency

    cfg = probe_cfg(cube_data)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=2, warmup_steps=0, log_every=1),
                              checkpoint=dataclasses.replace(cfg.checkpoint, every_steps=100))
    run, _ = mae_run
    res = label_efficiency(cfg, tmp_path / "le", init_from=str(run), labels=(2,), seeds=(0,))
    assert [(r["labeled"], r["arm"], r["seed"]) for r in res["rows"]] == [(2, "pretrained", 0), (2, "scratch", 0)]
    # held-out volume AUROC (2 of the 4 held-out volumes hold a cube, so it is defined)
    assert all(0.0 <= r["value"] <= 1.0 for r in res["rows"]) and res["num_val"] == 4
    saved = json.loads((tmp_path / "le" / "label_efficiency.json").read_text())
    assert saved["metric"] == "auroc" and len(saved["rows"]) == 2 and saved["summary"][0]["labeled"] == 2
    md = (tmp_path / "le" / "label_efficiency.md").read_text()
    assert md == format_table(saved) and "| 2 | pretrained | 0 |" in md and "| 2 | scratch | 0 |" in md
    png = (tmp_path / "le" / "label_efficiency.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    init = json.loads((tmp_path / "le" / "n2" / "pretrained" / "seed0" / "init.json").read_text())
    assert init["step"] == 3  # the pretrained arm loaded the MAE encoder; the scratch arm did not
    assert not (tmp_path / "le" / "n2" / "scratch" / "seed0" / "init.json").exists()
    again = label_efficiency(cfg, tmp_path / "le", init_from=str(run), labels=(2,), seeds=(0,))
    assert [r["reused"] for r in again["rows"]] == [True, True]
    assert [r["value"] for r in again["rows"]] == [r["value"] for r in res["rows"]]
