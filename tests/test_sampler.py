"""fmlib.sampler: exact solutions, convergence orders, evaluation counts, grid, shapes, memory, bad input."""

import math

import numpy as np
import pytest
import torch

import fmlib
from fmlib import STAGES, solve

ORDERS = {"euler": 1, "midpoint": 2, "rk4": 4}


def v_cubic(t, x):  # dx/dt = 3 t^2: x(1) = x(0) + 1
    return 3 * torch.as_tensor(t, dtype=x.dtype) ** 2 * torch.ones_like(x)


def v_exp(t, x):  # dx/dt = x: x(1) = e x(0)
    return x


@pytest.mark.parametrize("method", list(ORDERS))
def test_cubic_reaches_one(method):
    x_0 = torch.zeros(3, 1, dtype=torch.float64)
    x_1 = solve(v_cubic, x_0, n_steps=400, method=method)
    assert abs(x_1[0, 0].item() - 1.0) < 2e-2 / 400 ** (ORDERS[method] - 1) + 1e-12


def test_euler_on_cubic_is_left_riemann_sum():
    """Euler on the grid t_k = k/n with step 1/n: x(1) = sum_k 3 (k/n)^2 / n = (n-1)(2n-1)/(2n^2)."""
    for n in (1, 7, 50):
        got = solve(v_cubic, torch.zeros(1, 1, dtype=torch.float64), n_steps=n).item()
        assert got == pytest.approx((n - 1) * (2 * n - 1) / (2 * n**2), abs=1e-12)


@pytest.mark.parametrize("method", list(ORDERS))
def test_convergence_order_on_exponential(method):
    """Error of dx/dt = x at t = 1 falls like h^p: the slope of log error vs log h is the method's order."""
    x_0 = torch.ones(1, 1, dtype=torch.float64)
    ns = [8, 16, 32, 64]
    errs = [abs(solve(v_exp, x_0, n_steps=n, method=method).item() - math.e) for n in ns]
    slope = np.polyfit(np.log([1 / n for n in ns]), np.log(errs), 1)[0]
    assert abs(slope - ORDERS[method]) < 0.15, (method, slope, errs)


@pytest.mark.parametrize("method", list(ORDERS))
@pytest.mark.parametrize("n_steps", [1, 3, 10])
def test_exact_number_of_evaluations_and_grid(method, n_steps):
    calls = []

    def v(t, x):
        calls.append(float(t))
        return -x

    solve(v, torch.randn(5, 2), n_steps=n_steps, method=method)
    assert len(calls) == n_steps * STAGES[method]
    # every step starts at t_k = k / n; all times stay in [0, 1]
    starts = calls[:: STAGES[method]]
    assert starts == pytest.approx([k / n_steps for k in range(n_steps)], abs=1e-7)
    assert min(calls) >= 0.0 and max(calls) <= 1.0 + 1e-7


def test_evaluations_per_chunk():
    calls = []

    def v(t, x):
        calls.append(x.shape[0])
        return x

    solve(v, torch.randn(10, 2), n_steps=4, method="midpoint", chunk_size=4)
    assert len(calls) == 3 * 4 * 2 and sorted(set(calls)) == [2, 4]


@pytest.mark.parametrize("d", [1, 2, 5])
def test_shapes_and_trajectory(d):
    x_0 = torch.randn(6, d)
    x_1, traj = solve(v_exp, x_0, n_steps=5, method="rk4", return_trajectory=True)
    assert x_1.shape == (6, d) and traj.shape == (6, 6, d)
    torch.testing.assert_close(traj[0], x_0)
    torch.testing.assert_close(traj[-1], x_1)


def test_chunking_does_not_change_results():
    model = fmlib.MLPVectorField(2, width=16, depth=2)
    x_0 = torch.randn(1000, 2, generator=torch.Generator().manual_seed(0))
    a = solve(model, x_0, n_steps=7, method="rk4")
    b, traj = solve(model, x_0, n_steps=7, method="rk4", chunk_size=64, return_trajectory=True)
    torch.testing.assert_close(a, b)
    assert traj.shape == (8, 1000, 2)


def test_no_autograd_unless_asked():
    model = fmlib.MLPVectorField(2, width=16, depth=2)
    x_0 = torch.randn(10, 2)
    assert not solve(model, x_0, n_steps=3).requires_grad
    out = solve(model, x_0, n_steps=3, enable_grad=True)
    assert out.requires_grad
    out.sum().backward()
    assert model.net[0].weight.grad is not None


def test_sample_draws_noise_reproducibly():
    model = fmlib.MLPVectorField(3, width=8, depth=1)
    a = fmlib.sample(model, 50, dim=3, n_steps=4, generator=torch.Generator().manual_seed(1))
    b = fmlib.sample(model, 50, dim=3, n_steps=4, generator=torch.Generator().manual_seed(1))
    assert a.shape == (50, 3)
    torch.testing.assert_close(a, b)


def test_million_samples_chunked_memory():
    """1,000,000 samples through the book's network: peak extra memory (RSS) stays within a few hundred MB.

    Measured in a fresh process so that earlier tests do not move the high-water mark. Without chunking the
    hidden activations alone would take 1e6 x 64 x 4 B = 256 MB per layer and several layers are alive at once.
    """
    import subprocess
    import sys

    code = (
        "import resource, torch, fmlib\n"
        "m = fmlib.MLPVectorField(2); x0 = torch.randn(1_000_000, 2)\n"
        "b = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "out = fmlib.solve(m, x0, n_steps=2)\n"
        "assert out.shape == (1_000_000, 2)\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - b) / 1024)\n"
    )
    growth_mib = float(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                      text=True).stdout.strip())
    assert growth_mib < 400, growth_mib


# --- bad input ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_steps", [0, -3, 2.5, 10.0, "10", True])
def test_bad_step_counts(n_steps):
    with pytest.raises(ValueError, match="n_steps"):
        solve(v_exp, torch.randn(3, 2), n_steps=n_steps)


def test_default_step_count_is_50():
    torch.testing.assert_close(solve(v_exp, torch.ones(3, 2)), solve(v_exp, torch.ones(3, 2), n_steps=50))


def test_unknown_method():
    with pytest.raises(ValueError, match="method must be one of"):
        solve(v_exp, torch.randn(3, 2), n_steps=3, method="rk45")


def test_bad_x0():
    with pytest.raises(ValueError, match="x_0"):
        solve(v_exp, torch.randn(3), n_steps=3)
    with pytest.raises(ValueError, match="x_0 must be finite"):
        solve(v_exp, torch.tensor([[0.0, float("inf")]]), n_steps=3)
    with pytest.raises(ValueError, match="floating-point"):
        solve(v_exp, torch.ones(3, 2, dtype=torch.long), n_steps=3)


def test_bad_chunk_and_v():
    with pytest.raises(ValueError, match="chunk_size"):
        solve(v_exp, torch.randn(3, 2), n_steps=3, chunk_size=0)
    with pytest.raises(ValueError, match="v must be callable"):
        solve("not a field", torch.randn(3, 2), n_steps=3)
    with pytest.raises(ValueError, match="n must be"):
        fmlib.sample(v_exp, 0, dim=2)


def test_sample_follows_the_model():
    """dim, dtype and device come from the network unless given; a dim that contradicts it is an error."""
    model64 = fmlib.MLPVectorField(3, width=8, depth=1).double()
    x = fmlib.sample(model64, 10, n_steps=2)
    assert x.shape == (10, 3) and x.dtype == torch.float64
    assert fmlib.sample(model64, 10, 3, n_steps=2, dtype=torch.float64).dtype == torch.float64
    with pytest.raises(ValueError, match="dim is 2 but the field's dim is 3"):
        fmlib.sample(model64, 10, 2)
    with pytest.raises(ValueError, match="dim must be given"):
        fmlib.sample(lambda t, x: -x, 10)
    assert fmlib.sample(lambda t, x: -x, 10, 2).dtype == torch.get_default_dtype()
