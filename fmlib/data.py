r"""2-D toy data sets :math:`x_1 \sim q`: the annulus of the book's chapters ("Training a flow on an annulus") and
the usual test beds of the flow literature (two moons, eight Gaussians, a checkerboard; Grathwohl et al. 2019).

Each sampler is called as ``sampler(n, generator=None, device=None, dtype=torch.float32)`` and returns a tensor of
shape (n, 2), drawn with ``generator`` (seeded results) and made on ``device``. New toy sets join by adding a
function of that form to :data:`TOY_DATASETS`.
"""

from __future__ import annotations

import math
import numbers

import torch

from ._checks import (check_choice, check_device, check_float_dtype, check_generator, check_points,
                      check_positive_int)

__all__ = ["sample_annulus", "annulus_log_prob", "annulus_entropy", "sample_moons", "sample_eight_gaussians",
           "sample_checkerboard", "TOY_DATASETS", "get_dataset"]


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
        ValueError: if n is not a positive integer, the radii are invalid, generator, device or dtype are bad (or
            the generator is on another device than ``device``), or u is not a float tensor of shape (n, 2) with
            values in [0, 1].
    """
    _check_radii(r_inner, r_outer)
    n, device, dtype = _sampler_args(n, generator, device, dtype)
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


def _sampler_args(n, generator, device, dtype):
    """Checked n, device and dtype of a sampler; the device defaults to the generator's."""
    n = check_positive_int("n", n)
    check_generator("generator", generator)
    if device is not None:
        device = check_device("device", device)
        if generator is not None and generator.device.type != device.type:
            raise ValueError(f"generator is on {generator.device} but device is {device}: a generator draws on its "
                             f"own device (make it with torch.Generator(device={str(device)!r}))")
    elif generator is not None:
        device = generator.device  # draw where the generator lives
    dtype = torch.get_default_dtype() if dtype is None else check_float_dtype("dtype", dtype)
    return n, device, dtype


def _check_scale(name, value, lowest_open=True):
    """A finite number > 0 (>= 0 with lowest_open=False) of at most 1e30, so that samples stay finite."""
    low_ok = value > 0 if lowest_open else value >= 0
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (low_ok and value <= 1e30):
        raise ValueError(f"{name} must be a number {'>' if lowest_open else '>='} 0 and at most 1e30, got {value!r}")
    return float(value)


def sample_moons(n: int, generator: torch.Generator | None = None, device=None, dtype=torch.float32, *,
                 noise: float = 0.1) -> torch.Tensor:
    r"""Two interleaving half circles ("two moons"), scikit-learn's ``make_moons`` scaled as in Grathwohl et al.
    (2019): :math:`2 m + (-1, -0.2)` for a point m of ``make_moons(noise=noise)``, so that the data lie in about
    [-3, 3] x [-2, 2].

    The points are made by scikit-learn on the CPU (its random state drawn from ``generator``, so seeded calls give
    the same points) and then moved to ``device``.

    Args:
        n: number of points, a positive int (the two moons get n // 2 and n - n // 2 points, shuffled).
        generator: optional ``torch.Generator``.
        device, dtype: where and in which precision (dtype: a floating-point dtype; None: torch's default).
        noise: standard deviation of the Gaussian noise added by ``make_moons`` (before the scaling by 2, so the
            points scatter by 2 noise around the arcs), a number in [0, 1e30].

    Returns:
        shape (n, 2).

    Raises:
        ValueError: for a bad n, generator, device, dtype or noise.
    """
    from sklearn.datasets import make_moons  # scikit-learn's data sets, imported only when used

    n, device, dtype = _sampler_args(n, generator, device, dtype)
    noise = _check_scale("noise", noise, lowest_open=False)
    seed = int(torch.randint(2 ** 31 - 1, (1,), generator=generator, device=device or "cpu"))
    points, _ = make_moons(n, noise=noise, random_state=seed)
    x = torch.as_tensor(points, dtype=torch.float64) * 2 + torch.tensor([-1.0, -0.2], dtype=torch.float64)
    return x.to(device=device, dtype=dtype)


def sample_eight_gaussians(n: int, generator: torch.Generator | None = None, device=None, dtype=torch.float32, *,
                           radius: float = 2 * math.sqrt(2), std: float = 0.5 / math.sqrt(2)) -> torch.Tensor:
    r"""An equal mixture of eight Gaussians :math:`N(c_k, \text{std}^2 I)` with centres :math:`c_k = r(\cos
    k\pi/4, \sin k\pi/4)`, k = 0, ..., 7, on a circle of radius r (Grathwohl et al. 2019's scaling by default:
    r = 2 sqrt 2, std = 0.5 / sqrt 2).

    Args:
        n: number of points, a positive int.
        generator: optional ``torch.Generator`` on ``device``.
        device, dtype: where and in which precision (dtype: a floating-point dtype; None: torch's default).
        radius: radius of the circle of centres, a number in (0, 1e30].
        std: standard deviation of each component, a number in (0, 1e30].

    Returns:
        shape (n, 2).

    Raises:
        ValueError: for a bad n, generator, device, dtype, radius or std.
    """
    n, device, dtype = _sampler_args(n, generator, device, dtype)
    radius, std = _check_scale("radius", radius), _check_scale("std", std)
    k = torch.randint(8, (n,), generator=generator, device=device)
    angle = (math.pi / 4) * k.to(dtype)
    centres = radius * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    return centres + std * torch.randn(n, 2, generator=generator, device=device, dtype=dtype)


def sample_checkerboard(n: int, generator: torch.Generator | None = None, device=None,
                        dtype=torch.float32) -> torch.Tensor:
    r"""Uniform on the eight dark squares of a 4 x 4 checkerboard on [-4, 4]^2 (squares of side 2; the dark ones
    are those with :math:`\lfloor x^{(1)}/2 \rfloor + \lfloor x^{(2)}/2 \rfloor` even; Grathwohl et al. 2019):
    density 1/32 on them, 0 elsewhere.

    Args:
        n: number of points, a positive int.
        generator: optional ``torch.Generator`` on ``device``.
        device, dtype: where and in which precision (dtype: a floating-point dtype; None: torch's default).

    Returns:
        shape (n, 2).

    Raises:
        ValueError: for a bad n, generator, device or dtype.
    """
    n, device, dtype = _sampler_args(n, generator, device, dtype)
    u = torch.rand(n, 2, generator=generator, device=device, dtype=dtype)
    column = torch.randint(4, (n,), generator=generator, device=device)  # which column of squares
    row = 2 * torch.randint(2, (n,), generator=generator, device=device) + column % 2  # a dark square in it
    return 2 * (torch.stack([column, row], dim=1).to(dtype) + u) - 4


TOY_DATASETS = {"annulus": sample_annulus, "moons": sample_moons, "eight_gaussians": sample_eight_gaussians,
                "checkerboard": sample_checkerboard}


def get_dataset(name: str):
    """Return the sampler of a toy data set by name: "annulus", "moons", "eight_gaussians" or "checkerboard" (the
    keys of :data:`TOY_DATASETS`), e.g. ``fmlib.get_dataset("moons")(1000, generator=g)``.

    Raises:
        ValueError: for an unknown name.
    """
    return TOY_DATASETS[check_choice("name", name, TOY_DATASETS)]
