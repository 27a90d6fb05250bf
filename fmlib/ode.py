r"""Exact log-likelihoods of a continuous normalizing flow by the instantaneous change of variables (book chapter
"Sampling and likelihood", eq. ``eq-log-likelihood``; Chen et al. 2018; Grathwohl et al. 2019).

Along a solution :math:`x_t` of :math:`\tfrac{dx_t}{dt} = v(t, x_t)`,

.. math:: \frac{d}{dt} \log p_t(x_t) = -\nabla\cdot v(t, x_t), \qquad
          \log p_1(x_1) = \log p_0(x_0) - \int_0^1 \nabla\cdot v(t, x_t)\,dt ,

so :func:`log_likelihood` integrates x together with :math:`\int \nabla\cdot v\,dt` backwards from t = 1 to t = 0,
with any method of :func:`fmlib.sampler.solve` (fixed-step or adaptive). The divergence is
:func:`fmlib.continuity.divergence`: exact (d backward passes of autograd, for small d) or Hutchinson's estimate
(one backward pass per probe; book eq. ``eq-hutchinson``). The probes are drawn once per solve and held fixed, so
that the augmented ODE is an ordinary smooth ODE that any solver can follow.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ._checks import check_points
from .continuity import _check_divergence_args, _check_grad_mode, _draw_probes, _field_and_divergence
from .sampler import _check_method, _check_tol, _integrate

__all__ = ["standard_normal_log_prob", "log_likelihood"]

VectorField = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


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


def _log_p0(log_p0, x_0):
    """log_p0(x_0) with a check that it is a tensor of shape (n,)."""
    if not callable(log_p0):
        raise ValueError(f"log_p0 must be callable, mapping (n, d) points to (n,) log-densities, got {log_p0!r}")
    out = log_p0(x_0)
    if not isinstance(out, torch.Tensor) or out.shape != (x_0.shape[0],):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"log_p0 must return log-densities of shape ({x_0.shape[0]},), got {got}")
    return out


def log_likelihood(v: VectorField, x_1: torch.Tensor, method: str = "dopri5", *, n_steps: int | None = None,
                   rtol: float = 1e-5, atol: float = 1e-5, divergence: str = "exact", n_probes: int = 1,
                   probe: str = "rademacher", probes: torch.Tensor | None = None,
                   generator: torch.Generator | None = None,
                   log_p0: Callable[[torch.Tensor], torch.Tensor] = standard_normal_log_prob) -> torch.Tensor:
    r"""Log-likelihood :math:`\log p_1(x_1)` of the flow of v by the instantaneous change of variables
    (book eqs. ``eq-log-likelihood`` and ``eq-augmented-ode``; Chen et al. 2018, Grathwohl et al. 2019).

    Solves the augmented ODE backwards from t = 1 to t = 0,

    .. math:: \frac{d}{dt}\begin{pmatrix} x_t \\ \ell_t \end{pmatrix} =
              \begin{pmatrix} v(t, x_t) \\ \nabla\cdot v(t, x_t) \end{pmatrix}, \qquad
              x_1 \text{ given},\ \ell_1 = 0,

    so that :math:`\ell_0 = -\int_0^1 \nabla\cdot v(t, x_t)\,dt` and :math:`\log p_1(x_1) = \log p_0(x_0) +
    \ell_0`. With ``divergence="hutchinson"`` the divergence is Hutchinson's estimate with probes drawn once per call
    (or the given ``probes``), which makes the result an unbiased estimate up to the solver's error.

    Args:
        v: vector field ``v(t, x)``, differentiable in x.
        x_1: points whose log-density is wanted, shape (n, d).
        method, n_steps, rtol, atol: as in :func:`fmlib.sampler.solve` (default: dopri5 at tolerances 1e-5).
        divergence: "exact" (autograd, d backward passes per evaluation: for small d) or "hutchinson".
        n_probes, probe, probes, generator: Hutchinson's probes, as in :func:`fmlib.continuity.divergence`.
        log_p0: log-density of the source p_0 at t = 0, mapping (n, d) to (n,) (default: standard normal).

    Returns:
        :math:`\log p_1(x_1)` in nats, shape (n,), detached from autograd. To count the evaluations of v, pass
        ``fmlib.EvaluationCounter(v)``.

    Raises:
        ValueError: for a bad x_1, method, n_steps, tolerance, divergence, n_probes, probe, probes or generator, a
            v that is not callable or returns another shape than x, or a log_p0 that does not return shape (n,).
    """
    if not callable(v):
        raise ValueError(f"v must be callable as v(t, x), got {type(v).__name__}")
    if not callable(log_p0):
        raise ValueError(f"log_p0 must be callable, mapping (n, d) points to (n,) log-densities, got {log_p0!r}")
    _check_grad_mode()
    x_1 = check_points("x_1", x_1)
    n_steps = _check_method(method, n_steps)
    rtol, atol = _check_tol("rtol", rtol), _check_tol("atol", atol)
    n_probes, probes = _check_divergence_args("divergence", divergence, n_probes, probe, probes, generator, x_1)
    if divergence == "hutchinson" and probes is None:
        probes = _draw_probes(x_1, n_probes, probe, generator)

    def f(t, state):  # the augmented field: (v, div v), with the probes held fixed along the whole solve
        u, div = _field_and_divergence(v, t, state[0], divergence, probes)
        return u, div.unsqueeze(1)

    zero = torch.zeros(x_1.shape[0], 1, dtype=x_1.dtype, device=x_1.device)
    with torch.no_grad():
        x_0, integral = _integrate(f, (x_1, zero), 1.0, 0.0, method, n_steps, rtol, atol)
    if not bool(torch.isfinite(x_0).all() & torch.isfinite(integral).all()):  # once per call, not per step
        raise ValueError(f"the backward solve is not finite: v(t, x) or its divergence produced NaN/inf, or the "
                         f"{method} solve diverged")
    return _log_p0(log_p0, x_0) + integral.squeeze(1)
