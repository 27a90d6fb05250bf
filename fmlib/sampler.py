r"""Fixed-step ODE solvers for :math:`\tfrac{dx}{dt} = v(t, x)` from t = 0 to t = 1 (book chapter "Training a flow
on an annulus", section "Sampling"; Lipman et al. 2023, eq. 1).

The grid is fixed by the number of steps and nothing else: ``n_steps`` steps of size :math:`h = 1/n` at
:math:`t_k = k / n`, :math:`k = 0, \dots, n - 1`, so that the last step ends exactly at t = 1. Euler evaluates v once
per step, the midpoint method twice and classical Runge-Kutta (RK4) four times, so a solve costs exactly
``n_steps * STAGES[method]`` evaluations of v per chunk of samples.

Sampling needs no gradients, so the solvers run under ``torch.no_grad()`` unless ``enable_grad=True``, and they
process the samples in chunks so that memory stays bounded for millions of points.
"""

from __future__ import annotations

from typing import Callable

import torch

from ._checks import check_choice, check_device, check_float_dtype, check_generator, check_points, check_positive_int

__all__ = ["STAGES", "euler_step", "midpoint_step", "rk4_step", "solve", "sample"]

VectorField = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def euler_step(v: VectorField, t: torch.Tensor, x: torch.Tensor, h: float) -> torch.Tensor:
    r"""One Euler step :math:`x + h\, v(t, x)` (local error :math:`O(h^2)`, global :math:`O(h)`)."""
    return x + h * v(t, x)


def midpoint_step(v: VectorField, t: torch.Tensor, x: torch.Tensor, h: float) -> torch.Tensor:
    r"""One explicit midpoint step :math:`x + h\, v(t + h/2,\ x + \tfrac h2 v(t, x))` (global error :math:`O(h^2)`)."""
    return x + h * v(t + h / 2, x + (h / 2) * v(t, x))


def rk4_step(v: VectorField, t: torch.Tensor, x: torch.Tensor, h: float) -> torch.Tensor:
    r"""One classical Runge-Kutta step (global error :math:`O(h^4)`)."""
    k1 = v(t, x)
    k2 = v(t + h / 2, x + (h / 2) * k1)
    k3 = v(t + h / 2, x + (h / 2) * k2)
    k4 = v(t + h, x + h * k3)
    return x + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)


_STEPS = {"euler": euler_step, "midpoint": midpoint_step, "rk4": rk4_step}
STAGES = {"euler": 1, "midpoint": 2, "rk4": 4}


def _checked(v):
    """v with a check of its output's shape (a Python-level comparison: no synchronisation)."""
    def checked_v(t, x):
        u = v(t, x)
        if not isinstance(u, torch.Tensor) or u.shape != x.shape:
            got = tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__
            raise ValueError(f"v(t, x) must return a tensor of x's shape {tuple(x.shape)}, got {got}")
        return u
    return checked_v


def _solve_chunk(v, x, n_steps, step, return_trajectory):
    h = 1.0 / n_steps
    traj = [x] if return_trajectory else None
    for k in range(n_steps):
        # t_k = k / n exactly (no accumulated rounding); a 0-d tensor on x's device and dtype
        t = torch.tensor(k / n_steps, dtype=x.dtype, device=x.device)
        x = step(v, t, x, h)
        if return_trajectory:
            traj.append(x)
    return x, (torch.stack(traj) if return_trajectory else None)


def solve(v: VectorField, x_0: torch.Tensor, n_steps: int = 50, method: str = "euler", *,
          return_trajectory: bool = False, enable_grad: bool = False, chunk_size: int = 100_000):
    r"""Integrate :math:`\tfrac{dx}{dt} = v(t, x)` from t = 0 (``x_0``) to t = 1 with a fixed-step method.

    Args:
        v: vector field called as ``v(t, x)`` with t a 0-d tensor and x of shape (m, d); returns shape (m, d).
        x_0: initial points at t = 0, shape (n, d).
        n_steps: number of steps n (a positive int); step size 1/n, times t_k = k/n.
        method: "euler" (order 1), "midpoint" (order 2) or "rk4" (order 4).
        return_trajectory: also return the points at all n + 1 grid times t_k = k/n, k = 0..n.
        enable_grad: record autograd through the solve (off by default: sampling needs no gradients).
        chunk_size: number of samples integrated at once (bounds memory; results do not depend on it beyond
            floating-point rounding).

    Returns:
        x_1 of shape (n, d); or ``(x_1, trajectory)`` with trajectory of shape (n_steps + 1, n, d) when
        ``return_trajectory`` is True.

    Raises:
        ValueError: if x_0 is not a finite (n, d) float tensor, n_steps or chunk_size is not a positive integer,
            method is unknown, v returns another shape than x, or the solution is not finite.
    """
    x_0 = check_points("x_0", x_0)
    n_steps = check_positive_int("n_steps", n_steps)
    chunk_size = check_positive_int("chunk_size", chunk_size)
    step = _STEPS[check_choice("method", method, _STEPS)]
    if not callable(v):
        raise ValueError(f"v must be callable as v(t, x), got {type(v).__name__}")
    v = _checked(v)
    outs, trajs = [], []
    with torch.set_grad_enabled(enable_grad):
        for chunk in torch.split(x_0, chunk_size):
            x_1, traj = _solve_chunk(v, chunk, n_steps, step, return_trajectory)
            outs.append(x_1)
            trajs.append(traj)
    x_1 = outs[0] if len(outs) == 1 else torch.cat(outs)
    if not bool(torch.isfinite(x_1).all()):
        raise ValueError(f"the solution is not finite: v(t, x) produced NaN/inf or the {method} solve with "
                         f"n_steps={n_steps} diverged (try more steps)")
    if not return_trajectory:
        return x_1
    return x_1, (trajs[0] if len(trajs) == 1 else torch.cat(trajs, dim=1))


def sample(v: VectorField, n: int, dim: int, n_steps: int = 50, method: str = "euler", *,
           generator: torch.Generator | None = None, device=None, dtype=torch.float32, **kwargs):
    r"""Draw ``n`` samples of the model: :math:`x_0 \sim \mathcal N(0, I_d)`, then :func:`solve` to t = 1.

    Args:
        v: vector field ``v(t, x)``.
        n: number of samples, a positive int.
        dim: dimension d, a positive int.
        n_steps, method: as in :func:`solve`.
        generator: optional ``torch.Generator`` on ``device`` for reproducible noise.
        device, dtype: where and in which precision to sample (default: CPU, float32).
        **kwargs: passed on to :func:`solve` (``return_trajectory``, ``enable_grad``, ``chunk_size``).

    Returns:
        as :func:`solve`: samples of shape (n, dim), and optionally the trajectory.

    Raises:
        ValueError: as :func:`solve`, if n or dim is not a positive integer, or for a bad generator, device
            (e.g. "cuda" without a GPU) or dtype.
    """
    n = check_positive_int("n", n)
    dim = check_positive_int("dim", dim)
    check_generator("generator", generator)
    if device is not None:
        device = check_device("device", device)
    check_float_dtype("dtype", dtype)
    x_0 = torch.randn(n, dim, generator=generator, device=device, dtype=dtype)
    return solve(v, x_0, n_steps, method, **kwargs)
