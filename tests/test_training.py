"""The training methods' inputs (bounds, eps-balls, fresh noise), the LR schedules and the loop's resume."""

from __future__ import annotations

import pytest
import torch
from fixture_models import KillAfterEpoch

from robustlab.data import first_n, load_dataset
from robustlab.defenses.methods import METHODS, NoiseAug, make_method
from robustlab.errors import RobustlabError
from robustlab.models import build_model
from robustlab.threat import ThreatModel
from robustlab.training import Method, TrainConfig, TrainContext, lr_at, train

EPS = 0.1
THREAT = ThreatModel("linf", EPS)
ATOL = 1e-6


pytestmark = pytest.mark.usefixtures("one_thread")


def _setup(method, seed: int = 0):
    ctx = TrainContext(model=None, method=method, config=TrainConfig(seed=seed), device=torch.device("cpu"), seed=seed)
    method.setup(ctx)
    return method


@pytest.mark.parametrize("name", list(METHODS))
def test_training_input_stays_in_bounds_and_in_its_ball(name, zoo_cnn, fmnist_batch):
    x, y = fmnist_batch(64)
    method = _setup(make_method(name, THREAT))
    state = method.generator("cpu").get_state()
    x_train = method.training_input(zoo_cnn, x, y)
    assert x_train.shape == x.shape and x_train.min() >= 0 and x_train.max() <= 1
    dist = THREAT.distance(x_train, x)
    if name == "standard":
        assert torch.equal(x_train, x)
    elif name in ("fgsm", "fgsm-rs", "gradalign", "pgd"):  # projected onto the eps-ball around x
        assert dist.max() <= EPS + ATOL
        assert dist.max() > 0.9 * EPS  # and it really moved
    elif name == "noiseaug":  # projected onto the eps-ball around the noisy image
        method.generator("cpu").set_state(state)
        x_noisy = method.noisy(x)
        assert THREAT.distance(x_train, x_noisy).max() <= EPS + ATOL
        assert dist.max() <= (method.noise_sigma + 1) * EPS + ATOL
        assert dist.max() > EPS  # the noise takes it outside the eps-ball around x
    elif name == "n-fgsm":  # not projected around x: noise of up to k eps plus one eps step
        assert dist.max() <= (method.noise_multiple + 1) * EPS + ATOL
        assert dist.max() > EPS


@pytest.mark.parametrize("name", ["fgsm-rs", "noiseaug", "n-fgsm", "pgd"])
def test_random_methods_draw_fresh_noise_each_batch(name, zoo_cnn, fmnist_batch):
    x, y = fmnist_batch(8)
    method = _setup(make_method(name, THREAT))
    a, b = method.training_input(zoo_cnn, x, y), method.training_input(zoo_cnn, x, y)
    assert not torch.equal(a, b)
    again = _setup(make_method(name, THREAT))  # same seed, same draws: reproducible
    assert torch.equal(again.training_input(zoo_cnn, x, y), a)


def test_training_loss_takes_parameter_gradients_only_from_the_loss(fmnist_batch):
    x, y = fmnist_batch(32)
    model = build_model("cnn")
    for name in METHODS:
        method = _setup(make_method(name, THREAT))
        loss, stats = method.training_loss(model, x, y)
        assert all(p.grad is None for p in model.parameters()), name  # the inner attack accumulated nothing
        assert all(p.requires_grad for p in model.parameters()), name  # frozen_parameters restored them
        assert loss.dim() == 0 and loss.requires_grad and 0 <= stats["accuracy"] <= 1
    gradalign = _setup(make_method("gradalign", THREAT, lam=1.0))
    loss, stats = gradalign.training_loss(model, x, y)
    assert stats["gradalign_reg"] > 0 and -1 <= stats["grad_cos"] <= 1
    (g_reg,) = torch.autograd.grad(loss - stats["ce"], model.model.fc.weight, allow_unused=True)
    assert g_reg is not None and g_reg.abs().sum() > 0  # the double-backprop term reaches the weights


def test_noiseaug_gaussian_and_options():
    method = make_method("noiseaug", THREAT, noise="gaussian", noise_sigma=3)
    assert isinstance(method, NoiseAug) and method.noise == "gaussian" and method.noise_sigma == 3
    assert method.step_size == pytest.approx(1.25 * EPS)
    assert make_method("pgd", THREAT).step_size == pytest.approx(EPS / 4)
    assert make_method("n-fgsm", THREAT).step_size == pytest.approx(EPS)
    with pytest.raises(RobustlabError, match="unknown method"):
        make_method("fgsm-foo", THREAT)
    with pytest.raises(RobustlabError, match="does not take noise_sigma"):
        make_method("fgsm-rs", THREAT, noise_sigma=2)
    with pytest.raises(RobustlabError, match="unknown noise"):
        make_method("noiseaug", THREAT, noise="laplace")


def test_lr_schedules():
    cyclic = TrainConfig(lr=0.2, lr_schedule="cyclic")
    assert lr_at(cyclic, 0.0) == 0 and lr_at(cyclic, 0.4) == pytest.approx(0.2) and lr_at(cyclic, 1.0) == 0
    piecewise = TrainConfig(lr=0.1, lr_schedule="piecewise")
    assert [lr_at(piecewise, p) for p in (0.1, 0.6, 0.9)] == pytest.approx([0.1, 0.01, 0.001])
    cosine = TrainConfig(lr=0.1, lr_schedule="cosine")
    assert lr_at(cosine, 0.5) == pytest.approx(0.05) and lr_at(cosine, 1.0) == pytest.approx(0.0)
    with pytest.raises(RobustlabError, match="unknown LR schedule"):
        TrainConfig(lr_schedule="linear").validate()


def _run(out, kill_at=None, resume=False, optimizer="sgd", memory_format="contiguous", precision="fp32"):
    data = first_n(load_dataset("fashion-mnist", "train"), 384)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_model("cnn")
    config = TrainConfig(epochs=3, batch_size=128, lr=0.05, optimizer=optimizer, seed=3, memory_format=memory_format,
                         precision=precision)  # fmt: skip
    method = make_method("fgsm-rs", THREAT)
    return train(model, method, data, config, out, resume=resume, callbacks=[KillAfterEpoch(kill_at)])


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_kill_and_resume_gives_identical_weights(tmp_path, optimizer):
    full = _run(tmp_path / "full", optimizer=optimizer)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "killed", kill_at=2, optimizer=optimizer)
    assert torch.load(tmp_path / "killed" / "last.pt", weights_only=True)["epoch"] == 1
    resumed = _run(tmp_path / "killed", resume=True, optimizer=optimizer)
    assert resumed.epochs_done == 3 and len(resumed.history) == 3
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert [h["loss"] for h in full.history] == [h["loss"] for h in resumed.history]


def test_channels_last_training_resumes_bit_for_bit_and_gives_the_model_back_contiguous(tmp_path):
    """The layout option changes how convolutions run, not what is learned (float tolerance), resumes exactly and
    leaves no trace on the model."""
    plain = _run(tmp_path / "plain", optimizer="adam")
    full = _run(tmp_path / "full", optimizer="adam", memory_format="channels_last")
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "killed", kill_at=2, optimizer="adam", memory_format="channels_last")
    resumed = _run(tmp_path / "killed", resume=True, optimizer="adam", memory_format="channels_last")
    for (name, a), b, c in zip(full.model.state_dict().items(), resumed.model.state_dict().values(),
                               plain.model.state_dict().values()):  # fmt: skip
        assert torch.equal(a, b), name
        assert (a - c).norm() <= 0.05 * c.norm() + 1e-6, name  # rounding differences grow over 9 steps, no more
        assert a.is_contiguous(), name
    assert full.history[-1]["loss"] == pytest.approx(plain.history[-1]["loss"], rel=0.02)


def test_training_precision_is_checked_against_the_device(tmp_path):
    with pytest.raises(RobustlabError, match="precision 'fp16' is not offered on cpu"):
        _run(tmp_path / "fp16", precision="fp16")
    with pytest.raises(RobustlabError, match="unknown precision"):
        TrainConfig(precision="fp8").validate()
    with pytest.raises(RobustlabError, match="unknown memory format"):
        TrainConfig(memory_format="nhwc").validate()


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(RobustlabError, match="no checkpoint"):
        _run(tmp_path / "nothing", resume=True)


def test_inner_attacks_skip_the_final_forward_pass(zoo_cnn, fmnist_batch):
    """``attack.perturb`` (what the training methods use) gives the full call's x_adv without its final forward."""
    from robustlab.attacks import PGD

    x, y = fmnist_batch(16)
    full = PGD(steps=3, seed=5, keyed_start=False)(zoo_cnn, x, y, THREAT)  # evaluation keys starts by sample
    lean = PGD(steps=3, seed=5, keyed_start=False).perturb(zoo_cnn, x, y, THREAT)
    assert torch.equal(full.x_adv, lean)
    with pytest.raises(RobustlabError, match="one restart"):
        PGD(restarts=2).perturb(zoo_cnn, x, y, THREAT)


class _NaNAtEpoch2(Method):
    """Standard training whose loss turns NaN in epoch 2 (a diverging run)."""

    name = "nan-at-epoch-2"

    def __init__(self) -> None:
        self.inner, self.steps = make_method("standard"), 0

    def training_loss(self, model, x, y):
        self.steps += 1
        loss, stats = self.inner.training_loss(model, x, y)
        return (loss * float("nan") if self.steps > 3 else loss), stats


def test_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    data = first_n(load_dataset("fashion-mnist", "train"), 384)
    config = TrainConfig(epochs=3, batch_size=128, lr=0.05, seed=3)
    with pytest.raises(RobustlabError, match=r"non-finite \(nan\) at epoch 2, step 4.*last.pt keeps"):
        train(build_model("cnn"), _NaNAtEpoch2(), data, config, tmp_path)
    saved = torch.load(tmp_path / "last.pt", weights_only=True)
    assert saved["epoch"] == 1 and all(torch.isfinite(v).all() for v in saved["model"].values())


def test_non_finite_hyper_parameters_are_refused():
    for bad in (float("nan"), float("inf"), -1.0):
        with pytest.raises(RobustlabError, match="noise sigma"):
            make_method("noiseaug", THREAT, noise_sigma=bad)
        with pytest.raises(RobustlabError, match="noise multiple"):
            make_method("n-fgsm", THREAT, noise_multiple=bad)
        with pytest.raises(RobustlabError, match="learning rate"):
            TrainConfig(lr=bad).validate()
    with pytest.raises(RobustlabError, match="momentum"):
        TrainConfig(momentum=-1).validate()
