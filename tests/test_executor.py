"""A kind of run of your own through the one executor: a ``build`` and a ``work`` function, and a report class
registered in one line; the executor owns the folder (lock, resume check, manifest), the environment, the timing
and report.json/report.md/report.html."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch

from robustlab.errors import RobustlabError
from robustlab.executor import Run, execute
from robustlab.reports import register_report


@register_report
@dataclass
class CoinReport:
    kind = "coin"
    n: int
    heads: float

    def to_dict(self) -> dict:
        return {"kind": self.kind, "n": self.n, "heads": self.heads}

    @classmethod
    def from_dict(cls, d: dict) -> CoinReport:
        return cls(d["n"], d["heads"])

    def to_markdown(self) -> str:
        return f"# Coin\n\n{100 * self.heads:.1f} % heads of {self.n}"

    def headline(self) -> dict:
        return {"heads": (self.heads, None)}

    def page_title(self) -> str:
        return f"{self.n} coin flips"


def flip(out, n: int = 100, seed: int = 0, **options):
    """A coin-flip run: build draws a generator on the run's device, work flips and saves the flips."""

    def build(run: Run) -> torch.Generator:
        return torch.Generator(device=run.device).manual_seed(seed)

    def work(run: Run, generator: torch.Generator) -> CoinReport:
        flips = torch.rand(n, generator=generator) < 0.5
        if run.export is not None:
            run.save_export({"flips": flips})
        return CoinReport(n, flips.float().mean().item())

    return execute("coin", build, work, out, fingerprint={"n": n, "seed": seed}, config={"n": n, "seed": seed},
                   **options)  # fmt: skip


def test_a_kind_of_run_of_your_own_is_a_build_and_a_work_function(tmp_path):
    out = tmp_path / "coin"
    report = flip(out, export=("--save-flips", out / "flips.pt", ()))
    saved = json.loads((out / "report.json").read_text())
    assert saved["kind"] == "coin" and saved["heads"] == report.heads and saved["config"] == {"n": 100, "seed": 0}
    assert saved["wall_time_s"] >= 0 and "torch" in saved["environment"]
    assert (out / "report.md").read_text().endswith("heads of 100\n")  # the executor ends it with a newline
    assert "100 coin flips" in (out / "report.html").read_text()
    record = json.loads((out / "run.json").read_text())
    assert record["kind"] == "coin" and record["fingerprint"] == {"n": 100, "seed": 0}
    assert {"report.json", "report.md", "report.html", "flips.pt"} <= set(record["files"])
    assert flip(None).heads == report.heads  # no folder: the same work, nothing written


def test_the_executor_checks_the_folder_before_the_work(tmp_path):
    out = tmp_path / "coin"
    flip(out)
    with pytest.raises(RobustlabError, match="already holds a run"):
        flip(out)
    with pytest.raises(RobustlabError, match="different n"):
        flip(out, n=50, resume=True)
    with pytest.raises(RobustlabError, match="run writes itself"):
        flip(tmp_path / "other", export=("--save-flips", tmp_path / "other" / "report.md", ()))
    assert flip(out, n=50, overwrite=True).n == 50 and json.loads((out / "report.json").read_text())["n"] == 50
