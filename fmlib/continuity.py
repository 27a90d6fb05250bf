r"""The continuity equation, evaluated with autograd (book chapter "The continuity equation").

A vector field :math:`u_t` generates a probability density path :math:`p_t` exactly when the continuity equation
(book eq. ``eq-continuity``; Lipman et al. 2023, Section 2 and Appendix; the "mass conservation formula")

.. math:: \partial_t p_t(x) + \nabla \cdot \big(p_t(x)\, u_t(x)\big) = 0

holds for all t and x. This module evaluates its left-hand side, the *residual*, at given points, so that a
chapter (or a test) can check a claimed pair :math:`(p_t, u_t)` numerically.

How it is computed. The density is given by its logarithm, ``log_p(t, x)``, because densities underflow far from
their mass while log-densities do not, and because mixtures are naturally written with ``logsumexp``. With
:math:`p = e^{\log p}` the product rule gives

.. math:: \partial_t p + \nabla\cdot(p\,u) = p\,\big(\partial_t \log p + u\cdot\nabla\log p + \nabla\cdot u\big),

where :math:`\partial_t \log p` and :math:`\nabla \log p` come from one backward pass and the divergence
:math:`\nabla\cdot u = \sum_i \partial u^{(i)} / \partial x^{(i)}` is computed exactly, with one backward pass per
dimension (fine for the book's small d; it costs d backward passes).

Call conventions. Both callables are evaluated at a batch of points: ``log_p(t, x)`` and ``v(t, x)`` receive
``t`` of shape (n, 1) and ``x`` of shape (n, d); ``log_p`` returns shape (n,) and ``v`` returns shape (n, d). Each
output row must depend only on the same input row (as for any function applied point by point), because per-point
derivatives are taken as gradients of the batch sum.
"""

from __future__ import annotations

from typing import Callable

import torch

from ._checks import as_time, check_points

__all__ = ["divergence", "continuity_terms", "continuity_residual"]

VectorField = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LogDensity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _check_callable(name: str, f) -> None:
    if not callable(f):
        raise ValueError(f"{name} must be callable as {name}(t, x), got {type(f).__name__}")


def _call_field(v: VectorField, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    out = v(t, x)
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"v(t, x) must return a tensor of shape {tuple(x.shape)} (the shape of x), got {got}")
    return out


def _divergence(u: torch.Tensor, x: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """Sum of the diagonal of du/dx for u of shape (n, d) computed from x (requires_grad), shape (n,)."""
    div = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    if not u.requires_grad:  # u does not depend on x (e.g. a constant field): zero divergence
        return div
    for i in range(x.shape[1]):
        (g,) = torch.autograd.grad(u[:, i].sum(), x, create_graph=create_graph, retain_graph=True, allow_unused=True)
        if g is not None:  # u^(i) does not depend on x at all: its derivative is 0
            div = div + g[:, i]
    return div


def _prepare(t, x):
    x = check_points("x", x)
    t = as_time(t, x)
    return t.detach().clone().requires_grad_(True), x.detach().clone().requires_grad_(True)


def divergence(v: VectorField, t, x: torch.Tensor, *, create_graph: bool = False) -> torch.Tensor:
    r"""Exact divergence :math:`\nabla\cdot v_t(x) = \sum_{i=1}^d \partial v^{(i)}_t(x) / \partial x^{(i)}`.

    Computed with one autograd backward pass per dimension (d passes in all), so it is exact up to rounding but
    meant for small d. Used in the continuity equation (book eq. ``eq-continuity``; Lipman et al. 2023, Section 2).

    Args:
        v: vector field called as ``v(t, x)`` with t of shape (n, 1) and x of shape (n, d); returns shape (n, d).
            Each output row may depend only on the same input row.
        t: times in [0, 1]: float, 0-d tensor, shape (n,) or (n, 1).
        x: points, shape (n, d), floating point (use float64 for tight tolerances).
        create_graph: keep the graph so that the result can be differentiated again (default False: the result
            is detached).

    Returns:
        the divergence at each point, shape (n,), in units of 1 / time.

    Raises:
        ValueError: if v is not callable, x is not a finite (n, d) float tensor, t has a bad shape or lies outside
            [0, 1], or v returns a shape other than x's.
    """
    _check_callable("v", v)
    t, x = _prepare(t, x)
    with torch.enable_grad():
        u = _call_field(v, t, x)
        div = _divergence(u, x, create_graph)
    return div if create_graph else div.detach()


def continuity_terms(log_p: LogDensity, v: VectorField, t, x: torch.Tensor, *, create_graph: bool = False):
    r"""The two terms :math:`\partial_t p_t(x)` and :math:`\nabla\cdot(p_t(x)\, v_t(x))` of the continuity equation.

    Book eq. ``eq-continuity``; Lipman et al. (2023), Section 2 (and the proof of Theorem 1 in Appendix A). With
    :math:`p = e^{\log p}`: :math:`\partial_t p = p\,\partial_t \log p` and
    :math:`\nabla\cdot(p v) = p\,(v\cdot\nabla \log p + \nabla\cdot v)`, all derivatives by autograd (see the
    module docstring). Their sum is the residual (:func:`continuity_residual`); their sizes set the scale against
    which a residual is small.

    Args:
        log_p: log-density ``log_p(t, x)``, called with t of shape (n, 1) and x of shape (n, d), returning the
            log-densities in nats, shape (n,). Must be differentiable in t and x.
        v: vector field ``v(t, x)``, same arguments, returning shape (n, d).
        t: times in [0, 1]: float, 0-d tensor, shape (n,) or (n, 1).
        x: points, shape (n, d), floating point (use float64 for tight tolerances).
        create_graph: keep the graph for further differentiation (default False: results are detached).

    Returns:
        ``(dp_dt, div_flux)``, each of shape (n,): :math:`\partial_t p_t(x)` and :math:`\nabla\cdot(p_t v_t)(x)`,
        in units of density per unit time.

    Raises:
        ValueError: if log_p or v is not callable, x is not a finite (n, d) float tensor, t has a bad shape or lies
            outside [0, 1], log_p does not return shape (n,), v does not return shape (n, d), or log_p is not
            differentiable in t or x.
    """
    _check_callable("log_p", log_p)
    _check_callable("v", v)
    t, x = _prepare(t, x)
    n = x.shape[0]
    with torch.enable_grad():
        lp = log_p(t, x)
        if not isinstance(lp, torch.Tensor) or lp.shape != (n,):
            got = tuple(lp.shape) if isinstance(lp, torch.Tensor) else type(lp).__name__
            raise ValueError(f"log_p(t, x) must return a tensor of shape ({n},) (one log-density per point), got {got}")
        if not lp.requires_grad:
            raise ValueError("log_p(t, x) must be differentiable in t and x (its output does not require grad)")
        dlogp_dt, grad_logp = torch.autograd.grad(lp.sum(), (t, x), create_graph=create_graph, retain_graph=True,
                                                  allow_unused=True)
        dlogp_dt = torch.zeros_like(t) if dlogp_dt is None else dlogp_dt
        grad_logp = torch.zeros_like(x) if grad_logp is None else grad_logp
        u = _call_field(v, t, x)
        div_u = _divergence(u, x, create_graph)
        p = lp.exp()
        dp_dt = p * dlogp_dt.squeeze(1)
        div_flux = p * ((u * grad_logp).sum(dim=1) + div_u)
    if not create_graph:
        dp_dt, div_flux = dp_dt.detach(), div_flux.detach()
    return dp_dt, div_flux


def continuity_residual(log_p: LogDensity, v: VectorField, t, x: torch.Tensor, *,
                        create_graph: bool = False) -> torch.Tensor:
    r"""Residual :math:`\partial_t p_t(x) + \nabla\cdot(p_t(x)\, v_t(x))` of the continuity equation.

    Zero for all t and x exactly when v generates the density path p (book eq. ``eq-continuity``; Lipman et al.
    2023, Section 2 and Appendix A). Numerically it is zero up to rounding: compare it with the size of the two
    terms from :func:`continuity_terms`, e.g. ``max|residual| / max(|dp_dt|, |div_flux|)``, which is about
    1e-15 in float64 for an exact pair.

    Args:
        log_p: log-density ``log_p(t, x)``: t of shape (n, 1), x of shape (n, d) -> shape (n,), in nats.
        v: vector field ``v(t, x)``: same arguments -> shape (n, d).
        t: times in [0, 1]: float, 0-d tensor, shape (n,) or (n, 1).
        x: points, shape (n, d), floating point (use float64 for tight tolerances).
        create_graph: keep the graph for further differentiation (default False: the result is detached).

    Returns:
        the residual at each point, shape (n,), in units of density per unit time.

    Raises:
        ValueError: as :func:`continuity_terms`.
    """
    dp_dt, div_flux = continuity_terms(log_p, v, t, x, create_graph=create_graph)
    return dp_dt + div_flux
