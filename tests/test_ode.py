"""Tests of fmlib.solve (every method), fmlib.log_likelihood and fmlib.divergence against flows with closed-form
solutions, against an exact marginal density, and against torchdiffeq and Meta's flow_matching library."""

import math

import pytest
import torch

import fmlib
from fmlib import EvaluationCounter, divergence, log_likelihood, solve
from fmlib.ode import standard_normal_log_prob
from fmlib.sampler import ADAPTIVE_METHODS, FIXED_METHODS

D64 = torch.float64


def linear_field(a):
    """v(t, x) = a x: flow x_t = e^{a t} x_0, divergence d a."""
    return lambda t, x: a * x


def points(n=64, d=3, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=D64)


# ------------------------------------------------------------------------------------------- solve


@pytest.mark.parametrize("method,n_steps,tol", [("euler", 2000, 2e-3), ("midpoint", 200, 1e-4), ("rk4", 50, 1e-7),
                                                ("dopri5", None, 1e-6), ("dopri8", None, 1e-6),
                                                ("bosh3", None, 1e-5)])
def test_linear_flow_reaches_exp_a_x0(method, n_steps, tol):
    a, x_0 = 0.7, points()
    v = EvaluationCounter(linear_field(a))
    x_1 = solve(v, x_0, n_steps, method, rtol=1e-8, atol=1e-8)
    assert torch.allclose(x_1, math.exp(a) * x_0, atol=tol, rtol=0)
    if method in FIXED_METHODS:  # a fixed-step solve costs exactly n_steps * stages evaluations
        assert v.nfe == n_steps * fmlib.STAGES[method]
    else:
        assert v.nfe > 0


@pytest.mark.parametrize("method", ["euler", "midpoint", "rk4", "dopri5"])
def test_cubic_in_time_reaches_x0_plus_1(method):
    """dx/dt = 3 t^2 gives x(1) = x(0) + 1; midpoint and RK4 are exact for it up to their order in t."""
    v = lambda t, x: 3 * t**2 * torch.ones_like(x)
    x_0 = points(8, 2)
    n = 10 if method != "dopri5" else None
    x_1 = solve(v, x_0, n, method, rtol=1e-10, atol=1e-10)
    if method == "euler":  # left Riemann sum of 3t^2: (n - 1)(2n - 1) / (2 n^2)
        assert torch.allclose(x_1, x_0 + 0.855, atol=1e-12)
    elif method == "midpoint":  # midpoint rule: 1 - 1/(4 n^2)
        assert torch.allclose(x_1, x_0 + 1 - 1 / 400, atol=1e-12)
    else:  # RK4 is Simpson's rule here, exact for quadratics; dopri5 too
        assert torch.allclose(x_1, x_0 + 1, atol=1e-9)


@pytest.mark.parametrize("method,ratio", [("euler", 2), ("midpoint", 4), ("rk4", 16)])
def test_convergence_order(method, ratio):
    """Halving the step divides the global error by 2^order."""
    a, x_0 = 1.0, points(4, 2)
    err = [(solve(linear_field(a), x_0, n, method) - math.e * x_0).abs().max().item() for n in (40, 80)]
    assert err[0] / err[1] == pytest.approx(ratio, rel=0.05)


def test_backward_solve_inverts_forward():
    a, x_0 = -0.4, points()
    x_1 = solve(linear_field(a), x_0, 20, "rk4")
    back = solve(linear_field(a), x_1, 20, "rk4", t_start=1.0, t_end=0.0)
    assert torch.allclose(back, x_0, atol=1e-6)
    back = solve(linear_field(a), x_1, method="dopri5", rtol=1e-9, atol=1e-9, t_start=1.0, t_end=0.0)
    assert torch.allclose(back, x_0, atol=1e-6)


def test_trajectory_ends_at_the_solution():
    fmlib.seed_everything(0)
    model = fmlib.MLPVectorField(2, width=16, depth=2).double()
    x_0 = points(32, 2)
    for method in FIXED_METHODS:
        x_1, traj = solve(model, x_0, 7, method, return_trajectory=True)
        assert traj.shape == (8, 32, 2) and torch.equal(traj[0], x_0) and torch.equal(traj[-1], x_1)
        assert torch.equal(x_1, solve(model, x_0, 7, method))


# -------------------------------------------------------------------------------------- likelihoods


@pytest.mark.parametrize("method,n_steps,tol", [("rk4", 40, 1e-6), ("dopri5", None, 1e-6), ("midpoint", 400, 1e-5)])
@pytest.mark.parametrize("div", ["exact", "hutchinson"])
def test_linear_field_log_likelihood(method, n_steps, tol, div):
    """v = a x: x_1 = e^a x_0 and log p_1(x) = log p_0(e^{-a} x) - d a. Rademacher probes are exact here:
    eps^T (a I) eps = a |eps|^2 = a d."""
    a, x_1 = 0.5, points(64, 3)
    d = x_1.shape[1]
    log_p = log_likelihood(linear_field(a), x_1, method, n_steps=n_steps, rtol=1e-9, atol=1e-9, divergence=div)
    expected = standard_normal_log_prob(math.exp(-a) * x_1) - d * a
    assert torch.allclose(log_p, expected, atol=tol)


def test_constant_field_log_likelihood():
    """v = c: the flow is a translation, log p_1(x) = log p_0(x - c)."""
    c = torch.tensor([1.5, -2.0], dtype=D64)
    x_1 = points(50, 2)
    for method, n in (("euler", 3), ("dopri5", None)):
        log_p = log_likelihood(lambda t, x: c.expand_as(x), x_1, method, n_steps=n)
        assert torch.allclose(log_p, standard_normal_log_prob(x_1 - c), atol=1e-10)


def test_nonnormal_source_density():
    """log_p0 is pluggable: with p_0 = N(0, 4 I) and v = a x, log p_1(x) = log p_0(e^{-a} x) - d a."""
    a, x_1 = 0.3, points(16, 2)
    log_p0 = lambda x: standard_normal_log_prob(x / 2) - 2 * math.log(2)
    log_p = log_likelihood(linear_field(a), x_1, "rk4", n_steps=50, log_p0=log_p0)
    assert torch.allclose(log_p, log_p0(math.exp(-a) * x_1) - 2 * a, atol=1e-7)


def test_log_likelihood_of_the_exact_marginal_field():
    """The flow of the exact marginal field of a small data set (sigma_min = 0.1) carries N(0, I) to the Gaussian
    mixture whose log-density EmpiricalMarginal knows in closed form: the likelihood solved backwards must match it.
    A sign error in the divergence term, or the wrong end of the solve, misses by nats."""
    path = fmlib.LinearPath(0.1)
    data = torch.tensor([[2.0, 0.0], [-1.0, 1.5], [0.5, -2.0]], dtype=D64)
    marg = fmlib.EmpiricalMarginal(path, data)
    x_1 = solve(marg, points(60, 2, seed=4), 100, "rk4")  # points where p_1 has its mass
    exact = marg.log_prob(1.0, x_1)
    counted = EvaluationCounter(marg)
    log_p = log_likelihood(counted, x_1, "dopri5", rtol=1e-7, atol=1e-7)
    assert (log_p - exact).abs().max().item() < 1e-4
    assert counted.nfe > 0
    # a fixed-step solve with the divergence costs exactly n_steps * stages evaluations of v
    counted = EvaluationCounter(marg)
    log_likelihood(counted, x_1, "midpoint", n_steps=5)
    assert counted.nfe == 10


def test_exact_divergence_of_mlp_matches_jacobian_trace():
    fmlib.seed_everything(2)
    model = fmlib.MLPVectorField(3, width=16, depth=2).double()
    x = points(5, 3)
    div = divergence(model, 0.3, x)
    for i in range(5):
        jac = torch.autograd.functional.jacobian(lambda y: model(0.3, y.unsqueeze(0)).squeeze(0), x[i])
        assert div[i].item() == pytest.approx(torch.trace(jac).item(), abs=1e-12)


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
@pytest.mark.parametrize("n_probes", [1, 4])
def test_hutchinson_mean_and_variance(probe, n_probes):
    """For v = A x, eps^T A eps has mean tr(A) and variance (1/2)||A + A^T||_F^2 - 2 sum_i A_ii^2 (Rademacher)
    or (1/2)||A + A^T||_F^2 (Gaussian), divided by the number of probes."""
    A = torch.tensor([[1.0, 2.0, 0.0], [-1.0, 0.5, 3.0], [0.5, 1.0, -2.0]], dtype=D64)
    n = 200_000
    x = torch.randn(n, 3, dtype=D64, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(6)
    est = divergence(lambda t, y: y @ A.T, 0.5, x, method="hutchinson", probe=probe, n_probes=n_probes,
                     generator=g)
    var = 0.5 * ((A + A.T) ** 2).sum().item() - (2 * (torch.diagonal(A) ** 2).sum().item()
                                                 if probe == "rademacher" else 0.0)
    var /= n_probes
    # mean: within 4 standard errors; variance: within 3 % (its standard error here is below 0.7 %)
    assert abs(est.mean().item() - torch.trace(A).item()) < 4 * math.sqrt(var / n)
    assert est.var().item() == pytest.approx(var, rel=0.03)


# --------------------------------------------------------------------------------- times in [0, 1]


@pytest.mark.parametrize("method", ["euler", "midpoint", "rk4"] + list(ADAPTIVE_METHODS))
def test_requested_times_stay_in_unit_interval(method):
    """Every t at which fmlib's solvers evaluate v lies in [0, 1] -- forward, backward, and for a near-constant field
    whose initial step-size guess of torchdiffeq would be far larger than the interval."""
    seen = []

    def v(t, x):
        seen.append(float(t))
        return 1e-3 * torch.ones_like(x) + 0.1 * t * x

    x = points(8, 2) * 100
    n = 3 if method in FIXED_METHODS else None
    solve(v, x, n, method)
    log_likelihood(v, x, method, n_steps=n)
    log_likelihood(v, x, method, n_steps=n, divergence="hutchinson")
    assert min(seen) >= 0.0 and max(seen) <= 1.0
    assert min(seen) == 0.0 and max(seen) == 1.0  # and the solves do reach both ends


# ------------------------------------------------------- fmlib's network inside other libraries' solvers


@pytest.mark.parametrize("backwards", [False, True])
def test_network_works_inside_torchdiffeq(backwards):
    """An MLPVectorField goes unchanged into torchdiffeq's odeint with dopri5, which evaluates it just outside the
    interval; the result agrees with fmlib.solve."""
    odeint = pytest.importorskip("torchdiffeq").odeint
    fmlib.seed_everything(0)
    model = fmlib.MLPVectorField(2, width=16, depth=2, time_frequencies=2).double()
    seen = []
    x = points(64, 2, seed=9)
    ts = torch.tensor([1.0, 0.0] if backwards else [0.0, 1.0], dtype=D64)
    with torch.no_grad():
        out = odeint(lambda t, y: (seen.append(float(t)), model(t, y))[1], x, ts, method="dopri5", rtol=1e-8,
                     atol=1e-8)[-1]
    mine = solve(model, x, method="dopri5", rtol=1e-8, atol=1e-8, t_start=float(ts[0]), t_end=float(ts[1]))
    assert torch.allclose(out, mine, atol=1e-6)
    assert min(seen) < 0.0 or max(seen) > 1.0, "torchdiffeq stayed inside [0, 1]: the test tests nothing"


@pytest.mark.parametrize("backwards", [False, True])
def test_network_works_inside_flow_matching(backwards):
    """An MLPVectorField goes into flow_matching's ODESolver (its call order is model(x, t)) in both directions."""
    fm = pytest.importorskip("flow_matching.solver")
    fmlib.seed_everything(0)
    model = fmlib.MLPVectorField(2, width=16, depth=2).double()
    solver = fm.ODESolver(velocity_model=lambda x, t: model(t, x))
    x = points(64, 2, seed=10)
    grid = torch.tensor([1.0, 0.0] if backwards else [0.0, 1.0], dtype=D64)
    theirs = solver.sample(x, step_size=None, method="dopri5", atol=1e-9, rtol=1e-9, time_grid=grid)
    mine = solve(model, x, method="dopri5", rtol=1e-9, atol=1e-9, t_start=float(grid[0]), t_end=float(grid[1]))
    assert torch.allclose(theirs, mine, atol=1e-7)


# ------------------------------------------------------------------- cross-check with Meta's library


@pytest.fixture
def meta_setup():
    fm = pytest.importorskip("flow_matching.solver")
    fmlib.seed_everything(0)
    model = fmlib.MLPVectorField(2, width=32, depth=3, activation="silu").double()
    solver = fm.ODESolver(velocity_model=lambda x, t: model(t, x))
    return model, solver


@pytest.mark.parametrize("method", ["euler", "midpoint"])
def test_matches_flow_matching_fixed_step(meta_setup, method):
    """Same network, same method, same grid t_k = k/n -> the same samples and log-likelihoods.
    (torchdiffeq's "rk4" is the 3/8 variant of Runge-Kutta, not the classical RK4 of fmlib, so it is not compared.)"""
    model, solver = meta_setup
    n = 8
    x_0 = points(200, 2, seed=7)
    meta_x1 = solver.sample(x_0, step_size=None, method=method, time_grid=torch.linspace(0, 1, n + 1, dtype=D64))
    assert torch.allclose(solve(model, x_0, n, method), meta_x1, atol=1e-12)

    meta_x0, meta_lp = solver.compute_likelihood(meta_x1, standard_normal_log_prob, step_size=None, method=method,
                                                 time_grid=torch.linspace(1, 0, n + 1, dtype=D64),
                                                 exact_divergence=True)
    assert torch.allclose(solve(model, meta_x1, n, method, t_start=1.0, t_end=0.0), meta_x0, atol=1e-12)
    assert torch.allclose(log_likelihood(model, meta_x1, method, n_steps=n), meta_lp, atol=1e-12)

    # Hutchinson with the same Rademacher probe (flow_matching draws it as sign(randn_like(x_1)), in the default
    # dtype float32 whatever x_1's dtype, so this part runs in float32)
    model32 = model.float()
    solver32 = type(solver)(velocity_model=lambda x, t: model32(t, x))
    x32 = meta_x1.float()
    torch.manual_seed(11)
    _, meta_lp_h = solver32.compute_likelihood(x32, standard_normal_log_prob, step_size=None, method=method,
                                               time_grid=torch.linspace(1, 0, n + 1), exact_divergence=False)
    torch.manual_seed(11)
    z = ((torch.randn_like(x32) < 0) * 2.0 - 1.0).unsqueeze(0)
    log_p_h = log_likelihood(model32, x32, method, n_steps=n, divergence="hutchinson", probes=z)
    assert torch.allclose(log_p_h, meta_lp_h, atol=1e-4)  # float32 round-off of the log-densities (about -5)


def test_matches_flow_matching_dopri5(meta_setup):
    """dopri5 through torchdiffeq on both sides; the step sequences differ slightly (fmlib ends its last step at
    t = 1 exactly, flow_matching overshoots and interpolates), so they agree to the solver tolerance."""
    model, solver = meta_setup
    x_0 = points(200, 2, seed=8)
    meta_x1 = solver.sample(x_0, step_size=None, method="dopri5", atol=1e-9, rtol=1e-9,
                            time_grid=torch.tensor([0.0, 1.0], dtype=D64))
    assert torch.allclose(solve(model, x_0, method="dopri5", rtol=1e-9, atol=1e-9), meta_x1, atol=1e-7)
    _, meta_lp = solver.compute_likelihood(meta_x1, standard_normal_log_prob, step_size=None, method="dopri5",
                                           atol=1e-9, rtol=1e-9, time_grid=torch.tensor([1.0, 0.0], dtype=D64),
                                           exact_divergence=True)
    assert torch.allclose(log_likelihood(model, meta_x1, "dopri5", rtol=1e-9, atol=1e-9), meta_lp, atol=1e-7)


# ------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("kwargs,name", [
    (dict(method="heun"), "method"),
    (dict(method="rk4", n_steps=0), "n_steps"),
    (dict(method="dopri5", n_steps=10), "n_steps"),
    (dict(rtol=0.0), "rtol"),
    (dict(atol=-1e-3), "atol"),
    (dict(t_start=-0.1), "t_start"),
    (dict(t_end=1.5), "t_end"),
    (dict(method="dopri5", return_trajectory=True), "return_trajectory"),
])
def test_solve_bad_input(kwargs, name):
    with pytest.raises(ValueError, match=name):
        solve(linear_field(1.0), points(4, 2), **kwargs)


@pytest.mark.parametrize("kwargs,name", [
    (dict(divergence="jacobian"), "divergence"),
    (dict(divergence="hutchinson", n_probes=0), "n_probes"),
    (dict(divergence="hutchinson", probe="uniform"), "probe"),
    (dict(divergence="hutchinson", probes=torch.ones(1, 3, 2)), "probes"),
    (dict(probes=torch.ones(1, 4, 2)), "probes"),
    (dict(method="midpoint", n_steps=0), "n_steps"),
])
def test_log_likelihood_bad_input(kwargs, name):
    with pytest.raises(ValueError, match=name):
        log_likelihood(linear_field(1.0), points(4, 2), **kwargs)


def test_bad_points_and_fields():
    with pytest.raises(ValueError, match="x_1"):
        log_likelihood(linear_field(1.0), torch.ones(4))
    with pytest.raises(ValueError, match="x_0"):
        solve(linear_field(1.0), torch.full((3, 2), float("nan")))
    with pytest.raises(ValueError, match="x"):
        solve(linear_field(1.0), [[0.0, 1.0]])
    with pytest.raises(ValueError, match="v"):
        solve("not a field", points(4, 2))
    with pytest.raises(ValueError, match="v"):
        solve(lambda t, x: x[:, :1], points(4, 2), 2, "euler")
    with pytest.raises(ValueError, match="v"):
        log_likelihood(lambda t, x: x[:, :1], points(4, 2), "euler", n_steps=2)
    with pytest.raises(ValueError, match="method"):
        divergence(linear_field(1.0), 0.5, points(4, 2), method="trace")
