r"""Couplings of noise and data, and how straight a flow's paths are (book chapter "Straight paths").

The CFM loss holds for any coupling :math:`\pi(x_0, x_1)` whose marginals are :math:`p_0 = \mathcal N(0, I)` and
the data distribution q (book eq. ``eq-sp-coupled-loss``). The independent coupling draws the two apart; minibatch
optimal transport (Pooladian et al. 2023; Tong et al. 2024) re-pairs each batch by the exact assignment that
minimises the summed squared distance (:func:`ot_permutation`, book eq. ``eq-sp-assignment``); rectified flow (Liu
et al. 2023) trains again on pairs (x_0, x-hat_1) that a trained flow makes (:func:`reflow_pairs`).
:func:`straightness` measures how far a flow's paths are from straight lines (book eq. ``eq-sp-straightness``).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np
import torch

from ._checks import (check_choice, check_device, check_float_dtype, check_generator, check_points,
                      check_positive_int)
from .sampler import solve

__all__ = ["ot_permutation", "reflow_pairs", "straightness", "Straightness"]


def ot_permutation(x_0: torch.Tensor, x_1: torch.Tensor) -> torch.Tensor:
    r"""The exact minibatch optimal-transport pairing: the permutation :math:`\tau` of the batch that minimises
    :math:`\sum_i \lVert x_0[i] - x_1[\tau(i)] \rVert^2` (book eq. ``eq-sp-assignment``; Tong et al. 2024, Sec. 3.2;
    Pooladian et al. 2023, Sec. 3).

    The cost matrix is formed in float64 on the CPU and solved exactly by POT's network simplex ``ot.emd`` with
    uniform weights 1/n, whose optimal plan is a vertex of the Birkhoff polytope, i.e. a permutation matrix divided
    by n; without POT (or should its plan not be a permutation) by ``scipy.optimize.linear_sum_assignment``. The
    pairing is one-to-one: every point of either batch is used once, unlike pairs sampled from a plan with
    replacement. Ties (several optimal permutations) are broken as the solver breaks them. Needs POT or scipy
    (``pip install fmlib[plot]``).

    Args:
        x_0: noise points, shape (n, d).
        x_1: data points, shape (n, d), the same n and d.

    Returns:
        ``perm``, an int64 tensor of shape (n,) on x_1's device, a permutation of 0..n-1: the pairs are
        ``(x_0[i], x_1[perm[i]])``. The inputs are not changed.

    Raises:
        ValueError: if x_0 or x_1 is not a finite floating-point (n, d) tensor, their shapes differ, or their
            squared distances overflow float64 (entries beyond about 1e154).
    """
    x_0 = check_points("x_0", x_0)
    x_1 = check_points("x_1", x_1)
    if x_0.shape != x_1.shape:
        raise ValueError(f"x_0 and x_1 must have the same shape (n, d), got {tuple(x_0.shape)} and "
                         f"{tuple(x_1.shape)}")
    return _ot_permutation(x_0, x_1)


def _ot_permutation(x_0, x_1):
    """:func:`ot_permutation` without input checks, for the training loop."""
    n = x_0.shape[0]
    a = x_0.detach().to("cpu", torch.float64)
    b = x_1.detach().to("cpu", torch.float64)
    cost = torch.cdist(a, b).square_().numpy()  # cost[i, j] = |x_0[i] - x_1[j]|^2
    if not np.isfinite(cost).all():  # finite points far apart (~1e154) overflow; the solvers would fail obscurely
        raise ValueError("x_0 and x_1 are too large for the optimal-transport pairing: their squared distances "
                         "overflow float64 (scale the points down)")
    try:
        import ot  # POT's network simplex: several times faster than scipy's solver for n >= 256
    except ImportError:
        ot = None
    if ot is not None and n > 1:
        weights = np.full(n, 1.0 / n)
        plan = ot.emd(weights, weights, cost)  # a vertex of the Birkhoff polytope: a permutation matrix / n
        cols = plan.argmax(axis=1)
        if np.array_equal(np.sort(cols), np.arange(n)) and np.allclose(plan[np.arange(n), cols], 1.0 / n):
            return torch.from_numpy(cols.astype(np.int64)).to(x_1.device)
    from scipy.optimize import linear_sum_assignment  # without POT, or if its plan was not a permutation

    rows, cols = linear_sum_assignment(cost)  # rows is 0..n-1 in order
    return torch.from_numpy(cols.astype(np.int64)).to(x_1.device)


class Straightness(NamedTuple):
    """What :func:`straightness` returns."""
    straightness: float  #: S(v), book eq. ``eq-sp-straightness``
    transport_cost: float  #: :math:`\mathbb E \lVert \hat x_1 - x_0 \rVert^2`, the squared length of the line between the ends
    x_end: torch.Tensor  #: the end points :math:`\hat x_1`, shape (n, d)


def straightness(v: Callable, x_0: torch.Tensor, n_steps: int = 32, method: str = "rk4") -> Straightness:
    r"""The straightness of the flow of v along its own paths, and its transport cost (book eq.
    ``eq-sp-straightness``; Liu et al. 2023, Def. 3.1):

    .. math:: S(v) = \int_0^1 \mathbb E \big\lVert (\hat x_1 - \hat x_0) - v(t, \hat x_t) \big\rVert^2 \, dt,
              \qquad \tfrac{d}{dt}\hat x_t = v(t, \hat x_t),\ \hat x_0 = x_0 .

    S(v) = 0 exactly when every path is a straight line run at constant speed. The paths come from :func:`solve`
    with ``n_steps`` fixed steps of ``method`` (their trajectory at :math:`t_k = k/K`); the integral over t is the
    trapezoidal rule on that grid, and the expectation the mean over the rows of x_0.

    Args:
        v: vector field ``v(t, x)``.
        x_0: starting points, shape (n, d) with n >= 1 (e.g. noise drawn from N(0, I)).
        n_steps: K, the number of solver steps and of trapezoids, a positive int.
        method: a fixed-step method of :func:`solve`: "euler", "midpoint" or "rk4".

    Returns:
        :class:`Straightness` ``(straightness, transport_cost, x_end)``: S(v), the mean of
        :math:`\lVert \hat x_1 - x_0 \rVert^2` and the end points.

    Raises:
        ValueError: for a method other than the three above (an adaptive one has no fixed grid), an empty x_0
            (n = 0: no mean to take), and as :func:`solve` (bad x_0, v or n_steps).
    """
    x_0 = check_points("x_0", x_0)
    if x_0.shape[0] == 0:
        raise ValueError("x_0 must hold at least one point (straightness is a mean over its rows), got shape "
                         f"{tuple(x_0.shape)}")
    n_steps = check_positive_int("n_steps", n_steps)
    check_choice("method", method, ("euler", "midpoint", "rk4"))  # fixed steps: the trajectory has a grid
    x_end, traj = solve(v, x_0, n_steps, method, return_trajectory=True)
    chord = x_end - x_0  # (n, d): the straight line's velocity
    dev = torch.empty(n_steps + 1, dtype=torch.float64)
    with torch.no_grad():
        for k in range(n_steps + 1):
            t = torch.tensor(k / n_steps, dtype=x_0.dtype, device=x_0.device)
            dev[k] = ((chord - v(t, traj[k])) ** 2).sum(dim=1).mean().double().cpu()
    s = float(((dev[1:] + dev[:-1]) / 2).sum() / n_steps)  # trapezoidal rule
    cost = float((chord ** 2).sum(dim=1).mean())
    return Straightness(s, cost, x_end)


def reflow_pairs(v: Callable, n: int, dim: int, *, method: str = "dopri5", n_steps: int | None = None,
                 rtol: float = 1e-5, atol: float = 1e-5, generator: torch.Generator | None = None,
                 device=None, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Pairs for rectified flow (Liu et al. 2023, Alg. 1; book section "Rectified flow"): noise
    :math:`x_0 \sim \mathcal N(0, I)` and the point :math:`\hat x_1` that the flow of v carries it to.

    Training again on these pairs (``train_cfm(..., coupling="paired")``) learns a field whose paths are usually
    straighter: the new coupling is deterministic, so the conditional paths of different pairs cross less. (For the
    exact minimiser of the loss and exact ODE solutions, Liu et al. 2023 show that the new coupling costs no more for
    every convex cost, and bound the straightness summed over repeated reflows; a trained network's straightness is
    measured with :func:`straightness`.)

    Args:
        v: the trained vector field ``v(t, x)``.
        n: number of pairs, a positive int.
        dim: d, a positive int.
        method, n_steps, rtol, atol: as in :func:`solve` (default: dopri5 with tolerances 1e-5).
        generator: optional ``torch.Generator`` on ``device`` for the noise.
        device, dtype: of the noise (and of the solve); device default: the generator's, else the CPU; dtype a
            floating-point torch.dtype (default float32).

    Returns:
        ``(x_0, x_1)``, two tensors of shape (n, dim).

    Raises:
        ValueError: for a bad n, dim, generator, device (or a generator on another device) or dtype, and as
            :func:`solve`.
    """
    n = check_positive_int("n", n)
    dim = check_positive_int("dim", dim)
    check_generator("generator", generator)
    device = generator.device if device is None and generator is not None else device
    device = torch.device("cpu") if device is None else check_device("device", device)
    if generator is not None and generator.device.type != device.type:
        raise ValueError(f"generator is on {generator.device} but device is {device}: a generator draws on its own "
                         f"device")
    dtype = check_float_dtype("dtype", dtype)
    x_0 = torch.randn(n, dim, generator=generator, device=device, dtype=dtype)
    return x_0, solve(v, x_0, n_steps, method, rtol=rtol, atol=atol)
