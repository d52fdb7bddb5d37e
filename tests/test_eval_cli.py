"""``robustlab eval`` end to end: reports, numbers recomputable from results.pt, resume after SIGKILL, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from robustlab.cli import main
from robustlab.errors import RobustlabError
from robustlab.eval import EvalResult
from robustlab.eval.metrics import topk_report

pytestmark = pytest.mark.usefixtures("one_thread")


BASE = ["eval", "--model", "zoo:fmnist-mlp", "--dataset", "fashion-mnist", "--no-progress"]
# One thread in every run compared: float results are bitwise reproducible only at a fixed thread count.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _results(out: Path) -> list[EvalResult]:
    saved = torch.load(out / "results.pt", weights_only=True)
    return [EvalResult.from_state(s) for s in saved["results"]]


def test_eval_writes_reports_that_the_saved_results_reproduce(tmp_path, capsys):
    args = ["--n", "60", "--eps", "0.02,0.08", "--attacks", "fgsm,pgd+cw(steps=3)", "--topk", "1,2,3"]
    assert main([*BASE, *args, "--sanity-n", "20", "--steps", "3", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "after pgd+cw(steps=3) %" in printed and "rises_with_steps" in printed and "FLAG" not in printed
    for name in ("report.json", "report.md", "results.pt", "robust_vs_eps.png", "icr_histogram.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert (tmp_path / "robust_vs_eps.png").read_bytes()[:4] == b"\x89PNG"
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["eps"] == [0.02, 0.08] and report["seeds"]["seed"] == 0 and report["only_robust"]
    assert report["attacks"]["pgd+cw(steps=3)"]["loss"] == "cw"
    assert len(report["sanity"]) == 8 and report["sanity_fired"] == []
    low, high = report["results"]
    assert 0 < high["robust_accuracy"] < low["robust_accuracy"] < low["clean_accuracy"]
    for entry, result in zip(report["results"], _results(tmp_path)):
        assert entry["robust_accuracy"] == result.robust_accuracy
        assert entry["clean_accuracy"] == result.clean_accuracy
        assert entry["worst_case_topk"] == topk_report(result, [1, 2, 3])["worst_case"]
        assert entry["attacks"]["fgsm"]["attacked"] == int(result.clean_correct.sum()) - entry["carried"]  # nested eps
    markdown = (tmp_path / "report.md").read_text()
    assert "| eps" in markdown and "top-2 ASR" in markdown and "## Sanity checks" in markdown


def _command(out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "robustlab", *BASE, "--model", "zoo:fmnist-cnn", "--n", "60", "--eps", "0.05",
        "--attacks", "pgd(steps=30)", "--batch-size", "5", "--sanity-n", "0", "--no-plots", "--out", str(out), *extra,
    ]  # fmt: skip


def test_resume_after_sigkill_finishes_with_identical_results(tmp_path):
    out = tmp_path / "killed"
    batches = out / "partial" / "eps-0.05"
    proc = subprocess.Popen(_command(out), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (batches / "batch00001.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = sorted(batches.glob("batch*.pt"))
    assert 2 <= len(finished) < 12, "the run should have been killed midway"
    stamps = {p.name: p.stat().st_mtime_ns for p in finished}
    assert not (out / "report.json").exists()

    resume = _command(out, "--resume")
    done = subprocess.run([*resume[:3], "-v", *resume[3:]], env=ENV, check=True, capture_output=True, text=True)
    assert f"resuming: {len(stamps)} of 12 batches already finished" in done.stderr  # none recomputed
    assert not (out / "partial").exists()  # the finished run keeps no cache that only serves a resume
    subprocess.run(_command(tmp_path / "straight"), env=ENV, check=True, capture_output=True)
    (resumed,), (straight,) = _results(out), _results(tmp_path / "straight")
    assert torch.equal(resumed.robust, straight.robust) and torch.equal(resumed.clean_logits, straight.clean_logits)
    assert torch.equal(resumed.adv_logits["pgd(steps=30)"], straight.adv_logits["pgd(steps=30)"])
    reports = [json.loads((d / "report.json").read_text()) for d in (out, tmp_path / "straight")]
    assert reports[0]["results"][0]["robust_accuracy"] == reports[1]["results"][0]["robust_accuracy"]


def test_resume_refuses_a_different_configuration(tmp_path, capsys):
    args = [*BASE, "--n", "20", "--eps", "0.05", "--attacks", "fgsm", "--sanity-n", "0", "--no-plots"]
    assert main([*args, "--out", str(tmp_path)]) == 0
    assert main([*args, "--out", str(tmp_path), "--resume", "--seed", "1"]) == 2
    err = capsys.readouterr().err
    assert "different seed" in err and "--resume" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--attacks", "pgd,autoattack:fast"], "unknown AutoAttack version"),
        (["--attacks", "pgd+bogus"], "unknown loss"),
        (["--eps", "0.1,abc"], "not a number"),
        (["--topk", "0"], "k >= 1"),
    ],
)
def test_user_mistakes_are_one_line_and_exit_2(tmp_path, capsys, extra, words):
    args = [*BASE, "--n", "10", "--eps", "0.1", "--sanity-n", "0", "--out", str(tmp_path), *extra]
    try:
        code = main(args)
    except SystemExit as exc:  # argparse's errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2
    assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_resume_with_another_eps_or_sanity_n_reuses_no_stale_cache(tmp_path, monkeypatch):
    args = [*BASE, "--n", "16", "--attacks", "fgsm", "--steps", "2", "--no-plots", "--out", str(tmp_path)]
    import robustlab.executor as executor

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # each run stops after its batches: partial/ stays for --resume

    with monkeypatch.context() as patch:
        patch.setattr(executor, "write_html", interrupted)
        assert main([*args, "--eps", "0.05", "--sanity-n", "8"]) == 130
        # an eps equal to 6 significant digits is another eps: its own batches and its own sanity checks
        assert main([*args, "--eps", "0.0500001", "--sanity-n", "8", "--resume"]) == 130
        assert sorted(p.name for p in (tmp_path / "partial").glob("eps-*")) == ["eps-0.05", "eps-0.0500001"]
        assert len(list((tmp_path / "partial").glob("sanity-*.json"))) == 2
    assert main([*args, "--eps", "0.05", "--sanity-n", "6", "--resume"]) == 0
    assert not (tmp_path / "partial").exists()  # finished: the cache is gone
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["sanity"][0]["name"] == "train_mode" and report["eps"] == [0.05]


def nan_for_bright_inputs() -> torch.nn.Module:
    """A linear Fashion-MNIST model whose logits are NaN for inputs brighter than 0.3 (``test_eval_cli:...``)."""

    class Broken(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            logits = self.net(x)
            return torch.where(x.flatten(1).mean(1, keepdim=True) > 0.3, float("nan"), logits)

    return Broken()


def test_nan_logits_are_reported_by_the_report_and_the_cli(tmp_path, capsys):
    args = ["--model", "test_eval_cli:nan_for_bright_inputs", "--n", "40", "--eps", "0.05", "--attacks", "fgsm"]
    assert main([*BASE, *args, "--sanity-n", "0", "--no-plots", "--out", str(tmp_path)]) == 0
    entry = json.loads((tmp_path / "report.json").read_text())["results"][0]
    assert entry["nonfinite"] and "NaN/inf logits" in capsys.readouterr().out
    (result,) = _results(tmp_path)
    clean_nan = ~torch.isfinite(result.clean_logits).all(1)
    assert clean_nan.any() and not (result.clean_correct & clean_nan).any()
    assert not (result.robust & result.nonfinite).any()  # NaN at the clean or at an adversarial input
    assert entry["nonfinite"] == result.nonfinite.nonzero().squeeze(1).tolist()


def test_python_api_does_in_one_call_what_the_cli_does(tmp_path, zoo_mlp, fmnist_batch):
    from robustlab.eval import EvalConfig, EvalReport, load_results, run_evaluation
    from robustlab.eval.attack_run import AttackConfig, run_attack
    from robustlab.eval.transfer_run import TransferConfig, run_transfer

    x, y = fmnist_batch(40)
    config = EvalConfig(eps=(0.02, 0.08), attacks="fgsm,pgd(steps=2)", topk=(1, 3), sanity_n=0, batch_size=16)
    report = run_evaluation(zoo_mlp, (x, y), config, tmp_path / "eval")
    assert [e.eps for e in report.results] == [0.02, 0.08] and report.attack_names == ["fgsm", "pgd(steps=2)"]
    again = EvalReport.load(tmp_path / "eval")  # typed, read back from report.json
    assert again.to_dict() == json.loads((tmp_path / "eval" / "report.json").read_text())
    assert again.results[1].robust_accuracy == load_results(tmp_path / "eval")[1].robust_accuracy
    assert again.results[0].worst_case_topk.asr[3] == report.results[0].worst_case_topk.asr[3]
    with pytest.raises(RobustlabError, match="already holds a run"):
        run_evaluation(zoo_mlp, (x, y), config, tmp_path / "eval")
    resumed = run_evaluation(zoo_mlp, (x, y), config, tmp_path / "eval", resume=True)  # finished: computed again
    assert [(e.eps, e.robust_accuracy, e.attacks["fgsm"].broken) for e in resumed.results] == [
        (e.eps, e.robust_accuracy, e.attacks["fgsm"].broken) for e in report.results
    ]
    in_memory = run_evaluation("zoo:fmnist-mlp", (x, y), config)  # no folder: nothing written
    assert in_memory.results[1].robust_accuracy == report.results[1].robust_accuracy

    single = run_attack(zoo_mlp, (x, y), AttackConfig("pgd", 0.08, steps=2, topk=(1, 3)), tmp_path / "attack")
    assert single.robust_accuracy < single.clean_accuracy and (tmp_path / "attack" / "report.md").exists()
    with pytest.raises(RobustlabError, match="already holds a run"):  # one run per folder, as for eval
        run_attack(zoo_mlp, (x, y), AttackConfig("fgsm", 0.08), tmp_path / "attack")
    assert run_attack(zoo_mlp, (x, y), AttackConfig("fgsm", 0.08), tmp_path / "attack", overwrite=True).n == 40
    matrix = run_transfer(["zoo:fmnist-cnn"], ["zoo:fmnist-mlp"], (x, y), TransferConfig(0.08, "fgsm"), tmp_path / "t")
    assert set(matrix.files) >= {"json", "markdown", "heatmap", "topk_curves"} and matrix.ks == [1, 2, 3, 5]
