"""FederatedView, headless: reads a federated metrics.jsonl written here, and follows a process that writes one."""

from __future__ import annotations

import json
import sys
import textwrap
import time

import pytest

from medjax.interactive.federated_view import FederatedView, summarize_federated

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _record(rnd: int, site: str, loss: float, eps=None, n: int = 8) -> dict:
    return {"round": rnd, "site": site, "loss": loss, "num_examples": n, "epsilon": eps, "seconds": 1.5 + rnd,
            "bytes_sent": 1000 * rnd}


def _write(path, records, torn: str = "") -> None:
    with open(path, "a") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
        f.write(torn)


def _round(rnd: int, eps) -> list[dict]:
    sites = [_record(rnd, f"site-{k}", 2.0 / rnd + 0.1 * k, eps, n=4 * k) for k in (1, 2, 10)]
    return sites + [{**_record(rnd, "global", 1.9 / rnd, eps), "bytes_sent": 0}]


def test_summary_orders_sites_and_collects_series():
    records = _round(1, 1.5) + _round(2, 2.25) + [{"note": "no round"}, {"round": 2, "site": "site-1", "loss": 0.5,
                                                                      "epsilon": 2.25, "seconds": 9.0,
                                                                      "bytes_sent": 7}]
    s = summarize_federated(records)
    assert s["sites"] == ["site-1", "site-2", "site-10"]  # natural order, global kept apart
    assert s["rounds"] == [1, 2]
    assert s["loss"]["global"] == [(1, 1.9), (2, 0.95)]
    assert s["loss"]["site-1"] == [(1, 2.1), (2, 0.5)]  # a repeated report of a round: the later one wins
    assert s["epsilon"] == [(1, 1.5), (2, 2.25)]
    assert s["bytes_sent"] == [(1, 3000), (2, 7 + 2000 + 2000)]
    assert s["seconds"] == [(1, 2.5), (2, 9.0)]
    assert s["last"]["site-10"]["round"] == 2
    no_dp = summarize_federated(_round(1, None))
    assert no_dp["epsilon"] == [] and summarize_federated([])["sites"] == []


def test_view_reads_a_workdir_and_refreshes(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    _write(metrics, _round(1, 0.8))
    view = FederatedView(tmp_path, rounds=3, follow=False)
    assert view._sites.value == "3 sites: site-1, site-2, site-10"
    assert view._progress.value == 1 and view._progress.max == 3
    assert view._status.value.startswith(f"reading {tmp_path}: round 1/3, global loss 1.9000, epsilon spent 0.8")
    table = view._table.value
    assert table.index(">global<") < table.index(">site-1<") < table.index(">site-2<") < table.index(">site-10<")
    first = view.to_png()
    assert first.startswith(PNG_MAGIC)
    assert not view.finished
    # more rounds arrive, the last line still being written
    _write(metrics, _round(2, 1.2) + _round(3, 1.5), torn='{"round": 4, "si')
    view.refresh()
    assert view._progress.value == 3 and view.finished
    assert view._status.value.startswith("complete: round 3/3, global loss 0.6333, epsilon spent 1.5")
    assert view.to_png() != first and view.to_png().startswith(PNG_MAGIC)
    bundle = view._repr_mimebundle_()
    assert "image/png" in bundle and "application/vnd.jupyter.widget-view+json" in bundle
    # a run without DP says so
    other = tmp_path / "nodp"
    other.mkdir()
    _write(other / "metrics.jsonl", _round(1, None))
    (other / "config.json").write_text(json.dumps({"federated": {"rounds": 2}}))
    view = FederatedView(other, follow=False)
    assert view.rounds == 2 and "no DP" in view._status.value


def test_view_follows_a_running_process_to_the_end(tmp_path):
    """The view's background thread picks up each round a (real) process appends, and stops when it exits."""
    script = tmp_path / "fake_run.py"
    rounds = [_round(r, 0.5 * r) for r in (1, 2, 3)]
    script.write_text(textwrap.dedent(f"""
        import json, sys, time
        rounds = {json.dumps(rounds)}
        with open(sys.argv[1], "a") as f:
            for records in rounds:
                for r in records:
                    f.write(json.dumps(r) + "\\n")
                f.flush()
                print("round", records[0]["round"], "done", flush=True)
                time.sleep(0.2)
    """))
    view = FederatedView(tmp_path / "run", rounds=3, command=[sys.executable, str(script),
                                                              str(tmp_path / "run" / "metrics.jsonl")], poll_s=0.05)
    assert view.returncode is None and not view.running
    view.start()
    assert view.wait(timeout=120) == 0, view.log()
    assert not view._thread.is_alive()
    assert view.summary()["rounds"] == [1, 2, 3] and view.finished
    assert view._status.value.startswith("finished (exit 0): round 3/3")
    assert "round 3 done" in view.log()
    with pytest.raises(RuntimeError, match="no command"):
        FederatedView(tmp_path / "run", follow=False).start()


@pytest.mark.parametrize("parent_ignores_sigint", [False, True])
def test_stop_interrupts_the_run_like_ctrl_c(tmp_path, parent_ignores_sigint):
    """Stop sends SIGINT: the run's own clean-up (the simulator stopping its SuperLink and SuperNodes) runs; also
    when the notebook server was started with SIGINT ignored (a background job of a non-interactive shell)."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if parent_ignores_sigint else None
    try:
        _start_stop_and_check(tmp_path)  # the child inherits the ignored SIGINT, as from `nohup jupyter lab &`
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _start_stop_and_check(tmp_path):
    script = tmp_path / "waits.py"
    script.write_text(textwrap.dedent("""
        import sys, time
        print("ready", flush=True)
        try:
            time.sleep(600)
        except KeyboardInterrupt:
            print("interrupted: cleaned up", flush=True)
            sys.exit(3)
    """))
    view = FederatedView(tmp_path / "run", rounds=2, command=[sys.executable, str(script)], poll_s=0.05)
    view.start()
    while "ready" not in view.log():  # the interpreter must be up before SIGINT means KeyboardInterrupt
        assert view.running, view.log()
        time.sleep(0.05)
    view.stop()
    assert view.wait(timeout=120) == 3
    assert "interrupted: cleaned up" in view.log()
    assert view._status.value.startswith("finished (exit 3)")
