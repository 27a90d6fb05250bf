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

from ._checks import as_time, check_bool, check_choice, check_finite, check_generator, check_points, check_positive_int

__all__ = ["divergence", "continuity_terms", "continuity_residual", "DIVERGENCES", "PROBES"]

DIVERGENCES = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")

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


def _hutchinson(u: torch.Tensor, x: torch.Tensor, probes: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """Hutchinson's estimate: the mean over the probes eps (shape (k, n, d)) of eps^T (du/dx) eps, shape (n,)."""
    div = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    if not u.requires_grad:
        return div
    for eps in probes:  # one vector-Jacobian product per probe
        (vjp,) = torch.autograd.grad((u * eps).sum(), x, create_graph=create_graph, retain_graph=True,
                                     allow_unused=True)
        if vjp is not None:
            div = div + (vjp * eps).sum(dim=1)
    return div / len(probes)


def _draw_probes(x, n_probes, probe, generator):
    eps = torch.randn((n_probes,) + tuple(x.shape), generator=generator, device=x.device, dtype=x.dtype)
    return eps.sign() if probe == "rademacher" else eps  # sign of a Gaussian: +-1 with probability 1/2 each


def _check_divergence_args(name, method, n_probes, probe, probes, generator, x):
    """Checks the divergence arguments of :func:`divergence` and :func:`fmlib.ode.log_likelihood` (``name``: the
    method's argument name there); returns n_probes and the given ``probes`` in x's dtype and device (or None)."""
    check_choice(name, method, DIVERGENCES)
    n_probes = check_positive_int("n_probes", n_probes)
    check_choice("probe", probe, PROBES)
    check_generator("generator", generator)
    if probes is not None:
        if method != "hutchinson":
            raise ValueError(f"probes are only used with the 'hutchinson' divergence, got {method!r}")
        if (not isinstance(probes, torch.Tensor) or probes.ndim != 3 or tuple(probes.shape[1:]) != tuple(x.shape)
                or probes.shape[0] == 0 or not probes.is_floating_point()):
            got = (f"shape {tuple(probes.shape)}, dtype {probes.dtype}" if isinstance(probes, torch.Tensor)
                   else type(probes).__name__)
            raise ValueError(f"probes must be a floating-point tensor of shape (n_probes, {x.shape[0]}, {x.shape[1]}) "
                             f"with n_probes >= 1, got {got}")
        check_finite("probes", probes)
        probes = probes.to(dtype=x.dtype, device=x.device)
    return n_probes, probes


def _field_and_divergence(v, t, x, method, probes):
    """v(t, x) and its divergence (exact, or Hutchinson with the fixed ``probes``), both detached: the right-hand
    side of the likelihood's augmented ODE, evaluated at every solver stage (no argument checks)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        u = _call_field(v, t, x)
        div = _divergence(u, x, False) if method == "exact" else _hutchinson(u, x, probes, False)
    return u.detach(), div.detach()


def _check_grad_mode():
    if torch.is_inference_mode_enabled():  # enable_grad cannot record there: every derivative would come out 0
        raise ValueError("derivatives by autograd cannot be taken inside torch.inference_mode(); call this outside "
                         "it (torch.no_grad() is fine)")


def _prepare(t, x):
    """t as (n, 1) and x, both requiring grad; inputs that already require grad stay connected to their graph."""
    _check_grad_mode()
    x = check_points("x", x)
    t = as_time(t, x)
    x = x if x.requires_grad else x.detach().clone().requires_grad_(True)
    t = t if t.requires_grad else t.detach().clone().requires_grad_(True)
    return t, x


def divergence(v: VectorField, t, x: torch.Tensor, *, method: str = "exact", n_probes: int = 1,
               probe: str = "rademacher", probes: torch.Tensor | None = None,
               generator: torch.Generator | None = None, create_graph: bool = False) -> torch.Tensor:
    r"""The divergence :math:`\nabla\cdot v_t(x) = \operatorname{tr} \tfrac{\partial v_t}{\partial x}(x) =
    \sum_{i=1}^d \partial v^{(i)}_t(x) / \partial x^{(i)}`, exactly or by Hutchinson's estimator.

    ``method="exact"`` takes one autograd backward pass per dimension (d in all): exact up to rounding, for small d.
    Used in the continuity equation (book eq. ``eq-continuity``; Lipman et al. 2023, Section 2) and the
    likelihood (book eq. ``eq-log-likelihood``). ``method="hutchinson"`` averages :math:`\varepsilon^\top
    \tfrac{\partial v}{\partial x} \varepsilon` over ``n_probes`` probes with :math:`E[\varepsilon
    \varepsilon^\top] = I` (book eq. ``eq-hutchinson``; Hutchinson 1989), one backward pass each: unbiased, with
    the variance of book eq. ``eq-hutchinson-variance`` divided by ``n_probes``.

    Args:
        v: vector field called as ``v(t, x)`` with t of shape (n, 1) and x of shape (n, d); returns shape (n, d).
            Each output row may depend only on the same input row.
        t: times in [0, 1]: float, 0-d tensor, shape (n,) or (n, 1).
        x: points, shape (n, d), floating point (use float64 for tight tolerances).
        method: "exact" or "hutchinson".
        n_probes: number of Hutchinson probes per point, a positive int.
        probe: "rademacher" (entries +-1; never a larger variance) or "gaussian".
        probes: optional fixed probes, shape (n_probes, n, d) (then ``n_probes``, ``probe`` and ``generator`` are
            unused).
        generator: optional ``torch.Generator`` on x's device for the probes.
        create_graph: keep the graph so that the result can be differentiated again (default False: the result
            is detached).

    Returns:
        the divergence at each point, shape (n,), in units of 1 / time.

    Raises:
        ValueError: if v is not callable, x is not a finite (n, d) float tensor, t has a bad shape or lies outside
            [0, 1], v returns a shape other than x's, or for a bad method, n_probes, probe, probes or generator.
    """
    _check_callable("v", v)
    create_graph = check_bool("create_graph", create_graph)
    n_probes, probes = _check_divergence_args("method", method, n_probes, probe, probes, generator,
                                              check_points("x", x))
    t, x = _prepare(t, x)
    if method == "hutchinson" and probes is None:
        probes = _draw_probes(x, n_probes, probe, generator)
    with torch.enable_grad():
        u = _call_field(v, t, x)
        div = _divergence(u, x, create_graph) if method == "exact" else _hutchinson(u, x, probes, create_graph)
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
        the pair ``(dp_dt, div_flux)`` of :math:`\partial_t p_t(x)` and :math:`\nabla\cdot(p_t v_t)(x)`, each of shape (n,),
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
