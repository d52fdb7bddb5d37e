"""The threat model: eps parsing, steps, projection, random starts."""

import math

import pytest
import torch

from robustlab import RobustlabError, ThreatModel, parse_eps


def test_parse_eps_accepts_fractions_and_floats():
    assert parse_eps("8/255") == pytest.approx(8 / 255)
    assert parse_eps("0.1") == pytest.approx(0.1)
    assert parse_eps(0) == 0.0
    assert ThreatModel("linf", "16/255").eps == pytest.approx(16 / 255)


@pytest.mark.parametrize("bad", ["-0.1", "abc", "1/0", float("nan"), -1])
def test_parse_eps_rejects_bad_values(bad):
    with pytest.raises(RobustlabError, match="eps"):
        parse_eps(bad)


def test_unknown_norm_and_bad_bounds_are_rejected():
    with pytest.raises(RobustlabError, match="unknown norm"):
        ThreatModel("l1", 0.1)
    with pytest.raises(RobustlabError, match="lo < hi"):
        ThreatModel("linf", 0.1, bounds=(1.0, 0.0))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_project_lands_in_ball_and_bounds(norm):
    g = torch.Generator().manual_seed(0)
    threat = ThreatModel(norm, 0.3)
    x = torch.rand(64, 1, 8, 8, generator=g)
    far = x + 5 * torch.randn(x.shape, generator=g)
    projected = threat.project(far, x)
    assert (threat.distance(projected, x) <= 0.3 + 1e-5).all()
    assert projected.min() >= 0 and projected.max() <= 1
    # points already inside the ball stay where they are
    near = threat.project(x + 1e-3 * torch.randn(x.shape, generator=g), x)
    assert torch.allclose(threat.project(near, x), near)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_random_start_is_inside_ball_and_reproducible(norm):
    threat = ThreatModel(norm, 0.5)
    x = torch.full((256, 1, 4, 4), 0.5)
    a = threat.random_start(x, torch.Generator().manual_seed(1))
    b = threat.random_start(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    dist = threat.distance(a, x)
    assert (dist <= 0.5 + 1e-5).all() and (dist > 0).all()
    if norm == "l2":  # uniform in the ball: radius^d is uniform, so the median radius is eps * 0.5^(1/d)
        assert dist.median().item() == pytest.approx(0.5 * 0.5 ** (1 / 16), rel=0.05)


def test_step_directions():
    x = torch.zeros(2, 3)
    grad = torch.tensor([[3.0, -4.0, 0.0], [1.0, 0.0, 0.0]])
    linf = ThreatModel("linf", 1.0, bounds=(-10, 10)).step(x, grad, 0.1)
    assert torch.allclose(linf, torch.tensor([[0.1, -0.1, 0.0], [0.1, 0.0, 0.0]]))
    l2 = ThreatModel("l2", 1.0, bounds=(-10, 10)).step(x, grad, 0.5)
    assert torch.allclose(l2.norm(dim=1), torch.tensor([0.5, 0.5]))
    assert math.isclose(l2[0, 0].item(), 0.5 * 3 / 5, rel_tol=1e-6)


def test_check_inputs_names_the_fix():
    with pytest.raises(RobustlabError, match="outside the bounds"):
        ThreatModel("linf", 0.1).check_inputs(torch.tensor([[-0.5, 0.2]]))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_check_inputs_refuses_non_finite_values(bad):
    x = torch.rand(4, 1, 3, 3)
    x[2, 0, 1, 1] = bad
    with pytest.raises(RobustlabError, match=r"NaN or inf \(1 values, samples \[2\]\)"):
        ThreatModel("linf", 0.1).check_inputs(x)


def test_linf_eps_above_the_bounds_width_and_non_finite_bounds_are_refused():
    with pytest.raises(RobustlabError, match="exceeds the width"):
        ThreatModel("linf", 8)  # 8 instead of 8/255
    assert ThreatModel("linf", 1.0).eps == 1.0 and ThreatModel("l2", 8).eps == 8  # the whole box; L2 can exceed it
    assert ThreatModel("linf", 8, bounds=(0, 255)).eps == 8
    with pytest.raises(RobustlabError, match="bounds"):
        ThreatModel("linf", 0.1, bounds=(0, float("inf")))
    for bad in ("nan", "inf", float("inf")):
        with pytest.raises(RobustlabError, match="eps"):
            ThreatModel("linf", bad)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("linf", 8 / 255), ("l2", 1.0)])
def test_projection_and_random_start_keep_the_ball_in_the_input_dtype(dtype, norm, eps):
    """A plain float16 projection rounds to |delta| = 0.10009765625 at eps 0.1; ours stays inside, exactly."""
    g = torch.Generator().manual_seed(0)
    threat = ThreatModel(norm, eps)
    x = torch.rand(256, 1, 28, 28, generator=g).to(dtype)
    far = (x.float() + torch.randn(x.shape, generator=g)).to(dtype)
    for out in (threat.project(far, x), threat.random_start(x, g, "ball"), threat.random_start(x, g, "uniform")):
        assert out.dtype == dtype
        assert (threat.distance(out.double(), x.double()) <= eps).all()
        assert out.min() >= 0 and out.max() <= 1
    if norm == "linf":  # the projection still reaches the sphere (to within one rounding)
        assert threat.distance(threat.project(far, x).double(), x.double()).min() > eps - 2 * torch.finfo(dtype).eps
