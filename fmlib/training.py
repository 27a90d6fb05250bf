r"""Conditional flow-matching training (book chapters "The conditional flow-matching objective" and
"Training a flow on an annulus").

The CFM loss (book eq. ``eq-cfm-loss``; Lipman et al. 2023, eqs. 9 and 13) for a Gaussian path is

.. math:: \mathcal L_{CFM}(\theta) = \mathbb E_{t \sim U[0,1],\ x_1 \sim q,\ x_0 \sim \mathcal N(0, I)}
          \big\| v_\theta(t, \psi_t(x_0 \mid x_1)) - \tfrac{d}{dt}\psi_t(x_0 \mid x_1) \big\|^2 .

Batches are drawn tensor-wise from a sampler function -- no per-item ``Dataset``/``DataLoader`` -- which is both
simpler and several times faster for toy data that can be drawn afresh at every step.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from tqdm import tqdm

from ._checks import check_points, check_positive_int
from .paths import GaussianPath, LinearPath

__all__ = ["cfm_loss", "train_cfm"]


def cfm_loss(v: Callable, path: GaussianPath, x_1: torch.Tensor, generator: torch.Generator | None = None,
             reduction: str = "mean") -> torch.Tensor:
    r"""Monte-Carlo estimate of the CFM loss on one batch of data points.

    The squared error is summed over the d coordinates and averaged over the batch (``reduction="mean"``), so the
    value is an estimate of :math:`\mathcal L_{CFM}` as written in the book (book eq. ``eq-cfm-loss``).

    Args:
        v: vector field ``v(t, x)`` (e.g. :class:`fmlib.networks.MLPVectorField`).
        path: the conditional probability path, e.g. ``LinearPath(sigma_min)``.
        x_1: data points, shape (n, d).
        generator: optional ``torch.Generator`` on x_1's device for t and x_0.
        reduction: "mean" (a scalar) or "none" (per-sample losses, shape (n,)).

    Returns:
        a scalar tensor, or shape (n,) with ``reduction="none"``.

    Raises:
        ValueError: for a bad x_1 or reduction.
    """
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    return _cfm_loss(v, path, check_points("x_1", x_1), generator, reduction)


def _cfm_loss(v, path, x_1, generator, reduction="mean"):
    s = path._sample(x_1, generator=generator)
    per_sample = ((v(s.t, s.x_t) - s.u_t) ** 2).sum(dim=1)
    return per_sample.mean() if reduction == "mean" else per_sample


def _default_adam(model, lr):
    """Adam with the fused kernel where this torch has it for the model's device (same maths, less overhead)."""
    try:
        return torch.optim.Adam(model.parameters(), lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(model.parameters(), lr=lr)


def train_cfm(model: torch.nn.Module, sample_data: Callable, *, path: GaussianPath | None = None,
              n_steps: int = 10_000, batch_size: int = 256, lr: float = 1e-2, seed: int | None = 0,
              device=None, optimizer: torch.optim.Optimizer | None = None, scheduler=None,
              progress: bool = True, desc: str = "training") -> list[float]:
    r"""Train a vector field with the CFM loss; batches are drawn tensor-wise from ``sample_data``.

    At every step: draw x_1 = ``sample_data(batch_size, generator=g, device=device)`` (shape (batch_size, d)),
    t ~ U[0, 1] and x_0 ~ N(0, I), and take one optimizer step on :func:`cfm_loss`.

    Args:
        model: the vector field ``v(t, x)``, a ``torch.nn.Module``; it is moved to ``device`` and trained in place.
        sample_data: data sampler called as ``sample_data(n, generator=g, device=device)`` returning (n, d),
            e.g. :func:`fmlib.data.sample_annulus`.
        path: conditional path (default ``LinearPath(0.0)``, target x_1 - x_0).
        n_steps: number of optimizer steps, a positive int.
        batch_size: data points per step, a positive int.
        lr: learning rate of the default Adam optimizer (a finite number > 0).
        seed: seed of the ``torch.Generator`` that draws data, times and noise (None: not seeded). Model weights
            are not touched: seed them before building the model.
        device: "cpu", "cuda", a ``torch.device`` or None (the model's current device).
        optimizer: optional optimizer over ``model.parameters()`` (default: Adam(lr), fused where available).
        scheduler: optional learning-rate scheduler, stepped once per step.
        progress: show a tqdm progress bar.
        desc: label of the progress bar.

    Returns:
        the loss at every step, a list of ``n_steps`` floats.

    Raises:
        ValueError: for a non-positive n_steps or batch_size, a bad lr, a sampler whose output is not (n, d), or a
            loss that becomes NaN/inf (the step at which it happened is named).
    """
    n_steps = check_positive_int("n_steps", n_steps)
    batch_size = check_positive_int("batch_size", batch_size)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    path = LinearPath(0.0) if path is None else path
    if device is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    device = torch.device(device)
    model.to(device).train()
    generator = torch.Generator(device=device)
    if seed is not None:
        generator.manual_seed(seed)
    else:
        generator.seed()
    if optimizer is None:
        optimizer = _default_adam(model, lr)

    x_check = check_points("sample_data(batch_size)", sample_data(batch_size, generator=generator, device=device))
    d = x_check.shape[1]
    # device-side buffer of losses: avoids a host synchronisation at every step
    losses = torch.empty(n_steps, device=device)
    bar = tqdm(range(n_steps), desc=desc, disable=not progress, mininterval=2.0, unit="step")
    for step in bar:
        x_1 = sample_data(batch_size, generator=generator, device=device)
        loss = _cfm_loss(model, path, x_1, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        losses[step] = loss.detach()
        if progress and (step % 500 == 0 or step == n_steps - 1):
            bar.set_postfix(loss=f"{float(losses[step]):.3f}", refresh=False)
    history = losses.cpu().tolist()
    bad = [i for i, l in enumerate(history) if not math.isfinite(l)]
    if bad:
        raise ValueError(f"the loss became non-finite at step {bad[0]} (lr={lr!r}, d={d}); try a smaller lr")
    model.eval()
    return history
