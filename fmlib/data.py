r"""2-D toy data sets :math:`x_1 \sim q`: the annulus of the book's chapters ("Training a flow on an annulus") and
the usual test beds of the flow literature (two moons, eight Gaussians, a checkerboard; Grathwohl et al. 2019).

Each sampler is called as ``sampler(n, generator=None, device=None, dtype=torch.float32)`` and returns a tensor of
shape (n, 2), drawn with ``generator`` (seeded results) and made on ``device``. New toy sets join by adding a
function of that form to :data:`TOY_DATASETS`.

One real data set joins them (book chapter "Real data: handwritten digits"): scikit-learn's 8 x 8 handwritten
digits, with a fixed train/test split (:func:`load_digits_split`), uniform dequantisation and per-pixel scaling
(:func:`dequantize_digits`), the map back to grey levels (:func:`digits_to_pixels`) and the conversion of a density
of the scaled continuous data into bits per dimension of the discrete pixels (:func:`digits_bits_per_dim`).
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import numpy as np
import torch

from ._checks import (check_choice, check_device, check_finite, check_float_dtype, check_generator, check_int_in,
                      check_points, check_positive_int, check_seed)

__all__ = ["sample_annulus", "annulus_log_prob", "annulus_entropy", "sample_moons", "sample_eight_gaussians",
           "sample_checkerboard", "TOY_DATASETS", "get_dataset", "DIGITS_LEVELS", "DigitsSplit", "load_digits_split",
           "dequantize_digits", "digits_to_pixels", "digits_log_det", "digits_bits_per_dim"]


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


# --- real data: scikit-learn's handwritten digits ---------------------------------------------------------------

DIGITS_LEVELS = 17  # grey levels of a pixel of load_digits: the integers 0, 1, ..., 16


class DigitsSplit(NamedTuple):
    r"""The digits of :func:`load_digits_split`: integer pixels, labels, and the per-pixel scaling.

    Attributes:
        train_pixels: training images, shape (n_train, 64), int64 grey levels nu in {0, ..., 16} (row-major 8 x 8).
        train_labels: their digits, shape (n_train,), int64 in {0, ..., 9}.
        test_pixels: held-out images, shape (n_test, 64), as train_pixels.
        test_labels: their digits, shape (n_test,).
        mean: :math:`\mu^{(i)}`, the mean of the dequantised pixel :math:`(\nu^{(i)} + \xi^{(i)})/17` over the
            training images,
            shape (64,), float64.
        scale: :math:`s^{(i)}`, its standard deviation (of the integer part's spread and the noise's together),
            shape (64,), float64, all > 0.
    """

    train_pixels: torch.Tensor
    train_labels: torch.Tensor
    test_pixels: torch.Tensor
    test_labels: torch.Tensor
    mean: torch.Tensor
    scale: torch.Tensor


def load_digits_split(n_test: int = 300, seed: int = 0) -> DigitsSplit:
    r"""scikit-learn's handwritten digits (1,797 images of 8 x 8 pixels, 17 grey levels; no download: the data ship
    with scikit-learn) with a fixed train/test split and the per-pixel scaling of the training images.

    The split is ``numpy.random.default_rng(seed).permutation(1797)``: its first ``n_test`` indices are the test
    images, the rest the training images (disjoint, together all of them). The scaling is that of the dequantised
    pixel :math:`(\nu^{(i)} + \xi^{(i)})/17` with :math:`\xi^{(i)} \sim U[0, 1)` independent of the level
    :math:`\nu^{(i)}`, computed exactly
    from the training images' integer levels (no noise is drawn):

    .. math:: \mu^{(i)} = \frac{\bar\nu^{(i)} + 1/2}{17}, \qquad
              s^{(i)} = \frac{1}{17}\sqrt{\operatorname{Var}(\nu^{(i)}) + \tfrac{1}{12}},

    with :math:`\bar\nu^{(i)}` and :math:`\operatorname{Var}(\nu^{(i)})` the mean and the (population) variance of
    pixel i over
    the training images, and 1/12 the variance of U[0, 1); so :math:`s^{(i)} > 0` even for a pixel that is 0 in every
    image.

    Args:
        n_test: number of held-out images, an int in [1, 1796].
        seed: seed of the permutation, an int in [0, 2**32 - 1].

    Returns:
        a :class:`DigitsSplit` of CPU tensors.

    Raises:
        ValueError: for an n_test or seed outside those ranges.
    """
    from sklearn.datasets import load_digits  # ships with scikit-learn, imported only when used

    n_test = check_int_in("n_test", n_test, 1, 1796)
    seed = check_seed("seed", seed)
    digits = load_digits()
    pixels = torch.as_tensor(digits.data.astype(np.int64))  # (1797, 64), values 0..16 (stored as floats)
    labels = torch.as_tensor(digits.target.astype(np.int64))
    order = torch.as_tensor(np.random.default_rng(seed).permutation(len(pixels)))
    test, train = order[:n_test], order[n_test:]
    levels = pixels[train].double()
    mean = (levels.mean(dim=0) + 0.5) / DIGITS_LEVELS
    scale = torch.sqrt(levels.var(dim=0, unbiased=False) + 1 / 12) / DIGITS_LEVELS
    return DigitsSplit(pixels[train], labels[train], pixels[test], labels[test], mean, scale)


def _check_pixels(pixels):
    if (not isinstance(pixels, torch.Tensor) or pixels.ndim != 2 or pixels.is_floating_point()
            or pixels.is_complex() or pixels.dtype == torch.bool):
        got = f"shape {tuple(pixels.shape)}, dtype {pixels.dtype}" if isinstance(pixels, torch.Tensor) \
            else type(pixels).__name__
        raise ValueError(f"pixels must be an integer tensor of shape (n, d) of grey levels, got {got}")
    if pixels.numel() and not bool(((pixels >= 0) & (pixels < DIGITS_LEVELS)).all()):
        raise ValueError(f"pixels must hold grey levels in {{0, ..., {DIGITS_LEVELS - 1}}}, got values in "
                         f"[{int(pixels.min())}, {int(pixels.max())}]")


def _check_scaling(mean, scale, d, source=None):
    for name, value in (("mean", mean), ("scale", scale)):
        if not isinstance(value, torch.Tensor) or value.shape != (d,) or not value.is_floating_point():
            got = f"shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
            of = f" (d = {d} from {source})" if source else ""
            raise ValueError(f"{name} must be a floating-point tensor of shape ({d},){of}, got {got}")
        check_finite(name, value)
    if not bool((scale > 0).all()):
        raise ValueError("scale must be > 0 in every pixel")


def dequantize_digits(pixels: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor,
                      generator: torch.Generator | None = None, *, device=None,
                      dtype=torch.float32) -> torch.Tensor:
    r"""Dequantise and scale integer pixels (book eq. ``eq-dg-dequantise``):

    .. math:: x^{(i)} = \frac{(\nu^{(i)} + \xi^{(i)})/17 - \mu^{(i)}}{s^{(i)}}, \qquad
              \xi^{(i)} \sim U[0, 1) \text{ independent},

    so that each pixel's value lies in its own bin
    :math:`[(\nu^{(i)}/17 - \mu^{(i)})/s^{(i)}, ((\nu^{(i)} + 1)/17 - \mu^{(i)})/s^{(i)})` and the
    bins of the 17 levels tile an interval without overlap.

    Args:
        pixels: grey levels nu, an integer tensor of shape (n, d) with values in {0, ..., 16}.
        mean, scale: :math:`\mu` and :math:`s` of :func:`load_digits_split`, float tensors of shape (d,), scale > 0.
        generator: optional ``torch.Generator`` for the noise xi (on ``device``).
        device, dtype: where and in which precision x is made (default: the generator's device, else the CPU;
            float32). The arithmetic is done in float64 and rounded once.

    Returns:
        x, shape (n, d). ``pixels`` is not changed.

    Raises:
        ValueError: for pixels that are not integer levels in {0, ..., 16} of shape (n, d), a mean or scale of
            another shape, not finite or with a scale <= 0, or a bad generator, device or dtype.
    """
    _check_pixels(pixels)
    _check_scaling(mean, scale, pixels.shape[1], "pixels' columns")
    n = pixels.shape[0]
    check_generator("generator", generator)
    device = generator.device if device is None and generator is not None else device
    device = torch.device("cpu") if device is None else check_device("device", device)
    if generator is not None and generator.device.type != device.type:
        raise ValueError(f"generator is on {generator.device} but device is {device}")
    dtype = check_float_dtype("dtype", dtype)
    u = torch.rand(n, pixels.shape[1], generator=generator, device=device, dtype=torch.float64)
    y = (pixels.to(device=device, dtype=torch.float64) + u) / DIGITS_LEVELS
    return ((y - mean.to(device, torch.float64)) / scale.to(device, torch.float64)).to(dtype)


def digits_to_pixels(x: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    r"""Map scaled values back to continuous grey levels, the inverse of the scaling of :func:`dequantize_digits`:
    :math:`17\,(s^{(i)} x^{(i)} + \mu^{(i)})`, in [nu, nu + 1) for a pixel dequantised from level nu (model samples
    may fall outside
    [0, 17); ``floor`` and ``clamp(0, 16)`` of the result give integer levels).

    Args:
        x: scaled values, a float tensor of shape (n, d).
        mean, scale: as in :func:`dequantize_digits`, shape (d,).

    Returns:
        grey levels, shape (n, d), in x's dtype and on its device.

    Raises:
        ValueError: for an x that is not a finite (n, d) float tensor, or a bad mean or scale.
    """
    x = check_points("x", x)
    _check_scaling(mean, scale, x.shape[1], "x's columns")
    return DIGITS_LEVELS * (x * scale.to(x) + mean.to(x))


def digits_log_det(scale: torch.Tensor) -> float:
    r"""The log-determinant :math:`\sum_i \log(17 s^{(i)})` of the map from :math:`\nu + \xi` (grey level plus
    noise, in
    [0, 17)^d) to x of :func:`dequantize_digits`, whose Jacobian is :math:`\operatorname{diag}(1/(17 s^{(i)}))`.

    Args:
        scale: :math:`s`, a float tensor of shape (d,), d >= 1, all > 0.

    Returns:
        the sum in nats, a float.

    Raises:
        ValueError: for a scale that is not a finite, non-empty 1-D float tensor of positive values.
    """
    if not isinstance(scale, torch.Tensor) or scale.ndim != 1 or not scale.is_floating_point() or not scale.numel():
        got = f"shape {tuple(scale.shape)}, dtype {scale.dtype}" if isinstance(scale, torch.Tensor) \
            else type(scale).__name__
        raise ValueError(f"scale must be a non-empty 1-D floating-point tensor of shape (d,), got {got}")
    _check_scaling(torch.zeros_like(scale), scale, scale.shape[0])
    return float(torch.log(DIGITS_LEVELS * scale.double()).sum())


def digits_bits_per_dim(log_p: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    r"""Bits per dimension of discrete pixels from log-densities of their dequantised, scaled values (book eq.
    ``eq-dg-bits``; Theis et al. 2016, Dinh et al. 2017):

    .. math:: \text{bits/dim} = \frac{-\log p(x) + \sum_{i=1}^d \log(17 s^{(i)})}{d \log 2} .

    With x from :func:`dequantize_digits` of an image :math:`\nu`, :math:`p(x)/\prod_i 17 s^{(i)}` is the density of
    :math:`\nu + \xi` on [0, 17)^d, whose integral over the unit cube :math:`\nu + [0, 1)^d` is the probability of the
    image; by Jensen's inequality its mean log over xi is at most the log-probability, so the mean of this value
    over the noise bounds the discrete model's bits per dimension from above. A density uniform on the whole
    box :math:`[0, 17)^d` gives :math:`\log_2 17 \approx 4.087` bits per dimension.

    Args:
        log_p: log-densities :math:`\log p(x)` in nats of points of dimension d, a float tensor of any shape,
            values in [-inf, inf) (no NaN, no +inf).
        scale: :math:`s` of :func:`load_digits_split`, shape (d,), d >= 1, all > 0.

    Returns:
        bits per dimension, the shape of log_p, float64.

    Raises:
        ValueError: for a log_p that is not a float tensor without NaN and +inf (a -inf log-density gives +inf
            bits; +inf, an infinite density, has no meaning for the discrete data), or a bad scale.
    """
    if not isinstance(log_p, torch.Tensor) or not log_p.is_floating_point():
        got = f"dtype {log_p.dtype}" if isinstance(log_p, torch.Tensor) else type(log_p).__name__
        raise ValueError(f"log_p must be a floating-point tensor of log-densities, got {got}")
    if bool(torch.isnan(log_p).any()):
        raise ValueError("log_p must not hold NaN")
    if bool((log_p == math.inf).any()):
        raise ValueError(f"log_p must not hold +inf (an infinite density), got {int((log_p == math.inf).sum())} "
                         f"such entries")
    log_det = digits_log_det(scale)
    d = scale.shape[0]
    return (-log_p.double() + log_det) / (d * math.log(2))
