"""Analytic facts about fmlib.paths: endpoints, the flow's time derivative, the conditional field, bad input."""

import math

import pytest
import torch

from fmlib import LinearPath, VPDiffusionPath

PATHS = [LinearPath(0.0), LinearPath(1e-2), LinearPath(0.3), VPDiffusionPath()]


def _points(n=7, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g, dtype=torch.float64),
            2 * torch.randn(n, d, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("sigma_min", [0.0, 1e-3, 0.3])
def test_linear_path_endpoints(sigma_min):
    x_0, x_1 = _points()
    path = LinearPath(sigma_min)
    # t = 0: psi_0(x_0 | x_1) = x_0 (noise); t = 1: psi_1 = sigma_min x_0 + x_1 (concentrated at x_1)
    torch.testing.assert_close(path.flow(0.0, x_0, x_1), x_0)
    torch.testing.assert_close(path.flow(1.0, x_0, x_1), sigma_min * x_0 + x_1)
    torch.testing.assert_close(path.mean(0.0, x_1), torch.zeros_like(x_1))
    torch.testing.assert_close(path.mean(1.0, x_1), x_1)
    assert torch.allclose(path.std(0.0, x_1), torch.ones(7, 1, dtype=torch.float64))
    assert torch.allclose(path.std(1.0, x_1), torch.full((7, 1), sigma_min, dtype=torch.float64))


def test_linear_path_target_is_x1_minus_scaled_x0():
    x_0, x_1 = _points()
    for sigma_min in (0.0, 0.1):
        t = torch.rand(7, dtype=torch.float64)
        torch.testing.assert_close(LinearPath(sigma_min).target(t, x_0, x_1), x_1 - (1 - sigma_min) * x_0)


def test_vp_path_endpoints():
    x_0, x_1 = _points()
    path = VPDiffusionPath()
    # t = 1: alpha_0 = 1, sigma = 0 -> x_1 exactly; t = 0: alpha_1 = exp(-T(1)/2), tiny but positive
    torch.testing.assert_close(path.flow(1.0, x_0, x_1), x_1)
    a1 = math.exp(-0.5 * (0.1 + 0.5 * 19.9))
    torch.testing.assert_close(path.flow(0.0, x_0, x_1), math.sqrt(1 - a1**2) * x_0 + a1 * x_1)


@pytest.mark.parametrize("path", PATHS, ids=repr)
def test_target_is_time_derivative_of_flow(path):
    """u_t(psi_t(x_0|x_1) | x_1) = d/dt psi_t(x_0 | x_1), with the derivative from autograd."""
    x_0, x_1 = _points()
    t = torch.linspace(0.05, 0.95, 7, dtype=torch.float64).requires_grad_(True)
    psi = path.flow(t, x_0, x_1)
    dpsi = torch.stack([torch.autograd.grad(psi[:, j].sum(), t, retain_graph=True)[0] for j in range(3)], dim=1)
    t = t.detach()
    torch.testing.assert_close(path.target(t, x_0, x_1), dpsi)
    torch.testing.assert_close(path.conditional_vector_field(t, path.flow(t, x_0, x_1), x_1), dpsi)


def test_linear_conditional_vector_field_closed_form():
    """Paper eq. 21: u_t(x | x_1) = (x_1 - (1 - sigma_min) x) / (1 - (1 - sigma_min) t)."""
    x, x_1 = _points()
    t = torch.rand(7, 1, dtype=torch.float64)
    s = 0.05
    expected = (x_1 - (1 - s) * x) / (1 - (1 - s) * t)
    torch.testing.assert_close(LinearPath(s).conditional_vector_field(t, x, x_1), expected)


@pytest.mark.parametrize("path", PATHS, ids=repr)
def test_conditional_log_prob_is_gaussian(path):
    x, x_1 = _points(n=5, d=2)
    t = torch.full((5,), 0.4, dtype=torch.float64)
    mu, sd = path.mean(t, x_1), path.std(t, x_1)
    expected = torch.distributions.Normal(mu, sd.expand_as(mu)).log_prob(x).sum(dim=1)
    torch.testing.assert_close(path.conditional_log_prob(t, x, x_1), expected)


def test_sample_returns_consistent_batch():
    path = LinearPath(0.01)
    x_1 = torch.randn(100, 2, dtype=torch.float64)
    s = path.sample(x_1, generator=torch.Generator().manual_seed(0))
    assert s.t.shape == (100, 1) and s.x_0.shape == s.x_t.shape == s.u_t.shape == (100, 2)
    assert bool(((s.t >= 0) & (s.t <= 1)).all())
    torch.testing.assert_close(s.x_t, path.flow(s.t, s.x_0, x_1))
    torch.testing.assert_close(s.u_t, path.target(s.t, s.x_0, x_1))
    # reproducible with the same seed
    s2 = path.sample(x_1, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(s.x_t, s2.x_t)


@pytest.mark.parametrize("d", [1, 2, 5])
def test_shapes_for_several_dimensions(d):
    x_0, x_1 = _points(n=4, d=d)
    path = LinearPath()
    for t in (0.3, torch.tensor(0.3), torch.full((4,), 0.3), torch.full((4, 1), 0.3, dtype=torch.float64)):
        assert path.flow(t, x_0, x_1).shape == (4, d)
        assert path.target(t, x_0, x_1).shape == (4, d)
        assert path.conditional_vector_field(t, x_0, x_1).shape == (4, d)
        assert path.conditional_log_prob(t, x_0, x_1).shape == (4,)


# --- bad input ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sigma_min", [-0.1, 1.0, 1.5, float("nan"), "0.1", True])
def test_bad_sigma_min(sigma_min):
    with pytest.raises(ValueError, match="sigma_min"):
        LinearPath(sigma_min)


def test_singular_corner_t1_sigma0():
    """At t = 1 with sigma_min = 0, u_t(x | x_1) is singular: a clear error; the x_0-form target stays finite."""
    x_0, x_1 = _points()
    path = LinearPath(0.0)
    with pytest.raises(ValueError, match="singular"):
        path.conditional_vector_field(1.0, x_0, x_1)
    with pytest.raises(ValueError, match="no density"):
        path.conditional_log_prob(1.0, x_0, x_1)
    target = path.target(1.0, x_0, x_1)
    assert bool(torch.isfinite(target).all())
    torch.testing.assert_close(target, x_1 - x_0)


def test_vp_target_singular_at_t1():
    x_0, x_1 = _points()
    with pytest.raises(ValueError, match="not finite"):
        VPDiffusionPath().target(1.0, x_0, x_1)
    with pytest.raises(ValueError, match="t = 1"):
        VPDiffusionPath().sample(x_1, t=1.0)


@pytest.mark.parametrize("t", [-0.1, 1.1, float("nan"), float("inf")])
def test_time_outside_unit_interval(t):
    x_0, x_1 = _points()
    with pytest.raises(ValueError, match="t "):
        LinearPath().flow(t, x_0, x_1)


def test_mismatched_shapes():
    x_0, x_1 = _points()
    with pytest.raises(ValueError, match="x_0 and x_1"):
        LinearPath().flow(0.5, x_0[:3], x_1)
    with pytest.raises(ValueError, match="shape"):
        LinearPath().flow(torch.rand(3), x_0, x_1)
    with pytest.raises(ValueError, match=r"x_1 must have shape \(n, d\)"):
        LinearPath().flow(0.5, x_0[0], x_1[0])


def test_non_finite_points():
    x_0, x_1 = _points()
    x_1[2, 1] = float("nan")
    with pytest.raises(ValueError, match="x_1 must be finite"):
        LinearPath().sample(x_1)


def test_bad_vp_betas():
    with pytest.raises(ValueError, match="beta_min"):
        VPDiffusionPath(beta_min=5.0, beta_max=1.0)
