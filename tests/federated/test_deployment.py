"""A real Flower deployment on loopback: flower-superlink and one flower-supernode per site as separate processes,
the medjax app submitted with `flwr run` (slow: process start-up and one compile per ClientApp process)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from medjax.federated.simulate import alive
from tests.federated.conftest import tiny_cfg

pytestmark = pytest.mark.slow


def _kill_after_round(dep, workdir: Path, round_: int, site: str, stop: threading.Event) -> None:
    """Kill ``site``'s SuperNode (and its ClientApp processes) once the server logged ``round_``."""
    metrics = workdir / "metrics.jsonl"
    while not stop.is_set():
        if metrics.exists() and any(json.loads(line).get("site") == "global" and json.loads(line)["round"] == round_
                                    for line in metrics.read_text().splitlines() if line.strip()):
            dep.kill_site(site)
            return
        time.sleep(0.2)


def test_two_sites_two_rounds_on_loopback(site_dirs, tmp_path):
    from medjax.federated.simulate import simulate

    workdir, audit = tmp_path / "run", tmp_path / "audit"
    # each site holds its last volume out: after the last round the sites score the global MAE on it
    cfg = tiny_cfg(site_dirs[0], "federated.rounds=2", "federated.min_sites=1", "federated.round_timeout=30",
                   "data.holdout_last=1", "train.eval_samples=2")
    stop, threads, lines = threading.Event(), [], []

    def hook(dep):  # site-2 dies after round 1: round 2 must go on with site-1 alone
        t = threading.Thread(target=_kill_after_round, args=(dep, workdir, 1, "site-2", stop), daemon=True)
        t.start()
        threads.append(t)

    try:
        summary = simulate(cfg, workdir, site_dirs, env={"MEDJAX_FEDERATED_AUDIT": str(audit)}, on_line=lines.append,
                           deployment_hook=hook, timeout=900)
    finally:
        stop.set()
    assert summary["rounds"] == 2
    assert any("[medjax] round 2/2" in line for line in lines)
    # every process started (SuperLink, SuperNodes, SuperExecs, ServerApp, ClientApps, flwr run) is gone
    assert len(summary["pids"]) >= 6
    assert not [p for p in summary["pids"] if alive(p)]

    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    glob = {r["round"]: r for r in records if r["site"] == "global"}
    assert sorted(glob) == [1, 2]
    # round 1: whoever answered within round_timeout (on a loaded machine one site may be late); round 2: site-1
    # alone, site-2 being dead (the SuperLink reports it unavailable, or the timeout passes)
    assert glob[1]["sites"] and set(glob[1]["sites"]) <= {"site-1", "site-2"}
    assert glob[2]["sites"] == ["site-1"]
    for r in records:
        assert {"round", "site", "loss", "num_examples", "epsilon", "seconds", "bytes_sent"} <= set(r)
        assert r["bytes_sent"] > 0
    assert (workdir / "checkpoints" / "2").is_dir()
    # the evaluation message went to the living site only (site-2 is dead) and came back as aggregates
    ev = json.loads((workdir / "eval.json").read_text())
    assert ev["round"] == 2 and list(ev["sites"]) == ["site-1"] and ev["num_val"] == 1
    assert set(ev["sites"]["site-1"]) == {"num_val", "val_loss"} and ev["sites"]["site-1"]["val_loss"] > 0
    assert ev["mean"]["val_loss"] == ev["sites"]["site-1"]["val_loss"] and summary["eval"] == ev

    # what each site's ClientApp processes opened: its own data, never the other site's
    mine = {"site-1": str(Path(site_dirs[0]).absolute()), "site-2": str(Path(site_dirs[1]).absolute())}
    opened: dict[str, set[str]] = {"site-1": set(), "site-2": set()}
    for f in audit.glob("site-*.txt"):
        opened[f.name.rsplit("-", 1)[0]] |= set(f.read_text().splitlines())
    assert opened["site-1"], "the audit recorded nothing for site-1"
    for site, paths in opened.items():
        other = mine["site-2" if site == "site-1" else "site-1"]
        assert not [p for p in paths if p.startswith(other + "/")], f"{site} opened another site's files"
    # the audit sees the reads it must see (site-2 may have been killed before reading: only the negative check)
    assert [p for p in opened["site-1"] if p.startswith(mine["site-1"] + "/") and p.endswith(".nii.gz")]


def test_every_process_is_stopped_after_a_failure(site_dirs, tmp_path):
    from medjax.federated.simulate import simulate

    seen = {}

    def fail(dep):
        time.sleep(1.0)
        seen["pids"] = dep.watch()
        raise RuntimeError("boom")

    cfg = tiny_cfg(site_dirs[0], "federated.rounds=1")
    with pytest.raises(RuntimeError, match="boom"):
        simulate(cfg, tmp_path / "run", site_dirs, deployment_hook=fail)
    assert len(seen["pids"]) >= 3  # the SuperLink and two SuperNodes at least
    assert not [p for p in seen["pids"] if alive(p)]


def test_sigterm_stops_every_process(site_dirs, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    marker = tmp_path / "pids.json"
    script = f"""
import json, time
from medjax.config import apply_overrides, get_preset
from medjax.federated.simulate import simulate
def hold(dep):
    open({str(marker)!r}, "w").write(json.dumps(sorted(dep.watch())))
    time.sleep(600)
cfg = apply_overrides(get_preset("demo"), ["data.dir={site_dirs[0]}", "federated.rounds=1"])
simulate(cfg, {str(tmp_path / "run")!r}, {list(site_dirs)!r}, deployment_hook=hold)
"""
    p = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        t0 = time.time()
        while not marker.exists() and p.poll() is None and time.time() - t0 < 300:
            time.sleep(0.2)
        assert marker.exists(), "the deployment did not start"
        time.sleep(0.5)
        pids = json.loads(marker.read_text())
        assert len(pids) >= 3
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert not [q for q in pids if alive(q)]
