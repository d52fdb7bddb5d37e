"""Every report is one :class:`~robustlab.reports.Report`: its kind stored in report.json, a to_dict/from_dict round
trip, report.md rebuilt by its own type, the headline figures ``compare`` sets side by side; a registry by kind
serves ``robustlab report`` and ``compare``; report.json files written before reports stored their kind still
load; a new kind is one small class plus one line."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest

from robustlab.cli import main
from robustlab.errors import RobustlabError
from robustlab.eval import (
    AttackConfig,
    AttackReport,
    DataSource,
    EvalConfig,
    EvalReport,
    TransferConfig,
    run_attack,
    run_evaluation,
    run_transfer,
)
from robustlab.eval.transfer import TransferResult
from robustlab.reports import HTML_FILE, REPORTS, Report, rebuild_report, register_report, report_from_dict
from robustlab.reports.compare import compare_runs
from robustlab.training.report import TrainReport, evaluation_summary

pytestmark = pytest.mark.usefixtures("one_thread")
DATA = DataSource("fashion-mnist", n=40)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Any]:
    """One tiny run folder of each kind: ``{kind: (folder, the report the run returned, or None)}``."""
    root = tmp_path_factory.mktemp("runs")
    config = EvalConfig(eps=(0.1,), attacks="fgsm", sanity_n=0, batch_size=40)
    found = {"eval": (root / "eval", run_evaluation("zoo:fmnist-cnn", DATA, config, root / "eval"))}
    attack = run_attack("zoo:fmnist-cnn", DATA, AttackConfig("fgsm", 0.1, batch_size=40), root / "attack")
    found["attack"] = (root / "attack", attack)
    config = TransferConfig(0.1, attacks="fgsm")
    found["transfer"] = (root / "transfer", run_transfer(["zoo:fmnist-cnn"], ["zoo:fmnist-mlp"], DATA, config,
                                                         root / "transfer"))  # fmt: skip
    args = ["train", "--method", "fgsm-rs", "--model", "cnn", "--dataset", "fashion-mnist", "--eps", "0.1"]
    args += ["--epochs", "1", "--n", "128", "--eval-n", "32", "--monitor-n", "32", "--out", root / "train"]
    assert main([str(a) for a in [*args, "--no-progress"]]) == 0
    found["train"] = (root / "train", None)
    return found


KINDS = {"eval": EvalReport, "attack": AttackReport, "transfer": TransferResult, "train": TrainReport}


def saved(out) -> dict[str, Any]:
    return json.loads((out / "report.json").read_text())


def as_json(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d, default=str))


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_kind_stores_its_kind_and_round_trips(runs, kind):
    out, returned = runs[kind]
    data = saved(out)
    assert data["kind"] == kind and REPORTS[kind] is KINDS[kind]
    report = report_from_dict(data)
    assert type(report) is KINDS[kind] and isinstance(report, Report)
    assert as_json(report.to_dict()) == data  # report.json holds the report, and only the report
    if kind == "transfer":  # (its labels and crafted examples are tensors, not in report.json)
        assert report.n == returned.n == 40 and report.to_markdown() == returned.to_markdown()
    else:
        typed = returned or report
        assert KINDS[kind].from_dict(typed.to_dict()) == typed


def test_training_s_final_evaluation_is_an_eval_report(runs):
    data = saved(runs["train"][0])
    report = TrainReport.from_dict(data)
    assert isinstance(report.evaluation, EvalReport) and report.evaluation.n == report.n == 32
    assert data["evaluation"] == as_json(evaluation_summary(report.evaluation))  # the summary as before
    entry = report.evaluation.results[0]
    assert data["evaluation"]["pgd_accuracy"] == entry.attacks[data["evaluation"]["pgd_attack"]].robust_accuracy_after


@pytest.mark.parametrize("kind", list(KINDS))
def test_robustlab_report_rebuilds_markdown_and_html_of_each_kind(runs, kind, tmp_path, capsys):
    out = tmp_path / kind
    shutil.copytree(runs[kind][0], out)
    before = {name: (out / name).read_bytes() for name in ("report.md", HTML_FILE)}
    for name in before:
        (out / name).write_text("stale")
    assert main(["report", str(out)]) == 0
    assert "markdown:" in capsys.readouterr().out
    assert {name: (out / name).read_bytes() for name in before} == before  # transfer's Markdown too, now


# What report.json held before reports stored their kind (and, for training, before the final evaluation was an
# EvalReport): the keys each kind added since are dropped.
ADDED = {
    "eval": ("kind",),
    "attack": ("kind",),
    "transfer": ("kind", "dataset", "split", "files"),
    "train": ("final_evaluation", "summary_keys"),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_report_json_of_the_previous_code_loads_and_rebuilds(runs, kind, tmp_path):
    out = tmp_path / kind
    shutil.copytree(runs[kind][0], out)
    before = (out / "report.md").read_text()
    old = {k: v for k, v in saved(out).items() if k not in ADDED[kind]}
    (out / "report.json").write_text(json.dumps(old))
    report = report_from_dict(old)
    assert type(report) is KINDS[kind] and report.kind == kind
    assert set(rebuild_report(out)) == {"markdown", "html"}
    after = (out / "report.md").read_text()
    if kind == "transfer":  # an old Python-API transfer report did not name its dataset: the title says "-"
        assert after.splitlines()[1:] == before.splitlines()[1:] and "-/-" in after.splitlines()[0]
    else:
        assert after == before
    assert compare_runs([runs["attack"][0], out]).kinds == ["attack", kind]


def test_compare_takes_any_two_runs_also_of_different_kinds(runs):
    folders = [runs[k][0] for k in KINDS]
    comparison = compare_runs(folders)
    assert comparison.kinds == list(KINDS)
    for name, folder in zip(comparison.runs, folders):
        assert comparison.figures[name] == report_from_dict(saved(folder)).headline()
    assert comparison.n == {"eval": 40, "attack": 40, "transfer": 40, "train": 32}
    rows = {row[0]: row[1:] for row in comparison.rows()}
    clean = rows["clean accuracy"]
    assert clean[2] == "-" and all("[" in c for c in clean[:2] + clean[3:])  # what both have; intervals everywhere
    assert any(m.startswith("fgsm top-1 ASR, zoo:fmnist-cnn -> zoo:fmnist-mlp") for m in comparison.metrics)
    pair = compare_runs([runs["train"][0], runs["transfer"][0]])
    assert set(pair.figures["train"]).isdisjoint(pair.figures["transfer"])  # nothing shared: each its own rows


# A new report kind: one small class plus one line.
@dataclass
class ToyReport:
    kind: ClassVar[str] = "toy"
    score: float
    n: int = 10

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "score": self.score, "n": self.n}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ToyReport:
        return cls(d["score"], d["n"])

    def to_markdown(self) -> str:
        return f"# Toy run\n\nscore **{self.score}**\n"

    def headline(self) -> dict[str, tuple[float, None]]:
        return {"toy score": (self.score, None)}

    def page_title(self) -> str:
        return "A toy run"


register_report(ToyReport)


def test_a_new_report_kind_is_one_class_and_one_line(runs, tmp_path, capsys):
    out = tmp_path / "toy"
    out.mkdir()
    (out / "report.json").write_text(json.dumps(ToyReport(0.25).to_dict()))
    assert isinstance(ToyReport(0.25), Report) and report_from_dict(saved(out)) == ToyReport(0.25)
    assert main(["report", str(out)]) == 0
    assert (out / "report.md").read_text() == ToyReport(0.25).to_markdown()
    page = (out / HTML_FILE).read_text()
    assert "<title>A toy run</title>" in page and "<strong>0.25</strong>" in page and "· toy ·" in page
    assert main(["compare", str(out), str(runs["attack"][0])]) == 0
    printed = capsys.readouterr().out
    row = next(line for line in printed.splitlines() if line.startswith("| toy score"))
    assert "`toy`: toy, `attack`: attack" in printed and [c.strip() for c in row.strip("|").split("|")] == [
        "toy score", "25.00", "-"]  # fmt: skip


def test_a_kind_not_loaded_here_is_one_line(runs, tmp_path, cli_error):
    (tmp_path / "report.json").write_text(json.dumps({"kind": "mystery", "history": [], "epochs_done": 0}))
    with pytest.raises(RobustlabError, match="import robustlab.report_kinds"):
        report_from_dict(saved(tmp_path))
    cli_error(["report", tmp_path], "mystery", "robustlab.report_kinds")
    (tmp_path / "report.json").write_text(json.dumps({"kind": "unheard-of", "score": 1.0}))  # no key of any kind
    cli_error(["compare", tmp_path, runs["attack"][0]], "'unheard-of' report", "not loaded here")


def test_reports_import_no_report_kind_and_no_package_cycle_remains():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("cycles", Path(__file__).parents[1] / "scripts" / "cycles.py")
    cycles = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cycles)
    edges = cycles.import_graph()
    imported = {t for m, targets in edges.items() if m.startswith("robustlab.reports") for t in targets}
    assert not {t for t in imported if t.startswith(("robustlab.eval", "robustlab.training"))}
    assert not [c for c in cycles.cycles()[1] if "robustlab.reports" in c]
