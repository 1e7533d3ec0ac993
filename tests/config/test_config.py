"""Configs: every preset loads and survives a JSON round trip; overrides are type-checked; every error names the
key (or file) and what was expected."""

import json

import pytest

from medjax.config import ConfigError, apply_overrides, available_presets, from_dict, load_config, to_dict, to_json
from medjax.config.schema import Config


@pytest.mark.parametrize("name", available_presets())
def test_every_preset_loads_and_round_trips_through_json(name):
    cfg = load_config(name)
    assert cfg.name == name
    assert from_dict(Config, json.loads(to_json(cfg))) == cfg


def test_overrides_are_parsed_to_the_field_types():
    cfg = apply_overrides(load_config("demo"), ["train.steps=7", "train.lr=3e-4", "data.crop_size=16,24,32",
                                                "data.spacing=2", "model.cls_token=true", "finetune.pool=max"])
    assert cfg.train.steps == 7 and isinstance(cfg.train.steps, int)
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.data.crop_size == (16, 24, 32) and cfg.model.cls_token is True and cfg.finetune.pool == "max"
    assert to_dict(cfg)["data"]["crop_size"] == [16, 24, 32]


@pytest.mark.parametrize("override,message", [
    ("train.stepz=3", "train.stepz: no such key 'stepz'"),
    ("train.steps=ten", "train.steps='ten': expected an integer"),
    ("train.lr=fast", "train.lr='fast': expected a number"),
    ("model.cls_token=maybe", "model.cls_token='maybe': expected a boolean"),
    ("train=3", "train: is a section"),
    ("train.steps", "overrides look like key=value"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        apply_overrides(load_config("demo"), [override])


def test_misspelt_key_suggests_the_right_one():
    with pytest.raises(ConfigError, match="did you mean 'steps'"):
        apply_overrides(load_config("demo"), ["train.stepz=3"])


def test_bad_variant_is_caught_when_the_config_loads():
    with pytest.raises(ConfigError, match=r"model\.variant: variant 'Q/8'"):
        load_config("demo", ["model.variant=Q/8"])
    with pytest.raises(ConfigError, match=r"model\.variant: .*width 768 must divide by heads 5"):
        load_config("demo", ["model.variant=B/12:heads=5"])  # width 768 does not divide by 5 heads


def test_config_files(tmp_path):
    saved = tmp_path / "run.json"
    saved.write_text(to_json(load_config("demo_cls", ["train.steps=9"])))
    assert load_config(str(saved)).train.steps == 9
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ConfigError, match="broken.json: not valid JSON"):
        load_config(str(tmp_path / "broken.json"))
    (tmp_path / "extra.json").write_text(json.dumps({**json.loads(saved.read_text()), "colour": "blue"}))
    with pytest.raises(ConfigError, match="colour: no such key"):
        load_config(str(tmp_path / "extra.json"))
    (tmp_path / "empty.py").write_text("x = 1\n")
    with pytest.raises(ConfigError, match="must define get_config"):
        load_config(str(tmp_path / "empty.py"))
    (tmp_path / "mine.py").write_text("from medjax.config import load_config\n\n"
                                      "def get_config():\n    return load_config('demo', ['train.steps=5'])\n")
    assert load_config(str(tmp_path / "mine.py"), ["train.lr=0.1"]).train.steps == 5
    with pytest.raises(ConfigError, match="no_such_preset"):
        load_config("no_such_preset")
