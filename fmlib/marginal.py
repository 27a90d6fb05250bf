r"""Exact marginal probability path and vector field of a Gaussian path over an empirical data set (book chapter
"From conditional to marginal").

For data points :math:`y_1, \dots, y_n` (the empirical distribution :math:`q = \tfrac1n \sum_i \delta_{y_i}`)
and a Gaussian conditional path :math:`p_t(x \mid x_1) = \mathcal N(x; \alpha_t x_1, \sigma_t^2 I)`
(:class:`fmlib.paths.GaussianPath`), the marginal path (book eq. ``eq-marginal-path``; Lipman et al. 2023, eq. 6)
is the Gaussian mixture

.. math:: p_t(x) = \frac1n \sum_{i=1}^n p_t(x \mid y_i),

and the marginal vector field (book eq. ``eq-marginal-vf``; paper eq. 8) is the posterior average of the
conditional fields,

.. math:: u_t(x) = \sum_{i=1}^n w_t(x, y_i)\, u_t(x \mid y_i),

with the posterior weights

.. math:: w_t(x, y_i) = \frac{p_t(x \mid y_i)}{\sum_j p_t(x \mid y_j)} = P(x_1 = y_i \mid x_t = x).

Because :math:`u_t(x \mid x_1) = \tfrac{\sigma'_t}{\sigma_t} (x - \alpha_t x_1) + \alpha'_t x_1` is affine in
:math:`x_1`, the field only needs the posterior mean :math:`m_t(x) = \sum_i w_t(x, y_i)\, y_i`:

.. math:: u_t(x) = \tfrac{\sigma'_t}{\sigma_t}\, x + \big(\alpha'_t - \tfrac{\sigma'_t}{\sigma_t}\alpha_t\big)\, m_t(x).

The weights are computed with a streaming log-sum-exp over chunks of data points and chunks of query points, so the
memory is bounded by a few ``chunk_size x chunk_size`` blocks whatever the number of points (measured at the default
``chunk_size = 1024`` in float64: 10,000 query points x 10,000 data points add about 50 to 60 MB to the peak memory,
with one time for all points or one time per point). Everything is differentiable with ``torch.autograd`` (in t and
in x).
"""

from __future__ import annotations

import math

import torch

from ._checks import as_time, check_points, check_positive_int
from .paths import GaussianPath

__all__ = ["EmpiricalMarginal"]


def _one_time(alpha, sigma):
    """(1, 1) schedules when all rows share one time and no gradient flows to t, else the (m, 1) schedules."""
    if alpha.requires_grad or sigma.requires_grad or alpha.shape[0] <= 1:
        return alpha, sigma
    if bool((alpha == alpha[0]).all()) and bool((sigma == sigma[0]).all()):
        return alpha[:1], sigma[:1]
    return alpha, sigma


class EmpiricalMarginal:
    r"""The marginal path :math:`p_t(x)` and vector field :math:`u_t(x)` of a Gaussian path over n data points.

    Computations run in the promoted dtype of the query points and the data (pass float64 data and float64 points
    for tight tolerances) on the device of the data. An instance is a vector field: ``marginal(t, x)`` is
    :meth:`vector_field`, so ``fmlib.solve(marginal, x_0)`` integrates the exact marginal flow.

    Args:
        path: a :class:`fmlib.paths.GaussianPath`, e.g. ``LinearPath(sigma_min)`` or ``VPDiffusionPath()``.
        data: the data points :math:`y_i`, shape (n, d), finite floating point.
        chunk_size: number of data points and of query points processed at once, a positive int. Memory grows as
            ``chunk_size**2``; the results do not depend on it (up to rounding).

    Raises:
        ValueError: if path is not a GaussianPath, data is not a finite (n, d) float tensor, or chunk_size is not a
            positive integer.
    """

    def __init__(self, path: GaussianPath, data: torch.Tensor, chunk_size: int = 1024):
        if not isinstance(path, GaussianPath):
            raise ValueError(f"path must be a fmlib.paths.GaussianPath (e.g. LinearPath), got {type(path).__name__}")
        self.path = path
        self.data = check_points("data", data)
        if self.data.shape[0] == 0:
            raise ValueError("data must hold at least one point, got shape (0, d)")
        self.chunk_size = check_positive_int("chunk_size", chunk_size)

    def __repr__(self) -> str:
        n, d = self.data.shape
        return f"EmpiricalMarginal({self.path!r}, data of shape ({n}, {d}), chunk_size={self.chunk_size})"

    @property
    def n(self) -> int:
        """Number of data points."""
        return self.data.shape[0]

    @property
    def dim(self) -> int:
        """Dimension d of the data."""
        return self.data.shape[1]

    # --- input checks ---------------------------------------------------------------------------------------------
    def _prepare(self, t, x):
        """Check x (m, d) and t; return x, data, t (m, 1), alpha, sigma (m, 1) in the common dtype."""
        x = check_points("x", x, dim=self.dim)
        if x.device != self.data.device:
            raise ValueError(f"x must be on the device of data ({self.data.device}), got x on {x.device}")
        dtype = torch.promote_types(x.dtype, self.data.dtype)
        x, data = x.to(dtype), self.data.to(dtype)
        t = as_time(t, x)
        sigma = self.path.sigma(t)
        if bool((sigma <= 0).any()):
            t_bad = float(t[(sigma <= 0).squeeze(1)].max())
            raise ValueError(f"t = {t_bad:.4g} has sigma_t = 0 for {self.path!r}: the marginal path has no density "
                             f"there and its vector field is singular")
        return x, data, t, self.path.alpha(t), sigma

    # --- the streaming log-sum-exp over data chunks ------------------------------------------------------------
    def _logits(self, x, data_j, alpha, sigma):
        """log p_t(x | x_1) up to the constant -d/2 log(2 pi sigma^2), shape (m, n_j).

        alpha and sigma have shape (1, 1) (one time for all rows) or (m, 1). For one time the squared distances come
        from direct differences (``torch.cdist`` without matrix products: no cancellation); for one time per row
        from the expansion |x|^2 - 2 alpha x.x_1 + alpha^2 |x_1|^2 (one matrix product, fast, but it loses
        about |x|^2 * eps of absolute precision: use float64 when sigma_t is small).
        """
        if alpha.shape[0] == 1:
            sq = torch.cdist(x, alpha * data_j, compute_mode="donot_use_mm_for_euclid_dist") ** 2
        else:
            base = (x * x).sum(dim=1, keepdim=True) + alpha ** 2 * (data_j * data_j).sum(dim=1)
            sq = torch.addmm(base, alpha * x, data_j.T, alpha=-2).clamp_min(0)
        return -sq / (2 * sigma ** 2)

    def _stream(self, x, data, alpha, sigma, with_mean: bool):
        """Streaming log-sum-exp over data chunks for one chunk of query points.

        Returns (lse, mean): lse = log sum_i exp(logit_i), shape (m,); mean = sum_i w_i x_1^(i), shape (m, d) or None.
        """
        run_max = run_sum = run_w = None
        a, s = _one_time(alpha, sigma)
        for data_j in torch.split(data, self.chunk_size):
            logits = self._logits(x, data_j, a, s)  # (m, n_j)
            blk_max = logits.max(dim=1).values.detach()
            new_max = blk_max if run_max is None else torch.maximum(run_max, blk_max)
            e = torch.exp(logits - new_max.unsqueeze(1))
            if run_max is None:
                run_sum = e.sum(dim=1)
                run_w = e @ data_j if with_mean else None
            else:
                scale = torch.exp(run_max - new_max)
                run_sum = run_sum * scale + e.sum(dim=1)
                if with_mean:
                    run_w = run_w * scale.unsqueeze(1) + e @ data_j
            run_max = new_max
        if not bool(torch.isfinite(run_max).all()):
            raise ValueError(f"x has points so far from the data that their squared distances overflow "
                             f"{x.dtype} (largest |x| = {float(x.abs().max()):.3g}); use float64 or closer points")
        lse = run_max + torch.log(run_sum)
        return lse, (run_w / run_sum.unsqueeze(1) if with_mean else None)

    def _chunked(self, t, x, with_mean: bool):
        x, data, t, alpha, sigma = self._prepare(t, x)
        lses, means = [], []
        for idx in torch.split(torch.arange(x.shape[0], device=x.device), self.chunk_size):
            lse, mean = self._stream(x[idx], data, alpha[idx], sigma[idx], with_mean)
            lses.append(lse)
            means.append(mean)
        lse = torch.cat(lses) if lses else x.new_zeros(0)
        mean = (torch.cat(means) if means else x.new_zeros(0, self.dim)) if with_mean else None
        return x, t, alpha, sigma, lse, mean

    # --- public API -------------------------------------------------------------------------------------------
    def log_prob(self, t, x: torch.Tensor) -> torch.Tensor:
        r"""Log-density of the marginal path, :math:`\log p_t(x) = \log \tfrac1n \sum_i p_t(x \mid y_i)`.

        Book eq. ``eq-marginal-path``; Lipman et al. (2023), eq. 6 (a Gaussian mixture for empirical data).

        Args:
            t: times in [0, 1] with sigma_t > 0: float, 0-d tensor, shape (m,) or (m, 1).
            x: points, shape (m, d).

        Returns:
            log-densities in nats, shape (m,).

        Raises:
            ValueError: bad shapes or dtype, non-finite values, x on another device than data, t outside [0, 1], or
                sigma_t = 0 at some t (no density there).
        """
        x, t, alpha, sigma, lse, _ = self._chunked(t, x, with_mean=False)
        d = self.dim
        return lse - 0.5 * d * torch.log(2 * math.pi * sigma.squeeze(1) ** 2) - math.log(self.n)

    def posterior_mean(self, t, x: torch.Tensor) -> torch.Tensor:
        r"""Posterior mean :math:`m_t(x) = \mathbb E[x_1 \mid x_t = x] = \sum_i w_t(x, y_i)\, y_i`.

        Args, Raises: as :meth:`log_prob`.

        Returns:
            shape (m, d).
        """
        return self._chunked(t, x, with_mean=True)[5]

    def posterior_weights(self, t, x: torch.Tensor) -> torch.Tensor:
        r"""Posterior weights :math:`w_t(x, y_i) = P(x_1 = y_i \mid x_t = x)` by Bayes' rule (a softmax of the
        conditional log-densities; book eq. ``eq-marginal-vf``).

        The result is the full (m, n) matrix, so its memory is m * n numbers; :meth:`vector_field` and
        :meth:`log_prob` never form it.

        Args, Raises: as :meth:`log_prob`.

        Returns:
            shape (m, n); each row is non-negative and sums to 1.
        """
        x, data, t, alpha, sigma = self._prepare(t, x)
        rows = []
        for idx in torch.split(torch.arange(x.shape[0], device=x.device), self.chunk_size):
            a, s = _one_time(alpha[idx], sigma[idx])
            logits = torch.cat([self._logits(x[idx], data_j, a, s)
                                for data_j in torch.split(data, self.chunk_size)], dim=1)
            rows.append(torch.softmax(logits, dim=1))
        return torch.cat(rows) if rows else x.new_zeros(0, self.n)

    def vector_field(self, t, x: torch.Tensor) -> torch.Tensor:
        r"""Marginal vector field :math:`u_t(x) = \sum_i w_t(x, y_i)\, u_t(x \mid y_i)`.

        Book eq. ``eq-marginal-vf``; Lipman et al. (2023), eq. 8. Computed as
        :math:`\tfrac{\sigma'_t}{\sigma_t} x + (\alpha'_t - \tfrac{\sigma'_t}{\sigma_t}\alpha_t)\, m_t(x)` with the
        posterior mean :math:`m_t(x)` (:meth:`posterior_mean`). With one data point it is the conditional field
        :meth:`fmlib.paths.GaussianPath.conditional_vector_field`.

        Args:
            t: times in [0, 1] with sigma_t > 0: float, 0-d tensor, shape (m,) or (m, 1).
            x: points, shape (m, d).

        Returns:
            velocities, shape (m, d), in the promoted dtype of x and data.

        Raises:
            ValueError: as :meth:`log_prob`.
        """
        x, t, alpha, sigma, _, mean = self._chunked(t, x, with_mean=True)
        ratio = self.path.d_sigma(t) / sigma
        return ratio * x + (self.path.d_alpha(t) - ratio * alpha) * mean

    __call__ = vector_field

    def score(self, t, x: torch.Tensor) -> torch.Tensor:
        r"""Marginal score :math:`\nabla_x \log p_t(x) = (\alpha_t m_t(x) - x) / \sigma_t^2`, in closed form.

        Book eq. ``eq-dm-score`` (Tweedie's formula; Efron 2011): the gradient of the mixture's log-density is the
        posterior average of the conditional scores :math:`(\alpha_t y_i - x) / \sigma_t^2`, with the
        posterior mean :math:`m_t(x)` of :meth:`posterior_mean`. It equals the autograd gradient of
        :meth:`log_prob` up to rounding. At a typical point of the path, :math:`x = \alpha_t x_1 + \sigma_t x_0`, it is
        about :math:`-x_0 / \sigma_t`: it grows like :math:`1/\sigma_t` as :math:`\sigma_t \to 0`.

        Args, Raises: as :meth:`log_prob`.

        Returns:
            shape (m, d), in the promoted dtype of x and data.
        """
        x, t, alpha, sigma, _, mean = self._chunked(t, x, with_mean=True)
        return (alpha * mean - x) / sigma ** 2
