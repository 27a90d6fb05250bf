"""fmlib.marginal: the exact marginal path and vector field of a Gaussian path over an empirical data set."""

import math

import pytest
import torch

from fmlib import LinearPath, VPDiffusionPath, sample_annulus, solve
from fmlib.marginal import EmpiricalMarginal

PATHS = [LinearPath(0.0), LinearPath(1e-2), VPDiffusionPath()]


def _data(n=40, d=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 2 * torch.randn(n, d, generator=g, dtype=torch.float64)


def _queries(m=25, d=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, d, generator=g, dtype=torch.float64), torch.rand(m, generator=g, dtype=torch.float64) * 0.99


@pytest.mark.parametrize("path", PATHS, ids=repr)
def test_weights_sum_to_one_and_are_bayes(path):
    data, (x, t) = _data(), _queries()
    marg = EmpiricalMarginal(path, data)
    for tt in (0.3, t):
        w = marg.posterior_weights(tt, x)
        assert w.shape == (25, 40) and bool((w >= 0).all())
        torch.testing.assert_close(w.sum(dim=1), torch.ones(25, dtype=torch.float64))
        # Bayes: w_i = p_t(x | x_1^i) / sum_j p_t(x | x_1^j), from the path's own conditional log-density
        lp = torch.stack([path.conditional_log_prob(tt, x, data[i].expand_as(x)) for i in range(40)], dim=1)
        torch.testing.assert_close(w, torch.softmax(lp, dim=1))
        # the marginal density is the mixture average of the conditionals
        torch.testing.assert_close(marg.log_prob(tt, x), torch.logsumexp(lp, dim=1) - math.log(40))


@pytest.mark.parametrize("path", PATHS, ids=repr)
def test_field_is_weighted_average_of_conditional_fields(path):
    data, (x, t) = _data(), _queries()
    marg = EmpiricalMarginal(path, data)
    w = marg.posterior_weights(t, x)
    u_cond = torch.stack([path.conditional_vector_field(t, x, data[i].expand_as(x)) for i in range(40)], dim=1)
    torch.testing.assert_close(marg.vector_field(t, x), (w.unsqueeze(2) * u_cond).sum(dim=1))
    torch.testing.assert_close(marg(t, x), marg.vector_field(t, x))


@pytest.mark.parametrize("path", PATHS, ids=repr)
def test_one_data_point_gives_the_conditional_path(path):
    data, (x, t) = _data(n=1), _queries()
    marg = EmpiricalMarginal(path, data)
    x_1 = data.expand_as(x)
    torch.testing.assert_close(marg.vector_field(t, x), path.conditional_vector_field(t, x, x_1))
    torch.testing.assert_close(marg.log_prob(t, x), path.conditional_log_prob(t, x, x_1))
    torch.testing.assert_close(marg.posterior_weights(t, x), torch.ones(25, 1, dtype=torch.float64))


@pytest.mark.parametrize("t", [0.0, 0.5, 0.9])
def test_log_prob_integrates_to_one_in_2d(t):
    data = sample_annulus(30, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    marg = EmpiricalMarginal(LinearPath(0.05), data)
    # midpoint rule on [-7, 7]^2; sigma_t >= 0.145 at t <= 0.9, and for a Gaussian the midpoint rule's error is
    # exponentially small once h is well below sigma (h / sigma <= 0.35 here)
    h = 0.05
    g = torch.arange(-7, 7, h, dtype=torch.float64) + h / 2
    xx, yy = torch.meshgrid(g, g, indexing="xy")
    grid = torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)
    mass = marg.log_prob(t, grid).exp().sum().item() * h * h
    assert abs(mass - 1) < 1e-3


@pytest.mark.parametrize("path", PATHS, ids=repr)
def test_chunked_equals_unchunked(path):
    data, (x, t) = _data(n=50), _queries(m=37)
    full = EmpiricalMarginal(path, data, chunk_size=10_000)
    for cs in (3, 16):
        small = EmpiricalMarginal(path, data, chunk_size=cs)
        for tt in (0.7, t):
            torch.testing.assert_close(small.vector_field(tt, x), full.vector_field(tt, x))
            torch.testing.assert_close(small.log_prob(tt, x), full.log_prob(tt, x))
            torch.testing.assert_close(small.posterior_weights(tt, x), full.posterior_weights(tt, x))


def test_one_time_and_per_point_times_agree():
    data, (x, _) = _data(), _queries()
    marg = EmpiricalMarginal(LinearPath(1e-2), data)
    t = torch.full((25,), 0.95, dtype=torch.float64)
    torch.testing.assert_close(marg.vector_field(t, x), marg.vector_field(0.95, x))
    torch.testing.assert_close(marg.log_prob(t, x), marg.log_prob(0.95, x))


def test_far_points_do_not_underflow():
    # at small sigma_t every conditional density underflows to 0 far from the data; log-sum-exp keeps it finite
    data = _data()
    marg = EmpiricalMarginal(LinearPath(1e-3), data)
    x = torch.full((3, 2), 50.0, dtype=torch.float64)
    assert bool(torch.isfinite(marg.log_prob(0.999, x)).all())
    assert bool(torch.isfinite(marg.vector_field(0.999, x)).all())
    # the nearest data point takes all the weight
    w = marg.posterior_weights(0.999, x)
    nearest = torch.cdist(x, 0.999 * data).argmin(dim=1)
    torch.testing.assert_close(w.argmax(dim=1), nearest)
    assert float(w.max(dim=1).values.min()) > 0.999


def test_autograd_through_t_and_x():
    data, (x, t) = _data(), _queries()
    marg = EmpiricalMarginal(LinearPath(0.1), data, chunk_size=8)
    t = t.clone().requires_grad_(True)
    x = x.clone().requires_grad_(True)
    lp = marg.log_prob(t, x)
    g_t, g_x = torch.autograd.grad(lp.sum(), (t, x))
    # finite differences in t and in x
    eps = 1e-6
    with torch.no_grad():
        fd_t = (marg.log_prob(t + eps, x) - marg.log_prob(t - eps, x)) / (2 * eps)
        e = torch.zeros_like(x)
        e[:, 0] = eps
        fd_x = (marg.log_prob(t, x + e) - marg.log_prob(t, x - e)) / (2 * eps)
    torch.testing.assert_close(g_t, fd_t, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g_x[:, 0], fd_x, rtol=1e-6, atol=1e-6)


def test_solve_integrates_the_marginal_field():
    # with one data point the exact marginal flow is the conditional flow psi_t(x_0 | x_1), linear in t: Euler is exact
    x_1 = torch.tensor([[2.0, -1.0]], dtype=torch.float64)
    path = LinearPath(0.1)
    marg = EmpiricalMarginal(path, x_1)
    x_0 = torch.randn(100, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    out = solve(marg, x_0, n_steps=10, method="euler")
    torch.testing.assert_close(out, path.flow(1.0, x_0, x_1.expand_as(x_0)))


def test_float32_points_with_float64_data_promote():
    marg = EmpiricalMarginal(LinearPath(0.1), _data())
    x = torch.randn(4, 2)
    assert marg.vector_field(0.5, x).dtype == torch.float64


def test_bad_input_raises_value_error_naming_the_argument():
    data = _data()
    with pytest.raises(ValueError, match="path"):
        EmpiricalMarginal("linear", data)
    with pytest.raises(ValueError, match="data"):
        EmpiricalMarginal(LinearPath(), [[0.0, 1.0]])
    with pytest.raises(ValueError, match="data"):
        EmpiricalMarginal(LinearPath(), torch.zeros(5, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="data"):
        EmpiricalMarginal(LinearPath(), torch.zeros(0, 2))
    with pytest.raises(ValueError, match="chunk_size"):
        EmpiricalMarginal(LinearPath(), data, chunk_size=0)
    marg = EmpiricalMarginal(LinearPath(0.0), data)
    x = torch.zeros(3, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="x"):
        marg.vector_field(0.5, torch.zeros(3, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="x"):
        marg.log_prob(0.5, torch.tensor([[float("nan"), 0.0]]))
    with pytest.raises(ValueError, match="t"):
        marg.vector_field(1.5, x)
    with pytest.raises(ValueError, match="t"):
        marg.vector_field(torch.zeros(4), x)
    with pytest.raises(ValueError, match="sigma_t = 0"):
        marg.vector_field(1.0, x)  # sigma_min = 0: no density at t = 1
    with pytest.raises(ValueError, match="sigma_t = 0"):
        EmpiricalMarginal(VPDiffusionPath(), data).log_prob(1.0, x)
