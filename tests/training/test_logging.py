import json

from medjax.training.logging import RunLogger, read_metrics, truncate_metrics


def test_logger_writes_records_and_tensorboard(tmp_path):
    log = RunLogger(tmp_path, total_steps=4, progress=False)
    for s in (1, 2, 3):
        rec = log.log(s, {"loss": 1.0 / s, "lr": 0.1, "grad_norm": 2.0, "samples_per_s": 5.0, "nonfinite_count": 0})
        assert rec["step"] == s
    log.log(4, {"loss": float("nan"), "lr": 0.1, "grad_norm": float("inf"), "nonfinite_count": 1})
    log.close()
    recs = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in recs] == [1, 2, 3, 4]
    assert set(recs[0]) == {"step", "loss", "lr", "grad_norm", "samples_per_s", "nonfinite_count", "time"}
    assert recs[1]["loss"] == 0.5
    assert recs[3]["loss"] is None and recs[3]["grad_norm"] is None and recs[3]["nonfinite_count"] == 1
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())


def test_resume_drops_later_records_and_torn_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with open(path, "w") as f:
        for s in range(1, 7):
            f.write(json.dumps({"step": s, "loss": float(s)}) + "\n")
        f.write('{"step": 7, "lo')  # a line torn by SIGKILL
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3, 4, 5, 6]
    log = RunLogger(tmp_path, total_steps=10, start_step=4, progress=False, tensorboard=False)
    log.log(5, {"loss": 0.5})
    log.close()
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3, 4, 5]
    assert truncate_metrics(path, 2) == 2


def test_disabled_logger_writes_nothing(tmp_path):
    log = RunLogger(tmp_path / "w", total_steps=3, enabled=False)
    log.log(1, {"loss": 1.0})
    log.close()
    assert not (tmp_path / "w").exists()
