"""Nested eps (issue 15): ascending eps, a sample broken at a smaller eps stays broken, only the rest is attacked.
Never higher than evaluating each eps separately with the same attacks and seeds."""

from __future__ import annotations

import pytest
import torch

from robustlab.eval import EvalConfig, load_results, run_evaluation

pytestmark = pytest.mark.usefixtures("one_thread")

EPS = (0.08, 0.02, 0.05)  # given out of order: nested evaluates them ascending
ATTACK = "pgd(steps=5)"  # random starts keyed by sample: the same start in any batch


def _both(model, data, attacks, tmp_path, **kwargs):
    runs = {}
    for protocol in ("nested", "separate"):
        config = EvalConfig(eps=EPS, attacks=attacks, eps_protocol=protocol, sanity_n=0, plots=False, **kwargs)
        runs[protocol] = run_evaluation(model, data, config, tmp_path / protocol)
    return runs


def test_nested_is_never_higher_than_separate_and_attacks_fewer(zoo_cnn, fmnist_batch, tmp_path):
    x, y = fmnist_batch(150)
    runs = _both(zoo_cnn, (x, y), ATTACK, tmp_path, batch_size=50)
    nested, separate = runs["nested"], runs["separate"]
    assert nested.protocol == "nested" and separate.protocol == "separate"
    assert [e.eps for e in nested.results] == sorted(EPS) and [e.eps for e in separate.results] == list(EPS)
    by_eps = {e.eps: e for e in separate.results}
    for entry in nested.results:
        other = by_eps[entry.eps]
        assert entry.robust_accuracy <= other.robust_accuracy
        assert entry.clean_accuracy == other.clean_accuracy
    assert nested.results[1].carried > 0  # samples broken at 0.02 were not attacked again at 0.05
    attacked = [e.attacks[ATTACK].attacked for e in nested.results]
    assert attacked[1] < by_eps[0.05].attacks[ATTACK].attacked
    assert sum(attacked) < sum(e.attacks[ATTACK].attacked for e in separate.results)
    # monotone by construction; each sample's smallest breaking eps reproduces the curve
    curve = [e.robust_accuracy for e in nested.results]
    assert curve == sorted(curve, reverse=True)
    min_eps = torch.load(tmp_path / "nested" / "results.pt", weights_only=True)["min_eps"]
    for entry in nested.results:
        assert (min_eps > entry.eps).float().mean().item() == pytest.approx(entry.robust_accuracy)
    assert sum(nested.min_eps.values()) == len(y) and "Eps protocol: nested" in nested.to_markdown()
    # sample by sample: robust nested => robust separately (random starts keyed by sample, not by batch)
    nested_results = dict(zip(sorted(EPS), load_results(tmp_path / "nested")))
    for eps, result in zip(EPS, load_results(tmp_path / "separate")):
        assert not (nested_results[eps].robust & ~result.robust).any()


def test_deterministic_attacks_nest_sample_by_sample(zoo_mlp, fmnist_batch, tmp_path):
    # I-FGSM has no random draw, so each sample's outcome does not depend on who else is in the batch
    x, y = fmnist_batch(100)
    _both(zoo_mlp, (x, y), "fgsm,ifgsm(steps=3)", tmp_path, batch_size=100)
    nested = dict(zip(sorted(EPS), load_results(tmp_path / "nested")))
    separate = dict(zip(EPS, load_results(tmp_path / "separate")))
    for eps in EPS:
        assert not (nested[eps].robust & ~separate[eps].robust).any()  # robust nested => robust separately
    # a carried sample keeps the logits of the example that broke it at the smaller eps
    carried = nested[0.05].carried
    assert carried.any() and torch.equal(nested[0.05].carried_logits[carried], nested[0.02].breaking_logits()[carried])


def test_nested_resume_reuses_every_finished_batch(zoo_mlp, fmnist_batch, tmp_path, monkeypatch):
    import robustlab.eval.run as eval_run
    import robustlab.executor as executor

    x, y = fmnist_batch(60)
    config = EvalConfig(eps=EPS, attacks="pgd(steps=2)", sanity_n=0, batch_size=20, plots=False)
    first = run_evaluation(zoo_mlp, (x, y), config, tmp_path / "straight")
    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(executor, "write_html", lambda out: (_ for _ in ()).throw(KeyboardInterrupt))
        run_evaluation(zoo_mlp, (x, y), config, tmp_path / "stopped")  # stopped after every batch was done
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "stopped" / "partial").rglob("batch*.pt")}
    assert len(stamps) == 9 and len({p.parent for p in stamps}) == 3
    reads = []
    with monkeypatch.context() as patch:
        patch.setattr(eval_run.Evaluator, "run_batch", lambda *a, **k: reads.append(1))  # nothing may be recomputed
        again = run_evaluation(zoo_mlp, (x, y), config, tmp_path / "stopped", resume=True)
    assert not reads

    def timeless(entry: dict) -> dict:  # a straight run took other seconds; every count and rate is the same
        return {k: timeless(v) if isinstance(v, dict) else v for k, v in entry.items() if k != "seconds"}

    assert [timeless(e.to_dict()) for e in again.results] == [timeless(e.to_dict()) for e in first.results]


def test_nested_with_autoattack_is_never_higher(zoo_mlp, fmnist_batch, tmp_path):
    pytest.importorskip("pyautoattack")
    x, y = fmnist_batch(40)
    runs = _both(zoo_mlp, (x, y), "autoattack:apgd-ce(n_iter=5,n_restarts=1)", tmp_path, batch_size=40)
    by_eps = {e.eps: e for e in runs["separate"].results}
    assert all(e.robust_accuracy <= by_eps[e.eps].robust_accuracy for e in runs["nested"].results)
    assert runs["nested"].results[-1].carried > 0
    name = next(iter(by_eps[EPS[0]].attacks))
    assert [e.attacks[name].attacked for e in runs["nested"].results] == [
        by_eps[e].attacks[name].attacked for e in sorted(EPS)
    ]  # no saving with such an attack: the same samples as separate
    # AutoAttack draws for its whole batch, so nested runs it on what a separate evaluation would: sample by sample,
    # nested robust = separate robust and not broken at a smaller eps
    nested = dict(zip(sorted(EPS), load_results(tmp_path / "nested")))
    separate = dict(zip(EPS, load_results(tmp_path / "separate")))
    ordered = sorted(EPS)
    for i, eps in enumerate(ordered):
        expected = separate[eps].robust.clone()
        for smaller in ordered[:i]:
            expected &= separate[smaller].robust | ~separate[smaller].clean_correct
        assert torch.equal(nested[eps].robust, expected & separate[eps].clean_correct)
