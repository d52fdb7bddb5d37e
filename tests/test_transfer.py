"""Transfer attacks: the ensemble surrogate, crafting on a surrogate and judging on targets, the matrix CLI."""

import json

import pytest
import torch

from robustlab import ThreatModel
from robustlab.attacks import FGSM, IFGSM
from robustlab.attacks.topk import TopK
from robustlab.attacks.transfer import Ensemble, TransferAttack
from robustlab.cli import main
from robustlab.errors import RobustlabError
from robustlab.eval import Evaluator
from robustlab.eval.transfer import transfer_matrix
from robustlab.models import load_model
from robustlab.runs import RunFolder


@pytest.fixture(scope="module")
def cnn_s1():
    return load_model("zoo:fmnist-cnn-s1")


def test_ensemble_averages_logits(zoo_cnn, zoo_mlp, fmnist_batch):
    x, _ = fmnist_batch(16)
    with torch.no_grad():
        a, b = zoo_cnn(x), zoo_mlp(x)
        assert torch.allclose(Ensemble([zoo_cnn, zoo_mlp])(x), (a + b) / 2, atol=1e-6)
        assert torch.allclose(Ensemble([zoo_cnn, zoo_mlp], weights=[3, 1])(x), 0.75 * a + 0.25 * b, atol=1e-6)
    ensemble = Ensemble([zoo_cnn, zoo_mlp])
    # mirrors the members' eval mode (so the evaluator does not warn about train mode), changes nothing
    assert not any(m.training for m in ensemble.modules()) and not zoo_cnn.training
    # the ensemble is an ordinary surrogate: gradients flow through both members, parameters stay untouched
    out = IFGSM(steps=2)(ensemble, x, fmnist_batch(16)[1], ThreatModel("linf", 0.1))
    assert out.x_adv.shape == x.shape and all(p.requires_grad for p in zoo_cnn.parameters())
    with pytest.raises(RobustlabError, match="one non-negative weight"):
        Ensemble([zoo_cnn, zoo_mlp], weights=[1.0])


def test_matrix_entries_equal_a_direct_evaluation_of_the_saved_examples(tmp_path):
    adv = tmp_path / "adv.pt"
    code = main(
        [
            "transfer",
            "--source", "zoo:fmnist-cnn",
            "--source", "zoo:fmnist-cnn,zoo:fmnist-mlp",
            "--targets", "zoo:fmnist-cnn-s1,zoo:fmnist-mlp",
            "--dataset", "fashion-mnist", "--n", "48", "--no-progress",
            "--attacks", "fgsm,mifgsm+normalized-ce(diversity_prob=0.5)",
            "--eps", "0.1", "--steps", "3", "--topk", "1,2,3",
            "--out", str(tmp_path), "--save-adv", str(adv),
        ]
    )  # fmt: skip
    assert code == 0
    report = json.loads((tmp_path / "report.json").read_text())
    saved = torch.load(adv, weights_only=True)
    y = saved["y"]
    assert report["ks"] == [1, 2, 3] and report["n"] == 48
    assert set(saved["x_adv"]) == {"fgsm", "mifgsm+normalized-ce(diversity_prob=0.5)"}
    models = {spec: load_model(spec) for spec in ["zoo:fmnist-cnn", "zoo:fmnist-cnn-s1", "zoo:fmnist-mlp"]}
    models["zoo:fmnist-cnn+zoo:fmnist-mlp"] = Ensemble([models["zoo:fmnist-cnn"], models["zoo:fmnist-mlp"]])

    def direct_asr(model, x_adv, k):
        """Top-k ASR by hand: among samples with the true class in the clean top k, the share pushed out."""
        with torch.no_grad():
            clean_topk = model(saved_x).topk(k, dim=1).indices
            adv_topk = model(x_adv).topk(k, dim=1).indices
        in_clean = (clean_topk == y[:, None]).any(1)
        in_adv = (adv_topk == y[:, None]).any(1)
        return (in_clean & ~in_adv).sum().item() / in_clean.sum().item()

    from robustlab.data import load_dataset

    saved_x = load_dataset("fashion-mnist", "test").images[:48].float() / 255
    for attack, per_source in saved["x_adv"].items():
        for source, x_adv in per_source.items():
            assert x_adv.shape == (48, 1, 28, 28)
            assert (x_adv - saved_x).abs().max() <= 0.1 + 1e-6
            for k in (1, 2, 3):
                white = report["white_box"][attack][source]["asr"][str(k)]
                assert white == pytest.approx(direct_asr(models[source], x_adv, k), abs=1e-6)
                for target, row in zip(report["targets"], report["matrix"][attack][str(k)]["asr"][
                        report["sources"].index(source)]):  # fmt: skip
                    assert row == pytest.approx(direct_asr(models[target], x_adv, k), abs=1e-6)
                    assert row == report["transfer"][attack][source][target]["asr"][str(k)]
    md = (tmp_path / "report.md").read_text()
    assert "surrogate \\ target" in md and "zoo:fmnist-cnn+zoo:fmnist-mlp" in md
    for png in ("heatmap.png", "topk_curves.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_transfer_attack_in_the_evaluator_matches_the_matrix(zoo_cnn, cnn_s1, fmnist_batch):
    x, y = fmnist_batch(64)
    threat = ThreatModel("linf", 0.1)
    attack = IFGSM(steps=3, loss="normalized-ce")
    matrix = transfer_matrix({"cnn": zoo_cnn}, {"cnn-s1": cnn_s1}, {"nce": attack}, threat, (x, y), ks=[1, 2])
    evaluated = Evaluator({"transfer": TransferAttack(attack, zoo_cnn)}, threat).run(cnn_s1, (x, y))
    # top-1 ASR over the target's clean-correct samples == the evaluator's attack success rate
    assert matrix.asr("nce", "cnn", "cnn-s1", 1) == pytest.approx(evaluated.attack_success_rate())
    assert torch.allclose(
        evaluated.adv_logits["transfer"][evaluated.clean_correct],
        cnn_s1(matrix.x_adv["nce"]["cnn"])[evaluated.clean_correct].detach(),
        atol=1e-5,
    )
    # the surrogate's gradients, not the target's: crafting does not depend on which model is judged
    assert matrix.white_box["nce"]["cnn"]["asr"]["1"] > matrix.asr("nce", "cnn", "cnn-s1", 1)


def test_ifgsm_and_fgsm_rows_come_from_the_same_examples_per_k(zoo_cnn, zoo_mlp, fmnist_batch):
    x, y = fmnist_batch(48)
    result = transfer_matrix(
        {"cnn": zoo_cnn}, {"cnn": zoo_cnn, "mlp": zoo_mlp}, {"fgsm": FGSM(), "topk": TopK(steps=2)},
        ThreatModel("linf", 0.1), (x, y),
    )  # fmt: skip
    assert result.ks == [1, 2, 3, 5]
    for a in ("fgsm", "topk"):
        # a target that is the surrogate itself reproduces the white-box numbers exactly
        assert result.transfer[a]["cnn"]["cnn"] == result.white_box[a]["cnn"]
        # in the top k after the attack implies in the top k + 1: top-k robust accuracy never falls with k
        robust = [result.transfer[a]["cnn"]["mlp"]["robust_accuracy"][str(k)] for k in result.curve_ks]
        assert robust == sorted(robust) and robust[-1] > robust[0]
    with pytest.raises(RobustlabError, match="top-k values"):
        transfer_matrix({"cnn": zoo_cnn}, {"mlp": zoo_mlp}, {"fgsm": FGSM()}, ThreatModel("linf", 0.1), (x, y), [10])


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--targets", ",", "--attacks", "fgsm"], "--targets is empty"),
        (["--targets", "zoo:fmnist-mlp", "--attacks", "fgsm", "--topk", "1,x"], "not a comma-separated list"),
        (["--targets", "zoo:nope", "--attacks", "fgsm"], "unknown zoo model"),
        (["--targets", "zoo:fmnist-mlp", "--attacks", "deepfool"], "unknown attack"),
    ],
)
def test_transfer_cli_errors_are_one_line(extra, message, cli_error, tmp_path):
    base = ["transfer", "--source", "zoo:fmnist-cnn", "--dataset", "fashion-mnist", "--n", "8", "--eps", "0.1"]
    cli_error([*base, *extra, "--out", str(tmp_path)], message)  # exit 2, one stderr line, no traceback


def test_a_second_transfer_on_the_same_out_needs_overwrite(tmp_path, cli_error):
    args = ["transfer", "--source", "zoo:fmnist-cnn", "--targets", "zoo:fmnist-mlp", "--dataset", "fashion-mnist",
            "--n", "8", "--eps", "0.1", "--attacks", "fgsm", "--no-progress", "--out", str(tmp_path)]  # fmt: skip
    assert main(args) == 0
    first = (tmp_path / "report.json").read_text()
    cli_error([*args, "--eps", "0.2"], "already holds a run", "--overwrite")
    assert (tmp_path / "report.json").read_text() == first
    cli_error([*args, "--targets", "zoo:nope", "--overwrite"], "nope")  # refused before the earlier run is cleared
    assert (tmp_path / "report.json").read_text() == first
    with RunFolder(tmp_path, "transfer", {}, overwrite=True):  # a run in progress on --out
        cli_error([*args, "--overwrite"], "in use by another robustlab run")
    assert main([*args, "--eps", "0.2", "--overwrite"]) == 0
    assert json.loads((tmp_path / "report.json").read_text())["threat"]["eps"] == 0.2
