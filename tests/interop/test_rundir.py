"""An imported network is an ordinary medjax run: checkpoint info, continued pretraining, fine-tuning from it,
and pickle files refused."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from tests.interop.conftest import randomise, save_state, torch_or_skip

torch = torch_or_skip()
monai_nets = pytest.importorskip("monai.networks.nets")

TRAIN = ["data.samples_per_volume=2", "data.workers=0", "data.spacing=2.0,2.0,2.0", "data.augment=false",
         "train.batch_size=2", "train.steps=2", "train.warmup_steps=0", "train.log_every=1",
         "checkpoint.every_steps=2"]


@pytest.fixture(scope="module")
def monai_mae_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("monai")
    torch.manual_seed(0)
    net = monai_nets.MaskedAutoEncoderViT(in_channels=1, img_size=(16, 16, 16), patch_size=(8, 8, 8), hidden_size=48,
                                          mlp_dim=64, num_layers=2, num_heads=4, decoder_hidden_size=24,
                                          decoder_mlp_dim=40, decoder_num_layers=1, decoder_num_heads=2)
    randomise(net, 1, skip=("position", "decoder_pos"))
    save_state(net, d / "mae.safetensors")
    return d / "mae.safetensors"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from medjax.data.testing import write_tiny_dataset

    return write_tiny_dataset(tmp_path_factory.mktemp("data"), n=3, layout="folder", with_labels=True)


@pytest.fixture(scope="module")
def imported(tmp_path_factory, monai_mae_file, dataset):
    from medjax.cli import main

    work = tmp_path_factory.mktemp("run") / "imported"
    rc = main(["import-weights", str(monai_mae_file), "--format", "monai-mae", "--out", str(work), "--heads", "4",
               "--decoder-heads", "2", "--set", f"data.dir={dataset}", *TRAIN])
    assert rc == 0
    return work


def test_checkpoint_info_digest_equals_loaded_model(imported, monai_mae_file, capsys):
    from flax import nnx

    from medjax.cli import main
    from medjax.interop import load
    from medjax.training.digest import count_params, params_digest

    assert main(["checkpoint", "info", str(imported), "--json"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    _, mae = load(monai_mae_file, "monai-mae", heads=4, decoder_heads=2)
    params = nnx.to_pure_dict(nnx.state(mae, nnx.Param))
    assert info["latest_step"] == 0 and info["config"]["task"] == "mae"
    assert info["num_params"] == count_params(params)
    assert info["params_digest"] == params_digest(params)
    assert info["meta"]["imported"]["format"] == "monai-mae" and info["meta"]["imported"]["initialised"] == []


def test_existing_run_is_not_overwritten(imported, monai_mae_file):
    from medjax.interop import WeightsError, import_weights

    with pytest.raises(WeightsError, match="--force"):
        import_weights(monai_mae_file, "monai-mae", imported, heads=4, decoder_heads=2)


@pytest.mark.slow
def test_pretrain_continues_and_finetune_inits_from_import(imported, dataset, tmp_path):
    from medjax.config import load_config
    from medjax.finetune.loop import finetune
    from medjax.training.pretraining import pretrain

    cont = tmp_path / "cont"
    import shutil

    shutil.copytree(imported, cont)
    cfg = load_config(str(cont / "config.json"))
    s = pretrain(cfg, cont, progress=False)
    assert s["resumed_from"] == 0 and s["step"] == 2 and np.isfinite(s["final_loss"])
    ft = dataclasses.replace(cfg, task="segmentation",
                             finetune=dataclasses.replace(cfg.finetune, num_classes=3, decoder_features=4,
                                                          val_records=0))
    out = finetune(ft, tmp_path / "seg", init_from=str(imported), progress=False)
    assert out["step"] == 2
    from medjax.training.checkpoint import read_meta

    init = read_meta(tmp_path / "seg")["init"]
    assert init["step"] == 0 and init["loaded"] > 0 and init["resized"] == []


def test_pickle_refused_with_conversion_hint(tmp_path):
    from medjax.interop import WeightsError, load

    torch.save({"w": torch.zeros(2)}, tmp_path / "model.pt")
    with pytest.raises(WeightsError, match="weights_only=True"):
        load(tmp_path / "model.pt", "monai-vit")
    (tmp_path / "hf").mkdir()
    torch.save({"w": torch.zeros(2)}, tmp_path / "hf" / "pytorch_model.bin")
    with pytest.raises(WeightsError, match="pickle-based"):
        load(tmp_path / "hf", "hf-vit")


def test_allow_pickle_reads_weights_only(tmp_path, monai_mae_file):
    from safetensors.numpy import load_file

    from medjax.interop import read_weights

    sd = {k: torch.from_numpy(v) for k, v in load_file(str(monai_mae_file)).items()}
    torch.save(sd, tmp_path / "mae.pth")
    got, _, _ = read_weights(tmp_path / "mae.pth", allow_pickle=True)
    assert set(got) == set(sd) and all(np.array_equal(got[k], sd[k].numpy()) for k in sd)

    class Evil:
        def __reduce__(self):
            return (print, ("unpickled",))

    torch.save({"x": Evil()}, tmp_path / "evil.pth")
    from medjax.interop import WeightsError

    with pytest.raises(WeightsError, match="refused or failed"):
        read_weights(tmp_path / "evil.pth", allow_pickle=True)
