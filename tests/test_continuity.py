"""Tests of fmlib.continuity against analytic facts (book eq. eq-continuity)."""

import math

import pytest
import torch

from fmlib import LinearPath
from fmlib.continuity import continuity_residual, continuity_terms, divergence

DT = torch.float64


def gaussian_pair(mu, sigma):
    """log p_t and u_t of the path N(t mu, (1 - t + t sigma)^2 I), via LinearPath(sigma_min=sigma) with x_1 = mu."""
    path = LinearPath(sigma_min=sigma)
    mu = torch.as_tensor(mu, dtype=DT)

    def log_p(t, x):
        return path.conditional_log_prob(t, x, mu.expand(x.shape[0], -1))

    def u(t, x):
        return path.conditional_vector_field(t, x, mu.expand(x.shape[0], -1))

    return log_p, u


def relative(res, terms):
    scale = max(float(terms[0].abs().max()), float(terms[1].abs().max()))
    return float(res.abs().max()) / scale


def test_divergence_of_linear_field_is_trace():
    gen = torch.Generator().manual_seed(0)
    for d in (1, 2, 3, 5):
        A = torch.randn(d, d, generator=gen, dtype=DT)
        x = torch.randn(40, d, generator=gen, dtype=DT)
        div = divergence(lambda t, x: x @ A.T, 0.3, x)
        assert div.shape == (40,)
        assert torch.allclose(div, torch.trace(A).expand(40), atol=1e-12)


def test_divergence_nonlinear_and_time_dependent():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(30, 3, generator=gen, dtype=DT)
    t = torch.rand(30, generator=gen, dtype=DT)
    # v^(i) = t * sin(x^(i)) + x^(i+1 mod d)^2: only the first part contributes to the divergence
    v = lambda t, x: t * torch.sin(x) + x.roll(-1, dims=1) ** 2
    assert torch.allclose(divergence(v, t, x), t * torch.cos(x).sum(dim=1), atol=1e-12)
    # a constant field (no dependence on x) has divergence 0
    assert torch.equal(divergence(lambda t, x: torch.ones_like(x) + 0 * t, t, x), torch.zeros(30, dtype=DT))


def test_divergence_free_rotation():
    x = torch.randn(20, 2, dtype=DT)
    J = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=DT)
    assert divergence(lambda t, x: x @ J.T * (1 + t), 0.5, x).abs().max() < 1e-14


@pytest.mark.parametrize("d", [1, 2, 3])
def test_gaussian_path_exact_field_has_zero_residual(d):
    gen = torch.Generator().manual_seed(d)
    mu = torch.randn(d, generator=gen, dtype=DT) * 2
    log_p, u = gaussian_pair(mu, 0.3)
    t = torch.rand(500, generator=gen, dtype=DT)
    x = torch.randn(500, d, generator=gen, dtype=DT) * 1.5 + t[:, None] * mu
    terms = continuity_terms(log_p, u, t, x)
    res = continuity_residual(log_p, u, t, x)
    assert torch.allclose(res, terms[0] + terms[1])
    assert float(terms[0].abs().max()) > 1e-2  # the terms themselves are not small
    assert relative(res, terms) < 1e-12


def test_time_derivative_term_matches_finite_difference():
    log_p, u = gaussian_pair([1.0, -2.0], 0.4)
    x = torch.tensor([[0.3, -0.5], [1.0, 1.0], [-1.0, 0.2]], dtype=DT)
    t, h = 0.4, 1e-5
    dp_dt, _ = continuity_terms(log_p, u, t, x)
    fd = (log_p(torch.full((3, 1), t + h, dtype=DT), x).exp() - log_p(torch.full((3, 1), t - h, dtype=DT), x).exp()) / (2 * h)
    assert torch.allclose(dp_dt, fd, atol=1e-8)


@pytest.mark.parametrize("scale", [1.5, 0.5])
def test_wrong_field_has_large_residual(scale):
    gen = torch.Generator().manual_seed(5)
    log_p, u = gaussian_pair([2.0, 1.0], 0.5)
    t = torch.rand(500, generator=gen, dtype=DT)
    x = torch.randn(500, 2, generator=gen, dtype=DT) + t[:, None] * torch.tensor([2.0, 1.0], dtype=DT)
    wrong = lambda t, x: scale * u(t, x)
    res = continuity_residual(log_p, wrong, t, x)
    assert relative(res, continuity_terms(log_p, wrong, t, x)) > 0.1


def test_adding_divergence_free_flux_keeps_residual_zero():
    """u + w / p with div w = 0 (w = p * omega J (x - mu_t)) generates the same isotropic Gaussian path."""
    mu = torch.tensor([2.0, 1.0], dtype=DT)
    log_p, u = gaussian_pair(mu, 0.5)
    J = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=DT)
    u_rot = lambda t, x: u(t, x) + 3.0 * (x - t * mu) @ J.T
    gen = torch.Generator().manual_seed(6)
    t = torch.rand(300, generator=gen, dtype=DT)
    x = torch.randn(300, 2, generator=gen, dtype=DT) + t[:, None] * mu
    assert relative(continuity_residual(log_p, u_rot, t, x), continuity_terms(log_p, u_rot, t, x)) < 1e-12


def test_gaussian_mixture_marginal_field_has_zero_residual():
    """A two-component mixture of Gaussian paths with the posterior-weighted field (book eq-marginal-vf)."""
    path = LinearPath(sigma_min=0.2)
    centres = torch.tensor([[2.0, 0.0], [-1.0, 1.5]], dtype=DT)
    weights = torch.tensor([0.3, 0.7], dtype=DT)

    def comp_log_p(t, x):  # shape (n, K)
        return torch.stack([path.conditional_log_prob(t, x, c.expand(x.shape[0], -1)) for c in centres], dim=1)

    def log_p(t, x):
        return torch.logsumexp(comp_log_p(t, x) + weights.log(), dim=1)

    def u(t, x):
        post = torch.softmax(comp_log_p(t, x) + weights.log(), dim=1)  # (n, K)
        fields = torch.stack([path.conditional_vector_field(t, x, c.expand(x.shape[0], -1)) for c in centres], dim=1)
        return (post[:, :, None] * fields).sum(dim=1)

    gen = torch.Generator().manual_seed(7)
    t = torch.rand(400, generator=gen, dtype=DT)
    x = torch.randn(400, 2, generator=gen, dtype=DT) * 2
    assert relative(continuity_residual(log_p, u, t, x), continuity_terms(log_p, u, t, x)) < 1e-11


def test_works_under_no_grad_and_scalar_times():
    log_p, u = gaussian_pair([1.0], 0.5)
    x = torch.linspace(-3, 3, 11, dtype=DT)[:, None]
    with torch.no_grad():
        res = continuity_residual(log_p, u, torch.tensor(0.5, dtype=DT), x)
    assert res.shape == (11,) and not res.requires_grad and res.abs().max() < 1e-13


def test_create_graph_allows_second_derivatives():
    x = torch.randn(5, 2, dtype=DT)
    div = divergence(lambda t, x: x ** 3, 0.0, x, create_graph=True)
    assert div.requires_grad
    assert torch.allclose(div, 3 * (x ** 2).sum(dim=1))


def test_bad_input_raises_value_error_naming_the_argument():
    log_p, u = gaussian_pair([1.0, 0.0], 0.5)
    x = torch.zeros(4, 2, dtype=DT)
    with pytest.raises(ValueError, match="x"):
        continuity_residual(log_p, u, 0.5, torch.zeros(4, dtype=DT))
    with pytest.raises(ValueError, match="x"):
        divergence(u, 0.5, [[0.0, 0.0]])
    with pytest.raises(ValueError, match="finite"):
        divergence(u, 0.5, torch.full((2, 2), math.nan, dtype=DT))
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        continuity_residual(log_p, u, 1.5, x)
    with pytest.raises(ValueError, match="t must"):
        continuity_residual(log_p, u, torch.zeros(3), x)
    with pytest.raises(ValueError, match="log_p must be callable"):
        continuity_residual("not a function", u, 0.5, x)
    with pytest.raises(ValueError, match="v must be callable"):
        divergence(None, 0.5, x)
    with pytest.raises(ValueError, match="v\\(t, x\\) must return"):
        divergence(lambda t, x: x[:, :1], 0.5, x)
    with pytest.raises(ValueError, match="log_p\\(t, x\\) must return"):
        continuity_residual(lambda t, x: log_p(t, x)[:, None], u, 0.5, x)
    with pytest.raises(ValueError, match="differentiable"):
        continuity_residual(lambda t, x: torch.zeros(x.shape[0], dtype=x.dtype), u, 0.5, x)
