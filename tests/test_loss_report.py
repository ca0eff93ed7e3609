import json

import pytest

from nanoocr.eval.loss_report import ema_series, main, read_series, report


def falling(n=100, start=8.0):
    return [(s, start * 0.98 ** s) for s in range(n)]


def test_healthy_run():
    r = report(falling(), [(50, 5.0), (99, 4.0)], warmup=10)
    assert r["ema_falls_steadily"] and r["no_spike"] and r["eval_falls"] and r["healthy"]
    assert r["max_loss_over_ema"] < 1.0  # a falling loss stays below its lagging EMA
    assert len(r["ema_points"]) == 11 and r["ema_points"][0][0] == 10 and r["ema_points"][-1][0] == 99


def test_spike_is_found_with_its_batch():
    train = falling()
    train[60] = (60, train[60][1] * 3.0)
    r = report(train, [(50, 5.0), (99, 4.0)], warmup=10)
    assert not r["no_spike"] and not r["healthy"]
    assert r["max_loss_over_ema_step"] == 60
    # EMA before batch 60 = 0.9 * EMA(59) + ...; hand check: loss(60) * 3 over it, bigger than 1.5
    assert r["max_loss_over_ema"] > 1.5


def test_spike_during_warmup_is_ignored():
    train = falling()
    train[5] = (5, train[5][1] * 3.0)
    assert report(train, [(50, 5.0), (99, 4.0)], warmup=10)["no_spike"]


def test_slow_rise_fails_steady_fall():
    low = falling(50)[-1][1]
    train = falling(50) + [(s, low * 1.005 ** (s - 50)) for s in range(50, 100)]  # creeps back up, no spike
    r = report(train, [(50, 5.0), (99, 4.0)], warmup=10)
    assert r["no_spike"] and not r["ema_falls_steadily"]


def test_rising_eval_fails():
    r = report(falling(), [(30, 5.0), (60, 4.0), (99, 4.5)], warmup=10)
    assert not r["eval_falls"] and not r["healthy"]
    assert not report(falling(), [(99, 4.0)], warmup=10)["eval_falls"]  # one eval shows no fall


def test_too_short_run_is_an_error():
    with pytest.raises(ValueError, match="after warmup"):
        report(falling(12), [], warmup=10)


def test_cli_reads_metrics_jsonl(tmp_path, capsys):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "loss/train/total": v} for s, v in falling()]
    rows += [{"step": 49, "metrics/eval/LanguageCrossEntropy": 5.0}, {"step": 99, "metrics/eval/LanguageCrossEntropy": 4.0}]
    rows.append({"step": 99, "lr-AdamW/group0": 1e-3})  # other metrics are ignored
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    train, evals = read_series(path)
    assert len(train) == 100 and evals == [(49, 5.0), (99, 4.0)]
    assert main([str(path), "--warmup", "10", "--json", str(tmp_path / "r.json")]) == 0
    assert "healthy: True" in capsys.readouterr().out
    assert json.loads((tmp_path / "r.json").read_text())["healthy"] is True
    path.write_text(path.read_text() + "not json\n")
    with pytest.raises(ValueError, match="metrics.jsonl:104"):
        read_series(path)


def test_ema_series_by_hand():
    # e0 = 4; e1 = 0.5 * 4 + 0.5 * 2 = 3; e2 = 0.5 * 3 + 0.5 * 5 = 4; beta 0.9: e1 = 3.6 + 0.2 = 3.8
    assert ema_series([4.0, 2.0, 5.0], 0.5) == [4.0, 3.0, 4.0]
    assert ema_series([4.0, 2.0], 0.9) == pytest.approx([4.0, 3.8])
    assert ema_series([]) == []
    # report() judges this same curve: its EMA points are ema_series at the segment ends
    train = falling(40)
    smooth = ema_series([v for _, v in train], 0.9)
    r = report(train, [], segments=4)
    assert r["ema_points"] == [[s, round(smooth[s], 4)] for s in (0, 9, 19, 29, 39)]
