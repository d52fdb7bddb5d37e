"""Every training command's work from Python: one frozen config (robustlab.recipes) and one call,
:func:`robustlab.training.run_training`; the config's fingerprint is what ``resume`` compares. Tiny budgets: one
step of one epoch on a few Fashion-MNIST images."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from torch import nn

from robustlab.defenses.methods import METHODS, AdversarialMethod
from robustlab.errors import RobustlabError
from robustlab.models import load_model
from robustlab.recipes import (
    TRAINING_KINDS,
    ATConfig,
    DeACLConfig,
    FineTuneConfig,
    PseudoATConfig,
    SSLConfig,
)
from robustlab.threat import ThreatModel
from robustlab.training import run_training

pytestmark = pytest.mark.usefixtures("one_thread")

THREAT = ThreatModel("linf", 0.1)
TINY = {"dataset": "fashion-mnist", "n": 64, "epochs": 1, "batch_size": 32, "max_steps_per_epoch": 1}


def test_supervised_adversarial_training_is_one_config_and_one_call(tmp_path):
    config = ATConfig(method="noiseaug", model="cnn", threat=THREAT, monitor_n=32, eval_n=16, eval_steps=2,
                      eval_restarts=1, **TINY)  # fmt: skip
    report = run_training(config, tmp_path / "run")
    assert report.kind == "train" and report.method["method"] == "noiseaug" and report.epochs_done == 1
    assert load_model(str(tmp_path / "run"))(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_the_ssl_deacl_pseudo_at_finetune_chain_is_one_config_and_one_call_each(tmp_path):
    ssl = run_training(SSLConfig(model="cnn", knn_n=0, **TINY), tmp_path / "ssl")
    assert ssl.kind == "ssl" and "loss" in ssl.history[0]
    deacl = DeACLConfig(teacher=str(tmp_path / "ssl"), threat=THREAT, steps=1, projector=True, **TINY)
    assert run_training(deacl, tmp_path / "deacl").kind == "deacl"
    pseudo = PseudoATConfig(teacher=str(tmp_path / "ssl"), targets="kmeans", clusters=3, kmeans_n=64, threat=THREAT,
                            steps=1, **TINY)  # fmt: skip
    assert run_training(pseudo, tmp_path / "pseudo").kind == "pseudo-at"
    tune = FineTuneConfig(encoder=str(tmp_path / "deacl"), protocol="slf", threat=THREAT, eval_n=16, eval_steps=2,
                          **TINY)  # fmt: skip
    assert tune.lr == 0.03  # the protocol's default learning rate
    report = run_training(tune, tmp_path / "slf")
    assert report.kind == "finetune" and load_model(str(tmp_path / "slf"))(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_a_config_may_hold_modules_which_the_run_copies(tmp_path):
    teacher = load_model("zoo:fmnist-cnn")
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    config = FineTuneConfig(encoder=teacher, protocol="aff", threat=THREAT, steps=1, eval_n=0, **TINY)
    assert config.fingerprint()["encoder"]["module"] == type(teacher).__name__  # its weights' digest
    run_training(config, tmp_path / "run")
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())


def test_the_fingerprint_is_the_config_fields_that_change_the_result(tmp_path):
    config = ATConfig(method="pgd", model="cnn", threat=THREAT, **TINY)
    keys = config.fingerprint()
    assert keys["threat"] == {"norm": "linf", "eps": 0.1, "bounds": [0.0, 1.0]} and keys["method"] == "pgd"
    assert "eval_n" not in keys and "progress" not in keys and "num_workers" not in keys  # neutral
    assert ATConfig(method="pgd", model="cnn", threat=THREAT, eval_n=5, **TINY).fingerprint() == keys
    assert ATConfig(method="pgd", model="cnn", threat=THREAT.with_eps(0.2), **TINY).fingerprint() != keys
    assert set(TRAINING_KINDS) == {"train", "ssl", "deacl", "pseudo-at", "finetune"}
    assert TRAINING_KINDS.get("deacl") is DeACLConfig
    with pytest.raises(RobustlabError, match="unknown training kind 'deacel'.*did you mean deacl"):
        TRAINING_KINDS.get("deacel")


def test_a_resume_with_another_config_is_refused_naming_the_field(tmp_path):
    config = ATConfig(method="fgsm", model="cnn", threat=THREAT, monitor_n=0, eval_n=0, **TINY)
    run_training(config, tmp_path / "run")
    with pytest.raises(RobustlabError, match=r"different epochs \(epochs 1 -> 2\)"):
        run_training(replace(config, epochs=2), tmp_path / "run", resume=True)


def test_a_run_of_an_older_robustlab_is_refused_in_one_line(tmp_path, cli_error):
    """A run folder written before the typed configs records the command's arguments (no threat model among them):
    --resume cannot compare them, and says so."""
    old = tmp_path / "old"
    old.mkdir()
    arguments = {"method": "fgsm", "model": "cnn", "dataset": "fashion-mnist", "norm": "linf", "eps": 0.1,
                 "bounds": [0.0, 1.0], "epochs": 1, "batch_size": 32, "seed": 0, "pgd_steps": None}  # fmt: skip
    (old / "run.json").write_text(json.dumps({"kind": "train", "fingerprint": arguments}))
    torch.save({"epoch": 0}, old / "last.pt")
    config = ATConfig(method="fgsm", model="cnn", threat=THREAT, monitor_n=0, eval_n=0, **TINY)
    with pytest.raises(RobustlabError, match="older robustlab.*--overwrite"):
        run_training(config, old, resume=True)
    cli_error(["train", "--method", "fgsm", "--model", "cnn", "--dataset", "fashion-mnist", "--eps", "0.1",
               "--out", str(old), "--resume"], "older robustlab")  # fmt: skip


class Flip(AdversarialMethod):
    """A new training method: cross-entropy on horizontally flipped images."""

    name = "flip"

    def training_input(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x.flip(-1)


def test_a_new_training_method_is_one_small_class_plus_one_line(tmp_path):
    METHODS.register("flip", Flip)  # the one line
    try:
        config = ATConfig(method="flip", model="cnn", threat=THREAT, monitor_n=0, eval_n=0, **TINY)
        report = run_training(config, tmp_path / "run")
    finally:
        METHODS.unregister("flip")
    assert report.method["method"] == "flip" and report.epochs_done == 1
