"""Each subcommand's work in Python: one frozen config, one call (``robustlab attack``, ``eval``, ``transfer``), and
the one rule for the attack defaults (``--steps``, ``--step-size``, ``--loss``, ``--restarts``)."""

from __future__ import annotations

import json

import pytest
import torch

import robustlab.executor as executor
from robustlab.attacks import PGD
from robustlab.errors import RobustlabError
from robustlab.eval import (
    AttackConfig,
    EvalConfig,
    Evaluator,
    TransferConfig,
    run_attack,
    run_evaluation,
    run_transfer,
)
from robustlab.threat import ThreatModel

pytestmark = pytest.mark.usefixtures("one_thread")


def test_an_attack_run_is_one_config_and_one_call(tmp_path, zoo_mlp, fmnist_batch):
    x, y = fmnist_batch(32)
    config = AttackConfig("pgd", ThreatModel("linf", 0.1), steps=5, batch_size=16)
    report = run_attack(zoo_mlp, (x, y), config, tmp_path / "attack")
    direct = Evaluator([PGD(steps=5)], ThreatModel("linf", 0.1), batch_size=16, only_robust=False).run(zoo_mlp, (x, y))
    assert report.robust_accuracy == direct.robust_accuracy and report.attack["steps"] == 5
    saved = json.loads((tmp_path / "attack" / "report.json").read_text())
    assert saved["config"]["steps"] == 5 and saved["config"]["eps"] == 0.1 and saved["config"]["norm"] == "linf"
    assert AttackConfig("pgd", 0.1).threat == ThreatModel("linf", 0.1)  # a bare eps: Linf in [0, 1]


def test_an_evaluation_is_one_config_and_one_call(tmp_path, zoo_mlp, fmnist_batch):
    x, y = fmnist_batch(32)
    config = EvalConfig((0.05, 0.1), ThreatModel("linf", 0.1), attacks="fgsm,pgd", steps=3, sanity_n=0, plots=False)
    report = run_evaluation(zoo_mlp, (x, y), config, tmp_path / "eval")
    assert report.eps == [0.05, 0.1] and report.attack_names == ["fgsm", "pgd"]
    assert report.attacks["pgd"]["steps"] == 3 and config.threat == ThreatModel("linf", 0.1)
    assert EvalConfig(0.03).threat == ThreatModel("linf", 0.03) and EvalConfig(0.03).eps == (0.03,)


def test_a_transfer_run_is_one_config_and_one_call(tmp_path, zoo_cnn, zoo_mlp, fmnist_batch):
    x, y = fmnist_batch(16)
    config = TransferConfig(ThreatModel("linf", 0.1), "fgsm,ifgsm", steps=2, topk=(1, 2))
    result = run_transfer({"cnn": zoo_cnn}, {"mlp": zoo_mlp}, (x, y), config, tmp_path / "transfer")
    assert result.sources == ["cnn"] and result.targets == ["mlp"] and result.attacks == ["fgsm", "ifgsm"]
    assert result.attack_configs["ifgsm"]["steps"] == 2
    assert json.loads((tmp_path / "transfer" / "report.json").read_text())["config"]["steps"] == 2


def test_steps_is_a_default_for_every_attack_that_takes_it_and_refused_when_none_does():
    attacks = EvalConfig(0.1, attacks="fgsm,pgd,pgd(steps=4)", steps=7, sanity_n=0).build()
    assert attacks["pgd"].steps == 7 and attacks["pgd(steps=4)"].steps == 4  # a spec's own option wins
    with pytest.raises(RobustlabError, match="none of the attacks square takes it"):
        EvalConfig(0.1, attacks="square", steps=7, sanity_n=0).build()
    with pytest.raises(RobustlabError, match="none of the attacks square takes it"):
        AttackConfig("square", 0.1, loss="cw").build()
    assert AttackConfig("square", 0.1, restarts=2).build().restarts == 2  # square's own restarts
    EvalConfig(0.1, attacks="square", steps=7).build()  # the sanity checks take --steps
    with pytest.raises(RobustlabError, match="exactly one step"):  # fgsm answers in its own words
        AttackConfig("fgsm", 0.1, steps=5).build()
    with pytest.raises(RobustlabError, match="names 2 attacks"):  # robustlab attack runs one
        AttackConfig("pgd,fgsm", 0.1).build()
    with pytest.raises(RobustlabError, match="attack objects"):
        EvalConfig(0.1, attacks={"pgd": PGD()}, steps=3).build()


# What an eval run folder recorded as its fingerprint before the configs held a ThreatModel (EvalConfig's fields
# then: eps, attacks, norm, bounds, ... spread out): the settings part of run.json, written out by hand.
OLD_SETTINGS = {
    "norm": "linf", "bounds": [0.0, 1.0], "only_robust": True, "batch_size": 8, "seed": 0, "steps": 2,
    "step_size": None, "loss": None, "restarts": None, "eps_protocol": "nested", "adaptive": "on", "bpda": [],
    "predictions": 1, "vote": "mean", "eot_samples": 10, "adaptive_queries": 1000, "early_stop": True,
    "memory_format": "contiguous", "precision": "fp32", "surrogate": None, "attacks": ["fgsm", "pgd"],
}  # fmt: skip


def test_resume_of_a_run_folder_written_before_the_typed_configs(tmp_path, zoo_mlp, fmnist_batch, monkeypatch):
    x, y = fmnist_batch(24)
    config = EvalConfig(0.1, attacks="fgsm,pgd", steps=2, batch_size=8, sanity_n=0, plots=False)
    out = tmp_path / "old"
    with monkeypatch.context() as patch:  # stopped after its batches, as a Ctrl-C would: resumable
        patch.setattr(executor, "write_html", lambda path: (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            run_evaluation(zoo_mlp, (x, y), config, out)
    record = json.loads((out / "run.json").read_text())
    sources = {k: v for k, v in record["fingerprint"].items() if k in ("model", "model_state_sha256", "dataset", "n",
                                                                      "data_sha256")}  # fmt: skip
    record["fingerprint"] = {**sources, **OLD_SETTINGS}  # the folder as the older robustlab left it
    (out / "run.json").write_text(json.dumps(record))
    added = sorted(set(config.fingerprint()) - set(OLD_SETTINGS))
    if not added:  # the same settings: the old run continues from its batches
        resumed = run_evaluation(zoo_mlp, (x, y), config, out, resume=True)
        straight = run_evaluation(zoo_mlp, (x, y), config, tmp_path / "new")
        assert resumed.results[0].robust_accuracy == straight.results[0].robust_accuracy
        assert torch.equal(torch.tensor(resumed.eps), torch.tensor(straight.eps))
    else:  # a setting the old robustlab did not have: refused in one line naming it
        with pytest.raises(RobustlabError, match=f"different {added[0]}"):
            run_evaluation(zoo_mlp, (x, y), config, out, resume=True)
    record["fingerprint"] = {k: v for k, v in record["fingerprint"].items() if k != "precision"}  # older still
    (out / "run.json").write_text(json.dumps(record))
    with pytest.raises(RobustlabError, match="different .*precision") as refused:
        run_evaluation(zoo_mlp, (x, y), config, out, resume=True)
    assert "\n" not in str(refused.value)
