"""The cost of every answer: the passes robustlab reports equal what an independent counter around the model sees.

The independent counter is the test's own: a forward hook adds each batch's images, a full backward hook adds the
images of each input gradient. robustlab's counter (:mod:`robustlab.models.counting`) must agree with it per attack
(restarts, EOT, early stopping, adapters), in ``report.json``'s run total, under torchrun (summed over ranks), and in
``report.md`` and the CLI's table; reports written before passes were counted still load.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from robustlab.attacks import attack_from_spec
from robustlab.eval import EvalConfig, EvalReport, Evaluator, run_evaluation
from robustlab.models import load_model
from robustlab.models.counting import PassCounter, count_passes
from robustlab.threat import ThreatModel

pytestmark = pytest.mark.usefixtures("one_thread")


class ImageCounter:
    """The test's own count of a model's passes, in images: forward hook and full backward hook on the model."""

    def __init__(self, model: nn.Module) -> None:
        self.forward = self.backward = 0
        self.handles = [model.register_forward_hook(self._forward), model.register_full_backward_hook(self._backward)]

    def _forward(self, module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        self.forward += args[0].shape[0]

    def _backward(self, module: nn.Module, grad_input: tuple, grad_output: tuple) -> None:
        if grad_input[0] is not None:  # a gradient reached the model's input
            self.backward += grad_input[0].shape[0]

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


@pytest.fixture
def cnn():
    return load_model("zoo:fmnist-cnn")


def _evaluate(model: nn.Module, data, attacks: dict, eps: float = 0.1, batch_size: int = 16):
    counter = ImageCounter(model)
    try:
        result = Evaluator(attacks, ThreatModel("linf", eps), batch_size=batch_size).run(model, data)
    finally:
        counter.close()
    return result, counter


@pytest.mark.parametrize(
    "spec",
    ["pgd(steps=5,restarts=3)", "pgd(steps=5,eot_samples=3)", "pgd(steps=5,precision=bf16)", "fgsm",
     "autoattack:apgd-ce(n_iter=5)", "torchattacks:PGD(steps=5)"],
)  # fmt: skip
def test_each_attack_counts_what_an_independent_counter_sees(cnn, fmnist_batch, spec):
    """Restarts, EOT draws and the adapters' own loops are all counted, in images, forward and backward."""
    x, y = fmnist_batch(24)
    attack = attack_from_spec(spec, seed=0, early_stop=True)  # early stop where the attack takes it
    result, counter = _evaluate(cnn, (x, y), {spec: attack}, eps=0.05)
    attacked = int(result.attacked[spec].sum())
    assert result.clean_passes == 24  # one clean prediction per image
    assert result.forward_passes[spec] + result.clean_passes == counter.forward
    assert result.backward_passes[spec] == counter.backward
    assert result.backward_passes[spec] >= attacked > 0  # at least one input gradient per attacked image


def test_bpda_attacks_are_counted_on_the_whole_model(cnn, fmnist_batch):
    """BPDA swaps an inner module for the attack's duration; the passes through the whole model are still counted."""
    from robustlab.attacks.bpda import BPDAAttack
    from robustlab.attacks.presets import PGD

    x, y = fmnist_batch(24)
    attack = BPDAAttack(PGD(steps=5, seed=0), ["model.features.1"])
    result, counter = _evaluate(cnn, (x, y), {"bpda-pgd": attack}, eps=0.05)
    assert (result.forward_passes["bpda-pgd"] + result.clean_passes, result.backward_passes["bpda-pgd"]) == (
        counter.forward,
        counter.backward,
    )
    assert result.backward_passes["bpda-pgd"] == 5 * int(result.attacked["bpda-pgd"].sum())  # no early stop


def test_early_stopping_restarts_and_eot_show_in_the_counts(cnn, fmnist_batch):
    """The counts move the way the attack's work does: early stop cuts them, restarts and EOT draws multiply them."""
    x, y = fmnist_batch(32)
    specs = {
        "full": "pgd(steps=10,early_stop=False)",
        "early": "pgd(steps=10,early_stop=True)",
        "restarts": "pgd(steps=10,restarts=2,early_stop=False)",
        "eot": "pgd(steps=10,eot_samples=2,early_stop=False)",
    }
    backward = {}
    for key, spec in specs.items():
        result, counter = _evaluate(cnn, (x, y), {key: attack_from_spec(spec, seed=0)}, eps=0.1)
        assert (result.forward_passes[key] + result.clean_passes, result.backward_passes[key]) == (
            counter.forward,
            counter.backward,
        )
        attacked = int(result.attacked[key].sum())
        backward[key] = result.backward_passes[key] / attacked
    assert backward["full"] == 10  # one input gradient per step and image
    assert backward["early"] < backward["full"]
    assert backward["restarts"] == 2 * backward["full"]
    assert backward["eot"] == 2 * backward["full"]


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_the_counter_changes_nothing(cnn, fmnist_batch):
    """Values, dtypes, gradients and the train/eval mode are the same with and without the counter; counters nest;
    a TorchScript model (no hooks) is counted through PassCounter."""
    x, _ = fmnist_batch(8)
    x = x.clone().requires_grad_(True)
    plain = cnn(x)
    (grad,) = torch.autograd.grad(plain.sum(), x)
    with count_passes(cnn) as outer, count_passes(cnn) as inner, torch.autocast("cpu", dtype=torch.bfloat16):
        counted = cnn(x)
        (counted_grad,) = torch.autograd.grad(counted.float().sum(), x)
    assert counted.dtype == torch.bfloat16 and counted_grad.dtype == x.dtype  # autocast's dtypes, as without it
    assert (outer.forward, outer.backward) == (inner.forward, inner.backward) == (8, 8)
    with count_passes(cnn):
        assert torch.equal(cnn(x), plain) and not cnn.training
        assert torch.equal(torch.autograd.grad(cnn(x).sum(), x)[0], grad)
    class InPlace(nn.Module):  # writes into its input, which a counter must not forbid
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mul_(2).flatten(1).sum(1)

    shifted = x * 1
    with count_passes(in_place := InPlace()) as passes:
        (in_place_grad,) = torch.autograd.grad(in_place(shifted).sum(), x)
    assert torch.equal(in_place_grad, torch.full_like(x, 2.0)) and (passes.forward, passes.backward) == (8, 8)
    scripted = torch.jit.trace(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).eval(), x.detach())
    wrapped = PassCounter(scripted)
    wrapped(x).sum().backward()
    assert (wrapped.count.forward, wrapped.count.backward, wrapped.training) == (8, 8, False)


def _strip_counts(value):
    """A report as robustlab wrote it before passes were counted."""
    if isinstance(value, dict):
        drop = ("forward_passes", "backward_passes", "cost", "clean_passes")
        return {k: _strip_counts(v) for k, v in value.items() if k not in drop}
    if isinstance(value, list):
        return [_strip_counts(v) for v in value]
    return value


def test_report_json_holds_every_pass_of_the_run(cnn, fmnist_batch, tmp_path):
    """Per attack and per sanity check in report.json, and a run total equal to the independent counter's; the same
    numbers in report.md; an older report.json without them still loads and renders."""
    x, y = fmnist_batch(40)
    counter = ImageCounter(cnn)
    try:
        config = EvalConfig(eps=(0.05, 0.1), attacks="fgsm,pgd(steps=5)", sanity_n=16, batch_size=16, plots=False)
        run_evaluation(cnn, (x, y), config, tmp_path / "run")
    finally:
        counter.close()
    data = json.loads((tmp_path / "run" / "report.json").read_text())
    cost = data["cost"]
    assert (cost["forward_passes"], cost["backward_passes"]) == (counter.forward, counter.backward)
    attacks = [s for e in data["results"] for s in e["attacks"].values()]
    assert cost["attacks"]["backward_passes"] == sum(s["backward_passes"] for s in attacks) > 0
    assert cost["sanity"]["forward_passes"] == sum(f["forward_passes"] for f in data["sanity"]) > 0
    assert cost["clean"]["forward_passes"] == 40  # nested eps: the clean pass is made once
    markdown = (tmp_path / "run" / "report.md").read_text()
    for e in data["results"]:
        for name, s in e["attacks"].items():
            row = f"| {e['eps']:.4g} | {name} | {s['attacked']} | {s['seconds']:.2f} | {s['forward_passes']} | "
            assert re.search(re.escape(row).replace(r"\ ", " +"), markdown), row
    assert re.search(rf"\*\*total\*\* +\| {cost['forward_passes']} +\| {cost['backward_passes']} +\|", markdown)
    html = (tmp_path / "run" / "report.html").read_text()
    flag = next(f for f in data["sanity"] if f["backward_passes"])
    assert f"({flag['forward_passes']} forward, {flag['backward_passes']} backward passes)" in html

    old = tmp_path / "old"
    old.mkdir()
    (old / "report.json").write_text(json.dumps(_strip_counts(data)))
    report = EvalReport.load(old)
    assert report.cost == {} and report.results[0].attacks["fgsm"].forward_passes == 0
    assert "## Cost" not in report.to_markdown() and "forward passes" not in report.to_markdown()
    from robustlab.reports.rebuild import rebuild_report

    assert Path(rebuild_report(old)["html"]).is_file()


def test_cli_table_shows_the_counts_of_report_json(tmp_path, capsys):
    """``robustlab eval`` prints each attack's passes and the run's total, the numbers report.json holds."""
    from robustlab.cli import main

    out = tmp_path / "run"
    code = main(["eval", "--model", "zoo:fmnist-mlp", "--dataset", "fashion-mnist", "--n", "24", "--batch-size", "16",
                 "--eps", "0.1", "--attacks", "fgsm,pgd(steps=3)", "--sanity-n", "0", "--no-plots", "--no-progress",
                 "--out", str(out)])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0
    data = json.loads((out / "report.json").read_text())
    for name, s in data["results"][0]["attacks"].items():
        assert re.search(rf"\| {re.escape(name)} +\| [0-9.]+ +\| {s['forward_passes']} +\| {s['backward_passes']} +\|",
                         printed), name  # fmt: skip
    cost = data["cost"]
    assert f"cost: {cost['forward_passes']} forward, {cost['backward_passes']} backward passes" in printed
    html = (out / "report.html").read_text()
    assert f"<td>{cost['forward_passes']}</td>" in html


SCRIPT = """
import json, sys
import torch
from robustlab.eval import EvalConfig, run_evaluation
from robustlab.data import load_dataset
from robustlab.models import load_model

sys.path.insert(0, {tests!r})
from test_pass_counts import ImageCounter

model = load_model("zoo:fmnist-mlp")
data = load_dataset("fashion-mnist", "test")
x, y = data.images[:70].float() / 255, data.labels[:70].clone()
counter = ImageCounter(model)
# sanity checks off: they run on rank 0 only (counted in the one-process tests); with them on, rank 1 aborted at
# times under pytest ("terminate called without an active exception") while it waited for rank 0's checks
config = EvalConfig(eps=(0.03, 0.06), attacks="fgsm,pgd(steps=5)", sanity_n=0, batch_size=16, plots=False)
report = run_evaluation(model, (x, y), config, sys.argv[1])
rank = report.rank
with open(f"{{sys.argv[1]}}-rank{{rank}}.json", "w") as f:
    json.dump({{"forward": counter.forward, "backward": counter.backward}}, f)
"""


def test_torchrun_counts_are_summed_over_ranks(tmp_path):
    """Two gloo ranks: the report's total equals the sum of both ranks' independent counters, and each attack's
    counts equal a one-process run's (the batches are fixed, the attacks keyed per sample)."""
    script = tmp_path / "count_run.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parent)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = Path(sys.executable).with_name("torchrun")
    one, two = tmp_path / "one", tmp_path / "two"
    for command in ([sys.executable, str(script), str(one)],
                    [str(torchrun), "--standalone", "--nproc_per_node=2", str(script), str(two)]):  # fmt: skip
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
        causes = [line for line in done.stderr.splitlines() if "rror" in line or "terminate" in line]
        assert done.returncode == 0, "\n".join(causes[:20]) + done.stderr[-1500:]
    ranks = [json.loads((tmp_path / f"two-rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["forward"] > 0 for r in ranks)  # both ranks did work
    reports = [json.loads((d / "report.json").read_text()) for d in (one, two)]
    assert reports[1]["world_size"] == 2
    assert reports[1]["cost"]["forward_passes"] == sum(r["forward"] for r in ranks)
    assert reports[1]["cost"]["backward_passes"] == sum(r["backward"] for r in ranks)
    single = json.loads((tmp_path / "one-rank0.json").read_text())
    assert reports[0]["cost"]["forward_passes"] == single["forward"]
    for a, b in zip(reports[0]["results"], reports[1]["results"]):
        for name in a["attacks"]:
            for key in ("forward_passes", "backward_passes"):
                assert a["attacks"][name][key] == b["attacks"][name][key], (name, key)


def test_attack_run_reports_its_passes(cnn, fmnist_batch, tmp_path):
    """``run_attack`` (``robustlab attack``) records the attack's passes in its report and its table."""
    from robustlab.eval import AttackConfig, run_attack

    x, y = fmnist_batch(24)
    counter = ImageCounter(cnn)
    try:
        report = run_attack(cnn, (x, y), AttackConfig("pgd(steps=4)", 0.05, batch_size=16))
    finally:
        counter.close()
    assert report.backward_passes == counter.backward > 0
    assert 24 <= counter.forward - report.forward_passes <= 24 + 8  # the rest: clean predictions and the probe
    row = ["forward / backward passes (images)", f"{report.forward_passes} / {report.backward_passes}"]
    assert row in report.rows()
    assert report.to_dict()["forward_passes"] == report.forward_passes


def test_transfer_reports_the_cost_of_crafting(cnn, fmnist_batch):
    """``transfer_matrix`` (``robustlab transfer``) records each attack's passes on each surrogate."""
    from robustlab.eval.transfer import transfer_matrix

    x, y = fmnist_batch(16)
    mlp = load_model("zoo:fmnist-mlp")
    counter = ImageCounter(cnn)
    try:
        attack = attack_from_spec("pgd(steps=3)", seed=0)
        result = transfer_matrix({"cnn": cnn}, {"mlp": mlp}, {"pgd": attack}, ThreatModel("linf", 0.05), (x, y))
    finally:
        counter.close()
    passes = result.to_dict()["passes"]["pgd"]["cnn"]
    assert (passes["forward_passes"], passes["backward_passes"]) == (counter.forward, counter.backward)
    assert f"| {counter.forward} " in result.to_markdown()
