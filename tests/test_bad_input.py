"""Regression tests for bad input found by trying to break fmlib: each gets a clear ValueError, nothing silent."""

import numpy as np
import pytest
import torch

import fmlib
from fmlib import LinearPath, MLPVectorField, VPDiffusionPath, cfm_loss, sample_annulus, solve, train_cfm
from fmlib.continuity import divergence as exact_div
from fmlib.marginal import EmpiricalMarginal
from fmlib.ode import log_likelihood


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
    assert solve(lambda t, x: -x, torch.randn(0, 2), method="dopri5").shape == (0, 2)


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


# --- second break-it round: devices, optimizers, schedulers, data that turns bad, solver underflow, the cache ---

def _tiny_model():
    return MLPVectorField(2, width=8, depth=1)


@pytest.mark.parametrize("kwargs, match", [
    (dict(device="meta"), "device"), (dict(device="bogus"), "device"), (dict(device=True), "device"),
    (dict(scheduler="cosine"), "scheduler"), (dict(progress="no"), "progress"), (dict(desc=5), "desc"),
])
def test_training_argument_checks_more(kwargs, match):
    with pytest.raises(ValueError, match=match):
        train_cfm(_tiny_model(), sample_annulus, n_steps=2, batch_size=8, **({"progress": False} | kwargs))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_cuda_without_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="no CUDA GPU"):
        train_cfm(_tiny_model(), sample_annulus, n_steps=2, batch_size=8, progress=False, device="cuda")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        fmlib.draw_times(3, device="cuda")


def test_optimizer_must_hold_the_models_parameters():
    model, other = _tiny_model(), _tiny_model()
    with pytest.raises(ValueError, match="optimizer must hold the model's parameters"):
        train_cfm(model, sample_annulus, n_steps=2, batch_size=8, progress=False,
                  optimizer=torch.optim.Adam(other.parameters()))


def test_generator_must_be_a_torch_generator():
    with pytest.raises(ValueError, match="generator must be a torch.Generator"):
        cfm_loss(_tiny_model(), LinearPath(), sample_annulus(4), generator=0)
    with pytest.raises(ValueError, match="generator must be a torch.Generator"):
        fmlib.draw_times(3, generator=np.random.default_rng(0))


def test_sampler_without_generator_keyword():
    with pytest.raises(ValueError, match="sample_data must be callable as sample_data"):
        train_cfm(_tiny_model(), lambda n: torch.randn(n, 2), n_steps=2, batch_size=8, progress=False)


def test_data_that_turns_nan_stops_training_and_restores_the_weights():
    """A sampler that returns NaN at its 6th call (step 5; the first call is step 0's batch): the loss check names the
    step, the model is back at its initial weights (no check passed yet) and in eval mode (the network itself does
    not look at its inputs' values)."""
    calls = {"n": 0}

    def flaky(n, generator=None, device=None):
        calls["n"] += 1
        x = sample_annulus(n, generator=generator, device=device)
        return x * float("nan") if calls["n"] == 6 else x

    model = _tiny_model()
    initial = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="non-finite at step 5 .*initial weights"):
        train_cfm(model, flaky, n_steps=10, batch_size=8, progress=False)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), initial)) and not model.training


def test_divergence_before_the_first_check_names_the_initial_weights():
    with pytest.raises(ValueError, match="reset to its initial weights"):
        train_cfm(_tiny_model(), sample_annulus, n_steps=30, lr=1e30, progress=False)


def test_adaptive_solver_underflow_is_a_value_error():
    """A field that blows up makes dopri5's step size underflow: a ValueError that says so, not an AssertionError."""
    with pytest.raises(ValueError, match="step size underflowed"):
        solve(lambda t, x: 1e3 * x, torch.randn(5, 2), method="dopri5")
    with pytest.raises(ValueError, match="step size underflowed"):
        log_likelihood(lambda t, x: torch.exp(50 * t) * x, torch.randn(5, 2), "dopri5")


def test_sample_checks_device_generator_and_dtype():
    v = lambda t, x: torch.zeros_like(x)  # noqa: E731
    for kwargs, match in ((dict(device="meta"), "device"), (dict(generator=1), "generator"),
                          (dict(dtype=torch.int64), "dtype")):
        with pytest.raises(ValueError, match=match):
            fmlib.sample(v, 4, 2, **kwargs)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            fmlib.sample(v, 4, 2, device="cuda")


# --- from a break-it round on solve, log_likelihood, divergence and the network's forward ---------------------------

def test_derivatives_refused_inside_inference_mode():
    """enable_grad records nothing inside inference_mode: the divergence would silently be 0."""
    x = torch.randn(5, 2, dtype=torch.float64)
    with torch.inference_mode():
        with pytest.raises(ValueError, match="inference_mode"):
            fmlib.divergence(lambda t, x: -x, 0.5, x)
        with pytest.raises(ValueError, match="inference_mode"):
            log_likelihood(lambda t, x: -x, x, "rk4", n_steps=4)


def test_network_refuses_integer_points_and_non_numeric_times():
    model = MLPVectorField(2, width=8, depth=1, time_frequencies=3)
    with pytest.raises(ValueError, match="floating-point"):
        model(0.5, torch.tensor([[1, 2], [3, -1]]))  # would have evaluated at t = 0
    for t in ("0.5", True, np.bool_(True), 1 + 2j):
        with pytest.raises(ValueError, match="t must be a real number"):
            model(t, torch.randn(2, 2))
    model(np.float32(0.5), torch.randn(2, 2))  # numpy numbers are numbers


@pytest.mark.parametrize("probes", [torch.ones(0, 5, 2), torch.full((1, 5, 2), float("nan")),
                                    torch.ones(1, 5, 2, dtype=torch.bool)])
def test_bad_probes(probes):
    with pytest.raises(ValueError, match="probes"):
        fmlib.divergence(lambda t, x: -x, 0.5, torch.randn(5, 2), method="hutchinson", probes=probes)


def test_non_finite_likelihood_is_an_error():
    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match="not finite"):
        log_likelihood(lambda t, x: x * float("nan"), x, "euler", n_steps=3, log_p0=lambda z: torch.zeros(len(z)))
    with pytest.raises(ValueError, match="dopri5"):  # step size underflow or non-finite state: both named
        log_likelihood(lambda t, x: x * float("nan"), x, "dopri5")


def test_flags_are_booleans_and_field_dtype_is_checked():
    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match="return_trajectory"):
        solve(lambda t, x: -x, x, return_trajectory="False")
    with pytest.raises(ValueError, match="enable_grad"):
        solve(lambda t, x: -x, x, enable_grad=None)
    with pytest.raises(ValueError, match="create_graph"):
        fmlib.divergence(lambda t, x: -x, 0.5, x, create_graph="yes")
    with pytest.raises(ValueError, match="dtype"):
        solve(lambda t, x: (-x).double(), x, n_steps=2)


def test_divergence_with_create_graph_stays_connected_to_x():
    x = torch.randn(5, 2, dtype=torch.float64, requires_grad=True)
    div = fmlib.divergence(lambda t, y: y ** 3, 0.5, x, create_graph=True)  # 3 sum_i x_i^2
    (grad,) = torch.autograd.grad(div.sum(), x)
    torch.testing.assert_close(grad, 6 * x.detach())
