"""Training logs: per-step and per-epoch scalars in ``metrics.jsonl`` and TensorBoard events, resume-safe."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from fixture_models import KillAfterEpoch

from robustlab.cli import main
from robustlab.data import first_n, load_dataset
from robustlab.defenses.methods import make_method
from robustlab.defenses.monitor import COMonitor
from robustlab.models import build_model
from robustlab.threat import ThreatModel
from robustlab.training import TrainConfig, train
from robustlab.training.metrics import read_metrics

pytestmark = pytest.mark.usefixtures("one_thread")
THREAT = ThreatModel("linf", 0.1)
event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator", reason="tensorboard is not installed"
)


def _run(out, kill_at=None, resume=False):
    data = first_n(load_dataset("fashion-mnist", "train"), 384)  # 3 steps per epoch
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_model("cnn")
    x_mon, y_mon = torch.stack([data[i][0] for i in range(32)]), torch.tensor([data[i][1] for i in range(32)])
    monitor = COMonitor(x_mon, y_mon, THREAT, every_steps=2, on_co="continue", pgd_steps=2)
    config = TrainConfig(epochs=3, batch_size=128, lr=0.05, seed=3, tensorboard=True)
    method = make_method("fgsm-rs", THREAT)
    return train(model, method, data, config, out, resume=resume, callbacks=[monitor, KillAfterEpoch(kill_at)])


def _scalars(out):
    """``{tag: [(step, value), ...]}`` read back by TensorBoard's own event reader."""
    acc = event_accumulator.EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_kill_and_resume_log_every_step_once_as_the_uninterrupted_run(tmp_path):
    _run(tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "killed", kill_at=2)  # epoch 2's steps and epoch record were logged, its checkpoint not
    killed = read_metrics(tmp_path / "killed")
    assert max(r["step"] for r in killed) == 6  # so the resume has records to drop
    _run(tmp_path / "killed", resume=True)

    full, resumed = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "killed")
    assert [r["step"] for r in full if r["kind"] == "step"] == list(range(1, 10))
    assert [(r["kind"], r["step"]) for r in resumed] == [(r["kind"], r["step"]) for r in full]  # no step twice
    assert [r["loss"] for r in resumed if r["kind"] == "step"] == [r["loss"] for r in full if r["kind"] == "step"]
    epochs = [r for r in full if r["kind"] == "epoch"]
    assert [(r["epoch"], r["step"]) for r in epochs] == [(1, 3), (2, 6), (3, 9)]
    assert {"loss", "lr", "monitor_clean_acc", "monitor_fgsm_acc", "monitor_pgd_acc", "co"} <= set(epochs[0])
    assert [r["step"] for r in full if r["kind"] == "monitor"] == [2, 4, 6, 8]

    for name in ("full", "killed"):
        tags = _scalars(tmp_path / name)
        assert {"step/loss", "step/lr", "epoch/loss", "epoch/monitor_pgd_acc", "monitor/monitor_pgd_acc"} <= set(tags)
        for tag, points in tags.items():
            steps = [s for s, _ in points]
            assert not [s for s, k in Counter(steps).items() if k > 1], f"{name}: {tag} has duplicated steps"
    full_tb, resumed_tb = _scalars(tmp_path / "full"), _scalars(tmp_path / "killed")
    assert [s for s, _ in resumed_tb["step/loss"]] == list(range(1, 10))
    assert [v for _, v in resumed_tb["step/loss"]] == pytest.approx([v for _, v in full_tb["step/loss"]])
    assert [s for s, _ in resumed_tb["epoch/loss"]] == [3, 6, 9]


def test_without_tensorboard_only_metrics_jsonl_is_written(tmp_path):
    data = first_n(load_dataset("fashion-mnist", "train"), 256)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_model("cnn")
    train(model, make_method("standard", THREAT), data, TrainConfig(epochs=1, batch_size=128, lr=0.05), tmp_path)
    records = read_metrics(tmp_path)
    assert [r["kind"] for r in records] == ["step", "step", "epoch"]
    assert records[0]["lr"] >= 0 and records[-1]["loss"] == pytest.approx((records[0]["loss"] + records[1]["loss"]) / 2)
    assert not (tmp_path / "tensorboard").exists()


def test_every_training_command_takes_tensorboard(tmp_path, capsys):
    out = tmp_path / "ssl"
    args = ["ssl", "--model", "cnn", "--dataset", "fashion-mnist", "--n", "128", "--epochs", "1", "--batch-size", "64"]
    assert main([str(a) for a in [*args, "--out", out, "--knn-n", "64", "--no-progress", "--tensorboard"]]) == 0
    epoch = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
    assert epoch["kind"] == "epoch" and 0 <= epoch["knn_accuracy"] <= 1
    assert "epoch/knn_accuracy" in _scalars(out)
    capsys.readouterr()
