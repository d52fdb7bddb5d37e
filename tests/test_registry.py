"""One registry type for attacks, losses, training methods, SSL methods and model sources.

Each extension below is one small class or function plus one registry line, then usable by name everywhere the
built-in ones are: an attack in a spec, a loss after ``+``, a training method in ``make_method``.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustlab import RobustlabError, ThreatModel
from robustlab.attacks import PGD, AttackBase, AttackResult, attack_from_spec, attack_help, register, unregister
from robustlab.criteria import Misclassified
from robustlab.defenses.methods import METHODS, AdversarialMethod, make_method
from robustlab.losses import LOSSES, get_loss, loss_names, register_loss
from robustlab.models import build_model, load_model, save_model, seeded_weights
from robustlab.models.sources import SOURCES, ModelSource
from robustlab.registry import Registry, signature_options

THREAT = ThreatModel("linf", 0.1)


class Shift(AttackBase):
    """A toy attack: every pixel moved by +eps (a baseline every real attack must beat)."""

    name = "shift"

    def __init__(self, sign: float = 1.0) -> None:
        self.sign = sign

    def config(self) -> dict:
        return {"attack": self.name, "sign": self.sign}

    def __call__(self, model, x, y, threat, target=None) -> AttackResult:
        x_adv = threat.clip(x + self.sign * threat.eps)
        with torch.no_grad():
            logits = model(x_adv)
        return AttackResult(x_adv, Misclassified()(logits, y), F.cross_entropy(logits, y, reduction="none"), logits)


def squared_margin(logits: Tensor, labels: Tensor) -> Tensor:
    """A toy loss: the CW margin, squared where positive."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    other = logits.scatter(1, labels[:, None], float("-inf")).max(1).values
    return (other - true).clamp_min(0) ** 2 + (other - true).clamp_max(0)


class CornerTraining(AdversarialMethod):
    """A toy training method: train on a random corner of the eps-cube."""

    name = "corner"
    default_step_size = 1.0

    def training_input(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return self.threat.clip(x + self.step_size * torch.sign(self.uniform(x, 1.0)))


@pytest.fixture
def extensions():
    register("shift", Shift, "every pixel moved by eps")  # one line: an attack
    register_loss("squared-margin", "sqm")(squared_margin)  # one line: a loss
    METHODS.register("corner", CornerTraining)  # one line: a training method
    yield
    unregister("shift")
    LOSSES.unregister("squared-margin")
    METHODS.unregister("corner")


def test_an_attack_a_loss_and_a_training_method_each_in_one_line(extensions, zoo_cnn, fmnist_batch):
    x, y = fmnist_batch(32)
    attack = attack_from_spec("Shift(sign=-1)", steps=10, seed=3)  # shared defaults it does not take: left out
    assert isinstance(attack, Shift) and attack.sign == -1 and attack.spec == "Shift(sign=-1)"
    assert (attack(zoo_cnn, x, y, THREAT).x_adv - x).abs().max() <= 0.1 + 1e-6
    assert "shift: every pixel moved by eps" in attack_help(summaries=True)
    with pytest.raises(RobustlabError, match="shift has no option 'steps'; it takes: sign"):
        attack_from_spec("shift(steps=3)")

    assert get_loss("SQM") is squared_margin and "squared-margin" in loss_names()
    pgd = attack_from_spec("pgd+squared-margin", steps=3)
    assert isinstance(pgd, PGD) and pgd.loss_fn is squared_margin
    assert pgd(zoo_cnn, x, y, THREAT).success.float().mean() > 0  # the loss drives the attack

    method = make_method("Corner", THREAT)
    assert isinstance(method, CornerTraining) and "corner" in list(METHODS)
    model = build_model("cnn")
    loss, stats = method.training_loss(model, x, y)
    loss.backward()
    assert loss.requires_grad and 0 <= stats["accuracy"] <= 1
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(RobustlabError, match="method corner does not take noise; it takes: threat, step_size"):
        make_method("corner", THREAT, noise="gaussian")


def test_unknown_names_are_one_line_with_the_choices_and_the_closest():
    with pytest.raises(RobustlabError, match=r"unknown method 'pgd-att'; choose one of: standard,.*mean pgd\?"):
        make_method("pgd-att")
    with pytest.raises(RobustlabError, match=r"unknown loss 'dlrr'.*did you mean dlr\?"):
        get_loss("dlrr")
    with pytest.raises(RobustlabError, match=r"unknown attack 'pgdd'.*did you mean pgd\?"):
        attack_from_spec("pgdd")
    with pytest.raises(RobustlabError, match="topk: .* multiple values for keyword argument 'criterion'"):
        attack_from_spec("topk(criterion=1)")  # a value its constructor does not check: still one line


def test_the_registry_type():
    things: Registry[int] = Registry("thing")
    things.register("One_Thing", 1, aliases=("first",))
    assert things.get("one-thing") == things.get(" FIRST ") == 1 and "first" in things and list(things) == ["One_Thing"]
    with pytest.raises(ValueError, match="registered already"):
        things.register("first", 2)
    things.register("first", 2, replace=True)
    assert things.get("first") == 2
    things.unregister("one-thing")
    assert things.names() == ["first"] and "one_thing" not in things


def test_signature_options_follow_kwargs_to_where_they_go():
    assert signature_options(PGD)[0][:3] == ["steps", "step_size", "restarts"]  # then GradientAttack's own
    assert "momentum" in signature_options(PGD)[0] and not signature_options(PGD)[1]
    assert signature_options(lambda a, **rest: None) == (["a"], True)  # a factory that takes anything


def test_a_model_source_in_one_line(tmp_path):
    """A source of its own prefix: ``load`` for ``PREFIX:NAME`` specs, ``build`` for model files trained from one."""

    def seeded(spec, num_classes=None, mean=None, std=None):
        with seeded_weights(int(spec.partition(":")[2])):  # the weights drawn from the seed its name gives
            return build_model("mlp", num_classes=num_classes)

    SOURCES.register("seeded", ModelSource(lambda spec, request: (seeded(spec, request.num_classes), None), seeded))
    try:
        model = load_model("seeded:3")
        assert isinstance(model, nn.Module) and not model.training
        assert torch.equal(model(torch.zeros(1, 1, 28, 28)), load_model("seeded:3")(torch.zeros(1, 1, 28, 28)))
        save_model(tmp_path / "model.pt", model, "seeded:3", dataset="fashion-mnist")
        again = load_model(str(tmp_path))  # a model file names its source: rebuilt through build, then its weights
        assert torch.equal(again(torch.ones(2, 1, 28, 28)), model(torch.ones(2, 1, 28, 28)))
    finally:
        SOURCES.unregister("seeded")
    with pytest.raises(RobustlabError, match="cannot read model spec 'nothing'.*torchvision:NAME"):
        load_model("nothing")
