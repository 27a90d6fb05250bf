r"""Solving the flow ODE :math:`\tfrac{dx}{dt} = v(t, x)` (Lipman et al. 2023, eq. 1; book eq. ``eq-flow-ode``) and
drawing samples (book chapters "Training a flow on an annulus", section "Sampling", and "Sampling and likelihood").

One entry point, :func:`solve`, for every method, and :func:`sample`, which draws the noise and calls it:

* **fixed-step** methods ``"euler"``, ``"midpoint"``, ``"rk4"``, written out here (:func:`euler_step`,
  :func:`midpoint_step`, :func:`rk4_step`). The grid is fixed by the number of steps and nothing else: n steps of
  size :math:`h = (t_{end} - t_{start})/n` at :math:`t_k = t_{start} + k h`, so that the last step ends exactly at
  t_end (from 0 to 1: :math:`t_k = k/n`). Euler evaluates v once per step, the midpoint method twice and classical
  Runge-Kutta (RK4) four times: a solve costs exactly ``n_steps * STAGES[method]`` evaluations of v per chunk.
* **adaptive** methods of torchdiffeq (``"dopri5"``, ``"dopri8"``, ``"bosh3"``, ``"fehlberg2"``,
  ``"adaptive_heun"``; ``pip install fmlib[ode]``): step sizes chosen to meet ``rtol``/``atol``. They are told to end
  their last step exactly at t_end (torchdiffeq's ``step_t`` option; without it they overshoot and interpolate back),
  and the times passed to v are clipped to the interval, which only removes rounding and the trial point of
  torchdiffeq's initial step-size guess.

The cost of a solve is the number of evaluations of v (NFE): wrap v in :class:`EvaluationCounter` to count them.
Sampling needs no gradients, so :func:`solve` runs under ``torch.no_grad()`` unless ``enable_grad=True``, and it
processes the points in chunks so that memory stays bounded for millions of points.
"""

from __future__ import annotations

import numbers
from typing import Callable

import torch

from ._checks import (check_bool, check_choice, check_device, check_float_dtype, check_generator, check_points,
                      check_positive_int)

__all__ = ["STAGES", "FIXED_METHODS", "ADAPTIVE_METHODS", "METHODS", "EvaluationCounter", "euler_step",
           "midpoint_step", "rk4_step", "solve", "sample"]

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
FIXED_METHODS = tuple(STAGES)
ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")  # torchdiffeq's adaptive solvers
METHODS = FIXED_METHODS + ADAPTIVE_METHODS
DEFAULT_STEPS = 50


class EvaluationCounter:
    """A vector field that counts its evaluations: ``counted = EvaluationCounter(v)``, then ``counted(t, x)`` is
    ``v(t, x)`` and ``counted.nfe`` the number of calls so far (the cost of a solve, NFE).

    Raises:
        ValueError: if v is not callable.
    """

    def __init__(self, v: VectorField):
        if not callable(v):
            raise ValueError(f"v must be callable as v(t, x), got {type(v).__name__}")
        self.v, self.nfe = v, 0

    def __call__(self, t, x):
        self.nfe += 1
        return self.v(t, x)


def _checked(v):
    """v with a check of its output's shape (a Python-level comparison: no synchronisation)."""
    def checked_v(t, x):
        u = v(t, x)
        if not isinstance(u, torch.Tensor) or u.shape != x.shape or u.dtype != x.dtype:
            got = f"shape {tuple(u.shape)}, dtype {u.dtype}" if isinstance(u, torch.Tensor) else type(u).__name__
            raise ValueError(f"v(t, x) must return a tensor of x's shape {tuple(x.shape)} and dtype {x.dtype}, "
                             f"got {got}")
        return u
    return checked_v


def _fixed_steps(f, y, t_start, t_end, n_steps, step, trajectory=None):
    """n fixed steps of ``step`` for dy/dt = f(t, y) from t_start to t_end; appends every point to ``trajectory``."""
    h = (t_end - t_start) / n_steps
    for k in range(n_steps):
        # t_k from the two end points (no accumulated rounding): k / n from 0 to 1; a 0-d tensor of y's dtype
        t = torch.tensor(((n_steps - k) * t_start + k * t_end) / n_steps, dtype=y.dtype, device=y.device)
        y = step(f, t, y, h)
        if trajectory is not None:
            trajectory.append(y)
    return y


def _integrate(f, y0, t_start, t_end, method, n_steps, rtol, atol):
    """Integrate dy/dt = f(t, y) for a tensor y, or a tuple of tensors (the likelihood's augmented state), from t_start
    to t_end: fmlib's fixed steps or a torchdiffeq adaptive method. No argument checks."""
    if (y0[0] if isinstance(y0, tuple) else y0).shape[0] == 0:
        return y0  # no points: nothing to integrate (an adaptive solver would fail on the empty error norm)
    if method in FIXED_METHODS:
        if not isinstance(y0, tuple):
            return _fixed_steps(f, y0, t_start, t_end, n_steps, _STEPS[method])
        sizes = [y.shape[1] for y in y0]

        def g(t, z):  # the step functions work on one tensor: the state's parts side by side
            return torch.cat(f(t, tuple(torch.split(z, sizes, dim=1))), dim=1)

        y = _fixed_steps(g, torch.cat(y0, dim=1), t_start, t_end, n_steps, _STEPS[method])
        return tuple(torch.split(y, sizes, dim=1))
    from torchdiffeq import odeint  # optional dependency: fmlib[ode]

    lo, hi = min(t_start, t_end), max(t_start, t_end)
    like = y0[0] if isinstance(y0, tuple) else y0

    def clipped(t, y):  # t in the state's dtype, inside the interval: only rounding and the first step's guess move
        return f(t.to(device=like.device, dtype=like.dtype).clamp(lo, hi), y)

    ts = torch.tensor([t_start, t_end], dtype=torch.float64, device=like.device)
    try:
        sol = odeint(clipped, y0, ts, method=method, rtol=rtol, atol=atol, options={"step_t": ts[1:]})
    except AssertionError as err:  # torchdiffeq's "underflow in dt" or "non-finite values in state"
        if "underflow" in str(err):
            raise ValueError(f"the adaptive solver {method!r} could not follow the field (its step size underflowed "
                             f"to 0: {err}); the field is probably non-finite or blows up along the way, or the "
                             f"tolerances are below the precision of the dtype -- check that v(t, x) is finite, or "
                             f"use a fixed-step method to see where it fails") from err
        if "non-finite" in str(err):
            raise ValueError(f"the adaptive solver {method!r} met NaN/inf: v(t, x) (or its divergence) is not finite "
                             f"along the way ({err})") from err
        raise
    return tuple(s[-1] for s in sol) if isinstance(sol, tuple) else sol[-1]


def _check_time(name, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (0.0 <= float(value) <= 1.0):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def _check_tol(name, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (0.0 < float(value) < 1.0):
        raise ValueError(f"{name} must be a number in (0, 1), got {value!r}")
    return float(value)


def _check_method(method, n_steps):
    """The method's name and its number of steps (fixed-step methods: default 50; adaptive ones: None)."""
    check_choice("method", method, METHODS)
    if method in FIXED_METHODS:
        return DEFAULT_STEPS if n_steps is None else check_positive_int("n_steps", n_steps)
    if n_steps is not None:
        raise ValueError(f"n_steps must be None for the adaptive method {method!r} (it chooses its own steps; "
                         f"set rtol/atol), got {n_steps!r}")
    return None


def solve(v: VectorField, x_0: torch.Tensor, n_steps: int | None = None, method: str = "euler", *,
          rtol: float = 1e-5, atol: float = 1e-5, t_start: float = 0.0, t_end: float = 1.0,
          return_trajectory: bool = False, enable_grad: bool = False, chunk_size: int = 100_000):
    r"""Integrate :math:`\tfrac{dx}{dt} = v(t, x)` from ``t_start`` (points ``x_0``) to ``t_end`` (Lipman et al.
    2023, eq. 1; book eqs. ``eq-flow-ode`` and ``eq-euler``).

    Args:
        v: vector field called as ``v(t, x)`` with t a 0-d tensor and x of shape (m, d); returns shape (m, d).
        x_0: points at t_start, shape (n, d).
        n_steps: number of steps of a fixed-step method, a positive int (default 50); must be None for an adaptive
            method, which chooses its own steps.
        method: "euler" (order 1), "midpoint" (order 2), "rk4" (order 4), or a torchdiffeq adaptive method
            ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun").
        rtol, atol: relative and absolute tolerances of an adaptive method, numbers in (0, 1).
        t_start, t_end: the interval, both in [0, 1] (default 0 to 1); t_end < t_start integrates backwards.
        return_trajectory: also return the points at all n + 1 grid times (fixed-step methods only).
        enable_grad: record autograd through the solve (off by default: sampling needs no gradients).
        chunk_size: number of points integrated at once (bounds memory; an adaptive method chooses its steps for
            each chunk).

    Returns:
        the points at t_end, shape (n, d); or ``(x_end, trajectory)`` with trajectory of shape (n_steps + 1, n, d)
        when ``return_trajectory`` is True. To count the evaluations of v, pass ``EvaluationCounter(v)``.

    Raises:
        ValueError: if x_0 is not a finite (n, d) float tensor, v is not callable, the method is unknown, n_steps
            is given for an adaptive method or is not a positive integer, a tolerance is outside (0, 1), a time
            outside [0, 1], chunk_size is not a positive integer, a trajectory is asked of an adaptive method, v
            returns another shape than x, an adaptive step size underflows, or the solution is not finite.
    """
    x_0 = check_points("x_0", x_0)
    n_steps = _check_method(method, n_steps)
    rtol, atol = _check_tol("rtol", rtol), _check_tol("atol", atol)
    t_start, t_end = _check_time("t_start", t_start), _check_time("t_end", t_end)
    chunk_size = check_positive_int("chunk_size", chunk_size)
    return_trajectory = check_bool("return_trajectory", return_trajectory)
    enable_grad = check_bool("enable_grad", enable_grad)
    if not callable(v):
        raise ValueError(f"v must be callable as v(t, x), got {type(v).__name__}")
    if return_trajectory and n_steps is None:
        raise ValueError(f"return_trajectory needs a fixed-step method (it returns the points on the grid), got "
                         f"the adaptive method {method!r}")
    v = _checked(v)
    outs, trajs = [], []
    with torch.set_grad_enabled(enable_grad):
        for chunk in torch.split(x_0, chunk_size):
            if return_trajectory:
                traj = [chunk]
                outs.append(_fixed_steps(v, chunk, t_start, t_end, n_steps, _STEPS[method], traj))
                trajs.append(torch.stack(traj))
            else:
                outs.append(chunk.clone() if t_start == t_end else
                            _integrate(v, chunk, t_start, t_end, method, n_steps, rtol, atol))
    x_end = outs[0] if len(outs) == 1 else torch.cat(outs) if outs else x_0.clone()
    if not bool(torch.isfinite(x_end).all()):  # once per solve, not per step
        how = f"n_steps={n_steps}" if n_steps else f"rtol={rtol}, atol={atol}"
        raise ValueError(f"the solution is not finite: v(t, x) produced NaN/inf or the {method} solve with "
                         f"{how} diverged (try more steps)")
    if not return_trajectory:
        return x_end
    return x_end, (trajs[0] if len(trajs) == 1 else torch.cat(trajs, dim=1))


def sample(v: VectorField, n: int, dim: int | None = None, n_steps: int | None = None, method: str = "euler", *,
           generator: torch.Generator | None = None, device=None, dtype: torch.dtype | None = None, **kwargs):
    r"""Draw ``n`` samples of the model: :math:`x_0 \sim \mathcal N(0, I_d)`, then :func:`solve` from t = 0 to 1.

    Args:
        v: vector field ``v(t, x)``, e.g. an :class:`fmlib.networks.MLPVectorField`.
        n: number of samples, a positive int.
        dim: dimension d, a positive int; default: ``v.dim`` (a network knows its own).
        n_steps, method: as in :func:`solve` (default: 50 Euler steps).
        generator: optional ``torch.Generator`` on ``device`` for reproducible noise.
        device, dtype: where and in which precision to sample; default: those of v's parameters when v is a
            ``torch.nn.Module`` that has any, else the CPU and torch's default dtype.
        **kwargs: passed on to :func:`solve` (``rtol``, ``atol``, ``return_trajectory``, ``enable_grad``,
            ``chunk_size``).

    Returns:
        samples of shape (n, dim), and optionally the trajectory, as :func:`solve` returns them.

    Raises:
        ValueError: as :func:`solve`, if n or dim is not a positive integer, dim is missing for a v without ``dim``
            or differs from it, or for a bad generator, device (e.g. "cuda" without a GPU) or dtype.
    """
    n = check_positive_int("n", n)
    own_dim = getattr(v, "dim", None)
    if dim is None:
        if own_dim is None:
            raise ValueError(f"dim must be given for a field without a dim attribute ({type(v).__name__})")
        dim = own_dim
    dim = check_positive_int("dim", dim)
    if isinstance(own_dim, int) and own_dim != dim:
        raise ValueError(f"dim is {dim} but the field's dim is {own_dim}")
    check_generator("generator", generator)
    param = next(v.parameters(), None) if isinstance(v, torch.nn.Module) else None
    if device is None and param is not None:
        device = param.device
    if device is not None:
        device = check_device("device", device)
    if dtype is None:
        dtype = param.dtype if param is not None else torch.get_default_dtype()
    check_float_dtype("dtype", dtype)
    x_0 = torch.randn(n, dim, generator=generator, device=device, dtype=dtype)
    return solve(v, x_0, n_steps, method, **kwargs)
