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
from robustlab.training import Callback, TrainConfig, train

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


class ScriptedStepCO(COMonitor):
    """The real monitor checking every step, fed a scripted PGD accuracy: best at step 2, collapsed at step 3."""

    script = [0.40, 0.50, 0.01, 0.0]

    def measure(self, model):
        return {"monitor_clean_acc": 0.8, "monitor_fgsm_acc": 0.8, "monitor_pgd_acc": self.script[len(self.checks)]}


def test_a_step_check_finds_the_best_state_and_rollback_returns_to_it_inside_the_epoch(small_train, tmp_path):
    data, x_mon, y_mon = small_train
    monitor, weights = ScriptedStepCO(x_mon, y_mon, THREAT, on_co="rollback", every_steps=1), []

    class Record(Callback):  # the weights after each step, in the order the checks see them
        every_steps = 1

        def on_step_end(self, ctx):
            weights.append(ctx.model.model.fc.weight.detach().clone())

    config = TrainConfig(epochs=1, batch_size=128, lr=0.05, best_metric="monitor_pgd_acc")  # 4 steps
    model = _model()
    result = train(model, make_method("fgsm", THREAT), data, config, tmp_path, callbacks=[Record(), monitor])
    assert [c["step"] for c in monitor.checks] == [1, 2, 3] and monitor.events[0]["step"] == 3
    assert result.stop_reason == "rollback at epoch 1 step 3" and result.best_epoch == 1
    assert torch.equal(model.model.fc.weight, weights[1])  # step 2's weights, not the epoch's or step 3's
    assert not torch.equal(weights[1], weights[2])
    assert torch.equal(torch.load(tmp_path / "best.pt", weights_only=True)["model.fc.weight"], weights[1])
    assert torch.load(tmp_path / "last.pt", weights_only=True)["best_step"] == 2


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


def test_python_api_runs_what_robustlab_train_does_in_one_call(tmp_path):
    """``run_training``: the run folder (lock, resume check), the loop, model.pt, the final evaluation through the
    evaluator and the report, as ``robustlab train`` does; a resume with other settings is refused."""
    from dataclasses import replace

    from robustlab.recipes import ATConfig
    from robustlab.training import run_training

    config = ATConfig(method="noiseaug", model="cnn", dataset="fashion-mnist", n=512, threat=THREAT, epochs=1,
                      batch_size=128, lr=0.05, max_steps_per_epoch=2, monitor_n=32, eval_n=32, eval_steps=2,
                      eval_restarts=1)  # fmt: skip
    report = run_training(config, tmp_path / "run")
    assert report.epochs_done == 1 and report.method["method"] == "noiseaug" and report.evaluation.n == 32
    assert {"model.pt", "last.pt", "report.json", "report.md", "run.json"} <= {
        p.name for p in (tmp_path / "run").iterdir()
    }
    assert "pgd-2-1" in report.to_markdown() and report.to_dict()["co_events"] == []
    with pytest.raises(RobustlabError, match="different epochs"):
        run_training(replace(config, epochs=2), tmp_path / "run", resume=True)


# --- NoiseAug and N-FGSM, and bench/fast_at.py's CO sweep --------------------------------------------------------


@pytest.fixture(scope="module")
def bench_fast_at():
    """bench/fast_at.py as a module (it imports bench/fast_at_sweep.py from its own folder)."""
    import importlib
    import sys
    from pathlib import Path

    bench = str(Path(__file__).resolve().parents[1] / "bench")
    sys.path.insert(0, bench)
    try:
        yield importlib.import_module("fast_at")
    finally:
        sys.path.remove(bench)


@pytest.mark.parametrize("eps", [0.1, 0.3])
def test_noiseaug_and_n_fgsm_train_on_the_same_input_in_linf_with_the_defaults(small_train, eps):
    """Same noise U(-2 eps, 2 eps) (each method's generator is seeded alike), clipped to the bounds; NoiseAug's step
    of 1.25 eps projected onto the eps-ball around the noisy point is N-FGSM's unprojected step of eps."""
    data, x, y = small_train
    model, threat = _model().eval(), ThreatModel("linf", eps)
    noiseaug = make_method("noiseaug", threat).training_input(model, x, y)
    assert torch.equal(noiseaug, make_method("n-fgsm", threat).training_input(model, x, y))
    assert (noiseaug - x).abs().max() > eps * 2  # the noise took it well outside the eps-ball around x
    # why the sweep trains FGSM and NoiseAug once for every step >= eps: the projection makes them one step of eps
    for name in ("noiseaug", "fgsm"):
        at_eps = make_method(name, threat, eps).training_input(model, x, y)
        for step in (1.25 * eps, 2 * eps):
            assert torch.equal(make_method(name, threat, step).training_input(model, x, y), at_eps)


def test_noiseaug_and_n_fgsm_differ_with_gaussian_noise_or_a_step_above_eps(bench_fast_at):
    """bench/fast_at.py --noise-compare: 0 difference with the defaults; Gaussian noise reaches further; N-FGSM takes
    a 2 eps step in full (the official code: no projection) where NoiseAug's projection keeps it at eps."""
    result = bench_fast_at.noise_compare(n=64, eps=0.1, model=_model().eval())
    diff, inputs = result["max_abs_difference"], result["inputs"]
    assert diff["noiseaug uniform vs n-fgsm (defaults)"] == 0.0
    assert diff["noiseaug step 2 eps vs noiseaug step 1.25 eps"] == 0.0
    assert diff["noiseaug gaussian vs n-fgsm (defaults)"] > 0.1
    assert diff["n-fgsm step 2 eps vs n-fgsm step eps"] == pytest.approx(0.1, abs=1e-5)  # one more eps, where unclipped
    uniform, gaussian = (
        inputs["noiseaug (uniform, sigma 2, step 1.25 eps)"],
        inputs["noiseaug (gaussian, sigma 2, step 1.25 eps)"],
    )
    assert uniform["mean_linf_distance"] <= 0.3 + 1e-5 < gaussian["mean_linf_distance"]  # 2 eps noise + eps step
    big_step = inputs["n-fgsm (k 2, step 2 eps)"]
    assert big_step["mean_linf_distance"] > uniform["mean_linf_distance"] + 0.05
    assert big_step["fraction_pixels_beyond_eps"] > uniform["fraction_pixels_beyond_eps"]


def _sweep_args(bench_fast_at, tmp_path, *extra):
    args = ["--sweep", "--sweep-n", "256", "--sweep-epochs", "1", "--sweep-eval-n", "16", "--sweep-monitor-n", "32"]
    args += ["--sweep-eps", "0.3", "--sweep-steps", "2", "--sweep-methods", "fgsm-rs", "noiseaug-uniform"]
    args += ["--jobs", "1", "--no-rollback-demo", "--cache", str(tmp_path / "cache.json")]
    return bench_fast_at.parse_args([*args, "--sweep-out", str(tmp_path / "sweep.json"), *extra])


def test_sweep_writes_its_table_and_figure_and_serves_finished_runs_from_the_cache(
    bench_fast_at, tmp_path, monkeypatch
):
    sweep = bench_fast_at.sweep
    result = sweep.run_sweep(_sweep_args(bench_fast_at, tmp_path), log=lambda message: None)
    saved = json.loads((tmp_path / "sweep.json").read_text())
    assert (
        [r["label"] for r in saved["runs"]] == ["fgsm-rs", "noiseaug-uniform"] == [r["label"] for r in result["runs"]]
    )
    for run in saved["runs"]:
        assert run["eps"] == 0.3 and run["step"] == 2.0 and run["settings"]["on_co"] == "continue"
        assert [e["epoch"] for e in run["epochs"]] == [1]  # the monitor checked the one epoch
        assert {"monitor_clean_acc", "monitor_fgsm_acc", "monitor_pgd_acc", "co"} <= set(run["epochs"][0])
        assert isinstance(run["co_flagged"], bool) and run["evaluation_n"] == 16 and run["train_seconds"] >= 0
        assert 0 <= run["pgd_50_10_accuracy"] <= run["clean_accuracy"] <= 1
    assert saved["runs"][1]["settings"]["step_eps"] == 1.0  # NoiseAug's 2 eps step is projected to eps: one training
    assert "| 0.3 | 2 eps |" in saved["table_markdown"] and " / " in saved["table_markdown"]
    assert (tmp_path / "sweep.png").read_bytes()[:4] == b"\x89PNG"

    def no_training(settings):
        raise AssertionError(f"trained again: {settings}")

    monkeypatch.setattr(sweep, "train_one", no_training)
    again = sweep.run_sweep(_sweep_args(bench_fast_at, tmp_path), log=lambda message: None)
    assert again["runs"] == saved["runs"]  # the same records, from the cache

    trained = []
    monkeypatch.setattr(sweep, "train_one", lambda s: trained.append(s) or {**saved["runs"][0], "settings": s})
    sweep.run_sweep(_sweep_args(bench_fast_at, tmp_path, "--sweep-epochs", "2"), log=lambda message: None)
    assert [s["epochs"] for s in trained] == [2, 2]  # another setting: nothing served from the cache
    with pytest.raises(RobustlabError, match="eps 1.5"):  # refused before any run trains
        sweep.run_sweep(_sweep_args(bench_fast_at, tmp_path, "--sweep-eps", "0.3", "1.5"), log=lambda message: None)
    with pytest.raises(RobustlabError, match="--rollback-every must be >= 0"):
        sweep.run_sweep(_sweep_args(bench_fast_at, tmp_path, "--rollback-every", "-1"), log=lambda message: None)
    assert len(trained) == 2


def test_rollback_demo_retrains_the_first_collapsed_fgsm_rs_setting_with_rollback(bench_fast_at, tmp_path, monkeypatch):
    sweep, trained = bench_fast_at.sweep, []

    def fake(settings):  # FGSM-RS collapses at eps 0.25 and 0.3 (step 2 eps) in this scripted grid
        trained.append(settings)
        co = settings["method"] == "fgsm-rs" and settings["eps"] >= 0.25 and settings["step_eps"] == 2.0
        return {"settings": settings, "co_flagged": co, "co_epochs": [3] if co else [], "epochs": [],
                "stop_reason": None, "best_epoch": 2, "clean_accuracy": 0.5, "pgd_50_10_accuracy": 0.1,
                "train_seconds": 1.0, "evaluation_n": 16}  # fmt: skip

    monkeypatch.setattr(sweep, "train_one", fake)
    args = _sweep_args(bench_fast_at, tmp_path, "--sweep-eps", "0.2", "0.25", "0.3", "--sweep-steps", "1.25", "2")
    args.no_rollback_demo = False
    result = sweep.run_sweep(args, log=lambda message: None)
    demo = result["rollback_demo"]
    assert demo["setting"] == {"eps": 0.25, "step_eps": 2.0} and "flagged" in demo["why"]
    assert (
        trained[-1]["on_co"] == "rollback" and trained[-1]["eps"] == 0.25 and len(trained) == 10
    )  # 9 distinct grid runs + 1
    assert trained[-1]["monitor_every"] == 50 == demo["monitor_every_steps"]  # the default: a check every 50 steps
    assert "monitor_every" not in trained[0]  # grid runs check each epoch (their cache keys are unchanged)
    assert demo["continue"]["co_epochs"] == [3]


def test_sweep_in_the_results_folder_puts_its_table_into_fast_at_json(bench_fast_at, tmp_path, monkeypatch, capsys):
    def fake(settings):
        return {"settings": settings, "co_flagged": False, "co_epochs": [], "epochs": [], "stop_reason": None,
                "best_epoch": 1, "clean_accuracy": 0.5, "pgd_50_10_accuracy": 0.25, "train_seconds": 1.0,
                "evaluation_n": 16}  # fmt: skip

    monkeypatch.setattr(bench_fast_at.sweep, "train_one", fake)
    base = ["--sweep", "--sweep-eps", "0.3", "--sweep-steps", "2", "--sweep-methods", "fgsm-rs", "--jobs", "1"]
    base += ["--no-rollback-demo", "--cache", str(tmp_path / "cache.json")]
    (tmp_path / "fast_at.json").write_text(json.dumps({"benchmark": "fast_at", "main": {"kept": 1}}))
    elsewhere = tmp_path / "other"
    bench_fast_at.main([*base, "--out", str(tmp_path / "fast_at.json"), "--sweep-out", str(elsewhere / "s.json")])
    assert "sweep" not in json.loads((tmp_path / "fast_at.json").read_text())  # not the results folder: untouched
    bench_fast_at.main([*base, "--out", str(tmp_path / "fast_at.json"), "--sweep-out", str(tmp_path / "s.json")])
    saved = json.loads((tmp_path / "fast_at.json").read_text())
    assert saved["main"] == {"kept": 1} and saved["sweep"]["file"] == "s.json" and saved["sweep"]["figure"] == "s.png"
    assert "| 0.3 | 2 eps | 50.0 / 25.0 (no CO) |" in saved["sweep"]["table_markdown"]
    assert "runs" not in saved["sweep"]  # the per-run records stay in the sweep's own file
    capsys.readouterr()
