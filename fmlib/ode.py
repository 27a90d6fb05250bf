r"""ODE solves with a count of function evaluations, and exact log-likelihoods of a continuous normalizing flow
(book chapter "Sampling and likelihood"; Lipman et al. 2023, eq. 1; Chen et al. 2018; Grathwohl et al. 2019).

Two families of solvers, one call convention ``v(t, x)`` (the same as :func:`fmlib.sampler.solve`):

* **fixed-step** methods ``"euler"``, ``"midpoint"``, ``"rk4"``: n steps of size h = (t_end - t_start)/n on the grid
  :math:`t_k = t_{start} + k\,h`, done by the step functions of :mod:`fmlib.sampler` (not duplicated here); they cost
  exactly ``n_steps * STAGES[method]`` evaluations of v;
* **adaptive** methods of torchdiffeq (``"dopri5"``, ``"dopri8"``, ``"bosh3"``, ``"fehlberg2"``, ``"adaptive_heun"``):
  step sizes chosen to meet ``rtol``/``atol``; the number of evaluations is counted.

The likelihood follows the instantaneous change of variables (book eq. ``eq-log-likelihood``): along a solution
:math:`x_t` of :math:`\tfrac{dx_t}{dt} = v(t, x_t)`,

.. math:: \frac{d}{dt} \log p_t(x_t) = -\nabla\cdot v(t, x_t), \qquad
          \log p_1(x_1) = \log p_0(x_0) - \int_0^1 \nabla\cdot v(t, x_t)\,dt ,

so :func:`log_likelihood` integrates x together with :math:`\int \nabla\cdot v\,dt` backwards from t = 1 to t = 0 and
:func:`sample_with_log_prob` integrates them forwards. The divergence is exact (d backward passes of autograd, for
small d) or Hutchinson's estimate :math:`\varepsilon^\top \tfrac{\partial v}{\partial x} \varepsilon` with probes
:math:`\varepsilon` of mean 0 and covariance I (one backward pass per probe; book eq. ``eq-hutchinson``). The probes are
drawn once per solve and held fixed, so that the augmented ODE is an ordinary smooth ODE that any solver can follow.

Every time at which v is evaluated lies in [0, 1]: adaptive steps are told to end exactly at ``t_end`` (torchdiffeq's
``step_t`` option; without it torchdiffeq overshoots the end and interpolates back), and the times passed to v are
clipped to the interval between ``t_start`` and ``t_end``, which only removes floating-point rounding (and the trial
point of torchdiffeq's initial step-size guess, which only sets the size of the first step).
"""

from __future__ import annotations

import math
import numbers
from typing import Callable, NamedTuple

import torch

from ._checks import as_time, check_choice, check_points, check_positive_int
from .sampler import STAGES, _STEPS
from .continuity import _divergence as exact_divergence

__all__ = ["FIXED_METHODS", "ADAPTIVE_METHODS", "METHODS", "ODESolution", "LikelihoodSolution",
           "standard_normal_log_prob", "divergence", "solve_ode", "log_likelihood", "sample_with_log_prob"]

VectorField = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

FIXED_METHODS = tuple(STAGES)  # ("euler", "midpoint", "rk4"), with fmlib.sampler's step functions
ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")  # torchdiffeq's adaptive solvers
METHODS = FIXED_METHODS + ADAPTIVE_METHODS
DIVERGENCES = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")


class ODESolution(NamedTuple):
    """Result of :func:`solve_ode`: the end points ``x`` (n, d) and ``nfe``, the number of evaluations of v."""
    x: torch.Tensor
    nfe: int


class LikelihoodSolution(NamedTuple):
    r"""Result of :func:`log_likelihood` and :func:`sample_with_log_prob`.

    Attributes:
        x: the other end of the trajectory, shape (n, d): x_0 for :func:`log_likelihood`, the samples x_1 for
            :func:`sample_with_log_prob`.
        log_p: :math:`\log p_1(x_1)` in nats, shape (n,).
        nfe: number of evaluations of v (each one with its divergence).
    """
    x: torch.Tensor
    log_p: torch.Tensor
    nfe: int


def standard_normal_log_prob(x: torch.Tensor) -> torch.Tensor:
    r"""Log-density of :math:`p_0 = \mathcal N(0, I_d)`: :math:`-\tfrac12 |x|^2 - \tfrac d2 \log 2\pi`.

    Args:
        x: points, shape (n, d).

    Returns:
        log-densities in nats, shape (n,).

    Raises:
        ValueError: if x is not a finite (n, d) float tensor.
    """
    x = check_points("x", x)
    return -0.5 * (x**2).sum(dim=1) - 0.5 * x.shape[1] * math.log(2 * math.pi)


# ----------------------------------------------------------------------------------------------------- checks


def _check_time(name, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (0.0 <= float(value) <= 1.0):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def _check_tol(name, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (0.0 < float(value) < 1.0):
        raise ValueError(f"{name} must be a number in (0, 1), got {value!r}")
    return float(value)


def _check_method(method, n_steps):
    check_choice("method", method, METHODS)
    if method in FIXED_METHODS:
        if n_steps is None:
            raise ValueError(f"n_steps must be a positive integer for the fixed-step method {method!r}, got None")
        return check_positive_int("n_steps", n_steps)
    if n_steps is not None:
        raise ValueError(f"n_steps must be None for the adaptive method {method!r} (it chooses its own steps; "
                         f"set rtol/atol), got {n_steps!r}")
    return None


def _check_v(v):
    if not callable(v):
        raise ValueError(f"v must be callable as v(t, x), got {type(v).__name__}")


# ------------------------------------------------------------------------------------------------ the core


class _Counted:
    """Calls v(t, x) with t a 0-d tensor of x's dtype clipped to [lo, hi]; counts the calls in ``nfe``."""

    def __init__(self, v, t_start, t_end):
        self.v, self.lo, self.hi, self.nfe = v, min(t_start, t_end), max(t_start, t_end), 0

    def __call__(self, t, x):
        self.nfe += 1
        t = torch.as_tensor(t, device=x.device).to(x.dtype).clamp(self.lo, self.hi)
        out = self.v(t, x)
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            raise ValueError(f"v(t, x) must return a tensor of the shape of x, {tuple(x.shape)}; got "
                             f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
        return out


def _integrate(f, y0, t_start, t_end, method, n_steps, rtol, atol):
    """Integrate dy/dt = f(t, y) for a tensor y (fixed-step, fmlib's steps) or a tuple of tensors (torchdiffeq)."""
    if (y0[0] if isinstance(y0, tuple) else y0).shape[0] == 0:
        return y0  # no points: nothing to integrate (an adaptive solver would fail on the empty error norm)
    if method in FIXED_METHODS:
        step = _STEPS[method]
        pack = isinstance(y0, tuple)
        sizes = [y.shape[1] for y in y0] if pack else None
        y = torch.cat(y0, dim=1) if pack else y0

        def g(t, z):  # the step functions work on one tensor: pack the state's parts side by side
            if not pack:
                return f(t, z)
            return torch.cat(f(t, tuple(torch.split(z, sizes, dim=1))), dim=1)

        h = (t_end - t_start) / n_steps
        for k in range(n_steps):
            # t_k from its two end points (no accumulated rounding); a 0-d tensor of the state's dtype
            t = torch.tensor(((n_steps - k) * t_start + k * t_end) / n_steps, dtype=y.dtype, device=y.device)
            y = step(g, t, y, h)
        return tuple(torch.split(y, sizes, dim=1)) if pack else y
    from torchdiffeq import odeint  # optional dependency: fmlib[ode]

    ts = torch.tensor([t_start, t_end], dtype=torch.float64, device=(y0[0] if isinstance(y0, tuple) else y0).device)
    try:
        sol = odeint(f, y0, ts, method=method, rtol=rtol, atol=atol, options={"step_t": ts[1:]})
    except AssertionError as err:  # torchdiffeq's "underflow in dt": the step size shrank to nothing
        if "underflow" not in str(err):
            raise
        raise ValueError(f"the adaptive solver {method!r} could not follow the field (its step size underflowed "
                         f"to 0: {err}); the field is probably non-finite or blows up along the way -- check "
                         f"that v(t, x) is finite, or use a fixed-step method to see where it fails") from err
    return tuple(s[-1] for s in sol) if isinstance(sol, tuple) else sol[-1]


def _log_p0(log_p0, x_0):
    """log_p0(x_0) with a check that it is a finite-or--inf tensor of shape (n,)."""
    if not callable(log_p0):
        raise ValueError(f"log_p0 must be callable, mapping (n, d) points to (n,) log-densities, got {log_p0!r}")
    out = log_p0(x_0)
    if not isinstance(out, torch.Tensor) or out.shape != (x_0.shape[0],):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"log_p0 must return log-densities of shape ({x_0.shape[0]},), got {got}")
    return out


def _draw_probes(x, n_probes, probe, generator):
    eps = torch.randn((n_probes,) + tuple(x.shape), generator=generator, device=x.device, dtype=x.dtype)
    return eps.sign() if probe == "rademacher" else eps  # sign of a Gaussian: +-1 with probability 1/2 each


def _divergence(v, t, x, kind, probes):
    """v(t, x) and its divergence, shape (n,), both detached (no graph is kept for a backward pass)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        u = v(t, x)
        if not u.requires_grad:  # v does not depend on x (e.g. a constant field): zero divergence
            return u.detach(), torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        if kind == "exact":
            div = exact_divergence(u, x, create_graph=False)  # d backward passes (fmlib.continuity)
        else:
            div = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
            for j, eps in enumerate(probes):
                # eps^T (du/dx) eps: one vector-Jacobian product per probe
                vjp = torch.autograd.grad((u * eps).sum(), x, retain_graph=j < len(probes) - 1, allow_unused=True)[0]
                if vjp is not None:
                    div = div + (vjp * eps).sum(dim=1)
            div = div / len(probes)
    return u.detach(), div.detach()


def _check_divergence_args(divergence, n_probes, probe, probes, x):
    check_choice("divergence", divergence, DIVERGENCES)
    n_probes = check_positive_int("n_probes", n_probes)
    check_choice("probe", probe, PROBES)
    if probes is not None:
        if divergence != "hutchinson":
            raise ValueError(f"probes are only used with divergence='hutchinson', got divergence={divergence!r}")
        if (not isinstance(probes, torch.Tensor) or probes.ndim != 3 or tuple(probes.shape[1:]) != tuple(x.shape)):
            raise ValueError(f"probes must be a tensor of shape (n_probes, {x.shape[0]}, {x.shape[1]}), got "
                             f"{tuple(probes.shape) if isinstance(probes, torch.Tensor) else type(probes).__name__}")
        probes = probes.to(dtype=x.dtype, device=x.device)
    return n_probes, probes


def _check_likelihood_args(v, name, x, method, n_steps, rtol, atol, divergence, n_probes, probe, probes):
    """The argument checks shared by :func:`log_likelihood` and :func:`sample_with_log_prob`."""
    _check_v(v)
    x = check_points(name, x)
    n_steps = _check_method(method, n_steps)
    rtol, atol = _check_tol("rtol", rtol), _check_tol("atol", atol)
    n_probes, probes = _check_divergence_args(divergence, n_probes, probe, probes, x)
    return x, n_steps, rtol, atol, n_probes, probes


def _solve_with_divergence(v, x, t_start, t_end, method, n_steps, rtol, atol, divergence, n_probes, probe,
                           probes, generator):
    """Integrate x from t_start to t_end together with int_{t_start}^{t_end} div v dt; returns (x_end, int, nfe)."""
    vc = _Counted(v, t_start, t_end)
    if divergence == "hutchinson" and probes is None:
        probes = _draw_probes(x, n_probes, probe, generator)

    def f(t, state):
        u, div = _divergence(vc, t, state[0], divergence, probes)
        return u, div.unsqueeze(1)

    zero = torch.zeros(x.shape[0], 1, dtype=x.dtype, device=x.device)
    with torch.no_grad():
        x_end, integral = _integrate(f, (x, zero), t_start, t_end, method, n_steps, rtol, atol)
    return x_end, integral.squeeze(1), vc.nfe


# ------------------------------------------------------------------------------------------------ public API


def divergence(v: VectorField, t, x: torch.Tensor, *, method: str = "exact", n_probes: int = 1,
               probe: str = "rademacher", probes: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The velocity :math:`v(t, x)` and its divergence :math:`\nabla\cdot v(t, x) = \operatorname{tr}
    \tfrac{\partial v}{\partial x}`, exactly or by Hutchinson's estimator (book eq. ``eq-hutchinson``).

    Hutchinson's estimator averages :math:`\varepsilon^\top \tfrac{\partial v}{\partial x} \varepsilon` over
    ``n_probes`` independent probes with :math:`E[\varepsilon\varepsilon^\top] = I`: Rademacher (entries +-1) or
    Gaussian. It is unbiased; for a matrix A (= the Jacobian) one probe has variance
    :math:`\tfrac12\lVert A + A^\top\rVert_F^2 - 2\sum_i A_{ii}^2` (Rademacher) or :math:`\tfrac12\lVert A +
    A^\top\rVert_F^2` (Gaussian), and ``n_probes`` probes divide it by ``n_probes``.

    Args:
        v: vector field ``v(t, x)``, differentiable in x.
        t: time in [0, 1] as accepted by v (float or 0-d tensor).
        x: points, shape (n, d).
        method: "exact" (d backward passes) or "hutchinson" (one per probe).
        n_probes: number of Hutchinson probes per point, a positive int.
        probe: "rademacher" or "gaussian".
        probes: optional fixed probes, shape (n_probes, n, d) (then ``n_probes``/``probe``/``generator`` are unused).
        generator: optional ``torch.Generator`` on x's device for the probes.

    Returns:
        ``(u, div)``: v(t, x) of shape (n, d) and the divergence of shape (n,), both detached from autograd.

    Raises:
        ValueError: for a bad x, method, n_probes, probe or probes, or a v that is not callable.
    """
    _check_v(v)
    x = check_points("x", x)
    as_time(t, x)  # raises a ValueError for a bad t; v receives t as given
    check_choice("method", method, DIVERGENCES)
    n_probes, probes = _check_divergence_args(method, n_probes, probe, probes, x)
    if method == "hutchinson" and probes is None:
        probes = _draw_probes(x, n_probes, probe, generator)
    return _divergence(v, t, x, method, probes)


def solve_ode(v: VectorField, x: torch.Tensor, method: str = "dopri5", *, n_steps: int | None = None,
              rtol: float = 1e-5, atol: float = 1e-5, t_start: float = 0.0, t_end: float = 1.0,
              enable_grad: bool = False) -> ODESolution:
    r"""Integrate :math:`\tfrac{dx}{dt} = v(t, x)` (Lipman et al. 2023, eq. 1; book eq. ``eq-flow-ode``) from
    ``t_start`` to ``t_end`` and count the evaluations of v.

    Args:
        v: vector field ``v(t, x)``: t a 0-d tensor in [0, 1] of x's dtype, x of shape (m, d); returns (m, d).
        x: points at t_start, shape (n, d).
        method: a fixed-step method ("euler", "midpoint", "rk4") or a torchdiffeq adaptive one ("dopri5", "dopri8",
            "bosh3", "fehlberg2", "adaptive_heun").
        n_steps: number of steps of a fixed-step method (required there; must be None for adaptive methods).
        rtol, atol: relative and absolute tolerances of an adaptive method, numbers in (0, 1).
        t_start, t_end: the interval, both in [0, 1]; t_end < t_start integrates backwards in time.
        enable_grad: record autograd through the solve (default off).

    Returns:
        ``ODESolution(x, nfe)``: the points at t_end, shape (n, d), and the number of evaluations of v. A fixed-step
        solve costs ``n_steps * fmlib.STAGES[method]``; an adaptive one includes the two evaluations of its initial
        step-size guess and those of rejected steps.

    Raises:
        ValueError: for a bad x, unknown method, n_steps missing for a fixed-step or given for an adaptive method,
            tolerances outside (0, 1), times outside [0, 1] or a v that returns the wrong shape.
    """
    _check_v(v)
    x = check_points("x", x)
    n_steps = _check_method(method, n_steps)
    rtol, atol = _check_tol("rtol", rtol), _check_tol("atol", atol)
    t_start, t_end = _check_time("t_start", t_start), _check_time("t_end", t_end)
    vc = _Counted(v, t_start, t_end)
    if t_start == t_end:
        return ODESolution(x.clone(), 0)
    with torch.set_grad_enabled(enable_grad):
        x_end = _integrate(vc, x, t_start, t_end, method, n_steps, rtol, atol)
    return ODESolution(x_end, vc.nfe)


def log_likelihood(v: VectorField, x_1: torch.Tensor, method: str = "dopri5", *, n_steps: int | None = None,
                   rtol: float = 1e-5, atol: float = 1e-5, divergence: str = "exact", n_probes: int = 1,
                   probe: str = "rademacher", probes: torch.Tensor | None = None,
                   generator: torch.Generator | None = None,
                   log_p0: Callable[[torch.Tensor], torch.Tensor] = standard_normal_log_prob) -> LikelihoodSolution:
    r"""Exact log-likelihood :math:`\log p_1(x_1)` of the flow of v by the instantaneous change of variables
    (book eq. ``eq-log-likelihood``; Chen et al. 2018, Grathwohl et al. 2019).

    Solves the augmented ODE backwards from t = 1 to t = 0,

    .. math:: \frac{d}{dt}\begin{pmatrix} x_t \\ \ell_t \end{pmatrix} =
              \begin{pmatrix} v(t, x_t) \\ \nabla\cdot v(t, x_t) \end{pmatrix}, \qquad
              x_1 \text{ given},\ \ell_1 = 0,

    so that :math:`\ell_0 = -\int_0^1 \nabla\cdot v(t, x_t)\,dt` and :math:`\log p_1(x_1) = \log p_0(x_0) + \ell_0`.
    With ``divergence="hutchinson"`` the divergence is Hutchinson's estimate with probes drawn once per call (or
    the given ``probes``), which makes ``log_p`` an unbiased estimate up to the solver's error.

    Args:
        v: vector field ``v(t, x)``, differentiable in x.
        x_1: points whose log-density is wanted, shape (n, d).
        method, n_steps, rtol, atol: as in :func:`solve_ode`.
        divergence: "exact" (autograd, d backward passes per evaluation: for small d) or "hutchinson".
        n_probes, probe, probes, generator: Hutchinson's probes, as in :func:`divergence`.
        log_p0: log-density of the source p_0 at t = 0, mapping (n, d) to (n,) (default: standard normal).

    Returns:
        ``LikelihoodSolution(x, log_p, nfe)``: x = x_0 (n, d), log_p = log p_1(x_1) in nats (n,), nfe as in
        :func:`solve_ode`. Results are detached from autograd.

    Raises:
        ValueError: for a bad x_1, method, n_steps, tolerance, divergence, n_probes, probe or probes.
    """
    x_1, n_steps, rtol, atol, n_probes, probes = _check_likelihood_args(
        v, "x_1", x_1, method, n_steps, rtol, atol, divergence, n_probes, probe, probes)
    x_0, integral, nfe = _solve_with_divergence(v, x_1, 1.0, 0.0, method, n_steps, rtol, atol, divergence,
                                                n_probes, probe, probes, generator)
    return LikelihoodSolution(x_0, _log_p0(log_p0, x_0) + integral, nfe)


def sample_with_log_prob(v: VectorField, x_0: torch.Tensor, method: str = "dopri5", *, n_steps: int | None = None,
                         rtol: float = 1e-5, atol: float = 1e-5, divergence: str = "exact", n_probes: int = 1,
                         probe: str = "rademacher", probes: torch.Tensor | None = None,
                         generator: torch.Generator | None = None,
                         log_p0: Callable[[torch.Tensor], torch.Tensor] = standard_normal_log_prob
                         ) -> LikelihoodSolution:
    r"""Samples :math:`x_1` of the flow of v and their log-densities :math:`\log p_1(x_1)` in one forward solve.

    Integrates x and :math:`\int_0^1 \nabla\cdot v(t, x_t)\,dt` from t = 0 to t = 1 and returns
    :math:`\log p_1(x_1) = \log p_0(x_0) - \int_0^1 \nabla\cdot v(t, x_t)\,dt` (book eq. ``eq-log-likelihood``).

    Args:
        v: vector field ``v(t, x)``, differentiable in x.
        x_0: source points at t = 0, shape (n, d) (e.g. ``torch.randn(n, d)``).
        method, n_steps, rtol, atol, divergence, n_probes, probe, probes, generator, log_p0: as in
            :func:`log_likelihood`.

    Returns:
        ``LikelihoodSolution(x, log_p, nfe)`` with x = the samples x_1 (n, d) and log_p = log p_1(x_1) (n,).

    Raises:
        ValueError: as :func:`log_likelihood`, naming x_0.
    """
    x_0, n_steps, rtol, atol, n_probes, probes = _check_likelihood_args(
        v, "x_0", x_0, method, n_steps, rtol, atol, divergence, n_probes, probe, probes)
    x_1, integral, nfe = _solve_with_divergence(v, x_0, 0.0, 1.0, method, n_steps, rtol, atol, divergence,
                                                n_probes, probe, probes, generator)
    return LikelihoodSolution(x_1, _log_p0(log_p0, x_0) - integral, nfe)
