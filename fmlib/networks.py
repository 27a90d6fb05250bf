r"""Neural vector fields :math:`v_\theta(t, x)` (book chapter "Training a flow on an annulus").

Every vector field in fmlib is called as ``v(t, x)`` with ``x`` of shape (n, d) and ``t`` a float, a 0-d tensor, or a
tensor of shape (n,) or (n, 1) -- the same order as ``torchdiffeq.odeint(func(t, y))``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ._checks import as_time, check_bool, check_choice, check_int_in, check_points, check_positive_int

__all__ = ["MLPVectorField", "ACTIVATIONS"]

MAX_TIME_FREQUENCIES = 1000  # a sanity cap: beyond it the time features would dwarf any network

ACTIVATIONS = {"elu": nn.ELU, "relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh, "gelu": nn.GELU, "softplus": nn.Softplus}


class MLPVectorField(nn.Module):
    r"""A time-conditioned multilayer perceptron :math:`v_\theta(t, x): [0, 1] \times \mathbb R^d \to \mathbb R^d`.

    The input is the concatenation :math:`(t, x) \in \mathbb R^{1 + d}`, followed by ``depth`` hidden layers of
    ``width`` units with the chosen activation and a linear output layer of size d. The defaults (3 hidden layers
    of 64 ELU units) are the annulus chapter's model.

    Two options, both off by default, help a small network follow a field that changes fast in t and x (book
    chapter "Sampling and likelihood"):

    * ``time_frequencies = K`` adds the sinusoidal time features :math:`\sin(k\pi t), \cos(k\pi t)`,
      :math:`k = 1, \dots, K`, to the input, which becomes :math:`(t, \sin \pi t, \dots, \sin K\pi t,
      \cos \pi t, \dots, \cos K\pi t, x)` of size 1 + 2K + d (in the spirit of the sinusoidal embeddings of
      Vaswani et al. 2017 that diffusion models use for time, with linearly spaced frequencies);
    * ``residual=True`` makes every hidden layer after the first a residual block :math:`h \mapsto h +
      a(W h + b)` (He et al. 2016), which lets deeper networks train as easily as shallow ones.

    Args:
        dim: dimension d of the data, a positive integer.
        width: hidden units per layer, a positive integer.
        depth: number of hidden layers, a positive integer.
        activation: one of ``ACTIVATIONS`` ("elu", "relu", "silu", "tanh", "gelu", "softplus").
        time_frequencies: number K of sinusoidal time frequencies, an int in [0, 1000] (0: the input is (t, x)).
        residual: use residual hidden layers (a bool, numpy's too).

    Raises:
        ValueError: for a non-positive or non-integer size, a time_frequencies that is not an int in [0, 1000], a
            residual that is not a bool, or an unknown activation name.
    """

    def __init__(self, dim: int, width: int = 64, depth: int = 3, activation: str = "elu", *,
                 time_frequencies: int = 0, residual: bool = False):
        super().__init__()
        self.dim = check_positive_int("dim", dim)
        width = check_positive_int("width", width)
        depth = check_positive_int("depth", depth)
        act = ACTIVATIONS[check_choice("activation", activation, ACTIVATIONS)]
        self.time_frequencies = check_int_in("time_frequencies", time_frequencies, 0, MAX_TIME_FREQUENCIES)
        self.residual = check_bool("residual", residual)
        layers: list[nn.Module] = [nn.Linear(1 + 2 * self.time_frequencies + self.dim, width), act()]
        for _ in range(depth - 1):
            layers += [_ResidualBlock(width, act())] if residual else [nn.Linear(width, width), act()]
        layers.append(nn.Linear(width, self.dim))
        self.net = nn.Sequential(*layers)

    def forward(self, t, x: torch.Tensor) -> torch.Tensor:
        r"""Evaluate :math:`v_\theta(t, x)`.

        Args:
            t: times in [0, 1]: float, 0-d tensor, shape (n,) or (n, 1).
            x: points, shape (n, d).

        Returns:
            velocities, shape (n, d).

        Raises:
            ValueError: if x is not (n, d) with d = ``dim``, its dtype differs from the parameters', or t has a shape
                that does not match n, is not finite, or lies outside [0, 1].
        """
        x = check_points("x", x, dim=self.dim)
        w = self.net[0].weight
        if x.dtype != w.dtype:
            raise ValueError(f"x has dtype {x.dtype} but the model's parameters are {w.dtype}; convert one of them "
                             f"(e.g. model.to({x.dtype}) or x.to({w.dtype}))")
        t = as_time(t, x)
        if self.time_frequencies:
            # angular frequencies k pi, k = 1..K, made in t's dtype (exact in float64 too)
            omega = math.pi * torch.arange(1, self.time_frequencies + 1, dtype=t.dtype, device=t.device)
            angles = t * omega  # (n, K)
            return self.net(torch.cat([t, torch.sin(angles), torch.cos(angles), x], dim=1))
        return self.net(torch.cat([t, x], dim=1))


class _ResidualBlock(nn.Module):
    """h -> h + activation(linear(h)), a hidden layer of :class:`MLPVectorField` with ``residual=True``."""

    def __init__(self, width: int, activation: nn.Module):
        super().__init__()
        self.linear, self.activation = nn.Linear(width, width), activation

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.activation(self.linear(h))
