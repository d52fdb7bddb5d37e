"""DeACL: its loss, its feature-space PGD target, the student's initialisation, label-free training; pseudo-AT."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import Subset

from robustlab.errors import RobustlabError
from robustlab.ssl.augment import Augment
from robustlab.ssl.deacl import (
    DeACL,
    Shifted,
    deacl_loss,
    feature_pgd,
    frozen_teacher,
    make_student,
    negative_cosine,
)
from robustlab.ssl.pseudo import PseudoAT, PseudoLabeler, kmeans, kmeans_labeler, make_pseudo_student
from robustlab.threat import ThreatModel
from robustlab.training import TrainConfig, train

THREAT = ThreatModel("linf", 0.1)


@pytest.fixture
def zoo_cnn(zoo_cnn):
    """A private copy: teachers and encoders freeze the parameters of the model they wrap."""
    return copy.deepcopy(zoo_cnn)


def test_deacl_loss_is_minus_cos_to_teacher_minus_beta_cos_adv_clean():
    g = torch.Generator().manual_seed(0)
    f, f_adv, t = (torch.randn(5, 7, generator=g) for _ in range(3))
    loss, stats = deacl_loss(f, f_adv, t, beta=2.0)
    expected = (-F.cosine_similarity(f, t) - 2.0 * F.cosine_similarity(f_adv, f)).mean()
    assert math.isclose(loss.item(), expected.item(), rel_tol=1e-6)
    assert math.isclose(stats["cos_teacher"], F.cosine_similarity(f, t).mean().item(), rel_tol=1e-6)
    # its minimum, -(1 + beta): the student copies the teacher and the attack cannot move the feature
    best, _ = deacl_loss(t, 3 * t, t, beta=2.0)
    assert math.isclose(best.item(), -3.0, rel_tol=1e-6)


def test_centred_deacl_loss_ignores_a_shared_feature_offset():
    g = torch.Generator().manual_seed(1)
    f, f_adv, t = (torch.randn(6, 5, generator=g) for _ in range(3))
    offset, t_offset = 10 * torch.randn(5, generator=g), 3 * torch.randn(5, generator=g)
    centred, _ = deacl_loss(f, f_adv, t, center=True)
    shifted, _ = deacl_loss(f + offset, f_adv + offset, t + t_offset, center=True)
    assert math.isclose(centred.item(), shifted.item(), rel_tol=1e-5)
    # the plain loss is fooled by the offset: a large shared component makes every cosine close to 1
    plain, _ = deacl_loss(f + offset, f_adv + offset, t + offset, center=False)
    assert plain.item() < -2.9 < centred.item()


def test_student_init_random_is_seeded_and_leaves_the_global_rng_alone(zoo_cnn, fmnist_batch):
    x, _ = fmnist_batch(8)
    state = torch.random.get_rng_state()
    a, b, c = (make_student(zoo_cnn, "random", seed=s) for s in (0, 0, 1))
    assert torch.equal(torch.random.get_rng_state(), state)
    teacher = frozen_teacher(zoo_cnn)
    with torch.no_grad():
        fa, fb, fc, ft = a(x), b(x), c(x), teacher(x)
    assert torch.equal(fa, fb) and not torch.allclose(fa, fc) and not torch.allclose(fa, ft)
    assert type(a.net) is type(zoo_cnn) and a.feature_dim == teacher.feature_dim
    with pytest.raises(RobustlabError, match="student initialisation"):
        make_student(zoo_cnn, "imagenet")


def test_pseudo_student_random_init_keeps_the_architecture_and_the_teacher(zoo_cnn, fmnist_batch):
    x, _ = fmnist_batch(8)
    before = {k: v.clone() for k, v in zoo_cnn.state_dict().items()}
    state = torch.random.get_rng_state()
    a, b = (make_pseudo_student(zoo_cnn, "kmeans", 50, init="random", seed=3) for _ in range(2))
    copied = make_pseudo_student(zoo_cnn, "kmeans", 50)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(v, zoo_cnn.state_dict()[k]) for k, v in before.items())
    with torch.no_grad():
        za, zb, zc = a(x), b(x), copied(x)
    assert za.shape == zc.shape == (8, 50) and torch.equal(za, zb)
    # random init: no weight shared with the teacher; teacher init: every encoder weight copied
    shared = [k for k, v in a.state_dict().items() if v.is_floating_point() and torch.equal(v, before[k])]
    assert set(shared) <= {"mean", "std"}  # only the input normalisation's constants
    assert all(torch.equal(v, before[k]) for k, v in copied.state_dict().items() if "fc." not in k)
    assert a.training and all(p.requires_grad for p in a.parameters())


def test_centred_deacl_step_runs_and_its_pgd_stays_in_the_ball(zoo_cnn, fmnist_batch):
    x, y = fmnist_batch(16)
    method = DeACL(frozen_teacher(zoo_cnn), THREAT, steps=2, augment=Augment("none"), center=True, seed=3)
    student = make_student(zoo_cnn, "random")
    loss, stats = method.training_loss(student, x, y)
    assert loss.requires_grad and -3.0 <= loss.item() <= 3.0 and 0 < stats["cos_adv_clean"] <= 1
    with torch.no_grad():
        shift = student(x).mean(0, keepdim=True)
        t = method.teacher(x)
    x_adv = method.adversarial(Shifted(student, shift), x, t - t.mean(0, keepdim=True))
    assert THREAT.distance(x_adv, x).max() <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1


def test_deacl_pgd_target_pushes_the_student_feature_away_from_the_teacher(zoo_cnn, fmnist_batch):
    x, _ = fmnist_batch(32)
    teacher = frozen_teacher(zoo_cnn)
    student = make_student(zoo_cnn)
    with torch.no_grad():
        target = teacher(x)
    attack = feature_pgd(steps=5, seed=0)
    result = attack(student, x, target, THREAT)
    x_adv = result.x_adv
    assert THREAT.distance(x_adv, x).max() <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert not result.success.any()  # the criterion never holds: every step runs on every sample
    with torch.no_grad():
        cos_adv = F.cosine_similarity(student(x_adv), target)
        noise = THREAT.random_start(x, torch.Generator().manual_seed(1))
        cos_noise = F.cosine_similarity(student(noise), target)
    assert torch.allclose(result.loss, -cos_adv, atol=1e-5)  # the attack loss is -cos(f(x'), T(x))
    # PGD finds a much worse direction than random noise of the same size, for every sample
    assert (cos_adv < cos_noise - 0.02).all() and cos_adv.mean() < 0.9
    assert torch.allclose(negative_cosine(target, target), -torch.ones(32), atol=1e-6)
    assert all(p.requires_grad for n, p in student.named_parameters() if "fc" not in n)  # restored after PGD


def test_student_starts_equal_to_the_teacher_and_training_leaves_the_teacher_alone(zoo_cnn, fmnist_test):
    teacher = frozen_teacher(zoo_cnn)
    student = make_student(zoo_cnn)
    x = fmnist_test.images[:16].float() / 255
    with torch.no_grad():
        assert torch.equal(student(x), teacher(x))
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    method = DeACL(teacher, THREAT, beta=2.0, steps=2)
    config = TrainConfig(epochs=1, batch_size=32, lr=0.05, lr_schedule="constant", max_steps_per_epoch=2)
    result = train(student, method, Subset(fmnist_test, range(64)), config)
    assert result.history[0]["cos_teacher"] > 0.9
    assert all(torch.equal(v, teacher_state[k]) for k, v in teacher.state_dict().items())
    changed = [n for n, p in student.named_parameters() if not torch.equal(p, teacher.state_dict()[n])]
    assert changed and not any("fc" in n for n in changed)  # the encoder moved, the (unused) head did not


def test_deacl_never_uses_labels(zoo_cnn, fmnist_batch):
    x, y = fmnist_batch(16)
    losses = []
    for labels in (y, y.flip(0), torch.zeros_like(y)):
        method = DeACL(frozen_teacher(zoo_cnn), THREAT, steps=2, seed=5)
        loss, _ = method.training_loss(make_student(zoo_cnn), x, labels)
        losses.append(loss.item())
    assert losses[0] == losses[1] == losses[2]


def test_kmeans_recovers_separated_clusters():
    g = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(4, 16, generator=g), dim=1) * 5
    truth = torch.arange(4).repeat_interleave(25)
    points = centres[truth] + 0.3 * torch.randn(100, 16, generator=g)
    _, assign = kmeans(points, 4, seed=0)
    # every true cluster maps to one k-means cluster and vice versa
    pairs = {(int(a), int(t)) for a, t in zip(assign, truth)}
    assert len(pairs) == 4 and len({a for a, _ in pairs}) == 4
    with pytest.raises(RobustlabError, match="k-means needs"):
        kmeans(points, 1)


def test_pseudo_at_with_kmeans_and_linear_targets(zoo_cnn, fmnist_batch):
    x, y = fmnist_batch(64)
    labeler = kmeans_labeler(zoo_cnn, x, k=5)
    assert labeler.num_classes == 5 and set(labeler(x).tolist()) <= set(range(5))
    student = make_pseudo_student(zoo_cnn, "kmeans", labeler.num_classes)
    loss, stats = PseudoAT("kmeans", THREAT, labeler=labeler, steps=2).training_loss(student, x[:8], y[:8])
    assert loss.requires_grad and math.isfinite(loss.item())
    linear = PseudoLabeler(zoo_cnn)  # the teacher's own head: the zoo CNN is ~92 % accurate
    assert (linear(x) == y).float().mean() > 0.8
    method = PseudoAT("linear", THREAT, labeler=linear, loss="trades", steps=2)
    loss, stats = method.training_loss(make_pseudo_student(zoo_cnn, "linear"), x[:32], y[:32])
    assert stats["pseudo_label_agreement"] > 0.6 and stats["kl"] >= 0  # labels of augmented views; chance: 0.1
    emb = PseudoAT("embedding", THREAT, teacher_net=zoo_cnn, steps=2)
    loss, stats = emb.training_loss(make_pseudo_student(zoo_cnn, "embedding"), x[:8], y[:8])
    assert -1 <= stats["cos_teacher_adv"] < 1
    with pytest.raises(RobustlabError, match="pseudo-targets"):
        PseudoAT("clusters", THREAT)
