"""The catastrophic-overfitting monitor inside the training loop, and the ``robustlab train`` command."""

from __future__ import annotations

import json

import pytest
import torch
from fixture_models import KillAfterEpoch

from robustlab.cli import main
from robustlab.data import first_n, load_dataset
from robustlab.defenses.methods import make_method
from robustlab.defenses.monitor import COMonitor
from robustlab.errors import RobustlabError
from robustlab.models import build_model
from robustlab.threat import ThreatModel
from robustlab.training import TrainConfig, train

THREAT = ThreatModel("linf", 0.1)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def small_train():
    ds = load_dataset("fashion-mnist", "train")
    return first_n(ds, 512), ds.images[-128:].float() / 255, ds.labels[-128:].clone()


def _model():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return build_model("cnn")


class ScriptedCO(COMonitor):
    """The real monitor, fed a scripted (clean, FGSM, PGD) accuracy per check: healthy, healthy, collapsed."""

    script = [(0.70, 0.45, 0.40), (0.75, 0.52, 0.46), (0.80, 0.78, 0.02), (0.8, 0.8, 0.0)]

    def measure(self, model):
        clean, fgsm, pgd = self.script[len(self.checks)]
        return {"monitor_clean_acc": clean, "monitor_fgsm_acc": fgsm, "monitor_pgd_acc": pgd}


def test_monitor_rule():
    monitor = COMonitor(torch.zeros(1, 1, 28, 28), torch.zeros(1, dtype=torch.long), THREAT)
    healthy = {"monitor_fgsm_acc": 0.5, "monitor_pgd_acc": 0.45}
    collapsed = {"monitor_fgsm_acc": 0.8, "monitor_pgd_acc": 0.01}
    assert not monitor.is_co(healthy) and monitor.is_co(collapsed)
    monitor.best_pgd = 0.6
    assert monitor.is_co({"monitor_fgsm_acc": 0.7, "monitor_pgd_acc": 0.3})  # fell 30 points, FGSM 40 above
    assert not monitor.is_co({"monitor_fgsm_acc": 0.35, "monitor_pgd_acc": 0.3})  # fell, but FGSM fell too
    monitor.best_pgd = 0.15
    assert monitor.is_co({"monitor_fgsm_acc": 0.58, "monitor_pgd_acc": 0.04})  # PGD < 1/4 of FGSM accuracy
    assert not monitor.is_co({"monitor_fgsm_acc": 0.56, "monitor_pgd_acc": 0.29})  # a large gap, no collapse
    with pytest.raises(RobustlabError, match="on-co"):
        COMonitor(torch.zeros(1, 1, 28, 28), torch.zeros(1, dtype=torch.long), THREAT, on_co="panic")


@pytest.mark.parametrize("on_co", ["rollback", "stop", "continue"])
def test_co_is_detected_and_on_co_is_honoured(small_train, tmp_path, on_co):
    data, x_mon, y_mon = small_train
    monitor = ScriptedCO(x_mon, y_mon, THREAT, on_co=on_co)
    weights = {}
    config = TrainConfig(epochs=4, batch_size=128, lr=0.05, best_metric="monitor_pgd_acc", max_steps_per_epoch=1)
    model = _model()
    record = lambda stats: weights.__setitem__(stats["epoch"], model.model.fc.weight.detach().clone())  # noqa: E731
    result = train(model, make_method("fgsm", THREAT), data, config, tmp_path, callbacks=[monitor], on_epoch=record)
    assert [h["co"] for h in result.history][:3] == [0.0, 0.0, 1.0]
    assert monitor.events and monitor.events[0]["epoch"] == 3
    assert result.best_epoch == 2  # the best checkpoint is the one before the collapse
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert torch.equal(best["model.fc.weight"], weights[2])
    if on_co == "continue":
        assert result.epochs_done == 4 and result.stop_reason is None
        return
    assert result.epochs_done == 3 and result.stop_reason.startswith(on_co)
    rolled_back = torch.equal(model.model.fc.weight, weights[2])
    assert rolled_back == (on_co == "rollback")  # "stop" keeps the collapsed weights (best.pt has the good ones)
    saved = torch.load(tmp_path / "last.pt", weights_only=True)
    assert saved["stop_reason"] == result.stop_reason  # a resumed run stays stopped
    resumed = train(_model(), make_method("fgsm", THREAT), data, config, tmp_path, resume=True, callbacks=[monitor])
    assert resumed.epochs_done == 3


def test_monitor_measures_a_healthy_noiseaug_run_without_co(small_train):
    data, x_mon, y_mon = small_train
    monitor = COMonitor(x_mon[:64], y_mon[:64], THREAT, every_steps=2)
    config = TrainConfig(epochs=2, batch_size=128, optimizer="adam", lr=3e-3, best_metric="monitor_pgd_acc")
    result = train(_model(), make_method("noiseaug", THREAT), data, config, None, callbacks=[monitor])
    assert len(monitor.checks) == 2 * 2  # every 2 of 4 steps (the epoch ends reuse the step checks)
    assert not monitor.events and all(h["co"] == 0 for h in result.history)
    last = result.history[-1]
    assert last["monitor_pgd_acc"] <= last["monitor_fgsm_acc"] + 0.05 <= last["monitor_clean_acc"] + 0.05
    assert last["monitor_clean_acc"] > 0.3  # it learned something in 8 steps


def test_train_cli_writes_report_curves_and_model(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--method", "n-fgsm", "--model", "cnn", "--dataset", "fashion-mnist", "--eps", "0.1"]
    args += ["--epochs", "2", "--n", "256", "--eval-n", "64", "--monitor-n", "64", "--out", str(out)]
    args += ["--no-progress", "--threads", "1", "--lr", "0.05"]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["method"]["method"] == "n-fgsm" and report["epochs_done"] == 2
    assert 0 <= report["evaluation"]["pgd_accuracy"] <= report["evaluation"]["clean_accuracy"] <= 1
    assert report["evaluation"]["n"] == 64 and len(report["history"]) == 2
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG" and (out / "model.pt").is_file()
    assert "pgd-50-10" in (out / "report.md").read_text()
    assert "pgd-50-10 accuracy" in capsys.readouterr().out
    assert main(args) == 2  # the folder holds a run: a one-line error asking for --resume
    assert "--resume" in capsys.readouterr().err
    assert main([*args, "--resume", "--no-eval"]) == 0  # already complete: nothing more to train


def test_train_cli_user_errors(capsys):
    base = ["train", "--model", "cnn", "--dataset", "fashion-mnist", "--eps", "0.1", "--no-progress"]
    assert main([*base, "--method", "fgsm-foo"]) == 2
    assert "unknown method" in capsys.readouterr().err
    assert main([*base, "--method", "pgd", "--noise-sigma", "2"]) == 2
    assert "does not take noise_sigma" in capsys.readouterr().err


class CollapseAtThirdCheck(COMonitor):
    """The real monitor, told that its third check (step 6, epoch 2) finds CO (so a step-level stop acts mid-epoch)."""

    def measure(self, model):
        collapsed = len(self.checks) >= 2  # checks: step 3, end of epoch 1, step 6
        return {"monitor_clean_acc": 0.8, "monitor_fgsm_acc": 0.8, "monitor_pgd_acc": 0.0 if collapsed else 0.5}


@pytest.mark.parametrize("monitor_cls", [COMonitor, CollapseAtThirdCheck])
def test_resume_with_monitor_every_3_equals_the_uninterrupted_run(small_train, tmp_path, monitor_cls):
    """4 steps per epoch, a check every 3 steps (steps 3, 6, 9, ...): a run killed after epoch 1 and resumed checks
    at the same global steps, so a step-level stop lands on the same step and the weights are bit-identical."""
    data, x_mon, y_mon = small_train

    def run(out, kill_at=None, resume=False):
        monitor = monitor_cls(x_mon[:32], y_mon[:32], THREAT, every_steps=3, on_co="stop", pgd_steps=2)
        config = TrainConfig(epochs=3, batch_size=128, lr=0.05, best_metric="monitor_pgd_acc")
        result = train(_model(), make_method("fgsm-rs", THREAT), data, config, out, resume=resume,
                       callbacks=[monitor, KillAfterEpoch(kill_at)])  # fmt: skip
        return result, monitor

    full, full_monitor = run(tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "killed", kill_at=2)
    resumed, resumed_monitor = run(tmp_path / "killed", resume=True)
    assert [c["step"] for c in resumed_monitor.checks] == [c["step"] for c in full_monitor.checks]
    assert resumed.stop_reason == full.stop_reason and resumed.history == [
        {**h, "epoch_seconds": r["epoch_seconds"], "epoch_cpu_seconds": r["epoch_cpu_seconds"]}
        for h, r in zip(full.history, resumed.history)
    ]
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_python_api_runs_what_robustlab_train_does_in_one_call(small_train, tmp_path):
    """``run_training``: the run folder (lock, resume check), the loop, model.pt, the final evaluation through the
    evaluator and the report, as ``robustlab train`` does; a resume with other settings is refused."""
    from robustlab.training import FinalEvaluation, TrainingSetup, run_training

    data, x_mon, y_mon = small_train
    settings = {"method": "noiseaug", "eps": 0.1, "epochs": 1}

    def build(device):
        monitor = COMonitor(x_mon[:32], y_mon[:32], THREAT, on_co="rollback")
        config = TrainConfig(epochs=1, batch_size=128, lr=0.05, best_metric="monitor_pgd_acc", max_steps_per_epoch=2)
        evaluation = FinalEvaluation((x_mon[32:64], y_mon[32:64]), THREAT, pgd_steps=2, pgd_restarts=1)
        return TrainingSetup(_model(), make_method("noiseaug", THREAT), data, config, [monitor], evaluation)

    report = run_training("train", settings, build, tmp_path / "run")
    assert report.epochs_done == 1 and report.method["method"] == "noiseaug" and report.evaluation["n"] == 32
    assert {"model.pt", "last.pt", "report.json", "report.md", "run.json"} <= {
        p.name for p in (tmp_path / "run").iterdir()
    }
    assert "pgd-2-1" in report.markdown() and report.to_dict()["co_events"] == []
    with pytest.raises(RobustlabError, match="different epochs"):
        run_training("train", {**settings, "epochs": 2}, build, tmp_path / "run", resume=True)
