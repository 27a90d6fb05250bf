"""fmlib: the small flow-matching library of the book *fmbook*.

Modules (each equation's code is one hop from here):

* :mod:`fmlib.paths` -- Gaussian conditional probability paths p_t(x | x_1), their flows psi_t, vector fields u_t.
* :mod:`fmlib.networks` -- the time-conditioned MLP vector field v_theta(t, x).
* :mod:`fmlib.sampler` -- fixed-step Euler, midpoint and RK4 solvers from t = 0 to t = 1.
* :mod:`fmlib.training` -- the CFM loss and a tensor-wise training loop.
* :mod:`fmlib.data` -- 2-D toy data sets (the annulus).
* :mod:`fmlib.plotting` -- figures that work in the static book and in live notebooks (needs plotly, matplotlib).
"""

from .data import TOY_DATASETS, annulus_entropy, annulus_log_prob, get_dataset, sample_annulus
from .networks import MLPVectorField
from .paths import GaussianPath, LinearPath, PathSample, VPDiffusionPath
from .sampler import STAGES, sample, solve
from .training import cfm_loss, train_cfm
from .utils import default_device, seed_everything

__version__ = "0.1.0"

__all__ = [
    "GaussianPath", "LinearPath", "VPDiffusionPath", "PathSample",
    "MLPVectorField",
    "solve", "sample", "STAGES",
    "cfm_loss", "train_cfm",
    "sample_annulus", "annulus_log_prob", "annulus_entropy", "TOY_DATASETS", "get_dataset",
    "seed_everything", "default_device",
]
