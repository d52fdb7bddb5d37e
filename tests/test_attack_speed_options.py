"""Issue 15's speed options keep the answer: early stopping, memory format, precision and restarts as one batch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from robustlab import ThreatModel
from robustlab.attacks import PGD, attack_from_spec
from robustlab.attacks.restarts import pick, pick_rows, restart_groups
from robustlab.attacks.runtime import Runtime, model_layout, offered_precisions, resolve
from robustlab.errors import RobustlabError
from robustlab.models import load_model

pytestmark = pytest.mark.usefixtures("one_thread")

THREAT = ThreatModel("linf", 0.03)


@pytest.fixture(scope="module")
def zoo_pgdat():
    return load_model("zoo:fmnist-cnn-pgdat")


def robust(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1) == y


@pytest.mark.parametrize(("which", "eps"), [("cnn", 0.03), ("pgdat", 0.1)])
def test_early_stopped_pgd_is_never_weaker_than_the_final_iterate(which, eps, zoo_cnn, zoo_pgdat, fmnist_batch):
    model = {"cnn": zoo_cnn, "pgdat": zoo_pgdat}[which]
    x, y = fmnist_batch(200)
    threat = ThreatModel("linf", eps)
    final = PGD(steps=10, seed=3)(model, x, y, threat)
    early = PGD(steps=10, seed=3, early_stop=True)(model, x, y, threat)
    assert bool((early.success | ~final.success).all()), "a sample final-iterate PGD breaks survived early stopping"
    assert early.success.sum() >= final.success.sum()
    # the result is the first breaking iterate: inside the ball, and its logits are the model's at that point
    assert (early.x_adv - x).abs().max() <= eps + 1e-6
    with torch.no_grad():
        torch.testing.assert_close(early.logits, model(early.x_adv), atol=1e-4, rtol=1e-4)
    assert torch.equal(early.success, ~robust(model, early.x_adv, y))


def test_the_evaluator_stops_early_by_default_and_training_does_not(zoo_cnn, fmnist_batch):
    from robustlab.eval.run import EvalConfig

    attacks = EvalConfig(eps=0.03, attacks="pgd,fgsm,autoattack").build()
    assert attacks["pgd"].early_stop and attacks["fgsm"].early_stop
    assert not EvalConfig(eps=0.03, attacks="pgd", early_stop=False).build()["pgd"].early_stop
    assert not EvalConfig(eps=0.03, attacks="pgd", topk=(1, 3)).build()["pgd"].early_stop  # ranks need it
    assert not EvalConfig(eps=0.03, attacks="pgd", predictions=5).build()["pgd"].early_stop  # random model
    x, y = fmnist_batch(64)
    pgd = PGD(steps=5, seed=1, keyed_start=False)  # perturb draws its starts for the batch
    assert not pgd.early_stop  # an attack built in Python, and training's inner maximisation, run every step
    full = pgd(zoo_cnn, x, y, THREAT)
    torch.testing.assert_close(pgd.perturb(zoo_cnn, x, y, THREAT), full.x_adv)


def test_channels_last_gives_the_same_answer_within_float_tolerance(zoo_cnn, fmnist_batch):
    x, y = fmnist_batch(128)
    pointers = [p.data_ptr() for p in zoo_cnn.parameters()]
    with model_layout(zoo_cnn, channels_last=True):
        assert any(p.is_contiguous(memory_format=torch.channels_last) and p.dim() == 4 for p in zoo_cnn.parameters())
        cl = zoo_cnn(x.contiguous(memory_format=torch.channels_last)).detach()
    assert [p.data_ptr() for p in zoo_cnn.parameters()] == pointers  # the very same tensors given back
    assert all(p.is_contiguous() for p in zoo_cnn.parameters())
    torch.testing.assert_close(cl, zoo_cnn(x).detach(), atol=1e-5, rtol=1e-5)
    runs = {
        fmt: PGD(steps=10, seed=2, memory_format=fmt)(zoo_cnn, x, y, THREAT) for fmt in ("contiguous", "channels_last")
    }
    a, b = runs["contiguous"], runs["channels_last"]
    assert b.info["memory_format"] == "channels_last" and a.info["memory_format"] == "contiguous"
    assert b.x_adv.is_contiguous()  # the caller's layout back
    # sign steps can flip where a gradient is ~0; the answer may move by a sample at most
    assert abs(int(a.success.sum()) - int(b.success.sum())) <= 1
    assert (a.x_adv - b.x_adv).abs().gt(1e-5).float().mean() < 0.01


def test_auto_memory_format_is_probed_once_and_recorded(zoo_cnn, zoo_mlp, fmnist_batch):
    x, y = fmnist_batch(64)
    pgd = attack_from_spec("pgd(steps=2)", memory_format="auto")
    out = pgd(zoo_cnn, x, y, THREAT)
    assert pgd.runtime["memory_format"] in ("contiguous", "channels_last")
    assert out.info["memory_format"] == pgd.runtime["memory_format"] and out.info["precision"] == "fp32"
    assert pgd.config()["memory_format"] == "auto"  # the setting; the choice is in runtime and the result
    assert resolve(zoo_cnn, x, "auto", "fp32") is resolve(zoo_cnn, x, "auto", "fp32")  # cached, no second probe
    assert resolve(zoo_mlp, x.flatten(1), "auto", "fp32") == Runtime("contiguous", "fp32")  # no conv: no probe


def test_precision_is_checked_recorded_and_judged_in_float32(zoo_cnn, fmnist_batch):
    with pytest.raises(RobustlabError, match="precision must be one of"):
        PGD(precision="fp8")
    with pytest.raises(RobustlabError, match="memory_format must be one of"):
        PGD(memory_format="nhwc")
    x, y = fmnist_batch(200)
    if "fp16" not in offered_precisions(x.device):
        with pytest.raises(RobustlabError, match="not offered on cpu"):
            PGD(precision="fp16")(zoo_cnn, x, y, THREAT)
    if "bf16" not in offered_precisions(x.device):
        pytest.skip("this CPU has no native bf16")
    fp32 = PGD(steps=10, seed=4, early_stop=True)(zoo_cnn, x, y, THREAT)
    bf16 = PGD(steps=10, seed=4, early_stop=True, precision="bf16")(zoo_cnn, x, y, THREAT)
    assert bf16.info["precision"] == "bf16" and PGD(precision="bf16").config()["precision"] == "bf16"
    assert bf16.logits.dtype == torch.float32  # the verdict is the float32 model's
    assert torch.equal(bf16.success, ~robust(zoo_cnn, bf16.x_adv, y))
    assert abs(int(bf16.success.sum()) - int(fp32.success.sum())) <= 3  # 1.5 points of 200


@pytest.mark.parametrize("early_stop", [False, True])
def test_restarts_as_one_batch_equal_sequential_restarts(early_stop, zoo_pgdat, fmnist_batch):
    x, y = fmnist_batch(100)
    threat = ThreatModel("linf", 0.1)
    kwargs = {"steps": 5, "restarts": 3, "seed": 5, "early_stop": early_stop}
    sequential = PGD(restart_batch=1, **kwargs)(zoo_pgdat, x, y, threat)
    batched = PGD(restart_batch=10_000, **kwargs)(zoo_pgdat, x, y, threat)
    assert torch.equal(batched.success, sequential.success)
    assert torch.equal(batched.success, ~robust(zoo_pgdat, batched.x_adv, y))
    if not early_stop:  # same rows, same choice
        torch.testing.assert_close(batched.x_adv, sequential.x_adv, atol=1e-5, rtol=0)
    one = PGD(steps=5, restarts=1, seed=5)(zoo_pgdat, x, y, threat)
    assert batched.success.sum() >= one.success.sum()


def test_restart_groups_and_row_choice():
    assert restart_groups(5, 256, 1024) == [4, 1]
    assert restart_groups(3, 256, 100) == [1, 1, 1]
    assert restart_groups(3, 10, 10_000) == [3]
    from robustlab.attacks.protocol import AttackResult

    # 2 restarts x 3 samples: a success beats a higher loss, the first success wins; among failures the higher
    # loss, the first on a tie -- the choice of restarts run one after another
    success = torch.tensor([False, True, False, True, True, False])
    loss = torch.tensor([5.0, 1.0, 2.0, 0.5, 3.0, 2.0])
    rows = AttackResult(torch.arange(6.0)[:, None], success, loss, torch.zeros(6, 2))
    out = pick_rows(rows, 2, sign=1.0)
    assert out.x_adv.squeeze(1).tolist() == [3.0, 1.0, 2.0]
    assert torch.equal(pick(rows_of(rows, 0), rows_of(rows, 1), 1.0).x_adv, out.x_adv)


def rows_of(rows, r: int, n: int = 3):
    from robustlab.attacks.protocol import AttackResult

    part = slice(r * n, (r + 1) * n)
    return AttackResult(rows.x_adv[part], rows.success[part], rows.loss[part], rows.logits[part])


def plain_pgd(model, x, y, threat, *, steps, step_size, seed, restarts=1, target=None, momentum=0.0, start=True):
    """A textbook PGD loop (Madry et al. 2018) written out: the same keyed random starts as robustlab's (a salt per
    restart from the attack's seeded generator, each sample's draw from a generator keyed by its content and the
    salt), then signed (Linf) or normalised (L2) steps, each projected; restarts one after another, per sample the
    first success, else the highest loss. It shares no code with the gradient loop but the sample keys."""
    from robustlab.attacks.restarts import sample_keys

    lo, hi = threat.bounds
    linf, eps, sign = threat.norm == "linf", threat.eps, 1.0 if target is None else -1.0
    generator = torch.Generator().manual_seed(seed)
    keys = sample_keys(x).tolist()

    def l2(t):  # per-sample L2 norm, shaped to broadcast
        return t.flatten(1).norm(p=2, dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)

    best = None
    for _ in range(restarts):
        x_adv = x.clone()
        if start:
            salt = int(torch.randint(0, 2**62, (), generator=generator).item())
            for i, key in enumerate(keys):
                g = torch.Generator().manual_seed((key ^ salt) % 2**63)
                if linf:
                    delta = (2 * torch.rand(x.shape[1:], generator=g) - 1) * eps
                else:  # uniform in the ball (PGD's L2 start): a uniform direction, radius eps * U^(1/d)
                    direction = torch.randn((1, *x.shape[1:]), generator=g)
                    direction = direction / l2(direction)
                    delta = direction[0] * (eps * torch.rand((1,), generator=g).pow(1.0 / x[0].numel()))
                x_adv[i] = (x[i] + delta).clamp(lo, hi)
        velocity = torch.zeros_like(x)
        for _ in range(steps):
            xa = x_adv.clone().requires_grad_(True)
            loss = F.cross_entropy(model(xa), y if target is None else target, reduction="none").sum()
            (grad,) = torch.autograd.grad(-loss if target is not None else loss, xa)
            if momentum:
                l1 = grad.flatten(1).abs().sum(1).clamp_min(1e-12).view(-1, 1, 1, 1)
                grad = velocity = momentum * velocity + grad / l1
            if linf:
                x_adv = x_adv + step_size * grad.sign()
            else:
                x_adv = x_adv + step_size * grad / l2(grad)
            delta = x_adv - x
            if linf:
                delta = delta.clamp(-eps, eps)
            else:
                delta = delta * (eps / l2(delta)).clamp(max=1.0)
            x_adv = (x + delta).clamp(lo, hi)
        with torch.no_grad():
            logits = model(x_adv)
        if target is None:
            success = (logits > logits.gather(1, y[:, None])).any(1)
        else:
            success = logits.argmax(1) == target
        objective = sign * F.cross_entropy(logits, y if target is None else target, reduction="none")
        if best is None:
            best = (x_adv, success, objective)
            continue
        better = (success & ~best[1]) | (~success & ~best[1] & (objective > best[2]))
        best = tuple(torch.where(better.view(-1, *[1] * (new.dim() - 1)), new, old) for new, old in
                     zip((x_adv, success, objective), best))  # fmt: skip
    return best[0], best[1]


@pytest.mark.parametrize(
    ("case", "norm", "eps", "options"),
    [
        ("pgd", "linf", 0.03, {}),
        ("pgd-targeted", "linf", 0.05, {}),
        ("pgd-restarts", "linf", 0.02, {"restarts": 3}),
        ("pgd-l2", "l2", 1.0, {}),
        ("pgd-l2-restarts", "l2", 0.5, {"restarts": 2}),
        ("mifgsm", "linf", 0.03, {"momentum": 1.0}),
        ("mifgsm-l2", "l2", 1.0, {"momentum": 1.0}),
    ],
)
@pytest.mark.parametrize("which", ["mlp", "cnn"])
def test_the_gradient_loop_is_bit_identical_to_a_plain_pgd_loop(which, case, norm, eps, options, zoo_mlp, zoo_cnn,
                                                                 fmnist_batch):  # fmt: skip
    """The speed work in the loop (fewer allocations, in-place steps, per-sample starts drawn in place) changes no
    bit: x_adv and success equal a plain PGD loop's exactly (early stopping off, so every row runs every step)."""
    from robustlab.attacks import MIFGSM

    model = {"mlp": zoo_mlp, "cnn": zoo_cnn}[which]
    x, y = fmnist_batch(48)
    threat = ThreatModel(norm, eps)
    target = (y + 1) % 10 if case == "pgd-targeted" else None
    restarts = options.get("restarts", 1)
    if "momentum" in options:
        attack = MIFGSM(steps=6, seed=7)
    else:  # restarts one after another (restart_batch = N), the plain loop's batch of N rows
        attack = PGD(steps=6, seed=7, restarts=restarts, restart_batch=x.shape[0])
    out = attack(model, x, y, threat, target=target)
    step_size = attack.resolve_step_size(threat)
    x_ref, success_ref = plain_pgd(model, x, y, threat, steps=6, step_size=step_size, seed=7, restarts=restarts,
                                   target=target, momentum=options.get("momentum", 0.0),
                                   start=attack.random_start)  # fmt: skip
    assert torch.equal(out.x_adv, x_ref)
    assert torch.equal(out.success, success_ref)
    assert 0 < int(success_ref.sum()) < x.shape[0]  # a case where the verdict is not trivial
    if not attack.random_start:  # training's path (perturb) draws batch starts; with none it is the same loop
        assert torch.equal(attack.perturb(model, x, y, threat, target=target), x_ref)
