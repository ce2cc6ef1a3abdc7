"""lightning_reg.report.series alone: which epochs are the fit's, which gap is drawn, which alerts."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightning_reg.report import MissingMetricsError, load_metrics
from lightning_reg.report.series import last_fit_epoch, train_val_series

# 3 trained epochs, then trainer.validate() (epoch 3, one step further) and trainer.test()
AFTER_FIT_CSV = """epoch,step,train_loss,val_loss,test_loss
0,9,1.5,,
0,9,,2.0,
1,19,0.8,,
1,19,,1.0,
2,29,0.4,,
2,29,,1.2,
3,30,,1.2,
3,30,,,1.3
"""


def metrics(tmp_path: Path, text: str):
    (tmp_path / "metrics.csv").write_text(text)
    return load_metrics(tmp_path)


def test_values_logged_after_the_fit_are_not_an_epoch(tmp_path: Path):
    m = metrics(tmp_path, AFTER_FIT_CSV)
    s = train_val_series(m, {"loss": ("train_loss", "val_loss")})
    assert s.last_epoch == 2.0 and s.after_fit == {"val_loss": [3.0]}
    loss = s.pairs["loss"]
    assert loss.train == ([0.0, 1.0, 2.0], [1.5, 0.8, 0.4])
    assert loss.val == ([0.0, 1.0, 2.0], [2.0, 1.0, 1.2])
    assert loss.gap[0] == [0.0, 1.0, 2.0] and loss.gap[1] == pytest.approx([0.5, 0.2, 0.8])
    assert loss.gap_key is None and loss.alerts is None and s.alerts is None


def test_the_fits_last_epoch_comes_from_any_training_key():
    from lightning_reg.report.data import MetricSeries, RunMetrics

    series = {
        "val_loss": MetricSeries((9.0, 19.0, 20.0), (0.0, 1.0, 2.0), (1.0, 0.5, 0.5)),
        "early_stopping/best_epoch": MetricSeries((9.0, 19.0), (0.0, 1.0), (0.0, 1.0)),
        "train_loss": MetricSeries((5.0,), (0.0,), (1.0,)),  # sparse: logged per step only
    }
    m = RunMetrics([], series)
    assert last_fit_epoch(m, ["train_loss"]) == 0.0
    assert last_fit_epoch(m, ["train_loss", "early_stopping/best_epoch", "absent"]) == 1.0
    assert last_fit_epoch(m, ["absent"]) is None
    # a per-step train key missing the last trained epoch: EarlyStopping's check still marks it trained
    s = train_val_series(m, {"loss": ("train_loss", "val_loss")})
    assert s.pairs["loss"].val == ([0.0, 1.0], [1.0, 0.5]) and s.after_fit == {"val_loss": [2.0]}


MONITOR_CSV = """epoch,step,train_loss,val_loss,overfit/loss_gap,overfit/alert,overfit/loss_alert
0,9,1.5,1.0,0.25,0,0
1,19,1.2,0.9,0.5,1,1
2,20,,0.9,,,
"""


def test_the_gap_is_the_monitors_when_it_logged_one(tmp_path: Path):
    # train-mode train loss above validation (dropout): val - train is negative, while the monitor's
    # probe measured the train side in eval mode and alerts on a positive gap
    s = train_val_series(metrics(tmp_path, MONITOR_CSV), {"loss": ("train_loss", "val_loss")})
    loss = s.pairs["loss"]
    assert loss.gap == ([0.0, 1.0], [0.25, 0.5]) and loss.gap_key == "overfit/loss_gap"
    assert loss.alerts == [1.0] and loss.alert_key == "overfit/loss_alert" and s.alerts == [1.0]
    assert s.after_fit == {"val_loss": [2.0]}
    # alerts off: none, and a pair the monitor did not watch falls back to the any-pair key
    m = load_metrics(tmp_path)
    assert train_val_series(m, alert_key=None).pairs["loss"].alerts is None
    other = train_val_series(m, {"ce": ("train_loss", "val_loss")}).pairs["ce"]
    assert other.gap_key is None and other.alerts == [1.0] and other.alert_key == "overfit/alert"


def test_no_pair_logged_names_what_is_missing(tmp_path: Path):
    with pytest.raises(MissingMetricsError, match=r"missing: \['train_acc', 'val_acc'\].*test_loss"):
        train_val_series(metrics(tmp_path, AFTER_FIT_CSV), {"acc": ("train_acc", "val_acc")})
