"""A researcher's first day: what a new user does in the checkout never breaks the suite, and the commands speak one
language (issue 25)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from robustlab.cli import main

ROOT = Path(__file__).parents[1]


def test_each_test_runs_in_its_own_empty_folder(tmp_path):
    assert Path.cwd() == tmp_path and not any(tmp_path.iterdir())
    assert ROOT not in [Path.cwd(), *Path.cwd().parents]


@pytest.mark.slow
def test_a_run_left_in_the_folder_where_pytest_starts_breaks_no_cli_test(tmp_path):
    """The README's SSL block runs ``robustlab attack`` without ``--out``, which leaves ``runs/attack`` holding a run
    where the user stands; the CLI tests started from that folder still pass (they run in their own folders)."""
    assert main(["attack", "--model", "zoo:fmnist-cnn", "--dataset", "fashion-mnist", "--n", "8", "--attacks", "fgsm",
                 "--eps", "0.1", "--no-progress"]) == 0  # fmt: skip
    assert (tmp_path / "runs/attack/report.json").is_file()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", str(ROOT / "tests/test_cli_attack.py"), "-k", "bad_models or second_run",
         "-p", "no:cacheprovider", "-q", "--rootdir", str(ROOT)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "....." in done.stdout and "F" not in done.stdout.splitlines()[0]  # 5 tests ran, none failed


# item 2: every model-taking argument takes a model with its weights, spelt SPEC@FILE everywhere


@pytest.fixture
def weights(tmp_path) -> dict[str, Path]:
    """The zoo CNN's weights as a bare state dict for ``cnn``, and a linear model's for ``fixture_models:...``."""
    from robustlab.models import load_model

    cnn, linear = tmp_path / "cnn.pt", tmp_path / "linear.pt"
    torch.save(load_model("zoo:fmnist-cnn").state_dict(), cnn)
    torch.manual_seed(3)
    torch.save(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)).state_dict(), linear)
    return {"cnn": cnn, "linear": linear}


def test_spec_at_file_loads_the_weights_of_every_kind_of_spec(weights, fmnist_batch, caplog):
    from robustlab.models import load_model, split_weights

    x, _ = fmnist_batch(8)
    zoo = load_model("zoo:fmnist-cnn")
    assert split_weights(f"cnn@{weights['cnn']}") == ("cnn", str(weights["cnn"]))
    assert torch.allclose(load_model(f"cnn@{weights['cnn']}")(x), zoo(x))  # an architecture with your weights
    assert torch.allclose(load_model("cnn", weights["cnn"])(x), zoo(x))  # --checkpoint is the same
    caplog.clear()
    mine = load_model(f"fixture_models:linear_fmnist@{weights['linear']}")
    assert torch.equal(mine[1].weight, torch.load(weights["linear"], weights_only=True)["1.weight"])
    assert "random" not in caplog.text
    load_model("fixture_models:linear_fmnist")  # without weights: warned, as before
    assert "random unless" in caplog.text and "fixture_models:linear_fmnist@FILE" in caplog.text


def test_transfer_takes_sources_and_targets_with_their_weights(weights):
    """The README's first-day step that failed: transfer from your own weights (the surrogate was random: 10 %)."""
    source, targets = f"cnn@{weights['cnn']}", f"zoo:fmnist-mlp,fixture_models:linear_fmnist@{weights['linear']}"
    args = ["--dataset", "fashion-mnist", "--n", "20", "--eps", "0.1", "--attacks", "fgsm", "--no-progress"]
    assert main(["transfer", "--source", source, "--targets", targets, *args, "--out", "runs/mine"]) == 0
    out = Path("runs/mine")
    report = json.loads((out / "report.json").read_text())
    assert report["clean_accuracy"][f"cnn@{weights['cnn']}"] >= 0.8  # the zoo CNN's weights, not random ones


def test_weights_given_twice_or_half_are_refused_in_one_line(weights, cli_error):
    base = ["attack", "--dataset", "fashion-mnist", "--n", "8", "--attacks", "fgsm", "--eps", "0.1", "--no-progress"]
    cli_error([*base, "--model", f"cnn@{weights['cnn']}", "--checkpoint", str(weights["linear"])], "give them once")
    cli_error([*base, "--model", "cnn@"], "give the weights after the model")
    cli_error(["transfer", "--source", "cnn@missing.pt", "--targets", "zoo:fmnist-mlp", "--dataset", "fashion-mnist",
               "--n", "8", "--eps", "0.1", "--no-progress"], "missing.pt")  # fmt: skip


def test_every_model_argument_says_spec_at_file_and_the_run_fingerprint_hashes_the_weights(weights, capsys):
    from robustlab.eval import ModelSource

    for command, flag in [("attack", "--model"), ("eval", "--model"), ("eval", "--surrogate"),
                          ("transfer", "--source"), ("transfer", "--targets"), ("finetune", "--encoder"),
                          ("deacl", "--teacher"), ("pseudo-at", "--teacher"), ("train", "--model"),
                          ("ssl", "--model")]:  # fmt: skip
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert flag in text and "SPEC@FILE" in text, (command, flag)
    key = ModelSource(f"cnn@{weights['cnn']}").fingerprint()
    assert key["model"] == "cnn" and key["checkpoint_sha256"] == ModelSource("cnn", str(weights["cnn"])).fingerprint()[
        "checkpoint_sha256"]  # fmt: skip


# item 6: a run without chromium says that the browser tests did not run


def test_a_run_without_chromium_says_the_browser_tests_were_skipped(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PATH"] = str(Path(sys.executable).parent)  # no chromium on it
    done = subprocess.run(
        [sys.executable, "-m", "pytest", str(ROOT / "tests/test_html_report.py"), "-k", "renders", "-p",
         "no:cacheprovider", "-q", "--rootdir", str(ROOT)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:]
    last = done.stdout.strip().splitlines()[-1]  # the run's last line says it
    assert "3 report.html browser test(s) skipped" in last and "install chromium" in last, done.stdout[-1000:]


# item 8: one evaluation bar that names the eps and the attack and moves with the passes


def test_one_eval_bar_names_each_eps_and_the_attack_and_moves_with_the_passes(zoo_cnn, fmnist_batch, monkeypatch,
                                                                                capsys):  # fmt: skip
    from robustlab.eval import progress
    from robustlab.eval.run import EvalConfig, run_evaluation

    bars, moves = [], []
    monkeypatch.setattr(progress.EvalProgress, "redraw_every", 0.0)
    init, move = progress.EvalProgress.__init__, progress.EvalProgress._move

    def recording_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        bars.append(self)

    def recording_move(self, within):
        move(self, within)
        moves.append((self.bar.desc, self.bar.postfix, self.bar.n))

    monkeypatch.setattr(progress.EvalProgress, "__init__", recording_init)
    monkeypatch.setattr(progress.EvalProgress, "_move", recording_move)
    x, y = fmnist_batch(30)
    config = EvalConfig(eps=(0.05, 0.1), attacks="fgsm,pgd(steps=20)", sanity_n=0, plots=False)
    run_evaluation(zoo_cnn, (x, y), config, progress=True)
    assert len(bars) == 1 and bars[0].bar.total == 60  # one bar: 30 samples at each of 2 eps
    assert bars[0].done == 60
    pgd = [(desc, n) for desc, postfix, n in moves if "pgd(steps=20) on" in str(postfix)]
    assert any("eps 0.05 (1/2)" in desc for desc, _ in pgd) and any("eps 0.1 (2/2)" in desc for desc, _ in pgd)
    inside = [n for desc, n in pgd if "(1/2)" in desc and 0 < n < 30 and n != int(n)]
    assert len(inside) >= 5 and inside == sorted(inside)  # it moves with PGD's passes, before the batch ends
    assert "eps 0.1 (2/2)" in capsys.readouterr().err  # on stderr; stdout stays the CLI's


def test_progress_words_are_plural_only_for_many():
    from robustlab.eval.progress import plural

    assert plural(1, "restart") == "1 restart" and plural(2, "restart") == "2 restarts"
    assert plural(1, "pass", "passes") == "1 pass" and plural(0, "pass", "passes") == "0 passes"


# item 7: the sanity checks have a bar too, naming the check at work


@pytest.mark.slow
def test_sanity_checks_show_a_bar_naming_each_check_and_moving_with_its_passes(zoo_cnn, fmnist_batch, monkeypatch,
                                                                                 capsys):  # fmt: skip
    from robustlab import ThreatModel
    from robustlab.eval import progress
    from robustlab.eval.sanity import run_sanity_checks

    moved = []
    fraction = progress._fraction
    monkeypatch.setattr(progress.CheckProgress, "redraw_every", 0.0)
    monkeypatch.setattr(progress, "_fraction", lambda *a, **k: moved.append(fraction(*a, **k)) or moved[-1])
    x, y = fmnist_batch(8)
    flags = run_sanity_checks(zoo_cnn, x, y, ThreatModel("linf", 0.1), steps=2, queries=20, progress=True)
    err = capsys.readouterr().err
    assert len(flags) == 7 and "sanity checks" in err
    for name in ("gradients", "eps 0", "more steps and restarts", "eps curve", "black-box Square"):
        assert name in err, name
    assert len(moved) >= 10 and all(0 < f < 1 for f in moved)  # the bar moves inside a check, with its passes
    run_sanity_checks(zoo_cnn, x, y, ThreatModel("linf", 0.1), steps=2, queries=20)
    assert capsys.readouterr().err == ""  # the library is silent unless asked


# item 11: the words a run prints and writes


def test_training_output_uses_proper_plurals_resolved_settings_and_integer_epoch_ticks(monkeypatch, capsys):
    from robustlab import plots
    from robustlab.training.report import plot_curves

    args = ["train", "--method", "fgsm-rs", "--model", "cnn", "--dataset", "fashion-mnist", "--eps", "0.1", "--n",
            "64", "--epochs", "1", "--eval-n", "0", "--monitor-n", "0", "--no-progress", "--out", "runs/t"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "(1 epoch)" in out and "1 epochs" not in out and "time(s)" not in out
    page = Path("runs/t/report.html").read_text()
    assert "<th>step_size</th><td>0.125</td>" in page  # the step size fgsm-rs used (1.25 eps), not None
    assert "<td>None</td>" not in page.split('id="config"')[1].split("Environment")[0]
    figures = []
    monkeypatch.setattr(plots, "save_png", lambda fig, path, **kw: figures.append(fig))
    plot_curves([{"epoch": 1, "loss": 2.0}, {"epoch": 2, "loss": 1.5}], "curves.png")
    ax = figures[0].axes[0]
    figures[0].canvas.draw()
    assert all(float(t).is_integer() for t in ax.get_xticks())


def test_attack_report_names_model_and_attack_and_its_gallery_is_large(capsys):
    assert main(["attack", "--model", "zoo:fmnist-cnn", "--dataset", "fashion-mnist", "--n", "16", "--attacks", "fgsm",
                 "--eps", "0.1", "--no-progress", "--out", "runs/a"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    title = "Attack fgsm on zoo:fmnist-cnn (fashion-mnist)"
    assert Path("runs/a/report.md").read_text().startswith(f"# {title}, linf eps 0.1")
    assert "# Attack" not in printed  # the terminal has its own first line
    page = Path("runs/a/report.html").read_text()
    assert f"<title>{title}" in page
    assert int(page.split(".tile img{width:")[1].split("px")[0]) >= 100


def test_eval_prints_the_protocol_in_one_line_and_no_weakest_class_when_all_are_at_zero(capsys):
    base = ["eval", "--model", "zoo:fmnist-cnn", "--dataset", "fashion-mnist", "--n", "20", "--attacks", "fgsm",
            "--sanity-n", "0", "--no-progress", "--no-plots"]  # fmt: skip
    assert main([*base, "--eps", "0.05,0.1", "--out", "runs/e1"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "Clopper-Pearson" in x)
    assert "eps protocol: nested" in line and len(line) < 120  # it was ~600 characters
    assert "Eps protocol: nested (ascending eps" in Path("runs/e1/report.md").read_text()  # said once, in full
    assert main([*base, "--eps", "0.5", "--out", "runs/e2"]) == 0  # everything breaks
    out = capsys.readouterr().out
    assert "robust accuracy 0.0" in out and "weakest classes" not in out
