"""Small helpers the chapters share: seeding and device choice."""

from __future__ import annotations

import random

import numpy as np
import torch

from ._checks import check_seed

__all__ = ["seed_everything", "default_device"]


def seed_everything(seed: int = 0) -> torch.Generator:
    """Seed Python's, NumPy's and torch's global generators; return a fresh ``torch.Generator`` seeded with ``seed``.

    Raises:
        ValueError: if seed is not an integer in [0, 2**32 - 1].
    """
    seed = check_seed("seed", seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def default_device() -> torch.device:
    """``cuda`` when a CUDA GPU is present, else ``cpu``."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
