r"""Neural vector fields :math:`v_\theta(t, x)` (book chapter "Training a flow on an annulus").

Every vector field in fmlib is called as ``v(t, x)`` with ``x`` of shape (n, d) and ``t`` a float, a 0-d tensor, or a
tensor of shape (n,), (n, 1), (1,) or (1, 1) -- the same order as ``torchdiffeq.odeint(func(t, y))``.

A network is a function of any finite t, so that any solver can call it (torchdiffeq's adaptive solvers evaluate
just outside the interval they integrate over). Its forward pass checks only shapes and dtypes, which costs no
synchronisation with a GPU and does not break ``torch.compile``; the values of t and x are checked where a user hands
them in (fmlib's solvers, samplers and training loop), not at every evaluation.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch
from torch import nn

from ._checks import check_bool, check_choice, check_int_in, check_positive_int

__all__ = ["MLPVectorField", "ACTIVATIONS", "time_column"]

MAX_TIME_FREQUENCIES = 1000  # a sanity cap: beyond it the time features would dwarf any network
MAX_CLASSES = 100_000  # a sanity cap on n_classes: the one-hot label input has n_classes + 1 entries

ACTIVATIONS = {"elu": nn.ELU, "relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh, "gelu": nn.GELU, "softplus": nn.Softplus}


class MLPVectorField(nn.Module):
    r"""A time-conditioned multilayer perceptron :math:`v_\theta(t, x): \mathbb R \times \mathbb R^d \to \mathbb R^d`,
    trained on t in [0, 1].

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
        n_classes: number C of class labels, an int in [0, 100000]. 0 (default): an unconditional field
            :math:`v_\theta(t, x)`. C >= 1: a class-conditional field :math:`v_\theta(t, x, c)` (book chapter
            "Conditional generation and guidance", eq. ``eq-cfg-dropout-loss``) with labels c in {0, ..., C - 1}
            and one more index, C (``model.null_label``), for "no label" :math:`\varnothing`; the input gains the
            one-hot vector of the label, of size C + 1 (a learned embedding of the label in the first layer).

    The constructor's arguments are kept in ``model.config`` (a dict) and in the ``state_dict`` under the key
    ``"_extra_state"`` (PyTorch's place for a module's non-tensor state), so that ``load_state_dict`` refuses the
    weights of a model built otherwise (a ``ValueError`` naming the arguments that differ); a state_dict without
    that key (saved by older code) loads as before. :func:`fmlib.save_model` and :func:`fmlib.load_model` store and
    rebuild a model from one file. As the state_dict holds this one non-tensor entry, code that treats every value as
    a tensor should skip it, e.g. ``torch.func.functional_call(model, dict(model.named_parameters()), (t, x))``.

    Raises:
        ValueError: for a non-positive or non-integer size, a time_frequencies that is not an int in [0, 1000], a
            residual that is not a bool, an n_classes that is not an int in [0, 100000], or an unknown activation
            name.
    """

    def __init__(self, dim: int, width: int = 64, depth: int = 3, activation: str = "elu", *,
                 time_frequencies: int = 0, residual: bool = False, n_classes: int = 0):
        super().__init__()
        self.dim = check_positive_int("dim", dim)
        width = check_positive_int("width", width)
        depth = check_positive_int("depth", depth)
        act = ACTIVATIONS[check_choice("activation", activation, ACTIVATIONS)]
        self.time_frequencies = check_int_in("time_frequencies", time_frequencies, 0, MAX_TIME_FREQUENCIES)
        self.residual = check_bool("residual", residual)
        self.n_classes = check_int_in("n_classes", n_classes, 0, MAX_CLASSES)
        n_in = 1 + 2 * self.time_frequencies + self.dim + (self.n_classes + 1 if self.n_classes else 0)
        layers: list[nn.Module] = [nn.Linear(n_in, width), act()]
        for _ in range(depth - 1):
            layers += [_ResidualBlock(width, act())] if residual else [nn.Linear(width, width), act()]
        layers.append(nn.Linear(width, self.dim))
        self.net = nn.Sequential(*layers)
        self._config = {"dim": self.dim, "width": int(width), "depth": int(depth), "activation": str(activation),
                        "time_frequencies": int(self.time_frequencies), "residual": bool(self.residual)}
        if self.n_classes:  # only for a conditional model: unconditional configs stay as they were
            self._config["n_classes"] = self.n_classes
        # a state_dict saved before the config travelled with the weights has no "_extra_state": it loads as before
        self._register_load_state_dict_pre_hook(_accept_state_without_config, with_module=True)

    @property
    def null_label(self) -> int:
        """The index of "no label" (:math:`\\varnothing`) of a class-conditional model: ``n_classes``."""
        return self.n_classes

    @property
    def config(self) -> dict:
        """The constructor's arguments, a new dict at every access (changing it changes nothing):
        ``MLPVectorField(**model.config)`` builds a model of the same shape."""
        return dict(self._config)

    # The constructor's arguments travel in the state_dict (key "_extra_state"), so that weights never load into a
    # model of another shape or activation without a word, and fmlib.load_model rebuilds the model from its file.
    def get_extra_state(self) -> dict:
        """The model's constructor arguments, stored in its ``state_dict`` under ``"_extra_state"``."""
        return {"class": "MLPVectorField", "config": dict(self._config)}

    def set_extra_state(self, state) -> None:
        """Called by ``load_state_dict``: refuse weights saved from a model built with other arguments.

        Raises:
            ValueError: naming each constructor argument whose value differs.
        """
        theirs = state.get("config") if isinstance(state, dict) else None
        if not isinstance(theirs, dict):
            raise ValueError(f"the state_dict's '_extra_state' must be the config an MLPVectorField saved, got "
                             f"{state!r}")
        ours = self._config
        keys = list(ours) + [k for k in theirs if k not in ours]
        differ = [f"{k}: the weights' {theirs.get(k, '(none)')!r}, this model's {ours.get(k, '(none)')!r}"
                  for k in keys if theirs.get(k) != ours.get(k)]
        if differ:
            raise ValueError(f"these weights belong to an MLPVectorField built with other arguments ("
                             f"{'; '.join(differ)}); build the model as MLPVectorField(**config) with the weights' "
                             f"config, or load the file with fmlib.load_model")

    def forward(self, t, x: torch.Tensor, c=None) -> torch.Tensor:
        r"""Evaluate :math:`v_\theta(t, x)`, or :math:`v_\theta(t, x, c)` for a class-conditional model with label c.

        Args:
            t: times: a float, a 0-d tensor, or a tensor of shape (n,), (n, 1), (1,) or (1, 1). Any finite t is
                accepted; the network has learned the times it was trained on ([0, 1] for fmlib's paths).
            x: points, shape (n, d), in the dtype of the parameters.
            c: labels of a class-conditional model (``n_classes`` >= 1): None ("no label" for every row), an int,
                or an integer tensor of shape (n,) or (1,), with values in {0, ..., n_classes}, where n_classes is
                "no label" (``null_label``). Must be None for an unconditional model.

        Returns:
            velocities, shape (n, d).

        Raises:
            ValueError: if x is not a tensor of shape (n, d) with d = ``dim``, its dtype differs from the
                parameters', t has a shape that does not broadcast to (n, 1), or c is given to an unconditional
                model or is not an int or integer tensor of shape (n,) or (1,), or an int label outside
                {0, ..., n_classes}. The values of a label tensor are not checked here (see the module docstring):
                outside {0, ..., n_classes} they fail in ``one_hot`` (a ValueError on the CPU; on a GPU, a device
                assertion).
        """
        if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.shape[1] != self.dim or not x.is_floating_point():
            got = f"shape {tuple(x.shape)}, dtype {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must be a floating-point tensor of shape (n, {self.dim}), got {got}")
        t = time_column(t, x)
        if self.time_frequencies:
            angles = t * self._frequencies(t)  # (n, K)
            h = torch.cat([t, torch.sin(angles), torch.cos(angles), x], dim=1)
        else:
            h = torch.cat([t, x], dim=1)
        if self.n_classes:
            h = torch.cat([h, self._one_hot(c, x)], dim=1)
        elif c is not None:
            raise ValueError("c (a label) was given to an unconditional MLPVectorField (n_classes=0); build the model "
                             "with n_classes=C to condition it on labels")
        try:
            return self.net(h)
        except RuntimeError as err:  # named here, at no cost to calls that work
            w = self.net[0].weight
            if x.dtype != w.dtype:
                raise ValueError(f"x has dtype {x.dtype} but the model's parameters are {w.dtype}; convert one of "
                                 f"them (e.g. model.to({x.dtype}) or x.to({w.dtype}))") from err
            raise

    def _one_hot(self, c, x: torch.Tensor) -> torch.Tensor:
        """The one-hot labels, shape (n, n_classes + 1), in x's dtype; None is "no label" (index n_classes)."""
        n = x.shape[0]
        if c is None:
            c = self.n_classes
        if isinstance(c, numbers.Integral) and not isinstance(c, (bool, np.bool_)):
            if not 0 <= c <= self.n_classes:  # a Python number: checked at no cost
                raise ValueError(f"c must be a label in 0..{self.n_classes} ({self.n_classes}: no label), got {c!r}")
            c = torch.full((n,), int(c), dtype=torch.long, device=x.device)
        elif not (isinstance(c, torch.Tensor) and c.ndim == 1 and c.shape[0] in (1, n)
                  and not c.is_floating_point() and not c.is_complex() and c.dtype != torch.bool):
            got = f"shape {tuple(c.shape)}, dtype {c.dtype}" if isinstance(c, torch.Tensor) else type(c).__name__
            raise ValueError(f"c must be None, an int or an integer tensor of shape ({n},) or (1,) with labels in "
                             f"0..{self.n_classes} ({self.n_classes}: no label), got {got}")
        c = c.to(device=x.device, dtype=torch.long).expand(n)
        try:
            return nn.functional.one_hot(c, self.n_classes + 1).to(x.dtype)
        except RuntimeError as err:  # one_hot's own range check (on the CPU), named here at no cost to valid calls
            raise ValueError(f"c must hold labels in 0..{self.n_classes} ({self.n_classes}: no label): {err}") from err

    def _frequencies(self, t: torch.Tensor) -> torch.Tensor:
        """The angular frequencies k pi, k = 1..K, in t's dtype (exact in float64 too) and on its device; made once
        per dtype and device, not at every call (they are not parameters, and not in the state_dict)."""
        omega = self.__dict__.get("_omega")
        if omega is None or omega.dtype != t.dtype or omega.device != t.device:
            omega = math.pi * torch.arange(1, self.time_frequencies + 1, dtype=t.dtype, device=t.device)
            self.__dict__["_omega"] = omega
        return omega


def _accept_state_without_config(module, state_dict, prefix, *args):
    """A load_state_dict pre-hook of MLPVectorField: a state_dict without the config (saved before it travelled
    with the weights) is given this model's own, so that it loads as before (shapes are still checked)."""
    state_dict.setdefault(prefix + "_extra_state", module.get_extra_state())


def time_column(t, x: torch.Tensor) -> torch.Tensor:
    """Times ``t`` as a tensor of shape (n, 1) in the dtype and on the device of ``x`` (shape (n, d)), without
    looking at their values (no synchronisation with a GPU).

    Args:
        t: a real number (Python's or numpy's), a 0-d tensor, or a real tensor of shape (n,), (n, 1), (1,) or (1, 1).
        x: points, a floating-point tensor of shape (n, d).

    Returns:
        shape (n, 1), a view where possible.

    Raises:
        ValueError: if t is not a real number or tensor, or has a shape that does not broadcast to (n, 1).
    """
    n = x.shape[0]
    if isinstance(t, torch.Tensor):
        if t.dtype is not x.dtype or t.device != x.device:
            if t.dtype == torch.bool or t.is_complex():
                raise ValueError(f"t must be a real number or tensor of times, got dtype {t.dtype}")
            t = t.to(dtype=x.dtype, device=x.device)
    elif isinstance(t, numbers.Real) and not isinstance(t, (bool, np.bool_)):  # Python and numpy numbers
        return torch.full((n, 1), float(t), dtype=x.dtype, device=x.device)
    else:
        raise ValueError(f"t must be a real number or a tensor of times, got {type(t).__name__}")
    if t.ndim == 0 or t.shape in ((1,), (1, 1)):
        return t.reshape(1, 1).expand(n, 1)
    if t.shape == (n,):
        return t.unsqueeze(1)
    if t.shape == (n, 1):
        return t
    raise ValueError(f"t must be a number, a 0-d tensor, or have shape ({n},), ({n}, 1), (1,) or (1, 1) to match x "
                     f"of shape {tuple(x.shape)}; got shape {tuple(t.shape)}")


class _ResidualBlock(nn.Module):
    """h -> h + activation(linear(h)), a hidden layer of :class:`MLPVectorField` with ``residual=True``."""

    def __init__(self, width: int, activation: nn.Module):
        super().__init__()
        self.linear, self.activation = nn.Linear(width, width), activation

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.activation(self.linear(h))
