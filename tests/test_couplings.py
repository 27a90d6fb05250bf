"""Tests of fmlib.couplings and of train_cfm's coupling option: the minibatch OT pairing against brute force and
POT, the straightness of known flows, reflow pairs, and bad input."""

import itertools

import numpy as np
import pytest
import torch

import fmlib
from fmlib import MLPVectorField, ot_permutation, reflow_pairs, sample_annulus, straightness, train_cfm
from fmlib import training


def batch_cost(x_0, x_1, perm):
    return float(((x_0 - x_1[perm]) ** 2).sum())


@pytest.mark.parametrize("n", [1, 2, 3, 5, 6])
@pytest.mark.parametrize("d", [1, 2, 4])
def test_permutation_minimises_batch_cost_brute_force(n, d):
    for seed in range(5):
        g = torch.Generator().manual_seed(100 * n + 10 * d + seed)
        x_0 = torch.randn(n, d, generator=g, dtype=torch.float64)
        x_1 = 2 * torch.rand(n, d, generator=g, dtype=torch.float64) + 1
        perm = ot_permutation(x_0, x_1)
        assert perm.dtype == torch.int64 and sorted(perm.tolist()) == list(range(n))  # a permutation
        best = min(batch_cost(x_0, x_1, torch.tensor(p)) for p in itertools.permutations(range(n)))
        assert batch_cost(x_0, x_1, perm) <= best + 1e-12
        worst = max(batch_cost(x_0, x_1, torch.tensor(p)) for p in itertools.permutations(range(n)))
        assert n == 1 or worst > best  # the test can fail: pairings differ in cost


def test_permutation_against_pot_and_scipy():
    ot = pytest.importorskip("ot")
    from scipy.optimize import linear_sum_assignment

    g = torch.Generator().manual_seed(0)
    for n in (10, 64, 200):
        x_0 = torch.randn(n, 2, generator=g)
        x_1 = sample_annulus(n, generator=g)
        perm = ot_permutation(x_0, x_1)
        cost = ot.dist(x_0.double().numpy(), x_1.double().numpy())
        w = np.full(n, 1 / n)
        assert abs(batch_cost(x_0.double(), x_1.double(), perm) / n - ot.emd2(w, w, cost)) < 1e-9
        rows, cols = linear_sum_assignment(cost)
        assert abs(cost[rows, cols].sum() - batch_cost(x_0.double(), x_1.double(), perm)) < 1e-9
        # independent pairing (the identity) costs more
        assert batch_cost(x_0, x_1, perm) < batch_cost(x_0, x_1, torch.arange(n))


def test_permutation_without_pot_uses_scipy(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_pot(name, *args, **kwargs):
        if name == "ot":
            raise ImportError("no POT")
        return real_import(name, *args, **kwargs)

    g = torch.Generator().manual_seed(1)
    x_0, x_1 = torch.randn(40, 3, generator=g), torch.randn(40, 3, generator=g) + 2
    with_pot = ot_permutation(x_0, x_1)
    monkeypatch.setattr(builtins, "__import__", no_pot)
    without = ot_permutation(x_0, x_1)
    assert abs(batch_cost(x_0, x_1, with_pot) - batch_cost(x_0, x_1, without)) < 1e-5


def test_permutation_leaves_inputs_and_recovers_a_shuffle():
    g = torch.Generator().manual_seed(2)
    x_0 = torch.randn(50, 2, generator=g)
    shuffle = torch.randperm(50, generator=g)
    x_1 = x_0[shuffle] + 1e-3  # x_1[j] sits next to x_0[shuffle[j]]: the optimum pairs x_0[i] with it
    before = (x_0.clone(), x_1.clone())
    perm = ot_permutation(x_0, x_1)
    assert torch.equal(shuffle[perm], torch.arange(50))
    assert torch.equal(x_0, before[0]) and torch.equal(x_1, before[1])


@pytest.mark.parametrize("bad, match", [
    ((np.zeros((3, 2)), torch.zeros(3, 2)), "x_0 must be a torch.Tensor"),
    ((torch.zeros(3, 2), torch.zeros(4, 2)), "same shape"),
    ((torch.zeros(3, 2), torch.zeros(3, 3)), "same shape"),
    ((torch.zeros(3), torch.zeros(3)), r"shape \(n, d\)"),
    ((torch.zeros(3, 2, dtype=torch.int64), torch.zeros(3, 2)), "floating-point"),
    ((torch.zeros(3, 2), torch.tensor([[0.0, 1.0], [float("nan"), 0.0], [1.0, 1.0]])), "finite"),
])
def test_permutation_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        ot_permutation(*bad)


def test_straightness_of_known_flows():
    x_0 = torch.randn(300, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    shift = torch.tensor([1.0, -2.0], dtype=torch.float64)
    # a constant field: straight lines at constant speed, S = 0, cost |shift|^2
    s = straightness(lambda t, x: shift.expand_as(x), x_0, n_steps=4)
    assert s.straightness < 1e-20 and abs(s.transport_cost - 5.0) < 1e-12
    assert torch.allclose(s.x_end, x_0 + shift)
    # v = x: x_t = x_0 e^t, straight lines run at a varying speed; S = E|x_0|^2 int_0^1 (e - 1 - e^t)^2 dt
    s = straightness(lambda t, x: x, x_0, n_steps=200)
    e = np.e
    integral = (e - 1) ** 2 - 2 * (e - 1) ** 2 + (e ** 2 - 1) / 2
    expected = float((x_0 ** 2).sum(dim=1).mean()) * integral
    assert abs(s.straightness - expected) < 1e-4 * expected
    # a rotation: circles, S > 0
    rot = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)
    assert straightness(lambda t, x: x @ rot.T, x_0, n_steps=64).straightness > 0.1


def test_straightness_bad_input():
    with pytest.raises(ValueError, match="n_steps"):
        straightness(lambda t, x: x, torch.zeros(3, 2), n_steps=0)
    with pytest.raises(ValueError, match="x_0"):
        straightness(lambda t, x: x, torch.zeros(3))
    with pytest.raises(ValueError, match="method must be"):
        straightness(lambda t, x: x, torch.zeros(3, 2), method="dopri5")


def test_reflow_pairs():
    shift = torch.tensor([3.0, 0.0])
    g = torch.Generator().manual_seed(4)
    x_0, x_1 = reflow_pairs(lambda t, x: shift.expand_as(x), 100, 2, method="euler", n_steps=3, generator=g)
    assert x_0.shape == x_1.shape == (100, 2) and torch.allclose(x_1, x_0 + shift)
    again, _ = reflow_pairs(lambda t, x: shift.expand_as(x), 100, 2, method="euler", n_steps=3,
                            generator=torch.Generator().manual_seed(4))
    assert torch.equal(x_0, again)
    with pytest.raises(ValueError, match="n must be"):
        reflow_pairs(lambda t, x: x, 0, 2)
    with pytest.raises(ValueError, match="dim must be"):
        reflow_pairs(lambda t, x: x, 5, 2.0)


def _model(seed=0):
    torch.manual_seed(seed)
    return MLPVectorField(dim=2, width=16, depth=2)


def test_train_cfm_independent_unchanged_and_ot_same_draws(monkeypatch):
    a, b, c = _model(), _model(), _model()
    kw = dict(n_steps=30, batch_size=32, seed=5, progress=False)
    plain = train_cfm(a, sample_annulus, **kw)
    independent = train_cfm(b, sample_annulus, coupling="independent", **kw)
    assert plain == independent
    # with the identity in place of the OT assignment, "ot" makes exactly the independent draws
    monkeypatch.setattr(training, "_ot_permutation", lambda x_0, x_1: torch.arange(x_1.shape[0]))
    assert train_cfm(c, sample_annulus, coupling="ot", **kw) == plain
    monkeypatch.undo()
    for time_beta in (1.0, 0.5):  # the same with Beta times
        d_, e_ = _model(), _model()
        ref = train_cfm(d_, sample_annulus, time_beta=time_beta, **kw)
        monkeypatch.setattr(training, "_ot_permutation", lambda x_0, x_1: torch.arange(x_1.shape[0]))
        assert train_cfm(e_, sample_annulus, coupling="ot", time_beta=time_beta, **kw) == ref
        monkeypatch.undo()


def test_train_cfm_ot_pairs_by_the_assignment(monkeypatch):
    seen = []

    def spy(x_0, x_1):
        perm = ot_permutation(x_0, x_1)
        seen.append((x_0.clone(), x_1.clone(), perm))
        return perm

    monkeypatch.setattr(training, "_ot_permutation", spy)
    losses = train_cfm(_model(), sample_annulus, n_steps=20, batch_size=16, seed=6, progress=False, coupling="ot")
    assert len(seen) == 20 and all(np.isfinite(losses))
    for x_0, x_1, perm in seen:
        assert batch_cost(x_0, x_1, perm) <= batch_cost(x_0, x_1, torch.arange(16)) + 1e-6


def test_train_cfm_ot_lowers_the_loss():
    # the OT coupling's targets x_1 - x_0 vary less given x_t: its loss levels off far lower
    kw = dict(n_steps=300, batch_size=128, seed=7, progress=False)
    ind = train_cfm(_model(), sample_annulus, **kw)
    ot_ = train_cfm(_model(), sample_annulus, coupling="ot", **kw)
    assert np.mean(ot_[-50:]) < 0.5 * np.mean(ind[-50:])


def test_train_cfm_paired():
    g = torch.Generator().manual_seed(8)
    x_0 = torch.randn(500, 2, generator=g)
    shift = torch.tensor([2.0, 1.0])
    before = x_0.clone()
    model = _model()
    losses = train_cfm(model, (x_0, x_0 + shift), n_steps=300, batch_size=64, seed=8, progress=False,
                       coupling="paired", lr=1e-2)
    assert torch.equal(x_0, before)
    # pairs x_1 = x_0 + shift: the target is the constant shift, which the model learns (loss near 0)
    assert np.mean(losses[-20:]) < 0.05
    out = model(torch.full((10, 1), 0.5), torch.randn(10, 2, generator=g))
    assert torch.allclose(out, shift.expand(10, 2), atol=0.3)


@pytest.mark.parametrize("kwargs, match", [
    (dict(coupling="exact"), "coupling must be"),
    (dict(coupling=None), "coupling must be"),
    (dict(coupling="ot", data_uniforms=2), "data_uniforms=None"),
    (dict(coupling="paired"), "tuple"),
])
def test_train_cfm_coupling_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        train_cfm(_model(), sample_annulus, n_steps=2, progress=False, **kwargs)


def test_train_cfm_paired_bad_input():
    z = torch.zeros(10, 2)
    with pytest.raises(ValueError, match="same shape"):
        train_cfm(_model(), (z, torch.zeros(9, 2)), n_steps=2, progress=False, coupling="paired")
    with pytest.raises(ValueError, match="tuple"):
        train_cfm(_model(), (z, z, z), n_steps=2, progress=False, coupling="paired")
    with pytest.raises(ValueError, match=r"sample_data\[1\]"):
        train_cfm(_model(), (z, "x"), n_steps=2, progress=False, coupling="paired")


def test_exports():
    for name in ("ot_permutation", "reflow_pairs", "straightness", "Straightness"):
        assert name in fmlib.__all__ and hasattr(fmlib, name)
