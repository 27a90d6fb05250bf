"""fmlib: the small flow-matching library of the book *fmbook*.

Modules (each equation's code is one hop from here):

* :mod:`fmlib.paths` -- Gaussian conditional probability paths p_t(x | x_1), their flows psi_t, vector fields u_t.
* :mod:`fmlib.marginal` -- the exact marginal path p_t(x) and vector field u_t(x) over an empirical data set.
* :mod:`fmlib.continuity` -- the continuity equation's residual, and divergences (exact by autograd, or Hutchinson's).
* :mod:`fmlib.networks` -- the time-conditioned MLP vector field v_theta(t, x).
* :mod:`fmlib.sampler` -- :func:`solve` for the flow ODE (Euler, midpoint and RK4 written out; torchdiffeq's adaptive
  solvers) and :func:`sample`; :class:`EvaluationCounter` counts the evaluations of a field.
* :mod:`fmlib.sde` -- :func:`euler_maruyama` and :func:`sde_drift`: sampling with an SDE that has the flow's marginals.
* :mod:`fmlib.ode` -- :func:`log_likelihood` by the instantaneous change of variables.
* :mod:`fmlib.training` -- the CFM loss and a tensor-wise training loop.
* :mod:`fmlib.couplings` -- minibatch optimal-transport pairing, rectified-flow pairs, straightness of a flow.
* :mod:`fmlib.recipes` -- the annulus training setups of the book (the seed's and the book's best).
* :mod:`fmlib.data` -- 2-D toy data sets (the annulus, two moons, eight Gaussians, a checkerboard), and scikit-learn's
  8 x 8 handwritten digits with their dequantisation and bits per dimension.
* :mod:`fmlib.guidance` -- class-conditional fields and classifier-free guidance: :class:`GuidedField`, the exact
  per-class fields :func:`class_marginals`, the tilted distribution :func:`sample_tilted`, a labelled annulus.
* :mod:`fmlib.checkpoints` -- :func:`save_model` and :func:`load_model`: a model file that describes itself.
* :mod:`fmlib.plotting` -- figures that work in the static book and in live notebooks (show_plotly,
  density_path_figure, density_surface_figure, show_animation, trajectory_animation, live_controls; needs plotly,
  matplotlib and ipywidgets: ``pip install fmlib[plot]``); imported on first use of ``fmlib.plotting``.
* :mod:`fmlib.utils` -- seeding and device choice.
"""

import importlib

from .checkpoints import LoadedModel, load_model, save_model
from .continuity import continuity_residual, continuity_terms, divergence
from .couplings import Straightness, ot_permutation, reflow_pairs, straightness
from .data import (TOY_DATASETS, annulus_entropy, annulus_log_prob, get_dataset, sample_annulus, sample_checkerboard,
                   sample_eight_gaussians, sample_moons)
from .data import (DigitsSplit, dequantize_digits, digits_bits_per_dim, digits_log_det, digits_to_pixels,
                   load_digits_split)
from .guidance import GuidedField, class_marginals, guidance_scale, guidance_weight, sample_tilted
from .marginal import EmpiricalMarginal
from .networks import MLPVectorField
from .ode import log_likelihood
from .paths import PREDICTIONS, GaussianPath, LinearPath, PathSample, VPDiffusionPath
from .recipes import BEST_ANNULUS_CONFIG, SEED_ANNULUS_CONFIG, train_annulus, train_annulus_many
from .sampler import STAGES, EvaluationCounter, sample, solve
from .sde import euler_maruyama, sde_drift
from .training import cfm_loss, draw_times, quasi_random_batch, train_cfm
from .utils import default_device, seed_everything

__version__ = "0.1.0"

__all__ = [
    "GaussianPath", "LinearPath", "VPDiffusionPath", "PathSample", "PREDICTIONS",
    "EmpiricalMarginal",
    "GuidedField", "class_marginals", "guidance_scale", "guidance_weight", "sample_tilted",
    "continuity_residual", "continuity_terms", "divergence",
    "MLPVectorField",
    "solve", "sample", "STAGES", "EvaluationCounter",
    "euler_maruyama", "sde_drift",
    "log_likelihood",
    "cfm_loss", "draw_times", "quasi_random_batch", "train_cfm",
    "ot_permutation", "reflow_pairs", "straightness", "Straightness",
    "SEED_ANNULUS_CONFIG", "BEST_ANNULUS_CONFIG", "train_annulus", "train_annulus_many",
    "sample_annulus", "annulus_log_prob", "annulus_entropy", "sample_moons", "sample_eight_gaussians",
    "sample_checkerboard", "TOY_DATASETS", "get_dataset",
    "load_digits_split", "DigitsSplit", "dequantize_digits", "digits_to_pixels", "digits_log_det",
    "digits_bits_per_dim",
    "save_model", "load_model", "LoadedModel",
    "seed_everything", "default_device",
]


def __getattr__(name):
    """``fmlib.plotting`` is imported on first use: it needs the plotting extras, which the rest of fmlib does not."""
    if name == "plotting":
        return importlib.import_module(".plotting", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
