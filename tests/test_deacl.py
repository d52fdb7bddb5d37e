"""DeACL: its loss, its feature-space PGD target, the student's initialisation, label-free training, its options
(ProFeAT's projector, DynACL's annealed augmentation, a wider student); pseudo-AT."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from fixture_models import KillAfterEpoch
from torch.utils.data import Subset, TensorDataset

from robustlab.data import load_dataset
from robustlab.errors import RobustlabError
from robustlab.models import load_model, save_model, seeded_weights
from robustlab.ssl import (
    DeACL,
    SimCLR,
    SSLModel,
    arch_kwargs_of,
    deacl_loss,
    feature_pgd,
    frozen_teacher,
    make_student,
    negative_cosine,
)
from robustlab.ssl.augment import AnnealedAugment, Augment
from robustlab.ssl.deacl import LevelCosine, Shifted
from robustlab.ssl.encoder import load_projector
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


# ---- issue 17: DeACL's options (ProFeAT's projector, DynACL's annealed augmentation, a wider student) ----


def ssl_projector(zoo_cnn, seed: int = 0) -> torch.nn.Module:
    """A projector of the teacher's feature size, as an SSL run leaves it (BatchNorm statistics included)."""
    with seeded_weights(seed):
        model = SSLModel(copy.deepcopy(zoo_cnn))
    with torch.no_grad():
        model.train()(torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(seed)))
    return model.projector.eval()


def test_level_cosine_is_the_sum_of_the_feature_and_projection_cosines():
    g = torch.Generator().manual_seed(2)
    out, target = torch.randn(6, 12, generator=g), torch.randn(6, 12, generator=g)
    both = LevelCosine(8)(out, target)
    expected = negative_cosine(out[:, :8], target[:, :8]) + negative_cosine(out[:, 8:], target[:, 8:])
    assert torch.allclose(both, expected) and not torch.allclose(both, negative_cosine(out, target))


def test_projector_distillation_adds_the_projector_level_and_keeps_the_projector_frozen(zoo_cnn, fmnist_test):
    projector = ssl_projector(zoo_cnn)
    before = {k: v.clone() for k, v in projector.state_dict().items()}
    teacher = frozen_teacher(zoo_cnn)
    x = fmnist_test.images[:32].float() / 255
    method = DeACL(teacher, THREAT, steps=2, augment=Augment("none"), center=True, projector=projector, seed=1)
    assert isinstance(method.attack.loss_fn, LevelCosine) and method.attack.loss_fn.split == teacher.feature_dim
    student = make_student(zoo_cnn, "random")
    loss, stats = method.training_loss(student, x, torch.zeros(32, dtype=torch.long))
    # the loss is DeACL's at the feature level plus DeACL's at the projector output
    levels = -stats["cos_teacher"] - 2 * stats["cos_adv_clean"] - stats["cos_teacher_proj"] - 2 * stats[
        "cos_adv_clean_proj"]  # fmt: skip
    assert math.isclose(loss.item(), levels, rel_tol=1e-5, abs_tol=1e-6) and stats["loss"] == loss.item()
    plain, plain_stats = DeACL(teacher, THREAT, steps=2, augment=Augment("none"), center=True, seed=1).training_loss(
        student, x, torch.zeros(32, dtype=torch.long)
    )
    # the same clean feature-level term; the projector level is what the option adds
    assert "cos_teacher_proj" not in plain_stats and plain.item() != loss.item()
    assert math.isclose(plain_stats["cos_teacher"], stats["cos_teacher"], rel_tol=1e-5)
    # training moves the student, never the projector (kept frozen, in eval mode: its BatchNorm statistics too)
    config = TrainConfig(epochs=1, batch_size=16, lr=1e-2, lr_schedule="constant", max_steps_per_epoch=2)
    train(student, method, Subset(fmnist_test, range(32)), config)
    assert all(torch.equal(v, before[k]) for k, v in method.projector.state_dict().items())
    assert not method.projector.training and not any(p.requires_grad for p in method.projector.parameters())
    assert all(torch.equal(v, before[k]) for k, v in projector.state_dict().items())  # the caller's copy too


def test_profeat_teacher_sees_its_own_weak_view_and_the_student_a_strong_one(zoo_cnn, fmnist_batch):
    x, _ = fmnist_batch(16)
    same = DeACL(frozen_teacher(zoo_cnn), THREAT, augment=Augment("strong"), seed=0)
    student_view, teacher_view = same.views(x)
    assert teacher_view is student_view
    profeat = DeACL(frozen_teacher(zoo_cnn), THREAT, augment=Augment("strong"), teacher_augment=Augment("weak"))
    student_view, teacher_view = profeat.views(x)
    assert not torch.allclose(student_view, teacher_view)
    # weak = crop + flip: the teacher's view keeps each image's brightness far better than the jittered one
    shift = lambda v: (v.mean((1, 2, 3)) - x.mean((1, 2, 3))).abs().mean()  # noqa: E731
    assert shift(teacher_view) < shift(student_view)


def test_a_teacher_without_a_projector_is_refused_and_an_ssl_run_gives_its_own(zoo_cnn, tmp_path, cli_error):
    with seeded_weights(0):
        ssl_model = SSLModel(copy.deepcopy(zoo_cnn))
    data = Subset(load_dataset("fashion-mnist", "test"), range(32))
    config = TrainConfig(epochs=1, batch_size=16, max_steps_per_epoch=1)
    train(ssl_model, SimCLR(augment=Augment("weak")), data, config, tmp_path / "ssl")
    projector = load_projector(tmp_path / "ssl")
    assert not projector.training
    assert all(torch.equal(v, ssl_model.projector.state_dict()[k]) for k, v in projector.state_dict().items())
    for spec in ("zoo:fmnist-cnn", tmp_path / "nothing-here"):
        with pytest.raises(RobustlabError, match="has no SSL projector"):
            load_projector(spec)
    argv = ["deacl", "--teacher", "zoo:fmnist-cnn", "--projector", "--dataset", "fashion-mnist", "--eps", "0.1"]
    cli_error([*argv, "--out", tmp_path / "run"], "no SSL projector", "ssl run folder")
    wrong = torch.nn.Sequential(torch.nn.Linear(7, 4))
    with pytest.raises(RobustlabError, match="projector takes 7 features"):
        DeACL(frozen_teacher(zoo_cnn), THREAT, projector=wrong)


def test_annealed_augmentation_decays_from_strong_at_step_0_to_a_flip_at_the_last_step(zoo_cnn, fmnist_test):
    anneal = AnnealedAugment(start=1.0, end=0.0, crop_min=0.3)
    first, last = anneal.at(0.0), anneal.at(1.0)
    assert (
        first.crop_scale == pytest.approx((0.3, 1.0)) and first.jitter_prob == 0.8 and math.isclose(first.jitter, 0.4)
    )
    assert last.crop_scale == (1.0, 1.0) and last.jitter_prob == last.gray_prob == 0.0
    x = fmnist_test.images[:16].float() / 255
    out = anneal(x, torch.Generator().manual_seed(0), progress=1.0)
    as_is = (out - x).abs().amax((1, 2, 3)) < 1e-5
    flipped = (out - x.flip(-1)).abs().amax((1, 2, 3)) < 1e-5
    assert (as_is | flipped).all() and as_is.any() and flipped.any()  # strength 0: a horizontal flip only
    assert (anneal(x, torch.Generator().manual_seed(0), progress=0.0) - x).abs().amax() > 0.1

    seen = []

    class Recording(AnnealedAugment):
        def __call__(self, x, generator, progress=0.0):
            seen.append(self.strength(progress))
            return super().__call__(x, generator, progress)

    method = DeACL(frozen_teacher(zoo_cnn), THREAT, steps=1, augment=Recording(), seed=0)
    config = TrainConfig(epochs=2, batch_size=16, lr=1e-3, max_steps_per_epoch=3)
    train(make_student(zoo_cnn, "random"), method, Subset(fmnist_test, range(64)), config)
    # a function of the global step: 1 at step 0, 0 at the last of 6 steps, linear in between
    assert seen == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2, 0.0])


def test_an_annealed_projector_run_resumes_bit_for_bit(zoo_cnn, fmnist_test, tmp_path):
    data = Subset(fmnist_test, range(64))
    config = TrainConfig(epochs=2, batch_size=16, optimizer="adam", lr=1e-3, max_steps_per_epoch=2, seed=4)

    def run(out, kill_at=None, resume=False):
        method = DeACL(frozen_teacher(zoo_cnn), THREAT, steps=2, augment=AnnealedAugment(crop_min=0.5), seed=3,
                       center=True, projector=ssl_projector(zoo_cnn), teacher_augment=Augment("weak"))  # fmt: skip
        student = make_student(zoo_cnn, "random", seed=2)
        try:
            train(student, method, data, config, out, resume=resume, callbacks=[KillAfterEpoch(kill_at)])
        except KeyboardInterrupt:
            return None
        return student

    whole = run(tmp_path / "whole")
    assert run(tmp_path / "killed", kill_at=2) is None  # killed after epoch 2 ended, before its checkpoint
    resumed = run(tmp_path / "killed", resume=True)
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in whole.state_dict().items())
    fresh = make_student(zoo_cnn, "random", seed=2).net.model.embed[1].weight
    assert not torch.equal(whole.net.model.embed[1].weight, fresh)  # it trained: the equality above is no accident


def test_a_wider_student_trains_and_maps_its_features_to_the_teachers(zoo_cnn, zoo_mlp, fmnist_batch, tmp_path):
    x, _ = fmnist_batch(8)
    state = torch.random.get_rng_state()
    wide = make_student(zoo_cnn, "random", seed=0, width_factor=2)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert wide.net.model.features[0].out_channels == 2 * zoo_cnn.model.features[0].out_channels
    assert wide(x).shape == (8, frozen_teacher(zoo_cnn).feature_dim) and wide.align is None  # same feature size
    # an MLP twice as wide has twice the features: a trained linear map brings them to the teacher's size
    mlp = copy.deepcopy(zoo_mlp)
    wide_mlp = make_student(mlp, "random", seed=0, width_factor=2)
    teacher_dim = frozen_teacher(mlp).feature_dim
    assert wide_mlp.own_dim == 2 * teacher_dim and wide_mlp.align.weight.shape == (teacher_dim, 2 * teacher_dim)
    assert wide_mlp(x).shape == (8, teacher_dim) and wide_mlp.align.weight.requires_grad
    method = DeACL(frozen_teacher(mlp), THREAT, steps=1, augment=Augment("none"), seed=0)
    align_before = wide_mlp.align.weight.clone()
    config = TrainConfig(epochs=1, batch_size=8, lr=1e-2, lr_schedule="constant", max_steps_per_epoch=2)
    train(wide_mlp, method, TensorDataset(*fmnist_batch(16)), config)
    assert not torch.equal(wide_mlp.align.weight, align_before)
    # the saved classifier is the wide network alone, and a model file rebuilds it
    save_model(tmp_path / "wide.pt", wide.net, "cnn", dataset="fashion-mnist", arch_kwargs=arch_kwargs_of(wide.net))
    with torch.no_grad():
        assert torch.allclose(load_model(str(tmp_path / "wide.pt"))(x), wide.net.eval()(x), atol=1e-6)


def test_bad_option_values_are_one_line_errors(zoo_cnn, tmp_path, cli_error):
    for factor in (0, 1.5, True):
        with pytest.raises(RobustlabError, match="width factor must be a whole number"):
            make_student(zoo_cnn, "random", width_factor=factor)
    with pytest.raises(RobustlabError, match="cannot start as a copy of the teacher"):
        make_student(zoo_cnn, "teacher", width_factor=2)
    for kwargs, words in (({"start": 1.5}, "start strength"), ({"end": -0.1}, "end strength"),
                          ({"crop_min": float("nan")}, "crop")):  # fmt: skip
        with pytest.raises(RobustlabError, match=words):
            AnnealedAugment(**kwargs)
    base = [
        "deacl",
        "--teacher",
        "zoo:fmnist-cnn",
        "--dataset",
        "fashion-mnist",
        "--eps",
        "0.1",
        "--out",
        tmp_path / "run",
    ]
    cli_error([*base, "--width-factor", "2"], "--init random")
    cli_error([*base, "--width-factor", "0"], "--width-factor")


@pytest.mark.slow
def test_deacl_command_with_every_option_writes_a_wide_student_that_loads(tmp_path, capsys):
    from robustlab.cli import main

    small = ["--dataset", "fashion-mnist", "--n", "64", "--epochs", "1", "--max-steps-per-epoch", "2",
             "--batch-size", "32", "--no-progress"]  # fmt: skip
    assert main(["ssl", "--model", "cnn", "--knn-n", "0", *small, "--out", str(tmp_path / "ssl")]) == 0
    argv = ["deacl", "--teacher", str(tmp_path / "ssl"), "--eps", "0.1", "--steps", "1", "--projector",
            "--anneal-augment", "--width-factor", "2", "--init", "random", "--center", *small]  # fmt: skip
    assert main([*argv, "--out", str(tmp_path / "deacl")]) == 0
    out = capsys.readouterr().out
    assert "projector (ProFeAT)" in out and "annealed augmentation (DynACL)" in out and "2x wider student" in out
    student = load_model(str(tmp_path / "deacl"))
    assert student.model.features[0].out_channels == 64  # the model file rebuilds the wide student
    teacher = load_model(str(tmp_path / "ssl"))
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    assert frozen_teacher(student)(x).shape == frozen_teacher(teacher)(x).shape == (4, 128)
