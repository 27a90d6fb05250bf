"""Regression tests for bad and unusual input to the newer APIs (couplings, guidance, conditional networks and
training, digits helpers): each one failed with an obscure error, a silent NaN/-inf or an AttributeError before."""

import math

import numpy as np
import pytest
import torch

import fmlib
from fmlib import MLPVectorField, reflow_pairs, straightness, train_cfm
from fmlib.couplings import ot_permutation
from fmlib.data import digits_bits_per_dim, digits_log_det, digits_to_pixels
from fmlib.guidance import (GuidedField, class_marginals, labelled_annulus_log_prob, labelled_annulus_posterior,
                            sample_tilted)
from fmlib.paths import LinearPath


def field(t, x):
    return -x


# --- couplings ---------------------------------------------------------------------------------------------------
def test_straightness_of_an_empty_batch_is_refused():
    # was: Straightness(nan, nan, ...) without a word
    with pytest.raises(ValueError, match="x_0 must hold at least one point"):
        straightness(field, torch.zeros(0, 2))


@pytest.mark.parametrize("kwargs, match", [
    (dict(dtype=torch.int64), "dtype"),  # was NotImplementedError from randn
    (dict(dtype="float32"), "dtype"),  # was TypeError
    (dict(device="banana"), "device"),  # was RuntimeError
    (dict(device=True), "device"),
])
def test_reflow_pairs_bad_device_or_dtype(kwargs, match):
    with pytest.raises(ValueError, match=match):
        reflow_pairs(field, 3, 2, method="euler", n_steps=2, **kwargs)


def test_reflow_pairs_valid_dtype_and_generator_still_work():
    g = torch.Generator().manual_seed(0)
    x_0, x_1 = reflow_pairs(field, 3, 2, method="euler", n_steps=2, dtype=torch.float64, generator=g)
    assert x_0.dtype == x_1.dtype == torch.float64 and x_0.shape == x_1.shape == (3, 2)
    assert torch.allclose(x_1, x_0 * 0.25)  # two Euler steps of v = -x with h = 1/2


def test_ot_permutation_overflowing_cost_is_named():
    # finite points whose squared distances overflow float64: was the solver's "cost matrix is infeasible"
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with pytest.raises(ValueError, match="x_0 and x_1 are too large"):
        ot_permutation(1e160 * x, -1e160 * x)


def test_ot_permutation_duplicates_and_inputs_unchanged():
    x_0, x_1 = torch.zeros(7, 2), torch.ones(7, 2)
    a, b = x_0.clone(), x_1.clone()
    perm = ot_permutation(x_0, x_1)
    assert sorted(perm.tolist()) == list(range(7))
    assert torch.equal(x_0, a) and torch.equal(x_1, b)


# --- conditional network -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("c", [4, -1, np.int64(5)])
def test_conditional_model_int_label_out_of_range(c):
    # was RuntimeError "Class values must be ..." from one_hot
    model = MLPVectorField(2, 8, 1, n_classes=3)
    with pytest.raises(ValueError, match="c must be a label in 0..3"):
        model(0.5, torch.randn(4, 2), c)


def test_conditional_model_tensor_label_out_of_range():
    model = MLPVectorField(2, 8, 1, n_classes=3)
    for c in (torch.full((4,), 4), torch.tensor([-1]), torch.full((4,), 255, dtype=torch.uint8)):
        with pytest.raises(ValueError, match="c must hold labels in 0..3"):
            model(0.5, torch.randn(4, 2), c)


def test_conditional_model_valid_labels_unchanged():
    model = MLPVectorField(2, 8, 1, n_classes=3)
    x = torch.randn(4, 2)
    assert torch.equal(model(0.5, x, 3), model(0.5, x))  # n_classes is "no label", as None
    assert torch.equal(model(0.5, x, 1), model(0.5, x, torch.ones(4, dtype=torch.int32)))
    assert torch.equal(model(0.5, x, np.int64(2)), model(0.5, x, torch.tensor([2])))


# --- guidance ----------------------------------------------------------------------------------------------------
def test_sample_tilted_refuses_other_objects():
    # was AttributeError: 'str' object has no attribute 'classes'
    with pytest.raises(ValueError, match="marginals must be the ClassMarginals"):
        sample_tilted("marginals", 0, 1.0, 3)


def test_labelled_annulus_log_prob_finite_for_large_concentration():
    # was -inf for points on the annulus: the log of a posterior that underflowed to 0
    for dtype in (torch.float32, torch.float64):
        x = torch.tensor([[2.5, 0.0], [-2.5, 0.0], [0.0, -2.9]], dtype=dtype)
        lp = labelled_annulus_log_prob(x, 3, 1000.0)
        assert bool(torch.isfinite(lp).all())
        # exact: log q(x) + kappa cos(theta - mu_k) - logsumexp_j + log C, with q(x) = 1 / (2 pi |x|)
        theta = torch.atan2(x[:, 1], x[:, 0]).double()[:, None]
        mu = math.pi / 2 + 2 * math.pi * torch.arange(3, dtype=torch.float64) / 3
        logits = 1000.0 * torch.cos(theta - mu)
        exact = (-torch.log(2 * math.pi * x.double().norm(dim=1)))[:, None] + logits \
            - torch.logsumexp(logits, 1, keepdim=True) + math.log(3)
        assert torch.allclose(lp.double(), exact, rtol=1e-4, atol=1e-3)
    # off the annulus still -inf; small concentrations as before
    assert bool(torch.isinf(labelled_annulus_log_prob(torch.tensor([[5.0, 0.0]]))).all())
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(labelled_annulus_log_prob(x).exp(),
                          fmlib.annulus_log_prob(x).exp()[:, None] * labelled_annulus_posterior(x) * 3)


def test_from_model_accepts_numpy_n_classes_and_refuses_non_callables():
    class Wrapped(torch.nn.Module):  # a custom conditional model with a numpy n_classes
        def __init__(self):
            super().__init__()
            self.inner, self.n_classes = MLPVectorField(2, 8, 1, n_classes=3), np.int64(3)

        def forward(self, t, x, c=None):
            return self.inner(t, x, c)

    model = Wrapped()
    x = torch.randn(4, 2)
    assert torch.allclose(GuidedField.from_model(model, 1, 0.0)(0.5, x), model(0.5, x, 1))

    class NotCallable:
        n_classes = 3

    with pytest.raises(ValueError, match="model must be a network"):
        GuidedField.from_model(NotCallable(), 0, 1.0)


def test_train_cfm_labels_with_numpy_n_classes():
    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner, self.n_classes = MLPVectorField(2, 8, 1, n_classes=2), np.int64(2)

        def forward(self, t, x, c=None):
            return self.inner(t, x, c)

    x, labels = torch.randn(8, 2), torch.tensor([0, 1] * 4)
    x0, l0 = x.clone(), labels.clone()
    losses = train_cfm(Wrapped(), x, labels=labels, label_dropout=0.5, n_steps=2, batch_size=4, seed=0,
                       progress=False)
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert torch.equal(x, x0) and torch.equal(labels, l0)


def test_class_marginals_inputs_unchanged():
    x, labels = torch.randn(6, 2), torch.tensor([0, 1, 2, 0, 1, 2])
    x0, l0 = x.clone(), labels.clone()
    cm = class_marginals(LinearPath(0.05), x, labels)
    sample_tilted(cm, 1, 2.0, 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, x0) and torch.equal(labels, l0)


# --- digits ------------------------------------------------------------------------------------------------------
def test_digits_empty_scale_is_refused():
    # was 0.0 nats and -inf bits per dimension (a division by d = 0)
    with pytest.raises(ValueError, match="scale must be a non-empty"):
        digits_log_det(torch.ones(0, dtype=torch.float64))
    with pytest.raises(ValueError, match="scale must be a non-empty"):
        digits_bits_per_dim(torch.tensor([-10.0]), torch.ones(0))


def test_digits_bits_per_dim_refuses_plus_inf_but_keeps_minus_inf():
    scale = torch.full((4,), 0.2, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"log_p must not hold \+inf"):
        digits_bits_per_dim(torch.tensor([1.0, math.inf]), scale)
    out = digits_bits_per_dim(torch.tensor([-math.inf, 0.0]), scale)
    assert out[0] == math.inf
    assert math.isclose(float(out[1]), 4 * math.log(17 * 0.2) / (4 * math.log(2)), rel_tol=1e-12)


def test_digits_to_pixels_wrong_width_names_x():
    with pytest.raises(ValueError, match="d = 10 from x's columns"):
        digits_to_pixels(torch.zeros(2, 10), torch.zeros(64, dtype=torch.float64), torch.ones(64, dtype=torch.float64))


def test_sde_drift_with_one_time_per_row_matches_row_by_row():
    path = fmlib.LinearPath(0.0)
    x = torch.randn(2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t = torch.tensor([0.2, 0.6], dtype=torch.float64)
    drift = fmlib.sde_drift(lambda t, x: -x, path, lambda t: t)
    rows = torch.stack([drift(t[i], x[i:i + 1])[0] for i in range(2)])
    assert torch.allclose(drift(t, x), rows)


def test_prediction_coefficients_take_a_float_time():
    a, c = fmlib.LinearPath(0.0).prediction_coefficients("velocity", 0.5)
    assert float(a) == 1.0 and float(c) == -1.0
