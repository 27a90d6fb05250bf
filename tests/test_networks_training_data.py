"""fmlib.networks, fmlib.training, fmlib.data, fmlib.utils: shapes, time conventions, seeding, bad input."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

import fmlib
from fmlib import LinearPath, MLPVectorField, annulus_entropy, annulus_log_prob, cfm_loss, sample_annulus, train_cfm


# --- networks ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("d", [1, 2, 5])
def test_time_conventions_agree(d):
    model = MLPVectorField(d, width=8, depth=2, activation="silu")
    x = torch.randn(4, d)
    ref = model(0.25, x)
    assert ref.shape == (4, d)
    for t in (torch.tensor(0.25), torch.full((4,), 0.25), torch.full((4, 1), 0.25)):
        torch.testing.assert_close(model(t, x), ref)


def test_architecture_is_configurable():
    model = MLPVectorField(2, width=32, depth=4, activation="tanh")
    linears = [m for m in model.net if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 5 and linears[0].in_features == 3 and linears[-1].out_features == 2
    assert all(isinstance(m, torch.nn.Tanh) for m in model.net if not isinstance(m, torch.nn.Linear))


def test_time_features_and_residual_layers():
    """time_frequencies = K feeds (t, sin k pi t, cos k pi t, x) to the first layer; residual layers add h."""
    torch.manual_seed(0)
    model = MLPVectorField(2, width=16, depth=3, activation="silu", time_frequencies=3, residual=True)
    assert model.net[0].in_features == 1 + 2 * 3 + 2
    t, x = torch.rand(5, 1), torch.randn(5, 2)
    k = torch.arange(1, 4) * math.pi
    h = torch.nn.functional.silu(model.net[0](torch.cat([t, torch.sin(k * t), torch.cos(k * t), x], dim=1)))
    for block in (model.net[2], model.net[3]):
        h = h + torch.nn.functional.silu(block.linear(h))
    torch.testing.assert_close(model(t, x), model.net[-1](h))
    # in float64 the features use k pi to float64 accuracy: at t = 1, sin(k pi) is ~1e-16 (float32's pi gives ~1e-7)
    seen = []
    model.double().net[0].register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    assert model(1.0, x.double()).dtype == torch.float64
    assert seen[0].dtype == torch.float64 and seen[0][:, 1:4].abs().max() < 1e-14
    # the defaults keep the plain (t, x) network and its weights' keys, next to the config (its "_extra_state")
    assert list(MLPVectorField(2, width=8, depth=2).state_dict()) == ["_extra_state"] + [
        f"net.{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")]


@pytest.mark.parametrize("kwargs, match", [
    (dict(dim=0), "dim"), (dict(dim=2.0), "dim"), (dict(dim=2, width=-1), "width"),
    (dict(dim=2, depth=0), "depth"), (dict(dim=2, activation="sigmoidal"), "activation"),
    (dict(dim=2, time_frequencies=-1), "time_frequencies"), (dict(dim=2, time_frequencies=2.0), "time_frequencies"),
    (dict(dim=2, time_frequencies=True), "time_frequencies"), (dict(dim=2, residual=1), "residual"),
    (dict(dim=2, time_frequencies=2**40), "time_frequencies"),
])
def test_bad_network_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MLPVectorField(**kwargs)


def test_bad_network_inputs():
    model = MLPVectorField(2, width=8, depth=1)
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        model(0.5, torch.randn(4, 3))
    with pytest.raises(ValueError, match=r"t must be .*shape"):
        model(torch.rand(3), torch.randn(4, 2))
    with pytest.raises(ValueError, match="dtype"):
        model(0.5, torch.randn(4, 2, dtype=torch.float64))


def test_network_takes_any_finite_time_and_every_time_shape():
    """A network is a function of any t (solvers evaluate just outside [0, 1]); t broadcasts from a number, a 0-d
    tensor, (1,), (1, 1), (n,) or (n, 1), all giving the same result as a full (n, 1) column."""
    model = MLPVectorField(2, width=8, depth=1, time_frequencies=2)
    x = torch.randn(4, 2)
    for t in (-0.003, 1.3):
        full = model(torch.full((4, 1), t), x)
        assert torch.isfinite(full).all()
        for same in (t, torch.tensor(t), torch.tensor([t]), torch.tensor([[t]]), torch.full((4,), t)):
            torch.testing.assert_close(model(same, x), full, rtol=0, atol=0)


# --- training ----------------------------------------------------------------------------------------------------

def test_cfm_loss_matches_definition():
    """cfm_loss = mean over the batch of ||v(t, x_t) - (x_1 - (1 - sigma_min) x_0)||^2 with the same draws."""
    model = MLPVectorField(2, width=8, depth=1)
    x_1 = torch.randn(64, 2)
    path = LinearPath(0.1)
    loss = cfm_loss(model, path, x_1, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    t = torch.rand(64, 1, generator=g)
    x_0 = torch.randn(64, 2, generator=g)
    x_t = (1 - 0.9 * t) * x_0 + t * x_1
    expected = ((model(t, x_t) - (x_1 - 0.9 * x_0)) ** 2).sum(dim=1).mean()
    torch.testing.assert_close(loss, expected)
    assert cfm_loss(model, path, x_1, reduction="none").shape == (64,)


def test_draw_times_distribution():
    """time_beta = 1 is torch.rand itself; time_beta = b follows Beta(1, b): KS test and mean 1 / (1 + b)."""
    u = torch.rand(1000, 1, generator=torch.Generator().manual_seed(5))
    assert torch.equal(fmlib.draw_times(1000, 1.0, generator=torch.Generator().manual_seed(5)), u)
    for b in (0.5, 2.0):
        t = fmlib.draw_times(200_000, b, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
        assert t.shape == (200_000, 1) and 0 <= t.min() and t.max() <= 1
        assert stats.kstest(t.squeeze(1).numpy(), stats.beta(1, b).cdf).pvalue > 0.01
        assert abs(t.mean().item() - 1 / (1 + b)) < 5 * t.std().item() / 200_000 ** 0.5
    # a shorter range (VPDiffusionPath.t_max) scales the draws
    t = fmlib.draw_times(1000, 0.5, t_max=0.9, generator=torch.Generator().manual_seed(7))
    assert t.max() <= 0.9 and t.max() > 0.85
    # large b (times near 0) keeps full relative precision; half precision works for tiny b; n = 0 is empty
    u = torch.rand(1000, 1, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    t = fmlib.draw_times(1000, 1e6, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    torch.testing.assert_close(t, -torch.log1p(-u) / 1e6, rtol=1e-5, atol=0)  # 1 - (1 - u)^(1/b) ~ -log(1 - u) / b
    assert (t > 0).all()
    t = fmlib.draw_times(100, 1e-6, dtype=torch.float16)
    assert t.dtype == torch.float16 and bool(((t >= 0) & (t <= 1)).all())
    assert fmlib.draw_times(0, 0.5).shape == (0, 1)


def test_cfm_loss_with_time_beta_uses_those_times():
    """cfm_loss(time_beta=b) is the same definition with t = draw_times(n, b) drawn before x_0."""
    model = MLPVectorField(2, width=8, depth=1)
    x_1 = torch.randn(64, 2)
    loss = cfm_loss(model, LinearPath(0.0), x_1, generator=torch.Generator().manual_seed(3), time_beta=0.5)
    g = torch.Generator().manual_seed(3)
    t = fmlib.draw_times(64, 0.5, generator=g)
    x_0 = torch.randn(64, 2, generator=g)
    expected = ((model(t, (1 - t) * x_0 + t * x_1) - (x_1 - x_0)) ** 2).sum(dim=1).mean()
    torch.testing.assert_close(loss, expected)
    assert not torch.allclose(loss, cfm_loss(model, LinearPath(0.0), x_1, generator=torch.Generator().manual_seed(3)))


@pytest.mark.parametrize("bad", [0, -0.5, float("nan"), float("inf"), "0.5", True, None])
def test_bad_time_beta(bad):
    model = MLPVectorField(2, width=8, depth=1)
    with pytest.raises(ValueError, match="time_beta"):
        fmlib.draw_times(10, bad)
    with pytest.raises(ValueError, match="time_beta"):
        cfm_loss(model, LinearPath(0.0), torch.randn(4, 2), time_beta=bad)
    with pytest.raises(ValueError, match="time_beta"):
        train_cfm(model, sample_annulus, n_steps=2, progress=False, time_beta=bad)
    for kwargs, name in ((dict(n=-1), r"\bn\b"), (dict(n=2.0), r"\bn\b"), (dict(t_max=0.0), "t_max"),
                         (dict(t_max=1.5), "t_max"), (dict(t_max=float("nan")), "t_max"),
                         (dict(dtype=torch.int64), "dtype"), (dict(dtype=torch.complex64), "dtype")):
        with pytest.raises(ValueError, match=name):
            fmlib.draw_times(**dict(dict(n=10, time_beta=0.5), **kwargs))


def test_training_is_seeded_and_learns():
    def run():
        torch.manual_seed(0)
        model = MLPVectorField(2, width=32, depth=2)
        losses = train_cfm(model, sample_annulus, n_steps=300, batch_size=128, lr=5e-3, seed=1, progress=False)
        return model, losses

    m1, l1 = run()
    m2, l2 = run()
    assert len(l1) == 300 and l1 == l2
    torch.testing.assert_close(m1.net[0].weight, m2.net[0].weight)
    # the zero field has loss E||x_1 - x_0||^2 = 19/3 + 2 on the annulus; the model must beat it clearly
    assert np.mean(l1[-50:]) < 0.8 * (19 / 3 + 2)


class _FrozenZero(torch.nn.Module):
    """v = 0 with one parameter that gets no gradient: train_cfm's losses are then plain estimates of the CFM loss
    of the zero field, E||x_1 - x_0||^2 = E|x_1|^2 + 2 = 19/3 + 2 on the annulus (E r^2 = 19/3 for r ~ U[2, 3])."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, t, x):
        return 0 * self.w * x


def test_quasi_random_batches_are_unbiased_with_a_smaller_variance():
    exact = 19 / 3 + 2
    kw = dict(n_steps=400, batch_size=256, progress=False, time_beta=0.5)
    plain = np.array(train_cfm(_FrozenZero(), sample_annulus, seed=0, **kw))
    quasi = np.array(train_cfm(_FrozenZero(), sample_annulus, seed=0, data_uniforms=2, **kw))
    # unbiased: the mean of 400 batch estimates is within 4 standard errors of the exact value, for both
    for losses in (plain, quasi):
        assert abs(losses.mean() - exact) < 4 * losses.std(ddof=1) / len(losses) ** 0.5, losses.mean()
    # the scrambled Sobol batches spread (t, x_0, x_1) evenly: their estimates scatter far less (measured at this
    # batch size: 14 times less in standard deviation for seed 0; 4.4 to 18 times for seeds 0, 1, 2)
    assert quasi.std() < plain.std() / 3, (quasi.std(), plain.std())
    # seeded: the same seed gives the same batches, another seed other ones
    assert quasi.tolist() == train_cfm(_FrozenZero(), sample_annulus, seed=0, data_uniforms=2, **kw)
    assert quasi.tolist() != train_cfm(_FrozenZero(), sample_annulus, seed=1, data_uniforms=2, **kw)


def test_quasi_random_batches_feed_the_sampler_sobol_points():
    """Each batch of 2^m points of a scrambled Sobol sequence puts one point in each of 2^m equal intervals of every
    coordinate; the data sampler receives (n, k) float64 uniforms in [0, 1)."""
    seen = []

    def data(n, generator=None, device=None, u=None):
        if u is not None:
            seen.append(u.clone())
            return sample_annulus(n, u=u, device=device)
        return sample_annulus(n, generator=generator, device=device)

    train_cfm(MLPVectorField(2, width=8, depth=1), data, n_steps=3, batch_size=64, progress=False, data_uniforms=2)
    batches = seen[2:]  # the first two calls are the trial calls with a fixed U
    assert len(batches) == 3
    for u in batches:
        assert u.shape == (64, 2) and u.dtype == torch.float64 and 0 <= u.min() and u.max() < 1
        for column in u.T:
            assert sorted(torch.floor(column * 64).long().tolist()) == list(range(64))


@pytest.mark.parametrize("kwargs, match", [
    (dict(data_uniforms=0), "data_uniforms must be an integer >= 1"),
    (dict(data_uniforms=True), "data_uniforms"),
    (dict(data_uniforms=2.0), "data_uniforms"),
    (dict(data_uniforms=21_199), "21201"),
    (dict(data_uniforms=2, n_steps=2**21, batch_size=1024), "2\\*\\*30"),
])
def test_bad_quasi_random_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        train_cfm(MLPVectorField(2, width=8, depth=1), sample_annulus, progress=False, **kwargs)


def test_quasi_random_needs_a_sampler_that_takes_u():
    def no_u(n, generator=None, device=None):
        return sample_annulus(n, generator=generator, device=device)

    def wrong_shape(n, generator=None, device=None, u=None):
        return torch.zeros(n, 3) if u is not None else sample_annulus(n, generator=generator)

    def ignores_u(n, generator=None, device=None, **kwargs):
        return sample_annulus(n, generator=generator, device=device)

    def integers(n, generator=None, device=None, u=None):
        x = sample_annulus(n, generator=generator, device=device, u=u)
        return x if u is None else (10 * x).long()

    def later_wrong(n, generator=None, device=None, u=None):
        x = sample_annulus(n, generator=generator, device=device, u=u)
        return x.double() if u is not None and n > 2 else x  # right in the trial calls, float64 in training

    model = MLPVectorField(2, width=8, depth=1).eval()
    weights = [p.clone() for p in model.parameters()]
    for sampler, match in ((no_u, "callable as sample_data\\(n, u=U, device=device\\)"),
                           (wrong_shape, "shape \\(n, 2\\), dtype torch.float32; a trial call with n = 2 returned "
                                         "shape \\(2, 3\\)"),
                           (ignores_u, "must compute its points from U"),
                           (integers, "dtype torch.int64"),
                           (later_wrong, "training stopped at step 0: sample_data\\(batch_size\\) returned shape "
                                         "\\(16, 2\\), dtype torch.float64")):
        with pytest.raises(ValueError, match=match):
            train_cfm(model, sampler, n_steps=2, batch_size=16, progress=False, data_uniforms=2)
    # a data_uniforms that does not fit the sampler is named, and the model was not touched
    with pytest.raises(ValueError, match="data_uniforms=3, a trial call .*does data_uniforms match"):
        train_cfm(model, sample_annulus, n_steps=2, progress=False, data_uniforms=3)
    with pytest.raises(ValueError, match="data_uniforms must be an integer >= 1, got 'x'"):
        train_cfm(model, sample_annulus, n_steps=2, progress=False, data_uniforms="x")
    assert not model.training and all(torch.equal(p, q) for p, q in zip(model.parameters(), weights))


def test_quasi_random_batch():
    sobol = torch.quasirandom.SobolEngine(5, scramble=True, seed=0)
    t, x_0, x_1 = fmlib.quasi_random_batch(sobol, 64, 2, sample_annulus, time_beta=0.5)
    assert t.shape == (64, 1) and x_0.shape == (64, 2) and x_1.shape == (64, 2)
    assert t.dtype == x_0.dtype == x_1.dtype == torch.float32 and 0 <= t.min() and t.max() <= 1
    assert torch.isfinite(x_0).all() and ((x_1.norm(dim=1) >= 2 - 1e-6) & (x_1.norm(dim=1) <= 3 + 1e-6)).all()
    # Beta(1, 1/2) is the inverse CDF t = 1 - (1 - u)^2: one time in each of the 64 intervals of u = 1 - sqrt(1 - t)
    u_t = 1 - torch.sqrt(1 - t.double().squeeze(1))
    assert sorted(torch.floor(u_t * 64).long().clamp(max=63).tolist()) == list(range(64))
    for kwargs, match in ((dict(sobol="s"), "sobol must be a torch.quasirandom.SobolEngine"),
                          (dict(sobol=torch.quasirandom.SobolEngine(3)), "at least d \\+ 2 = 4 dimensions .*got 3"),
                          (dict(n=0), "n"), (dict(d=True), "d"), (dict(time_beta=0.0), "time_beta"),
                          (dict(t_max=2.0), "t_max"), (dict(dtype=torch.int64), "dtype"), (dict(device="nope"), "device")):
        args = dict(dict(sobol=sobol, n=8, d=2, sample_data=sample_annulus), **kwargs)
        with pytest.raises(ValueError, match=match):
            fmlib.quasi_random_batch(args.pop("sobol"), args.pop("n"), args.pop("d"), args.pop("sample_data"), **args)


def test_quasi_random_without_seed_leaves_the_global_generator_alone():
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    train_cfm(_FrozenZero(), sample_annulus, n_steps=2, batch_size=16, progress=False, seed=None, data_uniforms=2)
    assert torch.equal(torch.rand(1), expected)


def test_training_reports_progress(capsys):
    model = MLPVectorField(2, width=8, depth=1)
    train_cfm(model, sample_annulus, n_steps=5, progress=True, desc="unit test")
    assert "unit test" in capsys.readouterr().err


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_steps=0), "n_steps"), (dict(batch_size=2.5), "batch_size"), (dict(lr=-1.0), "lr"),
    (dict(lr=float("nan")), "lr"),
])
def test_bad_training_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        train_cfm(MLPVectorField(2, width=8, depth=1), sample_annulus, progress=False, **kwargs)


def test_bad_sampler_output():
    def bad(n, generator=None, device=None):
        return torch.randn(n)

    with pytest.raises(ValueError, match=r"sample_data\(batch_size\)"):
        train_cfm(MLPVectorField(2, width=8, depth=1), bad, n_steps=2, progress=False)


def test_divergence_is_reported():
    with pytest.raises(ValueError, match="non-finite at step"):
        train_cfm(MLPVectorField(2, width=8, depth=1), sample_annulus, n_steps=20, lr=1e12, progress=False)


# --- data --------------------------------------------------------------------------------------------------------

def test_annulus_samples():
    x = sample_annulus(20_000, generator=torch.Generator().manual_seed(0))
    r = x.norm(dim=1).numpy()
    angle = np.arctan2(x[:, 1].numpy(), x[:, 0].numpy())
    assert x.shape == (20_000, 2) and r.min() >= 2 and r.max() <= 3
    # radius uniform on [2, 3] and angle uniform on [-pi, pi): KS p-values far from rejection at this seed
    assert stats.kstest(r, stats.uniform(2, 1).cdf).pvalue > 0.01
    assert stats.kstest(angle, stats.uniform(-np.pi, 2 * np.pi).cdf).pvalue > 0.01


def test_annulus_from_given_uniforms():
    u = torch.tensor([[0.0, 0.0], [0.25, 1.0], [0.5, 0.5]], dtype=torch.float64)
    x = sample_annulus(3, u=u)
    expected = torch.tensor([[2.0, 0.0], [0.0, 3.0], [-2.5, 0.0]])
    assert x.dtype == torch.float32
    torch.testing.assert_close(x, expected, atol=1e-6, rtol=0)
    for bad, match in ((torch.rand(2, 2), "shape \\(n, 2\\) = \\(3, 2\\)"), (u + 1, "in \\[0, 1\\]"),
                       (u * float("nan"), "in \\[0, 1\\]"), (torch.zeros(3, 2, dtype=torch.int64), "floating"),
                       ([[0.0, 0.0]] * 3, "floating")):
        with pytest.raises(ValueError, match=match):
            sample_annulus(3, u=bad)
    for kwargs, match in ((dict(dtype=torch.int64), "dtype"), (dict(dtype="float32"), "dtype"),
                          (dict(device="nope"), "device"), (dict(generator="x"), "generator")):
        with pytest.raises(ValueError, match=match):
            sample_annulus(3, u=u, **kwargs)
        with pytest.raises(ValueError, match=match):
            sample_annulus(3, **kwargs)


def test_annulus_log_prob_and_entropy():
    x = torch.tensor([[2.5, 0.0], [0.0, -2.0], [1.0, 0.0], [4.0, 0.0]])
    lp = annulus_log_prob(x)
    torch.testing.assert_close(lp[:2], -torch.log(2 * math.pi * torch.tensor([2.5, 2.0])))
    assert lp[2] == -math.inf and lp[3] == -math.inf
    # entropy = -E[log q] by Monte Carlo, against the closed form log(2 pi) + E[log r] = 2.7474
    xs = sample_annulus(200_000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    mc = -annulus_log_prob(xs).mean().item()
    assert annulus_entropy() == pytest.approx(mc, abs=3e-3)
    assert round(annulus_entropy(), 4) == 2.7474


def test_density_integrates_to_one():
    g = torch.linspace(-3.2, 3.2, 801, dtype=torch.float64)
    xx, yy = torch.meshgrid(g, g, indexing="xy")
    p = annulus_log_prob(torch.stack([xx.ravel(), yy.ravel()], 1)).exp()
    assert float(p.sum() * (g[1] - g[0]) ** 2) == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("kwargs", [dict(r_inner=3.0, r_outer=2.0), dict(r_inner=-1.0), dict(r_outer=float("inf"))])
def test_bad_annulus(kwargs):
    with pytest.raises(ValueError, match="r_"):
        sample_annulus(10, **kwargs)


def test_get_dataset():
    assert fmlib.get_dataset("annulus") is sample_annulus
    with pytest.raises(ValueError, match="name must be one of"):
        fmlib.get_dataset("moons?")


def test_seed_everything():
    g1 = fmlib.seed_everything(5)
    a = torch.rand(3)
    g2 = fmlib.seed_everything(5)
    torch.testing.assert_close(a, torch.rand(3))
    torch.testing.assert_close(torch.rand(2, generator=g1), torch.rand(2, generator=g2))
    with pytest.raises(ValueError, match="seed"):
        fmlib.seed_everything(-1)


def test_train_cfm_takes_a_data_tensor():
    """A data tensor (N, d) is sampled by rows with the seeded generator: reproducible, learns, left unchanged."""
    g = torch.Generator().manual_seed(0)
    data = torch.randn(500, 2, generator=g) * 0.3 + torch.tensor([2.0, -1.0])
    before = data.clone()

    def run():
        torch.manual_seed(0)
        model = MLPVectorField(2, width=16, depth=2)
        return model, train_cfm(model, data, n_steps=300, batch_size=64, lr=1e-2, seed=5, progress=False)

    (m1, l1), (m2, l2) = run(), run()
    assert l1 == l2 and torch.equal(data, before)
    # it learned the data: samples land near the data's mean, far from the noise's
    x = fmlib.sample(m1, 2000, 2, n_steps=50, generator=torch.Generator().manual_seed(1))
    assert (x.mean(0) - torch.tensor([2.0, -1.0])).norm() < 0.3


@pytest.mark.parametrize("data,kwargs,match", [
    (torch.zeros(0, 2), {}, "at least one row"),
    (torch.full((5, 2), float("nan")), {}, "finite"),
    (torch.zeros(5), {}, "shape"),
    (torch.zeros(5, 2, dtype=torch.int64), {}, "floating"),
    (torch.zeros(5, 2), {"data_uniforms": 2}, "data_uniforms"),
])
def test_train_cfm_bad_data_tensor(data, kwargs, match):
    with pytest.raises(ValueError, match=match):
        train_cfm(MLPVectorField(2, width=8, depth=1), data, n_steps=2, progress=False, **kwargs)
