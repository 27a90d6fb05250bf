r"""Class-conditional vector fields and classifier-free guidance (book chapter "Conditional generation and
guidance").

For labelled data :math:`(x_1, c)` with labels c in {0, ..., C - 1}, the conditional path given c is the marginal
path of the class's data, and its field :math:`u_t(x \mid c)` is the marginal field of that class (book eq.
``eq-cfg-conditional-field``). Classifier-free guidance (Ho & Salimans 2022) samples with the guided field

.. math::

   \tilde v_w(t, x, c) = (1 + w)\, v(t, x, c) - w\, v(t, x, \varnothing),

   \tilde v_w(t, x, c) = v(t, x, c) + w\,\big(v(t, x, c) - v(t, x, \varnothing)\big)

(book eq. ``eq-cfg-guided-field``), with :math:`\varnothing` "no label": w = 0 is the conditional field, w = -1 the
unconditional one. This is the convention of Meta's ``flow_matching`` (``(1 + w) cond - w uncond``). The other
common one, :math:`(1 - \gamma)\, v(t, x, \varnothing) + \gamma\, v(t, x, c)`, is the same field with
:math:`\gamma = 1 + w` (:func:`guidance_scale`, :func:`guidance_weight`).

The exact fields of an empirical data set (:class:`ClassMarginals`, from :class:`fmlib.EmpiricalMarginal` per class
and overall), the tilted distribution :math:`p_1(x \mid c)^{1 + w} p_1(x)^{-w}` that guidance is often said to sample
(:func:`sample_tilted`, by rejection), and a labelled toy data set with exact class densities (the annulus with
soft angular classes: :func:`sample_labelled_annulus`, :func:`labelled_annulus_posterior`) complete the chapter's
tools.
"""

from __future__ import annotations

import math
import numbers
from typing import Callable, NamedTuple

import torch

from ._checks import (check_device, check_float_dtype, check_generator, check_int_in, check_points,
                      check_positive_int)
from .data import annulus_log_prob
from .marginal import EmpiricalMarginal
from .paths import GaussianPath

__all__ = ["GuidedField", "guidance_scale", "guidance_weight", "ClassMarginals", "class_marginals",
           "sample_tilted", "sample_labelled_annulus", "labelled_annulus_posterior", "labelled_annulus_log_prob"]


def _check_weight(name: str, w) -> float:
    if isinstance(w, bool) or not isinstance(w, numbers.Real) or not math.isfinite(w):
        raise ValueError(f"{name} must be a finite real number, got {w!r}")
    return float(w)


def guidance_scale(w: float) -> float:
    r"""The scale :math:`\gamma = 1 + w` of the convention :math:`(1 - \gamma) v(\cdot, \varnothing) + \gamma
    v(\cdot, c)` for the guidance weight w of :class:`GuidedField` (book eq. ``eq-cfg-conventions``).

    Raises:
        ValueError: if w is not a finite real number.
    """
    return 1.0 + _check_weight("w", w)


def guidance_weight(scale: float) -> float:
    r"""The guidance weight :math:`w = \gamma - 1` of :class:`GuidedField` for the scale :math:`\gamma` of the
    convention :math:`(1 - \gamma) v(\cdot, \varnothing) + \gamma v(\cdot, c)` (book eq. ``eq-cfg-conventions``).

    Raises:
        ValueError: if scale is not a finite real number.
    """
    return _check_weight("scale", scale) - 1.0


class GuidedField:
    r"""The classifier-free guided field :math:`\tilde v_w(t, x) = (1 + w)\, v(t, x, c) - w\, v(t, x, \varnothing)`
    (book eq. ``eq-cfg-guided-field``; Ho & Salimans 2022, eq. 6 written for velocities).

    A vector field called as ``guided(t, x)``, for :func:`fmlib.solve` and :func:`fmlib.sample`. w = 0 returns the
    conditional field itself (the unconditional one is not evaluated), w = -1 the unconditional one.

    Args:
        conditional: the conditional field :math:`v(t, x, c)` for one label c, called as ``conditional(t, x)``.
        unconditional: the unconditional field :math:`v(t, x, \varnothing)`, called as ``unconditional(t, x)``.
        w: the guidance weight, a finite real number (0: no guidance).

    Raises:
        ValueError: if a field is not callable or w is not a finite real number.
    """

    def __init__(self, conditional: Callable, unconditional: Callable, w: float):
        for name, v in (("conditional", conditional), ("unconditional", unconditional)):
            if not callable(v):
                raise ValueError(f"{name} must be a vector field called as v(t, x), got {type(v).__name__}")
        self.conditional, self.unconditional = conditional, unconditional
        self.w = _check_weight("w", w)

    @classmethod
    def from_model(cls, model: torch.nn.Module, c: int, w: float) -> "GuidedField":
        """The guided field of a class-conditional network (e.g. ``MLPVectorField(d, n_classes=C)``) for label c.

        Args:
            model: called as ``model(t, x, c)``, with ``model(t, x, None)`` the field without label; it needs an
                ``n_classes`` attribute (an int >= 1).
            c: the label, an int in [0, n_classes).
            w: the guidance weight, a finite real number.

        Raises:
            ValueError: for a model that is not callable or has no n_classes >= 1, a label outside [0, n_classes)
                or a bad w.
        """
        if not callable(model):
            raise ValueError(f"model must be a network called as model(t, x, c), got {type(model).__name__}")
        n_classes = getattr(model, "n_classes", 0)
        if isinstance(n_classes, bool) or not isinstance(n_classes, numbers.Integral) or n_classes < 1:
            raise ValueError(f"model must be class-conditional (n_classes >= 1), got n_classes={n_classes!r}")
        c = check_int_in("c", c, 0, n_classes - 1)
        return cls(lambda t, x: model(t, x, c), lambda t, x: model(t, x, None), w)

    def __repr__(self) -> str:
        return f"GuidedField(w={self.w!r})"

    def __call__(self, t, x: torch.Tensor) -> torch.Tensor:
        v_cond = self.conditional(t, x)
        if self.w == 0.0:
            return v_cond
        return (1.0 + self.w) * v_cond - self.w * self.unconditional(t, x)


class ClassMarginals(NamedTuple):
    r"""The exact fields of labelled empirical data (:func:`class_marginals`): ``classes[c]`` is the marginal path
    and field of class c's points (:math:`p_t(x \mid c)`, :math:`u_t(x \mid c)`), ``overall`` that of all points
    (:math:`p_t(x)`, :math:`u_t(x)`), ``priors[c]`` the fraction :math:`\pi_c` of points in class c, shape (C,)."""

    classes: list
    overall: EmpiricalMarginal
    priors: torch.Tensor

    def guided(self, c: int, w: float) -> GuidedField:
        r"""The exact guided field :math:`(1 + w)\, u_t(x \mid c) - w\, u_t(x)` (book eq. ``eq-cfg-guided-field``).

        Raises:
            ValueError: for a label outside [0, C) or a bad w.
        """
        c = check_int_in("c", c, 0, len(self.classes) - 1)
        return GuidedField(self.classes[c], self.overall, w)

    def log_posterior(self, t, x: torch.Tensor) -> torch.Tensor:
        r"""Log-posteriors :math:`\log p_t(c \mid x) = \log \pi_c + \log p_t(x \mid c) - \log p_t(x)`, shape (m, C)
        (Bayes' rule; the columns of ``exp`` sum to 1).

        Raises:
            ValueError: as :meth:`fmlib.marginal.EmpiricalMarginal.log_prob`.
        """
        log_px = self.overall.log_prob(t, x)
        cols = [math.log(float(p)) + m.log_prob(t, x) - log_px for p, m in zip(self.priors, self.classes)]
        return torch.stack(cols, dim=1)


def class_marginals(path: GaussianPath, data: torch.Tensor, labels: torch.Tensor, n_classes: int | None = None,
                    chunk_size: int = 1024) -> ClassMarginals:
    r"""Exact class-conditional and unconditional marginal fields of labelled points (book eq.
    ``eq-cfg-conditional-field``): one :class:`fmlib.EmpiricalMarginal` per class and one over all points.

    Args:
        path: the Gaussian conditional path, e.g. ``LinearPath(sigma_min)``.
        data: the points, shape (n, d), finite floating point.
        labels: their labels, an integer tensor of shape (n,) with values in [0, C).
        n_classes: C, a positive int (default: the largest label + 1); every class needs at least one point.
        chunk_size: as for :class:`fmlib.EmpiricalMarginal`.

    Returns:
        :class:`ClassMarginals` ``(classes, overall, priors)``.

    Raises:
        ValueError: for bad data or labels (shape, dtype, values), an n_classes that is not a positive int, or a
            class without points.
    """
    data = check_points("data", data)
    if (not isinstance(labels, torch.Tensor) or labels.shape != (data.shape[0],) or labels.is_floating_point()
            or labels.is_complex() or labels.dtype == torch.bool or labels.numel() == 0):
        got = f"shape {tuple(labels.shape)}, dtype {labels.dtype}" if isinstance(labels, torch.Tensor) else \
            type(labels).__name__
        raise ValueError(f"labels must be a non-empty integer tensor of shape ({data.shape[0]},), got {got}")
    labels = labels.to(data.device, torch.long)
    low, high = int(labels.min()), int(labels.max())
    n_classes = high + 1 if n_classes is None else check_positive_int("n_classes", n_classes)
    if low < 0 or high >= n_classes:
        raise ValueError(f"labels must lie in [0, {n_classes}), got values in [{low}, {high}]")
    counts = torch.bincount(labels, minlength=n_classes)
    if bool((counts == 0).any()):
        raise ValueError(f"every class needs at least one point; classes without points: "
                         f"{(counts == 0).nonzero().flatten().tolist()}")
    classes = [EmpiricalMarginal(path, data[labels == k], chunk_size) for k in range(n_classes)]
    priors = counts.to(torch.float64).cpu() / data.shape[0]
    return ClassMarginals(classes, EmpiricalMarginal(path, data, chunk_size), priors)


def sample_tilted(marginals: ClassMarginals, c: int, w: float, n: int,
                  generator: torch.Generator | None = None, max_rounds: int = 1000) -> torch.Tensor:
    r"""Samples of the tilted distribution :math:`\tilde p_w(x \mid c) \propto p_1(x \mid c)^{1 + w}\, p_1(x)^{-w}
    \propto p_1(x \mid c)\, p_1(c \mid x)^w` of the empirical path's end point (book eq. ``eq-cfg-tilted``), by
    rejection: propose :math:`x \sim p_1(x \mid c)` (a point of class c plus :math:`\sigma_1` times Gaussian noise,
    scaled by :math:`\alpha_1`) and accept it with probability :math:`p_1(c \mid x)^w \le 1` (w >= 0).

    Args:
        marginals: from :func:`class_marginals`, with a path whose :math:`\sigma_1 > 0` (e.g. ``LinearPath(0.05)``).
        c: the label, an int in [0, C).
        w: the guidance weight, a finite number >= 0 (0: the class's own distribution, every proposal accepted).
        n: number of samples, a positive int.
        generator: optional ``torch.Generator`` on the data's device.
        max_rounds: the most rounds of proposals (each of about n / acceptance rate points), a positive int.

    Returns:
        shape (n, d), in the data's dtype and on its device.

    Raises:
        ValueError: for marginals that are not a ClassMarginals, a bad c, w (negative or not finite), n,
            generator or max_rounds, a path with
            :math:`\sigma_1 = 0` (no density), or too few acceptances within max_rounds.
    """
    if not isinstance(marginals, ClassMarginals):
        raise ValueError(f"marginals must be the ClassMarginals of fmlib.class_marginals(path, data, labels), got "
                         f"{type(marginals).__name__}")
    c = check_int_in("c", c, 0, len(marginals.classes) - 1)
    w = _check_weight("w", w)
    if w < 0:
        raise ValueError(f"w must be >= 0 for rejection sampling (p(c | x)^w <= 1), got {w!r}")
    n = check_positive_int("n", n)
    check_generator("generator", generator)
    max_rounds = check_positive_int("max_rounds", max_rounds)
    cls = marginals.classes[c]
    data = cls.data
    one = torch.ones(1, 1, dtype=data.dtype, device=data.device)
    alpha, sigma = float(cls.path.alpha(one)), float(cls.path.sigma(one))
    if sigma <= 0:
        raise ValueError(f"the path {cls.path!r} has sigma_1 = 0: p_1(x | c) has no density to tilt; use "
                         f"sigma_min > 0")
    kept, have, proposed, batch = [], 0, 0, n
    for _ in range(max_rounds):
        idx = torch.randint(data.shape[0], (batch,), generator=generator, device=data.device)
        noise = torch.randn(batch, data.shape[1], generator=generator, device=data.device, dtype=data.dtype)
        x = alpha * data[idx] + sigma * noise
        u = torch.rand(batch, generator=generator, device=data.device, dtype=data.dtype)
        if w > 0:
            accept = torch.log(u) < w * marginals.log_posterior(1.0, x)[:, c]
            x = x[accept]
        kept.append(x)
        have, proposed = have + x.shape[0], proposed + batch
        if have >= n:
            return torch.cat(kept)[:n]
        rate = max(have / proposed, 1e-3)  # the next round proposes about what the rest needs
        batch = min(int(1.2 * (n - have) / rate) + 16, 1_000_000)
    raise ValueError(f"rejection sampling accepted only {have} of {n} points in {max_rounds} rounds "
                     f"(w = {w} may be too large for this data)")


# --- a labelled toy data set with exact class densities ----------------------------------------------------------
def _class_angles(n_classes: int, dtype, device) -> torch.Tensor:
    """The classes' centre angles mu_k = pi/2 + 2 pi k / C."""
    k = torch.arange(n_classes, dtype=dtype, device=device)
    return math.pi / 2 + 2 * math.pi * k / n_classes


def _check_annulus_classes(n_classes, concentration):
    n_classes = check_int_in("n_classes", n_classes, 1, 1000)
    if isinstance(concentration, bool) or not isinstance(concentration, numbers.Real) or \
            not 0 <= concentration <= 1e3:
        raise ValueError(f"concentration must be a number in [0, 1000], got {concentration!r}")
    return n_classes, float(concentration)


def labelled_annulus_posterior(x: torch.Tensor, n_classes: int = 3, concentration: float = 2.0) -> torch.Tensor:
    r"""The exact class posterior :math:`q(c \mid x)` of :func:`sample_labelled_annulus`: a softmax over the
    classes of :math:`\kappa \cos(\theta - \mu_k)`, with :math:`\theta` the angle of x, :math:`\mu_k = \pi/2 + 2\pi
    k / C` and :math:`\kappa` = ``concentration`` (book eq. ``eq-cfg-annulus-classes``). Its argmax is the Bayes
    classifier of the data. Defined for every x (it depends on the angle only).

    Args:
        x: points, shape (n, 2).
        n_classes: C, an int in [1, 1000].
        concentration: :math:`\kappa`, a number in [0, 1000] (0: labels independent of x).

    Returns:
        shape (n, C), rows summing to 1.

    Raises:
        ValueError: for a bad x, n_classes or concentration.
    """
    return torch.softmax(_annulus_logits(x, n_classes, concentration), dim=1)


def _annulus_logits(x, n_classes, concentration):
    """The logits kappa cos(theta - mu_k) of :func:`labelled_annulus_posterior`, shape (n, C), after the checks."""
    x = check_points("x", x, dim=2)
    n_classes, kappa = _check_annulus_classes(n_classes, concentration)
    theta = torch.atan2(x[:, 1], x[:, 0])[:, None]
    return kappa * torch.cos(theta - _class_angles(n_classes, x.dtype, x.device))


def labelled_annulus_log_prob(x: torch.Tensor, n_classes: int = 3, concentration: float = 2.0, *,
                              r_inner: float = 2.0, r_outer: float = 3.0) -> torch.Tensor:
    r"""The exact class densities :math:`\log q(x \mid c) = \log q(x) + \log q(c \mid x) - \log q(c)` of
    :func:`sample_labelled_annulus`, with :math:`q(c) = 1/C` (the classes are rotations of each other) and q the
    annulus density of :func:`fmlib.annulus_log_prob` (-inf off the annulus).

    Args:
        x: points, shape (n, 2).
        n_classes, concentration: as :func:`labelled_annulus_posterior`.
        r_inner, r_outer: the annulus' radii, as :func:`fmlib.sample_annulus`.

    Returns:
        an (n, C) tensor whose column c holds :math:`\log q(x \mid c)` in nats, finite on the annulus for every
        concentration (computed with ``log_softmax``, not the log of an underflowing posterior).

    Raises:
        ValueError: for bad input.
    """
    # log_softmax, not the log of the softmax: finite even where q(c | x) underflows (large concentration)
    log_post = torch.log_softmax(_annulus_logits(x, n_classes, concentration), dim=1)
    log_q = annulus_log_prob(x, r_inner=r_inner, r_outer=r_outer)
    return log_q[:, None] + log_post + math.log(log_post.shape[1])


def sample_labelled_annulus(n: int, generator: torch.Generator | None = None, device=None, dtype=torch.float32, *,
                            n_classes: int = 3, concentration: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Labelled points on the annulus: :math:`x \sim q` as :func:`fmlib.sample_annulus` (radius uniform on [2, 3],
    angle uniform), then the label :math:`c \sim q(c \mid x)` of :func:`labelled_annulus_posterior`: C soft
    angular classes centred at :math:`\mu_k = \pi/2 + 2\pi k / C` (book eq. ``eq-cfg-annulus-classes``).

    Args:
        n: number of points, a positive int.
        generator: optional ``torch.Generator`` on ``device`` (draws the points, then the labels).
        device, dtype: where and in which floating-point precision.
        n_classes, concentration: as :func:`labelled_annulus_posterior`.

    Returns:
        ``(x, c)``: points of shape (n, 2) and labels of shape (n,) (int64, in [0, C)).

    Raises:
        ValueError: for a bad n, generator, device, dtype, n_classes or concentration.
    """
    from .data import sample_annulus

    n_classes, kappa = _check_annulus_classes(n_classes, concentration)
    if device is not None:
        device = check_device("device", device)
    check_float_dtype("dtype", dtype)
    x = sample_annulus(n, generator=generator, device=device, dtype=dtype)
    post = labelled_annulus_posterior(x, n_classes, kappa)
    c = torch.multinomial(post.to(torch.float64), 1, generator=generator).squeeze(1)
    return x, c
