"""The one gradient loop and its pieces: PGD, MI-FGSM and APGD are the loop with other pieces plugged in, and a user's
own piece plugs in the same way."""

import pytest
import torch

from robustlab.attacks import IFGSM, MIFGSM, PGD
from robustlab.attacks.apgd import APGD, APGDStep
from robustlab.attacks.loop import Call, Found, InputGradient, ProjectedStep, Rows, gradient_loop
from robustlab.attacks.runtime import Runtime
from robustlab.criteria import Misclassified
from robustlab.losses import get_loss
from robustlab.models.counting import count_passes
from robustlab.threat import ThreatModel

pytestmark = pytest.mark.usefixtures("one_thread")

LINF = ThreatModel("linf", 0.05)


def ce(logits, y, target):
    return get_loss("ce")(logits, y)


def call_for(model, threat, step_size):
    return Call(model, threat, Misclassified(), step_size, Runtime(), torch.Generator().manual_seed(0))


def test_the_loop_with_a_projected_step_is_ifgsm(zoo_cnn, fmnist_batch):
    x, y = fmnist_batch(32)
    call = call_for(zoo_cnn, LINF, 0.01)
    with count_passes(zoo_cnn) as passes:
        x_adv = gradient_loop(x.clone(), Rows(x, y), InputGradient(call, ce), ProjectedStep(LINF, 0.01, 5))
    assert passes.forward == passes.backward == 5 * 32  # one gradient per step, nothing else
    reference = IFGSM(steps=5, step_size=0.01)(zoo_cnn, x, y, LINF)
    assert torch.equal(x_adv, reference.x_adv)
    assert float(LINF.distance(x_adv, x).max()) <= 0.05 + 1e-6


def test_apgd_is_the_loop_with_its_step_rule(zoo_cnn, fmnist_batch):
    x, y = fmnist_batch(32)
    attack = APGD(steps=10, random_start=False)
    call = call_for(zoo_cnn, LINF, attack.resolve_step_size(LINF))
    found = Found(x, call, early=False, keep_first=True)  # a row's first success, else its best iterate
    rows = Rows(x, y)
    objective = lambda logits, r: ce(logits.detach(), r.y, None)  # noqa: E731 - the loss, higher is better
    step = APGDStep(LINF, call.step_size, 10, momentum=0.75, rho=0.75, objective=objective)
    x_adv = found.result(gradient_loop(x.clone(), rows, InputGradient(call, ce), step, found.stop), rows)[0]
    assert torch.equal(x_adv, attack(zoo_cnn, x, y, LINF).x_adv)


class Descend(IFGSM):
    """A user's gradient transform: minus the gradient, so the steps lower the loss."""

    def gradient_transforms(self):
        return (lambda grad, rows: -grad,)


class OwnMomentum(IFGSM):
    """A user's momentum, written in the loop's terms: MI-FGSM's velocity, kept per row in ``rows.state``."""

    def gradient_transforms(self):
        def momentum(grad, rows):
            l1 = grad.flatten(1).abs().sum(1).clamp_min(1e-12).view(-1, 1, 1, 1)
            velocity = rows.state.get("v", torch.zeros_like(grad))
            rows.state["v"] = 1.0 * velocity + grad / l1
            return rows.state["v"]

        return (momentum,)


def test_a_users_gradient_transform_changes_the_steps(zoo_cnn, fmnist_batch):
    x, y = fmnist_batch(64)
    ascent = IFGSM(steps=5)(zoo_cnn, x, y, LINF)
    descent = Descend(steps=5)(zoo_cnn, x, y, LINF)
    with torch.no_grad():
        clean_loss = get_loss("ce")(zoo_cnn(x), y)
    assert float(descent.loss.mean()) < float(clean_loss.mean()) < float(ascent.loss.mean())
    assert int(descent.success.sum()) < int(ascent.success.sum())
    # momentum written by a user, with early stopping narrowing its per-row state, is MI-FGSM bit for bit
    for early_stop in (False, True):
        own = OwnMomentum(steps=6, early_stop=early_stop)(zoo_cnn, x, y, LINF)
        assert torch.equal(own.x_adv, MIFGSM(steps=6, early_stop=early_stop)(zoo_cnn, x, y, LINF).x_adv)


def test_a_users_input_transform_is_what_the_gradient_sees(zoo_cnn, fmnist_batch):
    x, y = fmnist_batch(32)

    class Flipped(IFGSM):
        def input_transform(self, generator):
            return lambda xa: xa.flip(-1)

    class Same(IFGSM):
        def input_transform(self, generator):
            return lambda xa: xa

    plain = IFGSM(steps=3)(zoo_cnn, x, y, LINF)
    assert torch.equal(Same(steps=3)(zoo_cnn, x, y, LINF).x_adv, plain.x_adv)
    flipped = Flipped(steps=3)(zoo_cnn, x, y, LINF)
    assert not torch.equal(flipped.x_adv, plain.x_adv)
    # the gradient of the loss at the flipped image, flipped back: the model sees the mirror image of each step
    xa = x.clone().requires_grad_(True)
    grad = torch.autograd.grad(get_loss("ce")(zoo_cnn(xa.flip(-1)), y).sum(), xa)[0]
    first = LINF.project(LINF.step(x, grad, 0.05 / 3), x)
    assert torch.equal(Flipped(steps=1, step_size=0.05 / 3)(zoo_cnn, x, y, LINF).x_adv, first)


def test_a_call_leaves_no_loop_state_on_the_attack(zoo_cnn, fmnist_batch):
    x, y = fmnist_batch(64)
    attack = MIFGSM(steps=4, early_stop=True, restarts=2, random_start=True)
    before = dict(vars(attack))
    attack(zoo_cnn, x[:32], y[:32], LINF)
    second = attack(zoo_cnn, x[32:], y[32:], LINF)
    assert torch.equal(second.x_adv, MIFGSM(steps=4, early_stop=True, restarts=2, random_start=True)(
        zoo_cnn, x[32:], y[32:], LINF).x_adv)  # fmt: skip
    assert {k for k, v in vars(attack).items() if before.get(k) is not v} <= {"runtime"}
    assert second.info["precision"] == "fp32" and second.info["memory_format"] == "contiguous"


def test_pgd_early_stopping_is_the_stop_rule_of_the_same_loop(zoo_cnn, fmnist_batch):
    x, y = fmnist_batch(64)
    with count_passes(zoo_cnn) as early_passes:
        early = PGD(steps=8, early_stop=True)(zoo_cnn, x, y, LINF)
    with count_passes(zoo_cnn) as full_passes:
        full = PGD(steps=8)(zoo_cnn, x, y, LINF)
    assert early_passes.backward < full_passes.backward  # broken rows left the batch
    assert bool((early.success >= full.success).all())  # any-iterate success: never weaker than the last iterate
