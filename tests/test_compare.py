"""``robustlab compare``: several runs' headline figures side by side, read from their report.json."""

from __future__ import annotations

import json

import pytest

from robustlab.cli import main
from robustlab.eval import AttackConfig, DataSource, run_attack
from robustlab.reports.compare import compare_runs

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """The same model attacked at two radii: two attack run folders."""
    root = tmp_path_factory.mktemp("runs")
    for eps in (0.05, 0.1):
        config = AttackConfig("fgsm", eps, batch_size=100)
        run_attack("zoo:fmnist-cnn", DataSource("fashion-mnist", n=100), config, root / f"fgsm-{eps}")
    return root / "fgsm-0.05", root / "fgsm-0.1"


def test_compare_prints_each_runs_figures_side_by_side_and_writes_markdown_and_a_plot(two_runs, tmp_path, capsys):
    small, large = two_runs
    assert main(["compare", str(small), str(large), "--out", str(tmp_path / "cmp")]) == 0
    printed = capsys.readouterr().out
    table = [line for line in printed.splitlines() if line.startswith("| ")]
    assert [c.strip() for c in table[0].strip("|").split("|")] == ["metric (%)", small.name, large.name]
    for run, eps in ((small, "0.05"), (large, "0.1")):
        report = json.loads((run / "report.json").read_text())
        ci = report["intervals"]["robust_accuracy"]
        cell = f"{100 * report['robust_accuracy']:.2f} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"
        row = next(line for line in table if f"robust accuracy, linf eps {eps} " in line)
        assert cell in row and row.count(" - ") == 1  # the other run has no figure at this eps
    clean = next(line for line in table if line.startswith("| clean accuracy"))
    assert clean.count("[") == 2  # both runs report it, with intervals
    assert (tmp_path / "cmp" / "compare.md").read_text().strip() in printed
    assert (tmp_path / "cmp" / "compare.png").read_bytes()[:4] == b"\x89PNG"


def test_compare_takes_training_runs_and_reads_only_saved_files(two_runs, tmp_path):
    train = tmp_path / "train"
    train.mkdir()
    history = [{"epoch": 1, "loss": 1.0, "epoch_seconds": 1.0, "knn_accuracy": 0.5}]
    evaluation = {"n": 10, "clean_accuracy": 0.8, "pgd_accuracy": 0.3, "pgd_attack": "pgd-50-10",
                  "threat": {"norm": "linf", "eps": 0.1}}  # fmt: skip
    (train / "report.json").write_text(json.dumps({"kind": "ssl", "history": history, "epochs_done": 1,
                                                   "evaluation": evaluation}))  # fmt: skip
    comparison = compare_runs([two_runs[1], train])
    assert comparison.kinds == ["attack", "ssl"]
    # the final evaluation's accuracies get their interval over its n (10 images); the kNN monitor's has no n
    from robustlab.eval.intervals import clopper_pearson

    pgd = comparison.figures["train"]["robust accuracy under pgd-50-10, linf eps 0.1"]
    assert pgd == (0.3, list(clopper_pearson(3, 10)))
    assert comparison.figures["train"]["kNN accuracy (last epoch)"] == (0.5, None)
    assert comparison.figures["train"]["clean accuracy"] == (0.8, list(clopper_pearson(8, 10)))
    assert comparison.n == {two_runs[1].name: 100, "train": 10}
    assert comparison.rows()[0] == ["n (samples)", "100", "10"] and "different numbers of samples (10, 100)" in (
        comparison.to_markdown())  # fmt: skip


def test_compare_user_mistakes_are_one_line(two_runs, tmp_path, cli_error):
    cli_error(["compare", two_runs[0]], "two or more")
    cli_error(["compare", two_runs[0], tmp_path], "report.json")
