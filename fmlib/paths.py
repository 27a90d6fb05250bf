r"""Gaussian conditional probability paths (book chapters "From conditional to marginal" and "A concrete path").

A Gaussian conditional path (book eq. ``eq-cond-path``; Lipman et al. 2023, eq. 10) is

.. math:: p_t(x \mid x_1) = \mathcal N\big(x;\ \mu_t(x_1),\ \sigma_t^2 I\big), \qquad t \in [0, 1],

with :math:`p_0(\cdot \mid x_1) = \mathcal N(0, I)` (noise) and :math:`p_1(\cdot \mid x_1)` concentrated at the data
point :math:`x_1`. fmlib's paths have a mean that scales the data point, :math:`\mu_t(x_1) = \alpha_t x_1`, and a
standard deviation :math:`\sigma_t` that depends on time only. From these two schedules everything else follows:

* conditional flow (``eq-cond-flow``; paper eq. 11): :math:`\psi_t(x_0 \mid x_1) = \sigma_t x_0 + \mu_t(x_1)`;
* regression target (``eq-cond-target``; paper eq. 13):
  :math:`\tfrac{d}{dt}\psi_t(x_0 \mid x_1) = \sigma'_t x_0 + \mu'_t(x_1)`, finite wherever the schedules are smooth;
* conditional vector field (``eq-cond-vf``; paper eq. 15):
  :math:`u_t(x \mid x_1) = \tfrac{\sigma'_t}{\sigma_t}(x - \mu_t(x_1)) + \mu'_t(x_1)`, singular where
  :math:`\sigma_t = 0`.

Shapes: points are ``(n, d)``; a time ``t`` may be a float, a 0-d tensor, or of shape ``(n,)`` or ``(n, 1)`` and
must lie in [0, 1].
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

from ._checks import as_time, check_choice, check_finite, check_points, check_sigma_min

__all__ = ["PathSample", "GaussianPath", "LinearPath", "VPDiffusionPath", "PREDICTIONS"]

#: The four quantities a network may predict at (t, x) -- the data point, the noise, the velocity or the score
#: (book chapter "Flow matching and diffusion", eq. ``eq-dm-predictions``).
PREDICTIONS = ("x_1", "epsilon", "velocity", "score")


@dataclass
class PathSample:
    """One batch drawn from a conditional path: the inputs and the target of the CFM loss.

    Attributes:
        t: times, shape (n, 1), in [0, 1].
        x_0: noise points x_0 ~ N(0, I), shape (n, d).
        x_1: data points, shape (n, d).
        x_t: points on the path, x_t = psi_t(x_0 | x_1), shape (n, d).
        u_t: regression target u_t(x_t | x_1) = d/dt psi_t(x_0 | x_1), shape (n, d).
    """

    t: torch.Tensor
    x_0: torch.Tensor
    x_1: torch.Tensor
    x_t: torch.Tensor
    u_t: torch.Tensor


def _check_pair(x, x_1, x_name: str):
    x_1 = check_points("x_1", x_1)
    x = check_points(x_name, x)
    if x.shape != x_1.shape:
        raise ValueError(f"{x_name} and x_1 must have the same shape (n, d), got {tuple(x.shape)} and {tuple(x_1.shape)}")
    return x, x_1


def _article(word: str) -> str:
    """'an' before a vowel sound ('an "epsilon"', 'an "x_1"'), else 'a', for error messages."""
    return "an" if word[:1] in "aeioux" else "a"


class GaussianPath:
    r"""Base class of Gaussian conditional paths with :math:`\mu_t(x_1) = \alpha_t x_1` and scalar :math:`\sigma_t`.

    A subclass defines four functions of ``t`` (a tensor of shape (n, 1)): :meth:`alpha`, :meth:`d_alpha`,
    :meth:`sigma` and :meth:`d_sigma`. The public methods below check their input and implement the book's
    equations once for all paths.
    """

    # --- schedules: subclasses override these (t has shape (n, 1)) ---------------------------------------------
    def alpha(self, t: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        r"""Mean scale :math:`\alpha_t`, shape (n, 1)."""
        raise NotImplementedError

    def d_alpha(self, t: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        r"""Time derivative :math:`\alpha'_t`, shape (n, 1)."""
        raise NotImplementedError

    def sigma(self, t: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        r"""Standard deviation :math:`\sigma_t`, shape (n, 1)."""
        raise NotImplementedError

    def d_sigma(self, t: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        r"""Time derivative :math:`\sigma'_t`, shape (n, 1)."""
        raise NotImplementedError

    # --- the book's equations ---------------------------------------------------------------------------------
    def mean(self, t, x_1: torch.Tensor) -> torch.Tensor:
        r"""Mean :math:`\mu_t(x_1) = \alpha_t x_1` of :math:`p_t(\cdot \mid x_1)` (book ``eq-cond-path``).

        Args:
            t: times in [0, 1]: float, 0-d tensor, shape (n,) or (n, 1).
            x_1: data points, shape (n, d).

        Returns:
            shape (n, d).

        Raises:
            ValueError: bad shapes, non-finite values, or t outside [0, 1].
        """
        x_1 = check_points("x_1", x_1)
        return self.alpha(as_time(t, x_1)) * x_1

    def std(self, t, x_1: torch.Tensor) -> torch.Tensor:
        r"""Standard deviation :math:`\sigma_t`, broadcast to shape (n, 1) against ``x_1`` of shape (n, d)."""
        x_1 = check_points("x_1", x_1)
        return self.sigma(as_time(t, x_1))

    def flow(self, t, x_0: torch.Tensor, x_1: torch.Tensor) -> torch.Tensor:
        r"""Conditional flow :math:`\psi_t(x_0 \mid x_1) = \sigma_t x_0 + \alpha_t x_1`.

        Book eq. ``eq-cond-flow``; Lipman et al. (2023), eq. 11.

        Args:
            t: times in [0, 1]: float, 0-d tensor, shape (n,) or (n, 1).
            x_0: noise points, shape (n, d).
            x_1: data points, shape (n, d).

        Returns:
            x_t, shape (n, d).

        Raises:
            ValueError: mismatched shapes, non-finite values, or t outside [0, 1].
        """
        x_0, x_1 = _check_pair(x_0, x_1, "x_0")
        t = as_time(t, x_1)
        return self.sigma(t) * x_0 + self.alpha(t) * x_1

    def target(self, t, x_0: torch.Tensor, x_1: torch.Tensor) -> torch.Tensor:
        r"""Regression target :math:`\tfrac{d}{dt}\psi_t(x_0 \mid x_1) = \sigma'_t x_0 + \alpha'_t x_1`.

        This equals :math:`u_t(\psi_t(x_0 \mid x_1) \mid x_1)` (book eq. ``eq-cond-target``; Lipman et al. 2023,
        eqs. 13-14) but is written in terms of x_0, so it stays finite where :math:`\sigma_t = 0`
        (e.g. t = 1 with sigma_min = 0 for :class:`LinearPath`).

        Args:
            t: times in [0, 1]: float, 0-d tensor, shape (n,) or (n, 1).
            x_0: noise points, shape (n, d).
            x_1: data points, shape (n, d).

        Returns:
            shape (n, d).

        Raises:
            ValueError: mismatched shapes, non-finite input, t outside [0, 1], or a schedule whose derivative is
                infinite at the requested t (e.g. :class:`VPDiffusionPath` at t = 1).
        """
        x_0, x_1 = _check_pair(x_0, x_1, "x_0")
        t = as_time(t, x_1)
        out = self.d_sigma(t) * x_0 + self.d_alpha(t) * x_1
        if not bool(torch.isfinite(out).all()):
            t_bad = t[~torch.isfinite(out).all(dim=1)]
            raise ValueError(f"the target of {self!r} is not finite at t = {float(t_bad.max()):.4g} "
                             f"(a schedule derivative is singular there)")
        return out

    def conditional_vector_field(self, t, x: torch.Tensor, x_1: torch.Tensor) -> torch.Tensor:
        r"""Conditional vector field :math:`u_t(x \mid x_1) = \tfrac{\sigma'_t}{\sigma_t}(x - \mu_t) + \mu'_t`.

        Book eq. ``eq-cond-vf``; Lipman et al. (2023), eq. 15 (Theorem 3). For :class:`LinearPath` this is
        :math:`(x_1 - (1 - \sigma_{\min}) x) / (1 - (1 - \sigma_{\min}) t)` (paper eq. 21).

        Args:
            t: times in [0, 1]: float, 0-d tensor, shape (n,) or (n, 1).
            x: points, shape (n, d).
            x_1: data points, shape (n, d).

        Returns:
            shape (n, d).

        Raises:
            ValueError: mismatched shapes, non-finite input, t outside [0, 1], or sigma_t = 0 at some t (the field
                is singular there, e.g. t = 1 with sigma_min = 0; use :meth:`target` in its x_0 form instead).
        """
        x, x_1 = _check_pair(x, x_1, "x")
        t = as_time(t, x_1)
        sigma = self.sigma(t)
        if bool((sigma <= 0).any()):
            t_bad = float(t[(sigma <= 0).squeeze(1)].max())
            raise ValueError(f"u_t(x | x_1) is singular where sigma_t = 0 (t = {t_bad:.4g} for "
                             f"{self!r}); use target(t, x_0, x_1), which stays finite there")
        out = self.d_sigma(t) / sigma * (x - self.alpha(t) * x_1) + self.d_alpha(t) * x_1
        check_finite("u_t(x | x_1)", out)
        return out

    def conditional_log_prob(self, t, x: torch.Tensor, x_1: torch.Tensor) -> torch.Tensor:
        r"""Log-density :math:`\log p_t(x \mid x_1) = -\tfrac d2 \log(2\pi\sigma_t^2) - \|x - \mu_t\|^2 / (2\sigma_t^2)`.

        Book eq. ``eq-cond-path``; Lipman et al. (2023), eq. 10.

        Args:
            t: times in [0, 1]: float, 0-d tensor, shape (n,) or (n, 1).
            x: points, shape (n, d).
            x_1: data points, shape (n, d).

        Returns:
            log-densities in nats, shape (n,).

        Raises:
            ValueError: mismatched shapes, non-finite input, t outside [0, 1], or sigma_t = 0 (no density).
        """
        x, x_1 = _check_pair(x, x_1, "x")
        t = as_time(t, x_1)
        sigma = self.sigma(t)
        if bool((sigma <= 0).any()):
            t_bad = float(t[(sigma <= 0).squeeze(1)].max())
            raise ValueError(f"p_t(x | x_1) has no density where sigma_t = 0 (t = {t_bad:.4g} for {self!r})")
        d = x.shape[1]
        sq = ((x - self.alpha(t) * x_1) ** 2).sum(dim=1, keepdim=True)
        return (-0.5 * d * torch.log(2 * math.pi * sigma ** 2) - sq / (2 * sigma ** 2)).squeeze(1)

    def sample(self, x_1: torch.Tensor, t=None, x_0=None, generator: torch.Generator | None = None) -> PathSample:
        r"""Draw :math:`t \sim U[0, t_{max})`, :math:`x_0 \sim \mathcal N(0, I)` and return the CFM inputs and target.

        ``t_max`` is 1 except for paths whose target is singular at t = 1 (:class:`VPDiffusionPath`: 1 - 1e-3).

        Book eq. ``eq-cfm-loss``; Lipman et al. (2023), eq. 13.

        Args:
            x_1: data points, shape (n, d).
            t: optional times in [0, 1] (float, 0-d, (n,) or (n, 1)); drawn uniformly when None.
            x_0: optional noise, shape (n, d); drawn from N(0, I) when None.
            generator: optional ``torch.Generator`` on x_1's device, for reproducible draws.

        Returns:
            :class:`PathSample` with t of shape (n, 1) and x_0, x_1, x_t, u_t of shape (n, d).

        Raises:
            ValueError: as :meth:`flow` and :meth:`target`.
        """
        x_1 = check_points("x_1", x_1)
        if t is not None:
            t = as_time(t, x_1)
        if x_0 is not None:
            x_0, x_1 = _check_pair(x_0, x_1, "x_0")
        s = self._sample(x_1, t, x_0, generator)
        if t is not None and not bool(torch.isfinite(s.u_t).all()):
            self.target(t, s.x_0, x_1)  # raises the error that names the singular time
        return s

    #: drawn times are t ~ U[0, t_max); paths whose target is singular at t = 1 use t_max < 1
    t_max: float = 1.0

    # --- predictions: x_1, epsilon, velocity, score -------------------------------------------------------------
    def prediction_coefficients(self, kind: str, t: torch.Tensor):
        r"""The coefficients :math:`(\alpha^P_t, \sigma^P_t)` of a prediction
        :math:`P = \alpha^P_t x_1 + \sigma^P_t \varepsilon`.

        Book eq. ``eq-dm-predictions``: on the path :math:`x = \alpha_t x_1 + \sigma_t \varepsilon`
        (:math:`\varepsilon = x_0`), the four targets a network may regress on are linear in the pair
        :math:`(x_1, \varepsilon)`:

        * ``"x_1"``: :math:`x_1` (:math:`\alpha^P_t = 1`, :math:`\sigma^P_t = 0`);
        * ``"epsilon"``: :math:`\varepsilon` (:math:`\alpha^P_t = 0`, :math:`\sigma^P_t = 1`);
        * ``"velocity"``: :math:`\alpha'_t x_1 + \sigma'_t \varepsilon` (the CFM target, ``eq-cond-target``);
        * ``"score"``: :math:`-\varepsilon / \sigma_t = \nabla_x \log p_t(x \mid x_1)`.

        Their posterior means given :math:`x_t = x` are four predictions of the same object (Lipman et al.
        2024, "Flow Matching Guide and Code", on the equivalent parameterisations of Gaussian paths).

        Args:
            kind: one of :data:`PREDICTIONS`.
            t: times, shape (n, 1) (no checks: see :meth:`convert`).

        Returns:
            ``(a, c)`` = :math:`(\alpha^P_t, \sigma^P_t)`, each of shape (n, 1).
        """
        t = torch.as_tensor(t)
        if kind == "x_1":
            return torch.ones_like(t), torch.zeros_like(t)
        if kind == "epsilon":
            return torch.zeros_like(t), torch.ones_like(t)
        if kind == "velocity":
            return self.d_alpha(t), self.d_sigma(t)
        if kind == "score":
            return torch.zeros_like(t), -1 / self.sigma(t)
        raise ValueError(f"kind must be one of {list(PREDICTIONS)}, got {kind!r}")

    def _convert(self, t: torch.Tensor, x: torch.Tensor, value: torch.Tensor, source: str, target: str):
        """:meth:`convert` without input checks (t of shape (n, 1)), for solver loops."""
        if source == target:
            return value
        alpha, sigma = self.alpha(t), self.sigma(t)
        a, b = self.prediction_coefficients(source, t)
        det = a * sigma - b * alpha  # of [[a, b], [alpha, sigma]]
        x_1 = (sigma * value - b * x) / det
        eps = (a * x - alpha * value) / det
        a2, b2 = self.prediction_coefficients(target, t)
        return a2 * x_1 + b2 * eps

    def convert(self, t, x: torch.Tensor, value: torch.Tensor, source: str, target: str) -> torch.Tensor:
        r"""Turn one prediction at :math:`(t, x)` into another: x_1, epsilon, velocity or score.

        Each prediction is :math:`P = \alpha^P_t x_1 + \sigma^P_t \varepsilon` (:meth:`prediction_coefficients`),
        and the point itself is :math:`x = \alpha_t x_1 + \sigma_t \varepsilon`. Given the ``source`` prediction,
        these two equations are a 2x2 linear system for :math:`(x_1, \varepsilon)` with determinant
        :math:`D_t = \alpha^P_t \sigma_t - \sigma^P_t \alpha_t` (book eq. ``eq-dm-convert``); its solution gives any
        other prediction.
        Applied to posterior means it maps :math:`\mathbb E[x_1 \mid x_t = x]` to the marginal field
        :math:`u_t(x)` and to the marginal score :math:`\nabla \log p_t(x)` (book eq. ``eq-dm-score``;
        for the score, Tweedie's formula, Efron 2011). The map is affine in ``value`` and exact.

        The system is singular (ValueError) where the determinant vanishes: from ``"x_1"`` where
        :math:`\sigma_t = 0`, from ``"epsilon"`` or ``"score"`` where :math:`\alpha_t = 0` (e.g. t = 0 on
        :class:`LinearPath`: the point is pure noise and says nothing about x_1), from ``"velocity"`` where
        :math:`\alpha'_t \sigma_t = \sigma'_t \alpha_t`; and ``"score"`` needs :math:`\sigma_t > 0` on either side.

        Args:
            t: times in [0, 1]: float, 0-d tensor, shape (n,) or (n, 1).
            x: points x_t, shape (n, d).
            value: the source prediction at (t, x), shape (n, d).
            source, target: each one of :data:`PREDICTIONS` (``"x_1"``, ``"epsilon"``, ``"velocity"``,
                ``"score"``).

        Returns:
            the target prediction, shape (n, d).

        Raises:
            ValueError: bad shapes, non-finite input, t outside [0, 1], an unknown kind, or a conversion that is
                singular at some t (the message names the smallest such t).
        """
        x, value = check_points("x", x), check_points("value", value)
        if value.shape != x.shape:
            raise ValueError(f"value must have the shape of x {tuple(x.shape)}, got {tuple(value.shape)}")
        check_choice("source", source, PREDICTIONS)
        check_choice("target", target, PREDICTIONS)
        t = as_time(t, x)
        sigma, alpha = self.sigma(t), self.alpha(t)
        a, b = self.prediction_coefficients(source, t) if source != "score" else (0 * t, 0 * t - 1)
        det = a * sigma - b * alpha  # the score's det, alpha / sigma, is zero with alpha
        bad = (det == 0) | (((sigma <= 0) & ((source == "score") | (target == "score"))))
        if source != target and bool(bad.any()):
            t_bad = float(t[bad.squeeze(1)].min())
            raise ValueError(f"cannot convert {_article(source)} {source!r} prediction into {_article(target)} "
                             f"{target!r} one at t = {t_bad:.4g} "
                             f"for {self!r}: alpha_t = {float(alpha[bad].min()):.4g}, sigma_t = "
                             f"{float(sigma[bad].min()):.4g} (the linear system for (x_1, epsilon) is singular)")
        out = self._convert(t, x, value, source, target)
        check_finite(f"the {target} prediction", out)
        return out

    def _sample(self, x_1, t=None, x_0=None, generator=None) -> PathSample:
        """:meth:`sample` without input checks, for the training loop (x_1 already checked, t drawn in [0, t_max))."""
        if t is None:
            t = self.t_max * torch.rand(x_1.shape[0], 1, generator=generator, device=x_1.device, dtype=x_1.dtype)
        if x_0 is None:
            x_0 = torch.randn(x_1.shape, generator=generator, device=x_1.device, dtype=x_1.dtype)
        x_t = self.sigma(t) * x_0 + self.alpha(t) * x_1
        u_t = self.d_sigma(t) * x_0 + self.d_alpha(t) * x_1
        return PathSample(t=t, x_0=x_0, x_1=x_1, x_t=x_t, u_t=u_t)


class LinearPath(GaussianPath):
    r"""The linear (optimal-transport) conditional path with minimal standard deviation :math:`\sigma_{\min}`.

    :math:`\mu_t(x_1) = t x_1`, :math:`\sigma_t = 1 - (1 - \sigma_{\min}) t` (book eq. ``eq-linear-path``;
    Lipman et al. 2023, eq. 20), so that :math:`\psi_t(x_0 \mid x_1) = (1 - (1 - \sigma_{\min}) t) x_0 + t x_1`
    (paper eq. 22) and the regression target is :math:`x_1 - (1 - \sigma_{\min}) x_0` (paper eq. 23).
    ``sigma_min = 0`` gives :math:`x_t = (1 - t) x_0 + t x_1` with target :math:`x_1 - x_0`.

    Args:
        sigma_min: standard deviation of p_1(x | x_1), in [0, 1).

    Raises:
        ValueError: if sigma_min is not a number in [0, 1).
    """

    def __init__(self, sigma_min: float = 0.0):
        self.sigma_min = check_sigma_min(sigma_min)

    def __repr__(self) -> str:
        return f"LinearPath(sigma_min={self.sigma_min})"

    def alpha(self, t):
        return t

    def d_alpha(self, t):
        return torch.ones_like(t)

    def sigma(self, t):
        return 1 - (1 - self.sigma_min) * t

    def d_sigma(self, t):
        return torch.full_like(t, -(1 - self.sigma_min))


class VPDiffusionPath(GaussianPath):
    r"""The variance-preserving diffusion path written as a conditional Gaussian path.

    :math:`\mu_t(x_1) = \alpha_{1-t} x_1`, :math:`\sigma_t = \sqrt{1 - \alpha_{1-t}^2}` with
    :math:`\alpha_s = e^{-T(s)/2}`, :math:`T(s) = \beta_{\min} s + \tfrac12 (\beta_{\max} - \beta_{\min}) s^2`
    (book eq. ``eq-vp-path``; Lipman et al. 2023, eqs. 18-19). At t = 0 it is only approximately N(0, I)
    (alpha_1 = exp(-T(1)/2) > 0), and at t = 1 sigma_t = 0, where its target and vector field are singular; so
    :meth:`sample` draws t from [0, 1 - 1e-3) (``t_max``), as diffusion models commonly stop short of the data end.

    Args:
        beta_min, beta_max: noise-rate schedule, 0 <= beta_min <= beta_max, beta_max > 0 (defaults 0.1 and 20, as
            in the paper).

    Raises:
        ValueError: if the betas are not finite numbers with 0 <= beta_min <= beta_max and beta_max > 0.
    """

    t_max = 1.0 - 1e-3

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        ok = all(isinstance(b, numbers.Real) and not isinstance(b, bool) and math.isfinite(b) for b in (beta_min, beta_max))
        if not ok or not (0 <= beta_min <= beta_max) or beta_max <= 0:
            raise ValueError(f"beta_min and beta_max must be finite with 0 <= beta_min <= beta_max and beta_max > 0, "
                             f"got beta_min={beta_min!r}, beta_max={beta_max!r}")
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)

    def __repr__(self) -> str:
        return f"VPDiffusionPath(beta_min={self.beta_min}, beta_max={self.beta_max})"

    def _T(self, s):
        return self.beta_min * s + 0.5 * (self.beta_max - self.beta_min) * s ** 2

    def _beta(self, s):
        return self.beta_min + (self.beta_max - self.beta_min) * s

    def alpha(self, t):
        return torch.exp(-0.5 * self._T(1 - t))

    def d_alpha(self, t):
        # d/dt exp(-T(1-t)/2) = exp(-T(1-t)/2) * beta(1-t) / 2
        return self.alpha(t) * 0.5 * self._beta(1 - t)

    def sigma(self, t):
        return torch.sqrt(torch.clamp(1 - self.alpha(t) ** 2, min=0.0))

    def d_sigma(self, t):
        a = self.alpha(t)
        return -a * self.d_alpha(t) / self.sigma(t)
