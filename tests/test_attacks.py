"""FGSM / I-FGSM / PGD / MI-FGSM: budget, strength, reproducibility, and the contract with the model."""

import pytest
import torch
import torchattacks

from robustlab import RobustlabError, ThreatModel
from robustlab.attacks import FGSM, IFGSM, MIFGSM, PGD, GradientAttack, Targeted, make_attack
from robustlab.criteria import Misclassified
from robustlab.losses import cw_margin, dlr, get_loss


def accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


ATTACKS = [FGSM(), IFGSM(steps=5), PGD(steps=5), MIFGSM(steps=5), PGD(steps=3, loss="cw", restarts=2)]


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.5)])
@pytest.mark.parametrize("attack", ATTACKS, ids=lambda a: f"{a.name}-{a.loss_name}")
def test_perturbation_stays_in_ball_and_bounds_and_lowers_accuracy(zoo_cnn, fmnist_batch, attack, norm, eps):
    x, y = fmnist_batch(200)
    threat = ThreatModel(norm, eps)
    result = attack(zoo_cnn, x, y, threat)
    assert result.x_adv.shape == x.shape and result.x_adv.dtype == x.dtype
    assert (threat.distance(result.x_adv, x) <= eps + 1e-5).all()
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    clean, robust = accuracy(zoo_cnn, x, y), accuracy(zoo_cnn, result.x_adv, y)
    assert robust < clean - 0.3
    # the reported success flags and losses are those of the returned x_adv
    logits = zoo_cnn(result.x_adv).detach()
    assert torch.equal(result.success, logits.argmax(1) != y)
    assert torch.allclose(result.loss, get_loss(attack.loss_name)(logits, y), atol=1e-5)


def test_iterative_is_stronger_than_single_step(zoo_cnn, fmnist_batch):
    x, y = fmnist_batch(300)
    threat = ThreatModel("linf", 0.03)
    fgsm = FGSM()(zoo_cnn, x, y, threat).success.float().mean()
    pgd = PGD(steps=20)(zoo_cnn, x, y, threat).success.float().mean()
    assert pgd > fgsm


@pytest.mark.parametrize("norm,eps", [("linf", 0.03), ("l2", 0.5)])
def test_our_pgd_is_at_least_as_strong_as_torchattacks(zoo_cnn, fmnist_batch, norm, eps):
    """Same eps, step and steps on 500 Fashion-MNIST test images: robust accuracy not higher by > 1 point."""
    x, y = fmnist_batch(500)
    steps, step_size = 10, eps / 4
    threat = ThreatModel(norm, eps)
    ours = accuracy(zoo_cnn, PGD(steps=steps, step_size=step_size)(zoo_cnn, x, y, threat).x_adv, y)
    if norm == "linf":
        reference = torchattacks.PGD(zoo_cnn, eps=eps, alpha=step_size, steps=steps, random_start=True)
    else:
        reference = torchattacks.PGDL2(zoo_cnn, eps=eps, alpha=step_size, steps=steps, random_start=True)
    theirs = accuracy(zoo_cnn, reference(x, y), y)
    assert 0.05 < theirs < accuracy(zoo_cnn, x, y)  # a nontrivial comparison point
    assert ours <= theirs + 0.01, (ours, theirs)


def test_targeted_mode_hits_the_target(zoo_cnn, fmnist_batch):
    x, y = fmnist_batch(200)
    target = (y + 1) % 10
    result = PGD(steps=20)(zoo_cnn, x, y, ThreatModel("linf", 0.2), target=target)
    hit = zoo_cnn(result.x_adv).argmax(1) == target
    assert torch.equal(result.success, hit)
    assert hit.float().mean() > 0.9
    wrapped = Targeted(PGD(steps=20), rule=3)(zoo_cnn, x, y, ThreatModel("linf", 0.2))
    assert (zoo_cnn(wrapped.x_adv).argmax(1) == 3).float().mean() > 0.9


def test_seeds_reproduce_exactly_and_differ_across_seeds(zoo_cnn, fmnist_batch):
    x, y = fmnist_batch(64)
    threat = ThreatModel("linf", 0.05)
    a = PGD(steps=3, seed=7)(zoo_cnn, x, y, threat).x_adv
    b = PGD(steps=3, seed=7)(zoo_cnn, x, y, threat).x_adv
    c = PGD(steps=3, seed=8)(zoo_cnn, x, y, threat).x_adv
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_global_rng_mode_and_requires_grad_are_untouched(zoo_cnn, fmnist_batch):
    x, y = fmnist_batch(32)
    model = torch.nn.Sequential(torch.nn.Dropout(0.0), zoo_cnn)
    model.train()
    state = torch.random.get_rng_state()
    PGD(steps=2)(model, x, y, ThreatModel("linf", 0.05))
    assert torch.equal(state, torch.random.get_rng_state())
    assert model.training and zoo_cnn.training
    assert all(p.requires_grad for p in model.parameters())
    model.eval()


def test_early_stop_keeps_first_success_and_restarts_never_hurt(zoo_cnn, fmnist_batch):
    x, y = fmnist_batch(200)
    threat = ThreatModel("linf", 0.02)
    early = PGD(steps=10, early_stop=True)(zoo_cnn, x, y, threat)
    full = PGD(steps=10)(zoo_cnn, x, y, threat)
    assert early.success.float().mean() >= full.success.float().mean()
    assert (threat.distance(early.x_adv, x) <= 0.02 + 1e-6).all()
    more = PGD(steps=10, restarts=3)(zoo_cnn, x, y, threat)
    assert (more.success | ~full.success).all()  # a restart only replaces a sample by a better one


def test_topk_criterion_pushes_true_class_out_of_top_k(zoo_cnn, fmnist_batch):
    x, y = fmnist_batch(100)
    result = IFGSM(steps=10, criterion=Misclassified(3), loss="normalized-ce")(zoo_cnn, x, y, ThreatModel("linf", 0.2))
    ranks = 1 + (zoo_cnn(result.x_adv) > zoo_cnn(result.x_adv).gather(1, y[:, None])).sum(1)
    assert torch.equal(result.success, ranks > 3)


def test_losses_signs():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    y = torch.tensor([0, 0])
    assert torch.allclose(cw_margin(logits, y), torch.tensor([-2.0, 2.0]))
    assert (dlr(logits, y)[0] < 0) and (dlr(logits, y)[1] > 0)


def test_bad_configuration_and_inputs_are_named(zoo_cnn, fmnist_batch):
    x, y = fmnist_batch(8)
    threat = ThreatModel("linf", 0.1)
    with pytest.raises(RobustlabError, match="unknown attack"):
        make_attack("deepfool")
    with pytest.raises(RobustlabError, match="unknown loss"):
        PGD(loss="hinge")
    with pytest.raises(RobustlabError, match="step size"):
        PGD(step_size=0)
    with pytest.raises(RobustlabError, match="steps"):
        GradientAttack(steps=0)
    with pytest.raises(RobustlabError, match="outside the bounds"):
        PGD()(zoo_cnn, x * 2 - 1, y, threat)
    with pytest.raises(RobustlabError, match="classes"):
        PGD()(zoo_cnn, x, y + 10, threat)
    with pytest.raises(RobustlabError, match="do not match"):
        PGD()(zoo_cnn, x, y[:4], threat)
    with pytest.raises(RobustlabError, match="logits of shape"):
        PGD()(torch.nn.Conv2d(1, 2, 3), x, y, threat)


def test_perturb_gives_the_x_adv_of_a_call_without_its_extra_forward_pass(zoo_cnn, fmnist_batch):
    """``perturb`` is training's inner maximisation: the same x_adv as ``attack(...).x_adv``, nothing else."""
    x, y = fmnist_batch(64)
    threat = ThreatModel("linf", 0.1)
    for attack in (FGSM(), PGD(steps=3, seed=5), MIFGSM(steps=3)):
        x_adv = attack.perturb(zoo_cnn, x, y, threat)
        assert isinstance(x_adv, torch.Tensor) and torch.equal(x_adv, attack(zoo_cnn, x, y, threat).x_adv)
    target = (y + 1) % 10
    assert torch.equal(
        PGD(steps=3).perturb(zoo_cnn, x, y, threat, target), PGD(steps=3)(zoo_cnn, x, y, threat, target).x_adv
    )
    with pytest.raises(RobustlabError, match="one restart"):
        PGD(restarts=2).perturb(zoo_cnn, x, y, threat)
