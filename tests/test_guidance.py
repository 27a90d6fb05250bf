"""fmlib.guidance and the class-conditional parts of fmlib.networks and fmlib.training: guided fields, exact
per-class fields, label dropout, the labelled annulus, bad input."""

import math

import pytest
import torch

import fmlib
from fmlib import LinearPath, MLPVectorField, train_cfm
from fmlib.guidance import (GuidedField, class_marginals, guidance_scale, guidance_weight, labelled_annulus_log_prob,
                            labelled_annulus_posterior, sample_labelled_annulus, sample_tilted)


def _labelled(n=300, seed=0, dtype=torch.float64):
    return sample_labelled_annulus(n, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# --- the class-conditional network ----------------------------------------------------------------------------

def test_conditional_network_labels_and_null_label():
    torch.manual_seed(0)
    model = MLPVectorField(2, width=16, depth=2, n_classes=3)
    assert model.null_label == 3 and model.net[0].in_features == 1 + 2 + 4
    x = torch.randn(5, 2)
    per_row = model(0.3, x, torch.tensor([0, 1, 2, 3, 3]))
    for i, c in enumerate([0, 1, 2, 3, 3]):
        torch.testing.assert_close(per_row[i], model(0.3, x[i:i + 1], c)[0])
    torch.testing.assert_close(model(0.3, x), model(0.3, x, 3))  # None is "no label"
    torch.testing.assert_close(model(0.3, x, torch.tensor([1])), model(0.3, x, 1))
    assert not torch.allclose(model(0.3, x, 0), model(0.3, x, 1))


def test_conditional_network_round_trips_and_old_configs_load(tmp_path):
    torch.manual_seed(0)
    model = MLPVectorField(2, width=8, depth=2, n_classes=4)
    assert model.config["n_classes"] == 4 and MLPVectorField(**model.config).config == model.config
    fmlib.save_model(model, tmp_path / "m.pt", path=LinearPath(0.05))
    loaded, path = fmlib.load_model(tmp_path / "m.pt")
    x = torch.randn(6, 2)
    torch.testing.assert_close(loaded(0.5, x, 2), model(0.5, x, 2), rtol=0, atol=0)
    plain = MLPVectorField(2, width=8, depth=2)
    assert "n_classes" not in plain.config  # unconditional configs are unchanged
    state = {k: v for k, v in plain.state_dict().items() if k != "_extra_state"}  # saved before configs
    MLPVectorField(2, width=8, depth=2).load_state_dict(state)
    with pytest.raises(ValueError, match="n_classes"):
        MLPVectorField(2, width=8, depth=2).load_state_dict(model.state_dict())


@pytest.mark.parametrize("kwargs, c, match", [
    ({}, 1, "unconditional"),
    ({"n_classes": 3}, 1.0, "c must be"),
    ({"n_classes": 3}, torch.tensor([0.0, 1.0]), "c must be"),
    ({"n_classes": 3}, torch.tensor([0, 1, 2]), "c must be"),
    ({"n_classes": 3}, torch.tensor([True, False]), "c must be"),
])
def test_bad_labels_for_the_network(kwargs, c, match):
    model = MLPVectorField(2, width=8, depth=2, **kwargs)
    with pytest.raises(ValueError, match=match):
        model(0.5, torch.randn(2, 2), c)


@pytest.mark.parametrize("bad", [-1, 1.5, True, 10 ** 6])
def test_bad_n_classes(bad):
    with pytest.raises(ValueError, match="n_classes"):
        MLPVectorField(2, n_classes=bad)


# --- the guided field ------------------------------------------------------------------------------------------

def test_guided_field_limits_are_exact():
    """w = 0 is the conditional field (the unconditional one is not called), w = -1 the unconditional field."""
    torch.manual_seed(0)
    model = MLPVectorField(2, width=16, depth=2, n_classes=3).double()
    x = torch.randn(7, 2, dtype=torch.float64)
    cond, uncond = model(0.4, x, 2), model(0.4, x, None)
    calls = []
    guided0 = GuidedField(lambda t, z: model(t, z, 2), lambda t, z: calls.append(1) or model(t, z), 0)
    assert torch.equal(guided0(0.4, x), cond) and not calls
    assert torch.equal(GuidedField.from_model(model, 2, -1)(0.4, x), uncond)
    torch.testing.assert_close(GuidedField.from_model(model, 2, 3.0)(0.4, x), cond + 3.0 * (cond - uncond))


def test_the_two_conventions_agree():
    """(1 - gamma) v(none) + gamma v(c) equals (1 + w) v(c) - w v(none) for gamma = 1 + w."""
    cond, uncond = torch.randn(5, 2, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    for w in (-1.0, 0.0, 0.5, 2.0, 7.0):
        gamma = guidance_scale(w)
        assert guidance_weight(gamma) == w
        ours = GuidedField(lambda t, x: cond, lambda t, x: uncond, w)(0.5, cond)
        torch.testing.assert_close(ours, (1 - gamma) * uncond + gamma * cond, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("w", [float("nan"), float("inf"), "1", True, None])
def test_bad_weights(w):
    with pytest.raises(ValueError, match="w must"):
        GuidedField(lambda t, x: x, lambda t, x: x, w)
    with pytest.raises(ValueError, match="w must"):
        guidance_scale(w)
    with pytest.raises(ValueError, match="scale must"):
        guidance_weight(w)


def test_bad_guided_fields():
    with pytest.raises(ValueError, match="conditional must"):
        GuidedField(None, lambda t, x: x, 1.0)
    with pytest.raises(ValueError, match="class-conditional"):
        GuidedField.from_model(MLPVectorField(2, width=8, depth=2), 0, 1.0)
    with pytest.raises(ValueError, match="c must"):
        GuidedField.from_model(MLPVectorField(2, width=8, depth=2, n_classes=3), 3, 1.0)


# --- exact per-class fields ------------------------------------------------------------------------------------

def test_exact_fields_mix_to_the_overall_field():
    """u_t(x) = sum_c p_t(c | x) u_t(x | c): the overall field is the posterior mixture of the class fields."""
    x_1, c = _labelled(200)
    marg = class_marginals(LinearPath(0.05), x_1, c, 3)
    assert abs(float(marg.priors.sum()) - 1) < 1e-15
    x = torch.randn(50, 2, dtype=torch.float64) * 2
    for t in (0.1, 0.6, 0.95):
        post = marg.log_posterior(t, x).exp()
        torch.testing.assert_close(post.sum(dim=1), torch.ones(50, dtype=torch.float64))
        mix = sum(post[:, k:k + 1] * marg.classes[k](t, x) for k in range(3))
        torch.testing.assert_close(mix, marg.overall(t, x), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(marg.guided(1, 0)(t, x), marg.classes[1](t, x), rtol=0, atol=0)
        torch.testing.assert_close(marg.guided(1, -1)(t, x), marg.overall(t, x), rtol=1e-12, atol=1e-12)


def test_one_class_guidance_changes_nothing():
    """With one class the conditional and unconditional fields coincide: every w gives the same field."""
    x_1 = torch.randn(40, 2, dtype=torch.float64)
    marg = class_marginals(LinearPath(0.1), x_1, torch.zeros(40, dtype=torch.long))
    x = torch.randn(9, 2, dtype=torch.float64)
    torch.testing.assert_close(marg.guided(0, 5.0)(0.7, x), marg.overall(0.7, x), rtol=1e-10, atol=1e-10)


def test_tilted_sampling_at_w0_is_the_class_and_tilts_for_w_positive():
    x_1, c = _labelled(600)
    marg = class_marginals(LinearPath(0.05), x_1, c, 3)
    g = torch.Generator().manual_seed(1)
    plain = sample_tilted(marg, 0, 0.0, 4000, generator=g)
    tilted = sample_tilted(marg, 0, 4.0, 4000, generator=g)
    post = lambda z: marg.log_posterior(1.0, z).exp()[:, 0]
    # E[p(0 | x)] under the tilt exceeds its mean under the class: the tilt favours points of high posterior
    assert float(post(tilted).mean()) > float(post(plain).mean()) + 0.05
    # at w = 0 the samples are the class's smoothed points: their mean is the class mean (within 5 standard errors)
    se = plain.std(dim=0) / math.sqrt(4000)
    assert bool(((plain.mean(dim=0) - x_1[c == 0].mean(dim=0)).abs() < 5 * se + 1e-3).all())


def test_bad_class_marginals_and_tilts():
    x_1, c = _labelled(30)
    path = LinearPath(0.05)
    with pytest.raises(ValueError, match="labels must"):
        class_marginals(path, x_1, c.double())
    with pytest.raises(ValueError, match="labels must"):
        class_marginals(path, x_1, c[:-1])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        class_marginals(path, x_1, c, n_classes=2)
    with pytest.raises(ValueError, match="without points"):
        class_marginals(path, x_1, torch.zeros(30, dtype=torch.long), n_classes=2)
    marg = class_marginals(path, x_1, c, 3)
    with pytest.raises(ValueError, match="w must be >= 0"):
        sample_tilted(marg, 0, -0.5, 10)
    with pytest.raises(ValueError, match="c must"):
        sample_tilted(marg, 3, 1.0, 10)
    with pytest.raises(ValueError, match="sigma_1 = 0"):
        sample_tilted(class_marginals(LinearPath(0.0), x_1, c, 3), 0, 1.0, 10)
    with pytest.raises(ValueError, match="c must"):
        marg.guided(5, 1.0)


# --- label dropout in train_cfm ----------------------------------------------------------------------------------

class _Spy(torch.nn.Module):
    """A class-conditional field that records the labels it is called with."""

    n_classes = 3

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 2)
        self.seen = []

    def forward(self, t, x, c=None):
        self.seen.append(c.clone())
        return self.lin(x)


@pytest.mark.parametrize("rate", [0.0, 0.2, 0.5])
def test_label_dropout_rate_is_honoured(rate):
    x_1, c = _labelled(500, dtype=torch.float32)
    spy = _Spy()
    train_cfm(spy, x_1, labels=c, label_dropout=rate, n_steps=40, batch_size=250, progress=False)
    seen = torch.cat(spy.seen)
    dropped = float((seen == 3).double().mean())
    se = math.sqrt(rate * (1 - rate) / seen.numel())
    assert abs(dropped - rate) <= 5 * se  # 10,000 draws: within five standard errors of the rate
    kept = seen[seen != 3]
    # the kept labels are the drawn rows' labels: their class shares are the data's
    torch.testing.assert_close(torch.bincount(kept, minlength=3).double() / kept.numel(),
                               torch.bincount(c, minlength=3).double() / 500, rtol=0, atol=0.03)


def test_labelled_training_learns_the_class_fields_and_keeps_unlabelled_draws():
    torch.manual_seed(0)
    x_1, c = _labelled(2000, dtype=torch.float32)
    model = MLPVectorField(2, width=32, depth=2, n_classes=3)
    losses = train_cfm(model, x_1, labels=c, label_dropout=0.2, n_steps=300, batch_size=128, lr=3e-3,
                       progress=False)
    assert sum(losses[-50:]) / 50 < sum(losses[:50]) / 50 and not model.training
    samples = {k: fmlib.solve(GuidedField.from_model(model, k, 0.0), torch.randn(500, 2), n_steps=20)
               for k in range(3)}
    for k in range(3):  # each label's samples sit mostly in its own sector
        hit = labelled_annulus_posterior(samples[k]).argmax(dim=1) == k
        assert float(hit.double().mean()) > 0.5
    # without labels the same data tensor draws the same rows: training an unconditional model is unchanged
    torch.manual_seed(0)
    a = MLPVectorField(2, width=8, depth=2)
    torch.manual_seed(0)
    b = MLPVectorField(2, width=8, depth=2)
    assert train_cfm(a, x_1, n_steps=5, progress=False) == train_cfm(b, x_1, n_steps=5, progress=False)


@pytest.mark.parametrize("kwargs, match", [
    ({"labels": None, "label_dropout": 0.1}, "needs labels"),
    ({"labels": "c", "label_dropout": 0.1}, "labels must"),
    ({"labels": torch.zeros(10, dtype=torch.long), "label_dropout": 0.1}, "labels must"),
    ({"labels": torch.full((20,), 3), "label_dropout": 0.1}, "labels must"),
    ({"labels": torch.zeros(20), "label_dropout": 0.1}, "labels must"),
    ({"labels": torch.zeros(20, dtype=torch.long), "label_dropout": 1.0}, "label_dropout must"),
    ({"labels": torch.zeros(20, dtype=torch.long), "label_dropout": -0.1}, "label_dropout must"),
    ({"labels": torch.zeros(20, dtype=torch.long), "label_dropout": True}, "label_dropout must"),
])
def test_bad_label_arguments(kwargs, match):
    model = MLPVectorField(2, width=8, depth=2, n_classes=3)
    with pytest.raises(ValueError, match=match):
        train_cfm(model, torch.randn(20, 2), n_steps=2, progress=False, **kwargs)


def test_labels_need_a_conditional_model_and_a_tensor():
    labels = torch.zeros(20, dtype=torch.long)
    with pytest.raises(ValueError, match="n_classes >= 1"):
        train_cfm(MLPVectorField(2, width=8, depth=2), torch.randn(20, 2), labels=labels, n_steps=2, progress=False)
    with pytest.raises(ValueError, match="data tensor"):
        train_cfm(MLPVectorField(2, width=8, depth=2, n_classes=3), fmlib.sample_annulus, labels=labels, n_steps=2,
                  progress=False)


# --- the labelled annulus ----------------------------------------------------------------------------------------

def test_labelled_annulus_labels_follow_the_posterior():
    x, c = sample_labelled_annulus(20000, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    post = labelled_annulus_posterior(x)
    torch.testing.assert_close(post.sum(dim=1), torch.ones(20000, dtype=torch.float64))
    # the labels' frequencies match the posterior's mean (within 5 standard errors)
    for k in range(3):
        freq, mean = float((c == k).double().mean()), float(post[:, k].mean())
        assert abs(freq - mean) < 5 * math.sqrt(mean * (1 - mean) / 20000)
    # the class densities integrate to 1 on a polar grid (the annulus density is 1 / (2 pi |x|) on radii in [2, 3])
    r = 2 + (torch.arange(200, dtype=torch.float64) + 0.5) / 200  # midpoints of 200 radial cells
    th = -math.pi + (torch.arange(800, dtype=torch.float64) + 0.5) * (2 * math.pi / 800)
    rr, tt = torch.meshgrid(r, th, indexing="ij")
    pts = torch.stack([rr * torch.cos(tt), rr * torch.sin(tt)], dim=-1).reshape(-1, 2)
    dens = labelled_annulus_log_prob(pts).exp() * rr.reshape(-1, 1)  # polar area element r dr dtheta
    mass = dens.sum(dim=0) * (1 / 200) * (2 * math.pi / 800)
    torch.testing.assert_close(mass, torch.ones(3, dtype=torch.float64), rtol=0, atol=1e-2)


@pytest.mark.parametrize("kwargs, match", [({"n_classes": 0}, "n_classes"), ({"concentration": -1.0}, "concentration"),
                                           ({"concentration": float("nan")}, "concentration")])
def test_bad_labelled_annulus(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sample_labelled_annulus(10, **kwargs)
    with pytest.raises(ValueError, match=match):
        labelled_annulus_posterior(torch.randn(3, 2), **kwargs)
