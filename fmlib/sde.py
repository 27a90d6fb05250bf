r"""Sampling with a stochastic differential equation that has the same marginals as the flow (book chapter "Flow
matching and diffusion").

If the vector field :math:`u_t` generates the probability path :math:`p_t`, then for every noise scale
:math:`g_t \ge 0` the SDE (book eq. ``eq-dm-sde``; Song et al. 2021, whose reverse-time SDE and probability flow
ODE are the cases :math:`g_t^2 = \beta` and :math:`g_t = 0` for the VP path)

.. math:: dX_t = \big[u_t(X_t) + \tfrac{g_t^2}{2} \nabla \log p_t(X_t)\big]\, dt + g_t\, dB_t

has the same marginals :math:`p_t`: the score term's contribution to the Fokker-Planck equation cancels the
diffusion's (book eq. ``eq-dm-fokker-planck``). :func:`sde_drift` builds this drift from a velocity field alone,
through the score of the same Gaussian path (:meth:`fmlib.paths.GaussianPath.convert`), and
:func:`euler_maruyama` integrates it with fixed steps (book eq. ``eq-dm-euler-maruyama``; Kloeden and Platen
1992, Sec. 9.1):

.. math:: X_{k+1} = X_k + h\, b(t_k, X_k) + g_{t_k} \sqrt{h}\, \xi_k, \qquad \xi_k \sim \mathcal N(0, I),

with :math:`t_k = k/K`, :math:`h = 1/K`. The drift is called as ``b(t, x)`` with t a 0-d tensor and x of shape
(n, d), as the ODE solvers of :mod:`fmlib.sampler` call a vector field; with ``g = 0`` the method is Euler's.
"""

from __future__ import annotations

import numbers
from typing import Callable

import torch

from ._checks import as_time, check_bool, check_choice, check_generator, check_points, check_positive_int
from .paths import PREDICTIONS, GaussianPath

__all__ = ["sde_drift", "euler_maruyama"]

VectorField = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _check_g(g):
    """g as a callable of t: a number >= 0 becomes the constant schedule."""
    if callable(g):
        return g
    if isinstance(g, bool) or not isinstance(g, numbers.Real) or not (0 <= float(g) < float("inf")):
        raise ValueError(f"g must be a finite number >= 0 or a callable g(t), got {g!r}")
    value = float(g)
    return lambda t: value


def sde_drift(v: VectorField, path: GaussianPath, g, *, source: str = "velocity") -> VectorField:
    r"""The drift :math:`b_t(x) = u_t(x) + \tfrac{g_t^2}{2} \nabla \log p_t(x)` of the SDE with the marginals of
    ``path`` (book eq. ``eq-dm-sde``), from one evaluation of a network per call.

    The network's output is read as the ``source`` prediction (default: a velocity, as fmlib's networks are
    trained) and turned into the velocity and the score with :meth:`fmlib.paths.GaussianPath.convert`'s formulas
    (book eq. ``eq-dm-convert``). For the linear path with sigma_min = 0 the score is
    :math:`(t\, v - x) / (1 - t)`, which blows up at t = 1, so the drift stays bounded there only if
    :math:`g_t^2 = O(1 - t)` (e.g. :math:`g_t = 1 - t`; :math:`g_t \to 0` alone is not enough).

    Args:
        v: the network, called as ``v(t, x)`` (t a 0-d tensor or shape (n, 1), x of shape (n, d)).
        path: the :class:`fmlib.paths.GaussianPath` the network was trained on.
        g: the noise scale: a number >= 0 (constant) or a callable ``g(t)`` of a 0-d tensor t returning a
            number or a 0-d tensor >= 0.
        source: what ``v`` predicts, one of :data:`fmlib.paths.PREDICTIONS` (default ``"velocity"``).

    Returns:
        the drift ``b(t, x)``, shape (n, d), a callable for :func:`euler_maruyama`.

    Raises:
        ValueError: if v is not callable, path is not a GaussianPath, g is neither a number >= 0 nor callable, or
            source is unknown.
    """
    if not callable(v):
        raise ValueError(f"v must be callable as v(t, x), got {type(v).__name__}")
    if not isinstance(path, GaussianPath):
        raise ValueError(f"path must be a fmlib.paths.GaussianPath (e.g. LinearPath), got {type(path).__name__}")
    g = _check_g(g)
    check_choice("source", source, PREDICTIONS)

    def drift(t, x):
        tt = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(-1, 1)
        out = v(t, x)
        u_t = path._convert(tt, x, out, source, "velocity")
        score = path._convert(tt, x, out, source, "score")
        g_t = g(t)
        if isinstance(g_t, torch.Tensor) and g_t.ndim > 0:  # one time per row: (n,) -> (n, 1)
            g_t = g_t.reshape(-1, 1)
        return u_t + 0.5 * g_t ** 2 * score

    return drift


def euler_maruyama(b: VectorField, x_0: torch.Tensor, g, n_steps: int = 100, *,
                   generator: torch.Generator | None = None, noise: torch.Tensor | None = None,
                   t_start: float = 0.0, t_end: float = 1.0, return_trajectory: bool = False):
    r"""Integrate :math:`dX_t = b_t(X_t)\, dt + g_t\, dB_t` from ``t_start`` to ``t_end`` with K fixed
    Euler-Maruyama steps (book eq. ``eq-dm-euler-maruyama``; Kloeden and Platen 1992, Sec. 9.1).

    Step k evaluates the drift and the noise scale at :math:`t_k = t_{start} + k h`,
    :math:`h = (t_{end} - t_{start}) / K`, never at ``t_end`` itself (where the score of a path with
    :math:`\sigma_1 = 0` is infinite). For a smooth drift and this additive noise (g depends on t only): strong
    order 1 (it coincides with Milstein's scheme there) and weak order 1 (Kloeden and Platen 1992); with
    ``g = 0`` it is Euler's method, :func:`fmlib.solve` with ``method="euler"``. Runs under ``torch.no_grad()``.

    Args:
        b: drift ``b(t, x)``: t a 0-d tensor of x's dtype, x of shape (n, d) -> shape (n, d); e.g.
            :func:`sde_drift`.
        x_0: points at t_start, shape (n, d).
        g: the noise scale: a number >= 0 (constant) or a callable ``g(t)`` of a 0-d tensor t returning a
            number or a 0-d tensor >= 0.
        n_steps: number of steps K, a positive int (default 100).
        generator: optional ``torch.Generator`` on x_0's device for the Gaussian increments.
        noise: optional standard normal draws :math:`\xi_k`, shape (n_steps, n, d), used instead of drawing them
            (to follow a given Brownian path: :math:`\xi_k = (B_{t_{k+1}} - B_{t_k}) / \sqrt h`).
        t_start, t_end: the interval, numbers in [0, 1] with t_start < t_end.
        return_trajectory: also return the points at all K + 1 grid times.

    Returns:
        the points at t_end, shape (n, d); or ``(x_end, trajectory)`` with trajectory of shape (K + 1, n, d).

    Raises:
        ValueError: if x_0 is not a finite (n, d) float tensor, b is not callable, g is neither a number >= 0
            nor callable, n_steps is not a positive int, the times are not 0 <= t_start < t_end <= 1, a bad
            generator, noise of the wrong shape, dtype or device, or a result that is not finite (checked once, at
            the end).
    """
    x_0 = check_points("x_0", x_0)
    if not callable(b):
        raise ValueError(f"b must be callable as b(t, x), got {type(b).__name__}")
    g = _check_g(g)
    n_steps = check_positive_int("n_steps", n_steps)
    check_generator("generator", generator)
    return_trajectory = check_bool("return_trajectory", return_trajectory)
    for name, value in (("t_start", t_start), ("t_end", t_end)):
        as_time(value, x_0[:1], name=name)  # a number in [0, 1]
    if not (isinstance(t_start, numbers.Real) and isinstance(t_end, numbers.Real) and t_start < t_end):
        raise ValueError(f"t_start and t_end must be numbers with t_start < t_end, got {t_start!r} and {t_end!r}")
    if noise is not None:
        shape = (n_steps, *x_0.shape)
        if not isinstance(noise, torch.Tensor) or noise.shape != shape or noise.dtype != x_0.dtype \
                or noise.device != x_0.device:
            got = (f"shape {tuple(noise.shape)}, {noise.dtype} on {noise.device}" if isinstance(noise, torch.Tensor)
                   else type(noise).__name__)
            raise ValueError(f"noise must be a tensor of shape {shape}, dtype {x_0.dtype} on {x_0.device}, got {got}")
    h = (t_end - t_start) / n_steps
    x, trajectory = x_0, [x_0]
    with torch.no_grad():
        for k in range(n_steps):
            t = torch.tensor(((n_steps - k) * t_start + k * t_end) / n_steps, dtype=x.dtype, device=x.device)
            xi = noise[k] if noise is not None else torch.randn(x.shape, generator=generator, dtype=x.dtype,
                                                                device=x.device)
            x = x + h * b(t, x) + g(t) * h ** 0.5 * xi
            if return_trajectory:
                trajectory.append(x)
    if not bool(torch.isfinite(x).all()):  # once per solve, not per step
        raise ValueError(f"the solution is not finite: b(t, x) or g(t) produced NaN/inf, or {n_steps} steps were "
                         f"too few for the drift (try more steps or a noise scale whose square "
                         f"vanishes like 1 - t where the score blows up)")
    return (x, torch.stack(trajectory)) if return_trajectory else x
