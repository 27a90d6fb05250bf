"""Scores, predictions and the SDE sampler (book chapter "Flow matching and diffusion"): analytic cases, a
cross-check against torchsde, bad input."""

import math

import pytest
import torch

import fmlib
from fmlib import (PREDICTIONS, EmpiricalMarginal, LinearPath, VPDiffusionPath, euler_maruyama, sde_drift)

torch_f64 = torch.float64


def _points(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=g, dtype=torch_f64), g


@pytest.mark.parametrize("path", [LinearPath(0.0), LinearPath(0.1), VPDiffusionPath()])
def test_marginal_score_is_the_gradient_of_log_prob(path):
    data, g = _points(20)
    m = EmpiricalMarginal(path, data * 2)
    t = 0.02 + 0.96 * torch.rand(300, generator=g, dtype=torch_f64)
    x = (3 * torch.randn(300, 2, generator=g, dtype=torch_f64)).requires_grad_(True)
    grad, = torch.autograd.grad(m.log_prob(t, x).sum(), x)
    score = m.score(t, x.detach())
    assert (score - grad).abs().max() < 1e-12 * (1 + grad.abs().max())


def test_score_of_gaussian_data_is_closed_form():
    # data N(mu, s^2 I) on the linear path: x_t ~ N(t mu, (t^2 s^2 + (1 - t)^2) I), score -(x - t mu) / var;
    # with many data points the empirical marginal's score approaches it (checked loosely), and the
    # conversion of the exact Gaussian posterior mean gives it exactly
    mu, s = torch.tensor([1.0, -2.0], dtype=torch_f64), 0.5
    path = LinearPath(0.0)
    x, g = _points(200, seed=1)
    for t in (0.1, 0.5, 0.9):
        var = t ** 2 * s ** 2 + (1 - t) ** 2
        exact = -(x - t * mu) / var
        # posterior mean of x_1 given x_t = x for Gaussian data: mu + t s^2 (x - t mu) / var
        m_x1 = mu + t * s ** 2 * (x - t * mu) / var
        assert torch.allclose(path.convert(t, x, m_x1, "x_1", "score"), exact, atol=1e-12, rtol=0)
        if t > 0.5:
            continue  # sigma_t = 0.1: 20,000 points are too few for the loose check below
        # typical points of p_t (within 1.5 standard deviations), where 20,000 data points describe it well
        x_typ = t * mu + math.sqrt(var) * x[:50].clamp(-1.5, 1.5)
        data = mu + s * torch.randn(20_000, 2, generator=g, dtype=torch_f64)
        approx = EmpiricalMarginal(path, data).score(t, x_typ)
        exact_typ = -(x_typ - t * mu) / var
        assert (approx - exact_typ).abs().max() < 0.05 * exact_typ.abs().max()
    # the wrong variance (missing the noise part) is visibly off
    wrong = -(x - 0.5 * mu) / (0.25 * s ** 2)
    assert not torch.allclose(path.convert(0.5, x, mu + 0.5 * s ** 2 * (x - 0.5 * mu) / (0.0625 + 0.25), "x_1",
                                           "score"), wrong, atol=1e-3)


@pytest.mark.parametrize("path", [LinearPath(0.0), LinearPath(0.2), VPDiffusionPath()])
def test_conversions_round_trip_and_agree_with_the_marginal(path):
    data, g = _points(30, seed=2)
    m = EmpiricalMarginal(path, data)
    t = 0.05 + 0.9 * torch.rand(200, 1, generator=g, dtype=torch_f64)
    x = 2 * torch.randn(200, 2, generator=g, dtype=torch_f64)
    mean = m.posterior_mean(t, x)
    preds = {"x_1": mean, "epsilon": (x - path.alpha(t) * mean) / path.sigma(t),
             "velocity": m.vector_field(t, x), "score": m.score(t, x)}
    for src in PREDICTIONS:
        for tgt in PREDICTIONS:
            out = path.convert(t, x, preds[src], src, tgt)
            assert torch.allclose(out, preds[tgt], atol=1e-11, rtol=1e-11), (src, tgt)


def test_conversion_is_exact_for_conditional_targets():
    # the conditional targets of one (x_0, x_1) pair are the coefficients of prediction_coefficients
    path = LinearPath(0.1)
    x_0, g = _points(50, seed=3)
    x_1 = torch.randn(50, 2, generator=g, dtype=torch_f64)
    t = torch.rand(50, 1, generator=g, dtype=torch_f64) * 0.99
    x = path.flow(t, x_0, x_1)
    v = path.target(t, x_0, x_1)
    assert torch.allclose(path.convert(t, x, v, "velocity", "x_1"), x_1, atol=1e-12)
    assert torch.allclose(path.convert(t, x, x_1, "x_1", "epsilon"), x_0, atol=1e-12)
    assert torch.allclose(path.convert(t, x, x_0, "epsilon", "score"), -x_0 / path.sigma(t), atol=1e-12)


def test_conversion_singularities_raise():
    path, x = LinearPath(0.0), torch.zeros(3, 2)
    with pytest.raises(ValueError, match="t = 1"):
        path.convert(1.0, x, x, "x_1", "velocity")
    with pytest.raises(ValueError, match="an 'epsilon' prediction into an 'x_1' one at t = 0"):
        path.convert(0.0, x, x, "epsilon", "x_1")
    with pytest.raises(ValueError, match="t = 0"):
        path.convert(0.0, x, x, "score", "velocity")
    with pytest.raises(ValueError, match="t = 1"):
        path.convert(1.0, x, x, "velocity", "score")
    # where it is regular: the velocity at t = 1 gives x_1 = x, at t = 0 the epsilon prediction of x is x
    assert torch.equal(path.convert(1.0, x + 1, x, "velocity", "x_1"), x + 1)
    with pytest.raises(ValueError, match="source"):
        path.convert(0.5, x, x, "noise", "x_1")
    with pytest.raises(ValueError, match="target"):
        path.convert(0.5, x, x, "x_1", "v")
    with pytest.raises(ValueError, match="value"):
        path.convert(0.5, x, torch.zeros(3, 3), "x_1", "score")
    with pytest.raises(ValueError, match="t must lie"):
        path.convert(1.5, x, x, "x_1", "score")
    with pytest.raises(ValueError, match="value"):
        path.convert(0.5, x, x.clone().fill_(float("nan")), "x_1", "score")


def test_ornstein_uhlenbeck_stationary_variance():
    # dX = -theta X dt + s dW has the stationary variance s^2 / (2 theta); Euler-Maruyama with step h has the
    # stationary variance s^2 h / (1 - (1 - theta h)^2) = s^2 / (theta (2 - theta h)), which it must match
    theta, s, n = 20.0, 1.5, 20_000
    x_0 = torch.zeros(n, 1, dtype=torch_f64)
    g = torch.Generator().manual_seed(4)
    K = 400
    x = euler_maruyama(lambda t, x: -theta * x, x_0, s, K, generator=g)
    h = 1 / K
    var_em = s ** 2 / (theta * (2 - theta * h))
    var_exact = s ** 2 / (2 * theta)
    se = var_em * math.sqrt(2 / n)
    assert abs(x.var().item() - var_em) < 4 * se
    assert abs(x.var().item() - var_exact) < 4 * se + abs(var_em - var_exact)
    # a wrong noise scaling (h instead of sqrt h) fails by far
    x_bad = torch.zeros(n, 1, dtype=torch_f64)
    for k in range(K):
        x_bad = x_bad - h * theta * x_bad + s * h * torch.randn(n, 1, generator=g, dtype=torch_f64)
    assert abs(x_bad.var().item() - var_exact) > 10 * se


def test_zero_noise_is_euler():
    m = EmpiricalMarginal(LinearPath(0.1), _points(10, seed=5)[0])
    x_0 = _points(100, seed=6)[0]
    ode = fmlib.solve(m, x_0, n_steps=25, method="euler")
    sde = euler_maruyama(m, x_0, 0.0, 25)
    assert torch.allclose(ode, sde, atol=1e-13, rtol=0)


def test_against_torchsde_on_the_same_brownian_path():
    torchsde = pytest.importorskip("torchsde")
    theta, n, K = 2.0, 64, 50

    def g_fn(t):
        return 0.5 + t

    class SDE(torch.nn.Module):
        noise_type, sde_type = "diagonal", "ito"

        def f(self, t, y):
            return -theta * y + torch.sin(3 * t) * torch.ones_like(y)

        def g(self, t, y):
            return g_fn(t) * torch.ones_like(y)

    y0 = torch.full((n, 2), 0.3, dtype=torch_f64)
    ts = torch.tensor([0.0, 1.0], dtype=torch_f64)
    bm = torchsde.BrownianInterval(t0=0.0, t1=1.0, size=(n, 2), dtype=torch_f64, entropy=7,
                                     levy_area_approximation="space-time")
    ref = torchsde.sdeint(SDE(), y0, ts, bm=bm, method="euler", dt=1 / K)[-1]
    grid = [0.0]  # torchsde's grid: t_{k+1} = t_k + dt (a Brownian bridge feels differences of 1e-17)
    for _ in range(K):
        grid.append(grid[-1] + 1 / K)
    noise = torch.stack([bm(grid[k], grid[k + 1]) for k in range(K)]) * math.sqrt(K)
    ours = euler_maruyama(lambda t, x: -theta * x + torch.sin(3 * t) * torch.ones_like(x), y0,
                          lambda t: 0.5 + t, K, noise=noise)
    assert torch.allclose(ours, ref, atol=1e-10, rtol=0)
    # and the strong error against torchsde's order-1.5 method on a fine grid shrinks with the step
    fine = torchsde.sdeint(SDE(), y0, ts, bm=bm, method="srk", dt=1 / 1000)[-1]
    errs = []
    for K2 in (25, 100, 400):
        grid = torch.linspace(0, 1, K2 + 1, dtype=torch_f64)
        nz = torch.stack([bm(grid[k], grid[k + 1]) for k in range(K2)]) * math.sqrt(K2)
        x = euler_maruyama(lambda t, x: -theta * x + torch.sin(3 * t) * torch.ones_like(x), y0,
                           lambda t: 0.5 + t, K2, noise=nz)
        errs.append((x - fine).abs().mean().item())
    assert errs[0] > errs[1] > errs[2]


def test_sde_drift_keeps_the_marginals_fokker_planck():
    # d/dt p = -div(p b) + g^2/2 Lap p for the exact marginal and b = u + g^2/2 score, at rounding level
    path = LinearPath(0.1)
    m = EmpiricalMarginal(path, _points(8, seed=8)[0])
    x, g = _points(40, seed=9)
    t = (0.1 + 0.8 * torch.rand(40, generator=g, dtype=torch_f64)).unsqueeze(1)
    gval = 0.7
    drift = sde_drift(m, path, gval)
    t = t.requires_grad_(True)
    x = x.requires_grad_(True)
    p = m.log_prob(t, x).exp()
    dp_dt, grad_p = torch.autograd.grad(p.sum(), (t, x), create_graph=True)
    lap = sum(torch.autograd.grad(grad_p[:, i].sum(), x, retain_graph=True)[0][:, i] for i in range(2))
    flux = p.unsqueeze(1) * torch.cat([drift(t[i:i + 1], x[i:i + 1]) for i in range(40)])
    div = sum(torch.autograd.grad(flux[:, i].sum(), x, retain_graph=True)[0][:, i] for i in range(2))
    res = dp_dt.squeeze(1) + div - 0.5 * gval ** 2 * lap
    assert res.abs().max() < 1e-10 * dp_dt.abs().max()


def test_bad_input():
    x = torch.zeros(4, 2)
    b = lambda t, x: -x  # noqa: E731
    with pytest.raises(ValueError, match="g must"):
        euler_maruyama(b, x, -1.0, 10)
    with pytest.raises(ValueError, match="g must"):
        euler_maruyama(b, x, "1", 10)
    with pytest.raises(ValueError, match="n_steps"):
        euler_maruyama(b, x, 1.0, 0)
    with pytest.raises(ValueError, match="b must"):
        euler_maruyama(None, x, 1.0, 10)
    with pytest.raises(ValueError, match="x_0"):
        euler_maruyama(b, torch.zeros(4), 1.0, 10)
    with pytest.raises(ValueError, match="t_start"):
        euler_maruyama(b, x, 1.0, 10, t_start=0.5, t_end=0.5)
    with pytest.raises(ValueError, match="t_end"):
        euler_maruyama(b, x, 1.0, 10, t_end=1.5)
    with pytest.raises(ValueError, match="noise"):
        euler_maruyama(b, x, 1.0, 10, noise=torch.zeros(9, 4, 2))
    with pytest.raises(ValueError, match="generator"):
        euler_maruyama(b, x, 1.0, 10, generator=0)
    with pytest.raises(ValueError, match="not finite"):
        euler_maruyama(lambda t, x: x * float("inf"), x + 1, 0.0, 3)
    with pytest.raises(ValueError, match="path"):
        sde_drift(b, "linear", 1.0)
    with pytest.raises(ValueError, match="source"):
        sde_drift(b, LinearPath(), 1.0, source="v")
    with pytest.raises(ValueError, match="v must"):
        sde_drift(3, LinearPath(), 1.0)
    with pytest.raises(ValueError, match="g must"):
        sde_drift(b, LinearPath(), float("nan"))
    x_in = torch.ones(4, 2)
    before = x_in.clone()
    euler_maruyama(b, x_in, 1.0, 5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x_in, before)  # the user's tensor is not modified
