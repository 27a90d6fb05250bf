r"""Conditional flow-matching training (book chapters "The conditional flow-matching objective" and
"Training a flow on an annulus").

The CFM loss (book eq. ``eq-cfm-loss``; Lipman et al. 2023, eqs. 9 and 13) for a Gaussian path is

.. math:: \mathcal L_{CFM}(\theta) = \mathbb E_{t \sim U[0,1],\ x_1 \sim q,\ x_0 \sim \mathcal N(0, I)}
          \big\| v_\theta(t, \psi_t(x_0 \mid x_1)) - \tfrac{d}{dt}\psi_t(x_0 \mid x_1) \big\|^2 .

Batches are drawn tensor-wise from a sampler function -- no per-item ``Dataset``/``DataLoader`` -- which is both
simpler and several times faster for toy data that can be drawn afresh at every step.
"""

from __future__ import annotations

import copy
import numbers
from typing import Callable

import torch
from tqdm import tqdm

from ._checks import (check_bool, check_device, check_float_dtype, check_generator, check_int_in, check_points,
                      check_positive_int, check_positive_real, check_seed)
from .couplings import _ot_permutation
from .paths import GaussianPath, LinearPath

__all__ = ["cfm_loss", "draw_times", "quasi_random_batch", "train_cfm"]


def cfm_loss(v: Callable, path: GaussianPath, x_1: torch.Tensor, generator: torch.Generator | None = None,
             reduction: str = "mean", time_beta: float = 1.0) -> torch.Tensor:
    r"""Monte-Carlo estimate of the CFM loss on one batch of data points.

    The squared error is summed over the d coordinates and averaged over the batch (``reduction="mean"``), so the
    value is an estimate of :math:`\mathcal L_{CFM}` as written in the book (book eq. ``eq-cfm-loss``). Libraries
    that average over the coordinates instead (``flow_matching``'s examples, torchcfm's tutorials use
    ``torch.mean((v - u) ** 2)``) report this value divided by d; the minimiser and the gradient directions are the
    same, and with Adam, which is invariant to a constant scale of the loss, so is training.

    Args:
        v: vector field ``v(t, x)`` (e.g. :class:`fmlib.networks.MLPVectorField`).
        path: the conditional probability path, e.g. ``LinearPath(sigma_min)``.
        x_1: data points, shape (n, d).
        generator: optional ``torch.Generator`` on x_1's device for t and x_0.
        reduction: "mean" (a scalar) or "none" (per-sample losses, shape (n,)).
        time_beta: the times are drawn from Beta(1, time_beta) (see :func:`draw_times`): 1.0 (default) is
            t ~ U[0, 1]; values below 1 draw more times near t = 1. A finite number > 0.

    Returns:
        a scalar tensor, or shape (n,) with ``reduction="none"``.

    Raises:
        ValueError: for a bad x_1 (or an empty one with reduction="mean"), a bad reduction, time_beta or generator,
            a v that is not callable or returns another shape than x, or a path that is not a
            :class:`fmlib.paths.GaussianPath`.
    """
    check_generator("generator", generator)
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    time_beta = check_positive_real("time_beta", time_beta)
    _check_v_and_path(v, path)
    x_1 = check_points("x_1", x_1)
    if x_1.shape[0] == 0 and reduction == "mean":
        raise ValueError("x_1 must hold at least one point for reduction='mean', got shape (0, d)")
    return _cfm_loss(v, path, x_1, generator, reduction, time_beta)


def draw_times(n: int, time_beta: float = 1.0, *, t_max: float = 1.0, generator: torch.Generator | None = None,
               device=None, dtype=None) -> torch.Tensor:
    r"""Training times :math:`t = t_{max}\,(1 - (1 - u)^{1/b})` with :math:`u \sim U[0, 1)`, i.e. ``t / t_max`` drawn
    from Beta(1, b) with b = ``time_beta``, whose density is :math:`b\,(1 - t)^{b - 1}` on [0, 1].

    ``time_beta = 1`` is the uniform U[0, t_max) of the CFM objective as written (book eq. ``eq-cfm-loss``; Lipman
    et al. 2023, eq. 9); ``time_beta = 0.5`` draws times with density :math:`1 / (2\sqrt{1 - t})`: 0.5 at t = 0, 1 at
    t = 3/4, 2 at t = 15/16 and 5 at t = 0.99, where the uniform density is 1 everywhere. Any density that is positive on
    (0, t_max) keeps the minimiser -- the marginal field :math:`u_t` at every t -- and only changes how much each t
    weighs in the loss (book chapter "Sampling and likelihood").

    Args:
        n: number of times, an int >= 0.
        time_beta: b, a finite number > 0.
        t_max: upper end of the times, a number in (0, 1] (a path's ``t_max``; 1 for the linear path).
        generator, device: as for ``torch.rand``.
        dtype: a floating-point ``torch.dtype`` (default: torch's default dtype).

    Returns:
        times of shape (n, 1), in [0, t_max].

    Raises:
        ValueError: for a bad n, time_beta, t_max, dtype, generator or device.
    """
    n = check_int_in("n", n, 0)
    check_generator("generator", generator)
    if device is not None:
        device = check_device("device", device)
    time_beta = check_positive_real("time_beta", time_beta)
    _check_t_max(t_max)
    if dtype is not None:
        check_float_dtype("dtype", dtype)
    u = torch.rand(n, 1, generator=generator, device=device, dtype=dtype)
    return float(t_max) * _times_from_uniform(u, time_beta)


def _check_t_max(t_max):
    if isinstance(t_max, bool) or not isinstance(t_max, numbers.Real) or not 0 < t_max <= 1:
        raise ValueError(f"t_max must be a number in (0, 1], got {t_max!r}")


def _times_from_uniform(u: torch.Tensor, time_beta: float) -> torch.Tensor:
    """Beta(1, time_beta) times from uniforms u in [0, 1) (inverse CDF), in u's dtype (see :func:`draw_times`)."""
    if time_beta == 1.0:
        t = u  # u itself, not 1 - (1 - u), which differs by rounding: uniform runs stay bit-identical
    else:
        w = u.float() if u.dtype in (torch.float16, torch.bfloat16) else u  # 1/b must not overflow half precision
        if time_beta < 1:
            t = 1 - (1 - w) ** (1 / time_beta)  # t mostly near 1: no cancellation worth the name
        else:
            t = -torch.expm1(torch.log1p(-w) / time_beta)  # t mostly near 0: 1 - (1 - u)^(1/b) would cancel
        t = t.to(u.dtype)
    return t


def quasi_random_batch(sobol: torch.quasirandom.SobolEngine, n: int, d: int, sample_data: Callable, *,
                       time_beta: float = 1.0, t_max: float = 1.0, device=None,
                       dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""The next quasi-random batch (t, x_0, x_1) of :func:`train_cfm` with ``data_uniforms`` (book chapter
    "Sampling and likelihood", eq. ``eq-batch-estimate``).

    Takes the next n points u of ``sobol`` (a scrambled ``torch.quasirandom.SobolEngine`` in 1 + d + k
    dimensions): :math:`t = t_{max} (1 - (1 - u_1)^{1/b})` with b = ``time_beta`` (as :func:`draw_times`),
    :math:`x_0 = \Phi^{-1}(u_2, \dots, u_{d+1})` (inverse normal CDF, coordinatewise) and
    x_1 = ``sample_data(n, u=U, device=device)`` with U the last k coordinates, shape (n, k), in float64.

    Args:
        sobol: the sequence, with ``dimension`` >= d + 2 (at least one uniform for the data).
        n: batch size, a positive int (a power of 2 keeps every batch balanced).
        d: dimension of the data, a positive int.
        sample_data: the data sampler, e.g. :func:`fmlib.data.sample_annulus` (k = 2).
        time_beta, t_max: as in :func:`draw_times`.
        device: where t and x_0 go (and what the sampler is asked for); dtype: their floating-point dtype.

    Returns:
        t of shape (n, 1) in [0, t_max], x_0 of shape (n, d), and whatever sample_data returns.

    Raises:
        ValueError: for a sobol that is not a SobolEngine with at least d + 2 dimensions, or a bad n, d,
            time_beta, t_max or dtype.
    """
    if not isinstance(sobol, torch.quasirandom.SobolEngine):
        raise ValueError(f"sobol must be a torch.quasirandom.SobolEngine, got {type(sobol).__name__}")
    n = check_positive_int("n", n)
    d = check_positive_int("d", d)
    if sobol.dimension < d + 2:
        raise ValueError(f"sobol must have at least d + 2 = {d + 2} dimensions (t, x_0 and at least one uniform for "
                         f"the data), got {sobol.dimension}")
    time_beta = check_positive_real("time_beta", time_beta)
    _check_t_max(t_max)
    check_float_dtype("dtype", dtype)
    if device is not None:
        device = check_device("device", device)
    return _quasi_random_batch(sobol, n, d, sample_data, time_beta, t_max, device, dtype)


def _quasi_random_batch(sobol, n, d, sample_data, time_beta, t_max, device, dtype):
    """:func:`quasi_random_batch` without input checks, for the training loop."""
    u = sobol.draw(n, dtype=torch.float64).to(device)
    t = t_max * _times_from_uniform(u[:, :1], time_beta).to(dtype)
    # Phi^{-1}(u): the Sobol points are multiples of 2^-30, so the centre of their grid cell is in (0, 1)
    # (the clamp guards torch's first Sobol point, which it rounds in float32 and may round up to 1)
    x_0 = torch.special.ndtri((u[:, 1:1 + d] + 2.0 ** -31).clamp(max=1 - 2.0 ** -31)).to(dtype)
    return t, x_0, sample_data(n, u=u[:, 1 + d:], device=device)


def _check_v_and_path(v, path):
    if not callable(v):
        raise ValueError(f"v must be callable as v(t, x), got {type(v).__name__}")
    if not isinstance(path, GaussianPath):
        raise ValueError(f"path must be a GaussianPath instance such as LinearPath(sigma_min), got {path!r}")


def _cfm_loss(v, path, x_1, generator, reduction="mean", time_beta=1.0, t=None, x_0=None):
    if t is None and time_beta != 1.0:
        t = draw_times(x_1.shape[0], time_beta, t_max=path.t_max, generator=generator, device=x_1.device,
                       dtype=x_1.dtype)
    s = path._sample(x_1, t, x_0, generator=generator)
    u = v(s.t, s.x_t)
    if not isinstance(u, torch.Tensor) or u.shape != s.x_t.shape:
        got = tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__
        raise ValueError(f"v(t, x) must return a tensor of x's shape {tuple(s.x_t.shape)}, got {got}")
    per_sample = ((u - s.u_t) ** 2).sum(dim=1)
    return per_sample.mean() if reduction == "mean" else per_sample


def _default_adam(model, lr, betas=(0.9, 0.999)):
    """Adam with the fused kernel where this torch has it for the model's device (same maths, less overhead)."""
    try:
        return torch.optim.Adam(model.parameters(), lr=lr, betas=betas, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(model.parameters(), lr=lr, betas=betas)


def train_cfm(model: torch.nn.Module, sample_data: Callable, *, path: GaussianPath | None = None,
              n_steps: int = 10_000, batch_size: int = 256, lr: float = 1e-2, seed: int | None = 0,
              device=None, optimizer: torch.optim.Optimizer | None = None, scheduler=None,
              progress: bool = True, desc: str = "training", time_beta: float = 1.0,
              data_uniforms: int | None = None, coupling: str = "independent",
              labels: torch.Tensor | None = None, label_dropout: float = 0.0) -> list[float]:
    r"""Train a vector field with the CFM loss; batches are drawn tensor-wise from ``sample_data``.

    At every step, in this order and all from one generator ``g`` seeded with ``seed``: draw x_1 =
    ``sample_data(batch_size, generator=g, device=device)`` (shape (batch_size, d)), t ~ U[0, 1] of shape
    (batch_size, 1) (or Beta(1, ``time_beta``), see :func:`draw_times`) and x_0 ~ N(0, I), and take one optimizer
    step on :func:`cfm_loss`. A plain loop that makes the same draws in the same order, with the same optimizer,
    computes the same losses (the annulus chapter shows that loop and checks it).

    Args:
        model: the vector field ``v(t, x)``, a ``torch.nn.Module``; it is moved to ``device`` and trained in place.
        sample_data: the data: a tensor of shape (N, d), whose rows are drawn uniformly with replacement (with
            the seeded generator, on ``device``; the tensor is copied there once and never changed), or a sampler
            called as ``sample_data(n, generator=g, device=device)`` returning (n, d), e.g.
            :func:`fmlib.data.sample_annulus`.
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
        time_beta: draw the times from Beta(1, time_beta): 1.0 (default) is U[0, 1]; values below 1 draw more
            times near t = 1, where the marginal field of data with sharp edges is hardest to learn.
        data_uniforms: None (default): pseudo-random batches, as above. An int k >= 1: quasi-random batches (book
            chapter "Sampling and likelihood", section "Quasi-random batches"). Every step then takes the next
            ``batch_size`` points u of one scrambled Sobol sequence in 1 + d + k dimensions (seeded with ``seed``;
            at most 2**30 points in all): the first coordinate gives t (the inverse CDF of Beta(1, time_beta)), the
            next d give x_0 = Phi^{-1}(u) ~ N(0, I), and the last k are passed to the data sampler, which must turn
            them into data points: it is called as ``sample_data(batch_size, u=U, device=device)`` with U of shape
            (batch_size, k), in float64 (:func:`fmlib.data.sample_annulus` takes k = 2). The loss stays an unbiased
            estimate of the same objective, usually with a smaller variance. The sampler must still accept the call above
            with ``generator=`` (the first batch, which sets d and the dtype), and it is tried twice with the same
            U of two points, which must give the same points (a sampler that ignores u is refused). With
            ``seed=None`` the scrambling is drawn from this function's own unseeded generator. Every block of
            ``batch_size`` points is balanced (one point in each of ``batch_size`` equal intervals of every
            coordinate) when ``batch_size`` is a power of 2; other sizes work, with less balance.
        coupling: how x_0 and x_1 are paired (book chapter "Straight paths", eq. ``eq-sp-coupled-loss``).
            "independent" (default): as above. "ot": the same draws of x_1, t and x_0 as "independent", then the
            batch's x_1 re-paired to its x_0 by the exact minibatch optimal-transport assignment
            (:func:`fmlib.couplings.ot_permutation`; Tong et al. 2024, Alg. 3). "paired": ``sample_data`` is a
            tuple ``(x_0, x_1)`` of two tensors of shape (N, d) whose rows are drawn together, uniformly with
            replacement (e.g. the pairs of :func:`fmlib.couplings.reflow_pairs`, for rectified flow); only t is
            drawn. Not with ``data_uniforms``.
        labels: class labels of the rows of a data tensor ``sample_data`` (book chapter "Conditional generation
            and guidance", eq. ``eq-cfg-dropout-loss``): an integer tensor of shape (N,) with values in
            {0, ..., C - 1} for a model built with ``n_classes=C``, which is then trained as ``model(t, x, c)``.
            Each step draws the rows' indices, then (with ``label_dropout`` > 0) one uniform per row: a row's
            label is replaced by "no label" (``model.null_label``) when its uniform is below ``label_dropout``.
            None (default): ``model(t, x)``, no label.
        label_dropout: the rate :math:`\eta` in [0, 1) at which labels are dropped (needs ``labels``).

    Returns:
        the loss at every step, a list of ``n_steps`` floats. The model is left in ``eval()`` mode.

    Raises:
        ValueError: for a non-positive n_steps or batch_size, a bad lr, seed, device, progress or desc, a model that
            is not an ``nn.Module``, a path that is not a GaussianPath, an optimizer that does not hold the model's
            parameters, a scheduler without ``step()``, a sampler that cannot be called as above or whose output is
            not a finite (batch_size, d) tensor, or a loss that becomes NaN/inf (checked every 200 steps). When
            training stops part-way, the step is named and the model is reset to its weights at the last check that
            passed. With data_uniforms: a value that is not an int >= 1, a sample_data that does not accept ``u=``,
            fails on a U of that width, ignores U or returns other shapes or dtypes than its first batch,
            n_steps * batch_size above 2**30 (the length of the Sobol sequence), or 1 + d + data_uniforms above
            21,201 dimensions. With labels: a sample_data that is not a tensor, labels that are not integers of
            shape (N,) in [0, C), a model without ``n_classes >= 1``, a label_dropout outside [0, 1) or given
            without labels, or data_uniforms. The arguments are checked before the model is moved or set to
            training mode.
    """
    n_steps = check_positive_int("n_steps", n_steps)
    batch_size = check_positive_int("batch_size", batch_size)
    lr = check_positive_real("lr", lr)
    time_beta = check_positive_real("time_beta", time_beta)
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"model must be a torch.nn.Module called as model(t, x), got {type(model).__name__}")
    if coupling not in ("independent", "ot", "paired"):
        raise ValueError(f"coupling must be 'independent', 'ot' or 'paired', got {coupling!r}")
    if coupling != "independent" and data_uniforms is not None:
        raise ValueError(f"coupling={coupling!r} draws pseudo-random batches: leave data_uniforms=None")
    if coupling == "paired":  # rows of (x_0 | x_1), drawn together; split again in the loop
        if not (isinstance(sample_data, (tuple, list)) and len(sample_data) == 2):
            raise ValueError(f"with coupling='paired', sample_data must be a tuple (x_0, x_1) of two tensors of "
                             f"shape (N, d), got {type(sample_data).__name__}")
        pair = [check_points(f"sample_data[{i}]", z) for i, z in enumerate(sample_data)]
        if pair[0].shape != pair[1].shape or pair[0].dtype != pair[1].dtype:
            raise ValueError(f"with coupling='paired', x_0 and x_1 must have the same shape and dtype, got "
                             f"{tuple(pair[0].shape)}, {pair[0].dtype} and {tuple(pair[1].shape)}, {pair[1].dtype}")
        sample_data = torch.cat([z.detach().to(pair[1].device) for z in pair], dim=1)
    if coupling != "independent" and (labels is not None or label_dropout != 0.0):
        raise ValueError(f"coupling={coupling!r} re-pairs the batch's rows, which labels would no longer match: "
                         f"use labels with coupling='independent'")
    if labels is not None or label_dropout != 0.0:  # class-conditional: model(t, x, c), labels dropped at rate eta
        sample_data, model = _labelled(model, sample_data, labels, label_dropout, data_uniforms)
    if isinstance(sample_data, torch.Tensor):
        if data_uniforms is not None:
            raise ValueError("data_uniforms needs a sampler that turns uniforms into points; with a data tensor, "
                             "leave data_uniforms=None")
        sample_data = _rows_of(check_points("sample_data (a data tensor)", sample_data))
    if not callable(sample_data):
        raise ValueError(f"sample_data must be a data tensor of shape (N, d) or callable as sample_data(n, "
                         f"generator=g, device=device), got {type(sample_data).__name__}")
    if seed is not None:
        seed = check_seed("seed", seed)
    if optimizer is not None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        held = {id(q) for group in optimizer.param_groups for q in group["params"]}
        if any(id(q) not in held for q in model.parameters() if q.requires_grad):
            raise ValueError("optimizer must hold the model's parameters (build it with model.parameters()); "
                             "it misses some of them, so they would never be trained")
    if scheduler is not None and not callable(getattr(scheduler, "step", None)):
        raise ValueError(f"scheduler must be a learning-rate scheduler with a step() method (e.g. "
                         f"torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, n_steps)), got {scheduler!r}")
    progress = check_bool("progress", progress)
    if not isinstance(desc, str):
        raise ValueError(f"desc must be a str (the progress bar's label), got {desc!r}")
    if data_uniforms is not None:
        data_uniforms = check_int_in("data_uniforms", data_uniforms, 1)
    path = LinearPath(0.0) if path is None else path
    _check_v_and_path(model, path)
    if device is None:
        p = next(model.parameters(), None)
        device = check_device("device (the model's)", p.device if p is not None else "cpu")
    else:
        device = check_device("device", device)
    generator = torch.Generator(device=device)
    if seed is not None:
        generator.manual_seed(seed)
    else:
        generator.seed()

    try:
        x_check = sample_data(batch_size, generator=generator, device=device)
    except TypeError as err:
        raise ValueError(f"sample_data must be callable as sample_data(n, generator=g, device=device) (e.g. "
                         f"fmlib.sample_annulus); calling it so failed with: {err}") from err
    x_check = check_points("sample_data(batch_size)", x_check)
    if x_check.shape[0] != batch_size:
        raise ValueError(f"sample_data(batch_size) must return batch_size = {batch_size} rows, "
                         f"got shape {tuple(x_check.shape)}")
    d = x_check.shape[1]
    sobol = None if data_uniforms is None else _sobol_engine(sample_data, data_uniforms, x_check, n_steps,
                                                             batch_size, seed, generator, device)
    model.to(device).train()  # the arguments are checked: the model may change now
    own_optimizer = optimizer is None
    if own_optimizer:
        optimizer = _default_adam(model, lr)
    # device-side buffer of losses: avoids a host synchronisation at every step; it is checked every CHECK_EVERY
    # steps, and training stops there with the weights of the last check if a loss was not finite
    losses = torch.empty(n_steps, device=device)
    last_good, checked = _snapshot(model, optimizer), 0
    bar = tqdm(range(n_steps), desc=desc, disable=not progress, mininterval=2.0, unit="step")
    for step in bar:
        try:
            t = x_0 = None
            if sobol is None:  # the first batch is the one drawn above to learn d and the dtype
                x_1 = x_check if step == 0 else sample_data(batch_size, generator=generator, device=device)
            else:
                t, x_0, x_1 = _quasi_random_batch(sobol, batch_size, d, sample_data, time_beta, path.t_max, device,
                                                  x_check.dtype)
            if not isinstance(x_1, torch.Tensor) or x_1.shape != x_check.shape or x_1.dtype != x_check.dtype:
                got = (f"shape {tuple(x_1.shape)}, dtype {x_1.dtype}" if isinstance(x_1, torch.Tensor)
                       else type(x_1).__name__)
                raise ValueError(f"sample_data(batch_size) returned {got}, expected shape {tuple(x_check.shape)}, "
                                 f"dtype {x_check.dtype} (as its first batch)")
            if coupling == "ot":  # the draws of the independent coupling (t, then x_0), re-paired
                t = draw_times(batch_size, time_beta, t_max=path.t_max, generator=generator, device=device,
                               dtype=x_1.dtype)
                x_0 = torch.randn(x_1.shape, generator=generator, device=device, dtype=x_1.dtype)
                x_1 = x_1[_ot_permutation(x_0, x_1)]
            elif coupling == "paired":
                x_0, x_1 = x_1[:, :d // 2], x_1[:, d // 2:]
            loss = _cfm_loss(model, path, x_1, generator, time_beta=time_beta, t=t, x_0=x_0)
        except ValueError as err:  # e.g. NaN data reaching the model's input check
            _restore(model, optimizer, last_good)
            model.eval()
            raise ValueError(f"training stopped at step {step}: {err} (check sample_data's output); the model was "
                             f"reset to {_weights_at(checked)}") from err
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        losses[step] = loss.detach()
        if step + 1 - checked >= CHECK_EVERY or step == n_steps - 1:
            window = losses[checked:step + 1]
            if not bool(torch.isfinite(window).all()):
                bad = checked + int((~torch.isfinite(window)).nonzero()[0, 0])
                _restore(model, optimizer, last_good)
                model.eval()
                rates = [group.get("lr") for group in optimizer.param_groups]
                rate = (f"lr={lr!r}" if own_optimizer else
                        f"the optimizer's lr={rates[0]!r}" if len(rates) == 1 else
                        f"the optimizer's learning rates {rates!r}")
                raise ValueError(f"the loss became non-finite at step {bad} ({rate}, d={d}): the learning rate "
                                 f"may be too large or sample_data may have returned NaN/inf or huge values; the "
                                 f"model was reset to {_weights_at(checked)}")
            checked, last_good = step + 1, _snapshot(model, optimizer)
        if progress and (step % 500 == 0 or step == n_steps - 1):
            bar.set_postfix(loss=f"{float(losses[step]):.3f}", refresh=False)
    model.eval()
    return losses.cpu().tolist()


def _rows_of(data: torch.Tensor) -> Callable:
    """A sampler of batches from a data tensor of shape (N, d): rows drawn uniformly with replacement, with the
    training loop's generator, on its device (the tensor is moved there once)."""
    if data.shape[0] == 0:
        raise ValueError("sample_data (a data tensor) must hold at least one row, got shape (0, d)")
    placed = {}

    def sample_rows(n, generator=None, device=None):
        device = torch.device("cpu") if device is None else torch.device(device)
        if device not in placed:  # a copy, detached from autograd: the caller's tensor is never touched
            placed[device] = data.detach().to(device, copy=True)
        rows = torch.randint(data.shape[0], (n,), generator=generator, device=device)
        return placed[device][rows]

    return sample_rows


class _LabelledModel(torch.nn.Module):
    """train_cfm's view of a class-conditional model: ``v(t, x) = model(t, x, c)`` with the labels c of the rows
    that its sampler drew last (the same parameters, trained in place)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.c = model, None

    def forward(self, t, x):
        return self.model(t, x, self.c)


def _labelled(model, data, labels, p, data_uniforms):
    """Check train_cfm's labels and label_dropout; return a sampler of rows that keeps their labels (dropped at
    rate eta) for the returned view of the model (book eq. ``eq-cfg-dropout-loss``)."""
    n_classes = getattr(model, "n_classes", 0)
    if labels is None:
        raise ValueError(f"label_dropout={p!r} needs labels (an integer tensor of shape (N,))")
    if not isinstance(data, torch.Tensor) or data_uniforms is not None:
        raise ValueError("labels need sample_data to be a data tensor of shape (N, d) and data_uniforms=None")
    data = check_points("sample_data (a data tensor)", data)
    if isinstance(n_classes, bool) or not isinstance(n_classes, numbers.Integral) or n_classes < 1:
        raise ValueError(f"labels need a class-conditional model called as model(t, x, c) with n_classes >= 1 "
                         f"(e.g. MLPVectorField(d, n_classes=C)), got a model with n_classes={n_classes!r}")
    n_classes = int(n_classes)
    if (not isinstance(labels, torch.Tensor) or labels.shape != (data.shape[0],) or labels.is_floating_point()
            or labels.is_complex() or labels.dtype == torch.bool
            or (labels.numel() and not 0 <= int(labels.min()) <= int(labels.max()) < n_classes)):
        got = f"shape {tuple(labels.shape)}, dtype {labels.dtype}" if isinstance(labels, torch.Tensor) else \
            type(labels).__name__
        raise ValueError(f"labels must be an integer tensor of shape ({data.shape[0]},) (one per data row) with "
                         f"values in [0, {n_classes}), got {got}")
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 <= p < 1:
        raise ValueError(f"label_dropout must be a number in [0, 1), got {p!r}")
    view, rows, placed = _LabelledModel(model), _rows_of(torch.arange(data.shape[0])[:, None]), {}

    def sample_labelled(n, generator=None, device=None):
        index = rows(n, generator=generator, device=device)[:, 0]
        device = index.device
        if device not in placed:  # copies: the caller's tensors are never touched
            placed[device] = (data.detach().to(device, copy=True), labels.detach().to(device, torch.long, copy=True))
        x, c = placed[device][0][index], placed[device][1][index]
        if p > 0:  # one uniform per row: its label is dropped when it is below the rate
            drop = torch.rand(n, generator=generator, device=device) < p
            c = torch.where(drop, torch.full_like(c, n_classes), c)
        view.c = c
        return x

    return sample_labelled, view


def _sobol_engine(sample_data, k, x_check, n_steps, batch_size, seed, generator, device):
    """The scrambled Sobol sequence of train_cfm's quasi-random batches, after checking that it can serve them and
    that sample_data turns given uniforms into points like x_check (the first batch it drew itself)."""
    d = x_check.shape[1]
    dim = 1 + d + k
    if dim > torch.quasirandom.SobolEngine.MAXDIM:
        raise ValueError(f"quasi-random batches need 1 + d + data_uniforms = {dim} Sobol dimensions, more than the "
                         f"{torch.quasirandom.SobolEngine.MAXDIM} torch's SobolEngine has; use data_uniforms=None")
    if n_steps * batch_size > 2 ** 30:
        raise ValueError(f"quasi-random batches take n_steps * batch_size = {n_steps * batch_size} points of one "
                         f"Sobol sequence, which has 2**30; use fewer steps or data_uniforms=None (in a recipe "
                         f"config: quasi_random=False)")
    trial = torch.tensor([[0.25], [0.75]], dtype=torch.float64).expand(2, k)  # fixed: the global RNG is not touched
    try:
        first, second = (sample_data(2, u=trial.clone(), device=device) for _ in range(2))
    except TypeError as err:
        raise ValueError(f"with data_uniforms={k}, sample_data must be callable as sample_data(n, u=U, "
                         f"device=device) with U of shape (n, {k}) (e.g. fmlib.sample_annulus with k = 2); calling "
                         f"it so failed with: {err}") from err
    except ValueError as err:
        raise ValueError(f"with data_uniforms={k}, a trial call sample_data(2, u=U, device=device) with U of shape "
                         f"(2, {k}) failed: {err} (does data_uniforms match the number of uniforms sample_data takes "
                         f"per point? sample_annulus takes 2)") from err
    for out in (first, second):
        if not isinstance(out, torch.Tensor) or out.shape != (2, d) or out.dtype != x_check.dtype:
            got = f"shape {tuple(out.shape)}, dtype {out.dtype}" if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"sample_data(n, u=U, device=device) must return points like sample_data(batch_size): "
                             f"shape (n, {d}), dtype {x_check.dtype}; a trial call with n = 2 returned {got}")
    if not torch.equal(first, second):
        raise ValueError("sample_data(n, u=U, device=device) must compute its points from U: two trial calls with "
                         "the same U returned different points (does it ignore u and draw random numbers?)")
    if seed is None:  # not seeded: the scrambling comes from train_cfm's own generator, not torch's global one
        seed = int(torch.randint(2 ** 62, (1,), generator=generator, device=generator.device))
    return torch.quasirandom.SobolEngine(dim, scramble=True, seed=seed)


CHECK_EVERY = 200  # steps between checks of the loss for NaN/inf (one host synchronisation each)


def _weights_at(checked: int) -> str:
    return "its initial weights" if checked == 0 else f"its weights after step {checked - 1}"


def _snapshot(model, optimizer):
    weights = {k: v.detach().clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v)
               for k, v in model.state_dict().items()}  # a module's extra state (e.g. its config) is not a tensor
    return weights, copy.deepcopy(optimizer.state_dict())


def _restore(model, optimizer, snap):
    model.load_state_dict(snap[0])
    optimizer.load_state_dict(snap[1])
