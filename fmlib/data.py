r"""2-D toy data sets :math:`x_1 \sim q` (book chapter "Training a flow on an annulus").

Each sampler is called as ``sampler(n, generator=None, device=None, dtype=torch.float32)`` and returns a tensor of
shape (n, 2). New toy sets join by adding a function of that form to :data:`TOY_DATASETS`.
"""

from __future__ import annotations

import math
import numbers

import torch

from ._checks import (check_choice, check_device, check_float_dtype, check_generator, check_points,
                      check_positive_int)

__all__ = ["sample_annulus", "annulus_log_prob", "annulus_entropy", "TOY_DATASETS", "get_dataset"]


def _check_radii(r_inner, r_outer):
    for name, r in (("r_inner", r_inner), ("r_outer", r_outer)):
        if isinstance(r, bool) or not isinstance(r, numbers.Real) or not math.isfinite(r) or abs(r) > 1e30:
            raise ValueError(f"{name} must be a finite number of at most 1e30, got {r!r}")
    if not (0 <= r_inner < r_outer):
        raise ValueError(f"radii must satisfy 0 <= r_inner < r_outer, got r_inner={r_inner!r}, r_outer={r_outer!r}")


def sample_annulus(n: int, generator: torch.Generator | None = None, device=None, dtype=torch.float32, *,
                   r_inner: float = 2.0, r_outer: float = 3.0, u: torch.Tensor | None = None) -> torch.Tensor:
    r"""Points on the annulus: angle :math:`\theta \sim U[0, 2\pi)`, radius :math:`r \sim U[r_{in}, r_{out}]`.

    Note that the radius is uniform, not the area: the density is :math:`q(x) = 1 / (2\pi (r_{out} - r_{in}) |x|)`
    on the annulus (see :func:`annulus_log_prob`).

    Args:
        n: number of points, a positive int.
        generator: optional ``torch.Generator`` on ``device``.
        device, dtype: where and in which precision (dtype: a floating-point dtype; None: torch's default).
        r_inner, r_outer: radii with 0 <= r_inner < r_outer (default 2 and 3).
        u: optional uniforms in [0, 1] of shape (n, 2) to use instead of drawing them: column 0 sets the angle
            :math:`2\pi u_0`, column 1 the radius :math:`r_{in} + (r_{out} - r_{in}) u_1` (e.g. the quasi-random
            points of :func:`fmlib.train_cfm` with ``data_uniforms=2``); ``generator`` is then not used.

    Returns:
        shape (n, 2).

    Raises:
        ValueError: if n is not a positive integer, the radii are invalid, generator, device or dtype are bad, or u
            is not a float tensor of shape (n, 2) with values in [0, 1].
    """
    n = check_positive_int("n", n)
    _check_radii(r_inner, r_outer)
    check_generator("generator", generator)
    if device is not None:
        device = check_device("device", device)
    dtype = torch.get_default_dtype() if dtype is None else check_float_dtype("dtype", dtype)
    if u is None:
        u = torch.rand(n, 2, generator=generator, device=device, dtype=dtype)
    else:  # given uniforms, e.g. quasi-random ones (fmlib.train_cfm with data_uniforms=2)
        if not isinstance(u, torch.Tensor) or u.shape != (n, 2) or not u.is_floating_point():
            got = f"shape {tuple(u.shape)}, dtype {u.dtype}" if isinstance(u, torch.Tensor) else type(u).__name__
            raise ValueError(f"u must be a floating-point tensor of shape (n, 2) = ({n}, 2), got {got}")
        if not bool(((u >= 0) & (u <= 1)).all()):
            raise ValueError("u must hold numbers in [0, 1] (uniforms for the angle and the radius), got values "
                             "outside it or NaN")
        u = u.to(device=u.device if device is None else device, dtype=dtype)
    theta = 2 * math.pi * u[:, 0]
    r = r_inner + (r_outer - r_inner) * u[:, 1]
    return torch.stack([r * torch.cos(theta), r * torch.sin(theta)], dim=1)


def annulus_log_prob(x: torch.Tensor, *, r_inner: float = 2.0, r_outer: float = 3.0) -> torch.Tensor:
    r"""Exact log-density of :func:`sample_annulus`: :math:`-\log(2\pi (r_{out} - r_{in}) |x|)` inside, -inf outside.

    Args:
        x: points, shape (n, 2).

    Returns:
        log-densities in nats, shape (n,).

    Raises:
        ValueError: if x is not a finite (n, 2) float tensor or the radii are invalid.
    """
    x = check_points("x", x, dim=2)
    _check_radii(r_inner, r_outer)
    r = x.norm(dim=1)
    inside = (r >= r_inner) & (r <= r_outer)
    # the constant in Python floats, so that it cannot overflow in x's dtype
    lp = -math.log(2 * math.pi * (r_outer - r_inner)) - torch.log(r.clamp_min(torch.finfo(r.dtype).tiny))
    return torch.where(inside, lp, torch.full_like(lp, -math.inf))


def annulus_entropy(r_inner: float = 2.0, r_outer: float = 3.0) -> float:
    r"""Differential entropy of :func:`sample_annulus` in nats: :math:`\log(2\pi(r_{out}-r_{in})) + E[\log r]`.

    With :math:`r \sim U[a, b]`, :math:`E[\log r] = (b \log b - a \log a)/(b - a) - 1`. For the default radii this
    is 2.7474 nats, the lowest expected negative log-likelihood any model can reach on annulus samples.
    """
    _check_radii(r_inner, r_outer)
    a, b = float(r_inner), float(r_outer)
    a_log_a = a * math.log(a) if a > 0 else 0.0
    e_log_r = (b * math.log(b) - a_log_a) / (b - a) - 1
    return math.log(2 * math.pi * (b - a)) + e_log_r


TOY_DATASETS = {"annulus": sample_annulus}


def get_dataset(name: str):
    """Return the sampler of a toy data set by name (one of :data:`TOY_DATASETS`).

    Raises:
        ValueError: for an unknown name.
    """
    return TOY_DATASETS[check_choice("name", name, TOY_DATASETS)]
