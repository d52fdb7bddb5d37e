"""The evaluator: worst case over attacks, only-robust semantics, shards, resume, top-k metrics."""

from __future__ import annotations

import pytest
import torch

from robustlab.attacks import FGSM, PGD, attack_from_spec
from robustlab.eval import EvalResult, Evaluator, merge_batches
from robustlab.eval.metrics import topk_report
from robustlab.threat import ThreatModel

pytestmark = pytest.mark.usefixtures("one_thread")


THREAT = ThreatModel("linf", 0.05)


def _attacks() -> dict:
    return {"fgsm": FGSM(), "pgd": PGD(steps=3, seed=1), "pgd+cw": PGD(steps=3, loss="cw", seed=2)}


def _same(a: EvalResult, b: EvalResult) -> None:
    assert torch.equal(a.clean_correct, b.clean_correct) and torch.equal(a.robust, b.robust)
    for name in a.broken:
        assert torch.equal(a.broken[name], b.broken[name])
        assert torch.equal(a.attacked[name], b.attacked[name])
        assert torch.equal(a.robust_after[name], b.robust_after[name])
        assert torch.allclose(a.adv_logits[name], b.adv_logits[name])


def test_worst_case_is_at_most_every_single_attack(zoo_mlp, fmnist_batch):
    x, y = fmnist_batch(60)
    every = Evaluator(_attacks(), THREAT, batch_size=30, only_robust=False).run(zoo_mlp, (x, y))
    singles = {name: (every.clean_correct & ~s).float().mean().item() for name, s in every.broken.items()}
    assert every.robust_accuracy <= min(singles.values())
    assert every.robust_accuracy < max(singles.values())  # the attacks disagree: the worst case matters

    chained = Evaluator(_attacks(), THREAT, batch_size=30).run(zoo_mlp, (x, y))
    assert chained.robust_accuracy <= min(singles.values()) + 1e-9
    # each attack ran only on what the previous ones left robust, and flags only ever flip to broken
    assert torch.equal(chained.attacked["fgsm"], chained.clean_correct)
    assert torch.equal(chained.attacked["pgd"], chained.robust_after["fgsm"])
    assert torch.equal(chained.attacked["pgd+cw"], chained.robust_after["pgd"])
    assert not (chained.robust_after["pgd+cw"] & ~chained.robust_after["fgsm"]).any()
    assert chained.robust_after["pgd+cw"].float().mean().item() == chained.robust_accuracy
    assert chained.summary()["attacks"]["pgd"]["attacked"] < chained.n


def test_shards_merge_to_the_single_process_result(zoo_mlp, fmnist_batch):
    x, y = fmnist_batch(50)
    evaluator = Evaluator(_attacks(), THREAT, batch_size=16)
    whole = evaluator.run(zoo_mlp, (x, y))
    parts = {}
    for rank in range(3):
        mine = evaluator.run_batches(zoo_mlp, (x, y), shard=(rank, 3))
        assert all(b % 3 == rank for b in mine)
        parts.update(mine)
    assert sorted(parts) == [0, 1, 2, 3]
    _same(merge_batches(parts, list(_attacks())), whole)


def test_a_staged_protocol_runs_its_stages_as_entries_that_shards_merge(zoo_mlp, fmnist_batch):
    x, y = fmnist_batch(24)
    evaluator = Evaluator({"fgsm": FGSM(), "default": attack_from_spec("default", seed=0)}, THREAT, batch_size=8)
    assert list(evaluator.attacks) == ["fgsm", "default/apgd-ce", "default/apgd-t"]
    whole = evaluator.run(zoo_mlp, (x, y))
    assert not (whole.broken["default/apgd-t"] & ~whole.attacked["default/apgd-t"]).any()
    assert torch.equal(whole.attacked["default/apgd-t"], whole.robust_after["default/apgd-ce"])  # only what is left
    parts = {b: r for rank in range(2) for b, r in evaluator.run_batches(zoo_mlp, (x, y), shard=(rank, 2)).items()}
    _same(merge_batches(parts, list(evaluator.attacks)), whole)


class _CrashError(Exception):
    pass


class _CountingAttack:
    """PGD that counts its calls and can crash on the n-th one (a kill in the middle of a run)."""

    name = "pgd"

    def __init__(self, crash_on: int | None = None) -> None:
        self.pgd, self.calls, self.crash_on = PGD(steps=3), 0, crash_on

    def __call__(self, model, x, y, threat):
        self.calls += 1
        if self.calls == self.crash_on:
            raise _CrashError
        return self.pgd(model, x, y, threat)


def test_resume_after_a_crash_recomputes_nothing_finished(zoo_mlp, fmnist_batch, tmp_path):
    x, y = fmnist_batch(40)
    reference = Evaluator({"pgd": _CountingAttack()}, THREAT, batch_size=10).run(zoo_mlp, (x, y))

    crashing = _CountingAttack(crash_on=3)
    with pytest.raises(_CrashError):
        Evaluator({"pgd": crashing}, THREAT, batch_size=10).run(zoo_mlp, (x, y), checkpoint_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["batch00000.pt", "batch00001.pt"]

    resumed = _CountingAttack()
    result = Evaluator({"pgd": resumed}, THREAT, batch_size=10).run(zoo_mlp, (x, y), checkpoint_dir=tmp_path)
    assert resumed.calls == 2  # only batches 2 and 3
    _same(result, reference)


def test_topk_metrics_equal_a_brute_force_count(zoo_mlp, fmnist_batch):
    x, y = fmnist_batch(40)
    result = Evaluator(_attacks(), THREAT, batch_size=40, only_robust=False).run(zoo_mlp, (x, y))
    report = topk_report(result, [1, 2, 3, 5])
    assert report["scope"] == "own"
    for name, logits in result.adv_logits.items():
        ranks = []
        for row, label in zip(logits.tolist(), y.tolist()):
            order = sorted(range(len(row)), key=lambda j: -row[j])
            ranks.append(order.index(label) + 1)  # no ties in float logits
        clean = [sorted(r, reverse=True).index(r[t]) + 1 for r, t in zip(result.clean_logits.tolist(), y.tolist())]
        stats = report["attacks"][name]
        assert stats["icr"]["mean"] == pytest.approx(sum(ranks) / len(ranks))
        assert stats["icr"]["histogram"] == [ranks.count(r) for r in range(1, 11)]
        for k in (1, 2, 3, 5):
            in_topk = [c <= k for c in clean]
            pushed = sum(1 for c, r in zip(in_topk, ranks) if c and r > k)
            assert stats["asr"][str(k)] == pytest.approx(pushed / sum(in_topk))
            kept = sum(1 for c, r in zip(in_topk, ranks) if c and r <= k)
            assert stats["robust_accuracy"][str(k)] == pytest.approx(kept / len(ranks))
    assert report["worst_case"]["robust_accuracy"]["1"] == pytest.approx(result.robust_accuracy)


class _NaNForBrightInputs(torch.nn.Module):
    """Returns NaN logits for the inputs brighter than ``level`` (a broken model on some samples)."""

    def __init__(self, net: torch.nn.Module, level: float = 0.3) -> None:
        super().__init__()
        self.net, self.level = net, level

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x)
        bad = x.flatten(1).mean(1) > self.level
        return torch.where(bad[:, None], torch.full_like(logits, float("nan")), logits)


def test_nan_logits_are_never_correct_nor_robust(zoo_mlp, fmnist_batch):
    x, y = fmnist_batch(60)
    model = _NaNForBrightInputs(zoo_mlp).eval()
    bad = x.flatten(1).mean(1) > 0.3
    assert 0 < bad.sum() < len(y) and (y[bad] == 0).any()  # argmax of NaN is class 0: counted correct before
    result = Evaluator(_attacks(), THREAT, batch_size=30).run(model, (x, y))
    assert not (result.clean_correct & bad).any() and not (result.robust & bad).any()
    nonfinite = result.nonfinite  # NaN at the clean input, or at an adversarial one (brighter than the level)
    assert not (bad & ~nonfinite).any() and not (result.robust & nonfinite).any()
    assert result.summary()["nonfinite"] == nonfinite.nonzero().squeeze(1).tolist()
    # a NaN row never ranks the true class in the top k
    report = topk_report(result, [1, 2, 3])
    assert report["worst_case"]["robust_accuracy"]["3"] <= (~bad).float().mean().item()


def test_the_headline_is_top1_whatever_the_attack_optimises(zoo_mlp, fmnist_batch):
    from robustlab.attacks import TopK

    x, y = fmnist_batch(60)
    result = Evaluator({"topk": TopK(k=3, steps=3)}, ThreatModel("linf", 0.08)).run(zoo_mlp, (x, y))
    top1 = result.clean_correct & (result.adv_logits["topk"].argmax(1) == y)
    assert result.robust_accuracy == top1.float().mean().item()
    # the attack's own criterion (true class out of the top 3) holds on fewer samples than top-1 errors
    assert result.criterion["topk"].sum() < result.broken["topk"].sum()
    assert result.robust_accuracy == topk_report(result, [1, 3])["worst_case"]["robust_accuracy"]["1"]


def test_topk_asr_denominators_hold_only_attacked_samples(zoo_mlp, fmnist_batch):
    x, y = fmnist_batch(80)
    result = Evaluator(_attacks(), THREAT, batch_size=40).run(zoo_mlp, (x, y))  # only the still-robust
    report = topk_report(result, [1, 2, 3])
    assert report["scope"] == "cumulative"
    clean_rank = torch.tensor(
        [sorted(r, reverse=True).index(r[t]) + 1 for r, t in zip(result.clean_logits.tolist(), y.tolist())]
    )
    attacked = result.attacked["fgsm"]  # the first attack ran on every clean-correct sample, the others on fewer
    assert ((clean_rank <= 3) & ~attacked).any(), "wrong-but-top-3 samples, never attacked"
    worst = torch.stack([clean_rank, *[result.interest_class_rank(a) for a in result.adv_logits]]).max(0).values
    for k in (1, 2, 3):
        tried = (clean_rank <= k) & attacked
        assert report["worst_case"]["asr"][str(k)] == pytest.approx((tried & (worst > k)).sum().item() / tried.sum())


class _Flaky(torch.nn.Module):
    """Predicts the true class in the first ``hits`` of every ``passes`` forward passes, another class otherwise."""

    def __init__(self, labels: torch.Tensor, hits: int, passes: int) -> None:
        super().__init__()
        self.labels, self.hits, self.passes, self.calls = labels, hits, passes, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        right = self.calls % self.passes < self.hits
        self.calls += 1
        wrong = (self.labels[: len(x)] + 1) % 10
        classes = self.labels[: len(x)] if right else wrong
        return torch.nn.functional.one_hot(classes, 10).float() * 5.0 + 0.0 * x.flatten(1)[:, :1]


def test_repeated_predictions_judge_a_randomised_model(fmnist_batch):
    x, y = fmnist_batch(6)
    for hits, passes, vote, correct in [(6, 10, "majority", True), (5, 10, "majority", False), (4, 10, "mean", False)]:
        evaluator = Evaluator({"fgsm": FGSM()}, THREAT, predictions=passes, vote=vote)
        state = torch.random.get_rng_state()
        logits = evaluator.predict(_Flaky(y, hits, passes), x, y)
        assert torch.equal(torch.random.get_rng_state(), state)  # the passes' RNG is forked
        assert bool((logits.argmax(1) == y).all()) is correct, (hits, vote)  # a 5-5 tie counts against
    assert Evaluator({"fgsm": FGSM()}, THREAT).predictions == 1
    with pytest.raises(Exception, match="vote"):
        Evaluator({"fgsm": FGSM()}, THREAT, vote="median")
