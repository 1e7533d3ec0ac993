"""`medjax launch --dry-run`: every topology file parses and yields the commands a user would paste."""

from __future__ import annotations

import glob
import os
import shlex

import pytest

from medjax.cli import main
from medjax.errors import ConfigError
from medjax.launcher import load_topology, plan

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "tpu_configs", "*.yaml")))
REQUIRED = {"v4-8", "v4-32", "v5e-16", "v5e-64", "v5e-256", "v5p-128", "v6e-256", "gpu-8xh100"}


def test_all_required_topologies_exist():
    names = {os.path.basename(p)[:-5] for p in CONFIGS}
    assert REQUIRED <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.basename(p))
def test_dry_run_commands(path, capsys):
    topo = load_topology(path)
    assert topo.num_devices == topo.hosts * topo.devices_per_host
    rc = main(["launch", "--tpu-config", path, "--config", "demo", "--name", "run1", "--bucket", "bkt",
               "--dry-run"])
    assert rc == 0
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln and not ln.startswith("#")]
    argvs = [shlex.split(ln) for ln in lines]  # every line must be valid shell
    assert argvs[0][:3] == ["gcloud", "compute", "tpus" if topo.platform == "tpu" else "instances"]
    joined = "\n".join(lines)
    assert f"--zone={topo.zone}" in joined
    if topo.platform == "tpu":
        assert f"--accelerator-type={topo.raw['accelerator_type']}" in joined
        assert "--worker=all" in joined
        assert ("queued-resources create" in joined) == topo.queued_resource
    run_line = next(a for a in argvs if any("medjax pretrain" in x for x in a))
    cmd = next(x for x in run_line if "medjax pretrain" in x)
    assert "--config demo" in cmd and "--workdir /mnt/medjax/runs/run1" in cmd
    assert f"--data-shards {topo.hosts}" in cmd
    mount = next(ln for ln in lines if "gcsfuse" in ln)
    assert "gcsfuse --implicit-dirs bkt /mnt/medjax" in mount
    assert lines.index(mount) < lines.index(next(ln for ln in lines if "medjax pretrain" in ln))
    assert f"train.batch_size={topo.global_batch}" in cmd
    for axis, size in topo.mesh.items():
        assert f"mesh.{axis}={size}" in cmd
    assert "data.dir=/mnt/medjax/data" in cmd


def test_bad_mesh_names_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nplatform: tpu\nzone: z\nhosts: 2\ndevices_per_host: 4\nmesh: {data: 3}\n"
                   "per_host_batch: 8\naccelerator_type: v4-16\nruntime_version: r\n")
    with pytest.raises(ConfigError, match="bad.yaml.*8"):
        load_topology(str(bad))


def test_missing_keys_named(tmp_path):
    bad = tmp_path / "m.yaml"
    bad.write_text("name: x\nplatform: tpu\n")
    with pytest.raises(ConfigError, match="missing keys.*zone"):
        load_topology(str(bad))


def test_plan_orders_create_before_run():
    topo = load_topology(os.path.join(ROOT, "tpu_configs", "v4-8.yaml"))
    steps = [s["step"] for s in plan(topo, preset="demo", vm_name="n", workdir="w", data="d")]
    assert steps.index("create") < steps.index("install") < steps.index("run on all workers")
