"""Regression tests for bad input found by trying to break fmlib: each gets a clear ValueError, nothing silent."""

import numpy as np
import pytest
import torch

import fmlib
from fmlib import LinearPath, MLPVectorField, VPDiffusionPath, cfm_loss, sample_annulus, solve, train_cfm
from fmlib.continuity import divergence as exact_div
from fmlib.marginal import EmpiricalMarginal
from fmlib.ode import log_likelihood, solve_ode


def test_solver_checks_what_v_returns():
    with pytest.raises(ValueError, match="must return a tensor of x's shape"):
        solve(lambda t, x: x[:, :1], torch.randn(5, 2), 3)
    with pytest.raises(ValueError, match="not finite"):
        solve(lambda t, x: x * float("nan"), torch.randn(5, 2), 3)


def test_cfm_loss_checks_v_path_and_empty_batch():
    x_1 = sample_annulus(6)
    with pytest.raises(ValueError, match="must return a tensor of x's shape"):
        cfm_loss(lambda t, x: x[:, :1], LinearPath(), x_1)
    with pytest.raises(ValueError, match="path must be a GaussianPath"):
        cfm_loss(MLPVectorField(2), "linear", x_1)
    with pytest.raises(ValueError, match="at least one point"):
        cfm_loss(MLPVectorField(2), LinearPath(), torch.randn(0, 2))


def test_vp_path_training_draws_stay_finite():
    """Drawn times stop short of t = 1, where the VP target is singular (float32 rounding used to reach it)."""
    loss = cfm_loss(lambda t, x: torch.zeros_like(x), VPDiffusionPath(), torch.ones(1_000_000, 2),
                    generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="beta_max > 0"):
        VPDiffusionPath(0.0, 0.0)


def test_training_stops_and_restores_on_divergence():
    model = MLPVectorField(2, width=8, depth=2)
    with pytest.raises(ValueError, match="non-finite at step") as err:
        train_cfm(model, sample_annulus, n_steps=30, lr=1e8, progress=False)
    assert "reset" in str(err.value)
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("kwargs, match", [(dict(seed=0.5), "seed"), (dict(seed=-1), "seed"),
                                           (dict(optimizer="adam"), "optimizer"), (dict(path="linear"), "path")])
def test_training_argument_checks(kwargs, match):
    with pytest.raises(ValueError, match=match):
        train_cfm(MLPVectorField(2, width=8, depth=1), sample_annulus, n_steps=2, progress=False, **kwargs)
    with pytest.raises(ValueError, match="model must be a torch.nn.Module"):
        train_cfm(lambda t, x: x, sample_annulus, n_steps=2, progress=False)


def test_model_dtype_mismatch():
    with pytest.raises(ValueError, match="dtype torch.float64 but the model's parameters are torch.float32"):
        MLPVectorField(2)(0.5, torch.randn(5, 2, dtype=torch.float64))


@pytest.mark.parametrize("t", [torch.tensor([0.5 + 1j] * 4), torch.tensor([True] * 4),
                               torch.tensor(1 + 1e-9, dtype=torch.float64)])
def test_bad_time_types(t):
    with pytest.raises(ValueError, match="t must"):
        LinearPath().mean(t, torch.randn(4, 2))


def test_unhashable_choice():
    with pytest.raises(ValueError, match="activation must be one of"):
        MLPVectorField(2, activation=["elu"])


def test_log_p0_output_checked():
    with pytest.raises(ValueError, match="log_p0 must return"):
        log_likelihood(lambda t, x: -x, torch.randn(4, 2), "rk4", n_steps=3,
                       log_p0=lambda z: -0.5 * (z ** 2).sum(1, keepdim=True))


def test_empty_batch_adaptive_solver():
    assert solve_ode(lambda t, x: -x, torch.randn(0, 2)).x.shape == (0, 2)


def test_divergence_of_field_independent_of_x():
    x = torch.randn(5, 2, dtype=torch.float64)
    assert torch.equal(exact_div(lambda t, x: torch.ones_like(x), 0.5, x), torch.zeros(5, dtype=torch.float64))


def test_marginal_far_points_raise():
    m = EmpiricalMarginal(LinearPath(), torch.randn(50, 2))
    with pytest.raises(ValueError, match="overflow"):
        m.log_prob(0.5, torch.tensor([[1e20, 0.0]]))


def test_annulus_constant_does_not_overflow():
    lp = fmlib.annulus_log_prob(torch.tensor([[2.5, 0.0]]).half(), r_outer=1e5)
    assert torch.isfinite(lp).all()


def test_numpy_scalars_accepted_and_recipe_config_normalised():
    from fmlib.recipes import SEED_ANNULUS_CONFIG, _check_config

    cfg = _check_config(dict(SEED_ANNULUS_CONFIG, n_steps=np.int64(3), lr=np.float64(0.01)))
    assert type(cfg["n_steps"]) is int and type(cfg["lr"]) is float
    fmlib.seed_everything(np.int64(3))
    with pytest.raises(ValueError, match="seed"):
        fmlib.seed_everything(2**32)
