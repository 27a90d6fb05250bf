r"""Neural vector fields :math:`v_\theta(t, x)` (book chapter "Training a flow on an annulus").

Every vector field in fmlib is called as ``v(t, x)`` with ``x`` of shape (n, d) and ``t`` a float, a 0-d tensor, or a
tensor of shape (n,) or (n, 1) -- the same order as ``torchdiffeq.odeint(func(t, y))``.
"""

from __future__ import annotations

import torch
from torch import nn

from ._checks import as_time, check_choice, check_points, check_positive_int

__all__ = ["MLPVectorField", "ACTIVATIONS"]

ACTIVATIONS = {"elu": nn.ELU, "relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh, "gelu": nn.GELU, "softplus": nn.Softplus}


class MLPVectorField(nn.Module):
    r"""A time-conditioned multilayer perceptron :math:`v_\theta(t, x): [0, 1] \times \mathbb R^d \to \mathbb R^d`.

    The input is the concatenation :math:`(t, x) \in \mathbb R^{1 + d}`, followed by ``depth`` hidden layers of
    ``width`` units with the chosen activation and a linear output layer of size d. The defaults (3 hidden layers
    of 64 ELU units) are the annulus chapter's model.

    Args:
        dim: dimension d of the data, a positive integer.
        width: hidden units per layer, a positive integer.
        depth: number of hidden layers, a positive integer.
        activation: one of ``ACTIVATIONS`` ("elu", "relu", "silu", "tanh", "gelu", "softplus").

    Raises:
        ValueError: for a non-positive or non-integer size, or an unknown activation name.
    """

    def __init__(self, dim: int, width: int = 64, depth: int = 3, activation: str = "elu"):
        super().__init__()
        self.dim = check_positive_int("dim", dim)
        width = check_positive_int("width", width)
        depth = check_positive_int("depth", depth)
        act = ACTIVATIONS[check_choice("activation", activation, ACTIVATIONS)]
        layers: list[nn.Module] = [nn.Linear(1 + self.dim, width), act()]
        for _ in range(depth - 1):
            layers += [nn.Linear(width, width), act()]
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
        return self.net(torch.cat([t, x], dim=1))
