"""Input checks shared by fmlib's modules.

Every public function validates what it is given and raises a ``ValueError`` that names the argument and the value
it got, so that bad input never turns into a silently wrong answer.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch

__all__ = ["as_time", "check_points", "check_finite", "check_positive_int", "check_int_in", "check_bool",
           "check_positive_real", "check_sigma_min", "check_choice", "check_seed", "check_device", "check_generator",
           "check_float_dtype"]


_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        if value.numel() <= 6:
            return f"tensor {value.detach().cpu().tolist()!r}"
        return f"tensor of shape {tuple(value.shape)}"
    return repr(value)


def check_finite(name: str, value: torch.Tensor) -> None:
    """Raise ``ValueError`` if ``value`` holds NaN or ±inf."""
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        bad = int((~torch.isfinite(value)).sum())
        raise ValueError(f"{name} must be finite, got a tensor of shape {tuple(value.shape)} with {bad} NaN/inf entries")


def check_points(name: str, x, dim: int | None = None) -> torch.Tensor:
    """Check that ``x`` is a finite floating-point tensor of shape (n, d) and return it.

    Raises:
        ValueError: if ``x`` is not a tensor, not 2-D, has the wrong ``d``, is not floating point or is not finite.
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (n, d), got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (n, d), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name} must have d = {dim} columns, got shape {tuple(x.shape)}")
    check_finite(name, x)
    return x


def as_time(t, x: torch.Tensor, name: str = "t", closed: bool = True) -> torch.Tensor:
    """Broadcast times ``t`` against points ``x`` of shape (n, d) to a tensor of shape (n, 1).

    ``t`` may be a Python float, a 0-d tensor, or a tensor of shape (n,) or (n, 1). The result has the dtype and
    device of ``x``.

    Raises:
        ValueError: if ``t`` has another shape, is not finite, or lies outside [0, 1].
    """
    n = x.shape[0]
    if isinstance(t, bool) or not isinstance(t, (numbers.Real, torch.Tensor)):
        raise ValueError(f"{name} must be a float or a tensor of times in [0, 1], got {type(t).__name__}")
    if isinstance(t, torch.Tensor):
        if t.is_complex() or t.dtype == torch.bool or not (t.is_floating_point() or t.dtype in _INT_DTYPES):
            raise ValueError(f"{name} must be a real (floating-point) tensor of times, got dtype {t.dtype}")
        if t.is_floating_point() and t.numel() > 0:
            # range check in t's own precision, before the cast to x's dtype can round 1 + 1e-9 to 1
            lo, hi = (float(v) for v in torch.aminmax(t.detach()))
            if math.isfinite(lo) and math.isfinite(hi) and closed and not (lo >= 0 and hi <= 1):
                raise ValueError(f"{name} must lie in [0, 1], got values in [{lo:.10g}, {hi:.10g}]")
    elif not math.isfinite(float(t)) or (closed and not 0 <= float(t) <= 1):
        if math.isfinite(float(t)):
            raise ValueError(f"{name} must lie in [0, 1], got {t!r}")
        raise ValueError(f"{name} must be finite, got {t!r}")
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.ndim == 0:
        t = t.expand(n, 1)
    elif t.ndim == 1 and t.shape[0] == n:
        t = t.unsqueeze(1)
    elif t.ndim == 2 and t.shape == (n, 1):
        pass
    else:
        raise ValueError(f"{name} must be a float, a 0-d tensor, or have shape ({n},) or ({n}, 1) to match "
                         f"x of shape {tuple(x.shape)}; got shape {tuple(t.shape)}")
    if t.numel() > 0:
        lo, hi = (float(v) for v in torch.aminmax(t.detach()))  # one reduction; NaN fails both comparisons below
        if not (math.isfinite(lo) and math.isfinite(hi)):
            check_finite(name, t)
        if closed and not (lo >= 0 and hi <= 1):
            raise ValueError(f"{name} must lie in [0, 1], got values in [{lo:.4g}, {hi:.4g}]")
    return t


def check_int_in(name: str, value, low: int, high: int | None = None) -> int:
    """Return ``value`` as ``int`` if it is an integer (not a bool; numpy integers too) in [low, high] (high None:
    no upper bound), else raise ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low \
            or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be an integer {bounds}, got {_describe(value)}")
    return int(value)


def check_bool(name: str, value) -> bool:
    """Return ``value`` as ``bool`` if it is True or False (numpy's bools too), else raise ``ValueError``."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {_describe(value)}")
    return bool(value)


def check_positive_int(name: str, value) -> int:
    """Return ``value`` as ``int`` if it is a positive integer (not a bool, not a float), else raise ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {_describe(value)}")
    return int(value)


def check_sigma_min(sigma_min, name: str = "sigma_min") -> float:
    """Return ``sigma_min`` as ``float`` if it lies in [0, 1), else raise ``ValueError``."""
    if isinstance(sigma_min, bool) or not isinstance(sigma_min, numbers.Real) or not (0.0 <= float(sigma_min) < 1.0):
        raise ValueError(f"{name} must be a number in [0, 1), got {_describe(sigma_min)}")
    return float(sigma_min)


def check_device(name: str, device) -> torch.device:
    """Return ``device`` as a ``torch.device`` if it names a device this machine can compute on ("cpu", "cuda" or
    "cuda:k" with a GPU, "mps" on Apple silicon), else raise ``ValueError``."""
    try:
        if isinstance(device, bool) or not isinstance(device, (str, torch.device, numbers.Integral)):
            raise TypeError
        if isinstance(device, numbers.Integral):
            device = int(device)  # a CUDA index, as torch.device(0) reads it
        dev = torch.device(device)
    except (TypeError, RuntimeError, ValueError):
        raise ValueError(f"{name} must be a device such as 'cpu' or 'cuda' (a str, torch.device or GPU index), "
                         f"got {_describe(device)}") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name} is {device!r} but torch sees no CUDA GPU on this machine; use 'cpu' "
                             f"(fmlib.default_device() picks a GPU when there is one)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{name} is {device!r} but this machine has {torch.cuda.device_count()} CUDA GPU(s)")
        return dev
    if dev.type == "mps" and getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return dev
    raise ValueError(f"{name} must be 'cpu' or an available GPU ('cuda', 'cuda:k', 'mps'), got {device!r}")


def check_generator(name: str, generator) -> torch.Generator | None:
    """Return ``generator`` if it is None or a ``torch.Generator``, else raise ``ValueError``."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"{name} must be a torch.Generator or None (e.g. torch.Generator().manual_seed(0)), "
                         f"got {type(generator).__name__}")
    return generator


def check_float_dtype(name: str, dtype) -> torch.dtype:
    """Return ``dtype`` if it is a floating-point ``torch.dtype``, else raise ``ValueError``."""
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"{name} must be a floating-point torch.dtype such as torch.float32, got {dtype!r}")
    return dtype


def check_choice(name: str, value, choices) -> str:
    """Return ``value`` if it is one of ``choices``, else raise ``ValueError`` listing them."""
    try:
        ok = value in choices
    except TypeError:  # unhashable, e.g. a list
        ok = False
    if not ok:
        raise ValueError(f"{name} must be one of {sorted(choices)}, got {value!r}")
    return value


def check_positive_real(name: str, value) -> float:
    """Return ``value`` as ``float`` if it is a finite real number > 0 (numpy scalars included), else raise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {_describe(value)}")
    return float(value)


def check_seed(name: str, value) -> int:
    """Return ``value`` as ``int`` if it is an integer in [0, 2**32 - 1] (numpy integers included), else raise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= int(value) < 2**32:
        raise ValueError(f"{name} must be an integer in [0, 2**32 - 1], got {_describe(value)}")
    return int(value)
