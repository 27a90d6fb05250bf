"""Tests of fmlib.recipes: the annulus training recipes and their weight cache."""

import pytest
import torch

import fmlib
from fmlib.recipes import BEST_ANNULUS_CONFIG, SEED_ANNULUS_CONFIG, build_model, train_annulus

TINY = dict(SEED_ANNULUS_CONFIG, n_steps=20, batch_size=32)


def test_seed_config_reproduces_train_cfm():
    """SEED_ANNULUS_CONFIG is exactly the annulus chapter's call of train_cfm (same weights, same losses)."""
    run = train_annulus(TINY, seed=3)
    fmlib.seed_everything(3)
    model = fmlib.MLPVectorField(2, width=64, depth=3, activation="elu")
    losses = fmlib.train_cfm(model, fmlib.sample_annulus, n_steps=20, batch_size=32, lr=1e-2, seed=3, progress=False)
    assert run.losses == losses and not run.from_cache
    assert all(torch.equal(p, q) for p, q in zip(run.model.parameters(), model.parameters()))


def test_cache_round_trip(tmp_path):
    cfg = dict(TINY, schedule="cosine")
    first = train_annulus(cfg, cache_dir=tmp_path)
    second = train_annulus(cfg, cache_dir=tmp_path)
    assert not first.from_cache and second.from_cache
    assert second.losses == first.losses and second.seconds == first.seconds
    assert all(torch.equal(p, q) for p, q in zip(first.model.parameters(), second.model.parameters()))
    # another seed or config is another file
    assert not train_annulus(cfg, seed=1, cache_dir=tmp_path).from_cache
    assert len(list(tmp_path.glob("annulus-*.pt"))) == 2


def test_adam_beta2_is_used():
    """adam_beta2 reaches the optimizer: the seed's config with 0.99 equals train_cfm with Adam(betas=(0.9, 0.99))."""
    import numpy as np

    cfg = dict(TINY, adam_beta2=np.float64(0.99))  # numpy numbers are accepted and stored as float
    run = train_annulus(cfg, seed=3)
    fmlib.seed_everything(3)
    model = fmlib.MLPVectorField(2, width=64, depth=3, activation="elu")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.9, 0.99), fused=True)  # fused, as train_annulus
    losses = fmlib.train_cfm(model, fmlib.sample_annulus, n_steps=20, batch_size=32, seed=3, optimizer=opt,
                             progress=False)
    assert run.losses == losses
    assert all(torch.equal(p, q) for p, q in zip(run.model.parameters(), model.parameters()))
    # and it is not the default 0.999
    assert run.losses != train_annulus(TINY, seed=3).losses


def test_quasi_random_config_is_train_cfm_with_data_uniforms():
    cfg = dict(TINY, quasi_random=True)
    run = train_annulus(cfg, seed=3)
    fmlib.seed_everything(3)
    model = fmlib.MLPVectorField(2, width=64, depth=3, activation="elu")
    losses = fmlib.train_cfm(model, fmlib.sample_annulus, n_steps=20, batch_size=32, lr=1e-2, seed=3, progress=False,
                             data_uniforms=2)
    assert run.losses == losses
    assert all(torch.equal(p, q) for p, q in zip(run.model.parameters(), model.parameters()))
    assert run.losses != train_annulus(TINY, seed=3).losses


def test_best_config_builds():
    model = build_model(BEST_ANNULUS_CONFIG)
    assert model(0.5, torch.zeros(3, 2)).shape == (3, 2)


@pytest.mark.parametrize("bad,name", [
    (dict(TINY, extra=1), "unknown: \\['extra'\\]"),
    ({k: v for k, v in TINY.items() if k != "residual"}, "missing: \\['residual'\\]"),
    (dict(TINY, width=0), "width"),
    (dict(TINY, lr=-1.0), "lr"),
    (dict(TINY, schedule="step"), "schedule"),
    (dict(TINY, time_beta=0.0), "time_beta"),
    (dict(TINY, time_frequencies=-2), "time_frequencies"),
    (dict(TINY, time_frequencies=2**40), "time_frequencies"),  # the same cap as MLPVectorField's
    (dict(TINY, residual="yes"), "residual"),
    (dict(TINY, quasi_random=1), "quasi_random"),
    (dict(TINY, adam_beta2=1.0), "adam_beta2"),
    (dict(TINY, adam_beta2=0.0), "adam_beta2"),
    (dict(TINY, adam_beta2=float("nan")), "adam_beta2"),
    (dict(TINY, adam_beta2=True), "adam_beta2"),
    (dict(TINY, adam_beta2="0.99"), "adam_beta2"),
])
def test_bad_config(bad, name):
    with pytest.raises(ValueError, match=name):
        train_annulus(bad)
    with pytest.raises(ValueError, match="seed"):
        train_annulus(TINY, seed=-1)


class _ZeroField(torch.nn.Module):
    """v = 0: the flow is the identity, so the model's density is p_0 = N(0, I)."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.zeros(()))

    def forward(self, t, x):
        return self.scale * x


def test_evaluate_annulus_on_a_known_density():
    """For v = 0: NLL = E_q[-log N(x; 0, I)] = log(2 pi) + E|x|^2 / 2 with E|x|^2 = (3^3 - 2^3) / 3 = 19/3 for r
    uniform on [2, 3]; the gap is NLL - H(q); inside is P(2 <= |x_0| <= 3) = exp(-2) - exp(-9/2) for N(0, I)."""
    import math

    from fmlib.recipes import evaluate_annulus

    scores = evaluate_annulus(_ZeroField(), 4000, seed=0)
    nll = math.log(2 * math.pi) + 19 / 6
    assert abs(scores["nll"] - nll) < 4 * scores["nll_se"]
    assert abs(scores["gap"] - (nll - fmlib.annulus_entropy())) < 4 * scores["gap_se"]
    assert abs(scores["edge"] + scores["interior"] - scores["gap"]) < 1e-9
    p_inside = math.exp(-2) - math.exp(-4.5)
    assert abs(scores["inside"] - p_inside) < 4 * (p_inside * (1 - p_inside) / 4000) ** 0.5
    for bad, name in ((1, "n_points"), (0, "n_points"), (2.5, "n_points")):
        with pytest.raises(ValueError, match=name):
            evaluate_annulus(_ZeroField(), bad)
    with pytest.raises(ValueError, match="model"):
        evaluate_annulus(lambda t, x: x, 10)
    with pytest.raises(ValueError, match="dim = 3"):
        evaluate_annulus(fmlib.MLPVectorField(3, 8, 1), 10)
    with pytest.raises(ValueError, match="float16"):
        evaluate_annulus(fmlib.MLPVectorField(2, 8, 1).half(), 10)


def test_default_cache_dir(tmp_path, monkeypatch):
    """$FMBOOK_CACHE wins; inside the book (root or book/) it is <root>/_build/fmbook-cache; elsewhere the temp dir."""
    import tempfile
    from pathlib import Path

    from fmlib.recipes import default_cache_dir

    monkeypatch.delenv("FMBOOK_CACHE", raising=False)
    (tmp_path / "book").mkdir()
    monkeypatch.chdir(tmp_path / "book")
    assert default_cache_dir() == Path(tempfile.gettempdir()) / "fmbook-cache"
    (tmp_path / "_config.yml").write_text("title: t\n")
    (tmp_path / "_toc.yml").write_text("root: intro\n")
    assert default_cache_dir() == tmp_path / "_build" / "fmbook-cache"
    monkeypatch.chdir(tmp_path)
    assert default_cache_dir() == tmp_path / "_build" / "fmbook-cache"
    monkeypatch.setenv("FMBOOK_CACHE", str(tmp_path / "elsewhere"))
    assert default_cache_dir() == tmp_path / "elsewhere"
    monkeypatch.setenv("FMBOOK_CACHE", "")  # empty: as if unset (not the working directory)
    assert default_cache_dir() == tmp_path / "_build" / "fmbook-cache"


def test_cache_file_of_another_config_or_corrupt_is_refused(tmp_path):
    """A file with the right name but the wrong content is never used (nor overwritten): a ValueError names it."""
    import shutil

    first = train_annulus(TINY, cache_dir=tmp_path)
    (ours,) = tmp_path.glob("annulus-*.pt")
    other = train_annulus(dict(TINY, n_steps=7), cache_dir=tmp_path / "other")
    (theirs,) = (tmp_path / "other").glob("annulus-*.pt")
    shutil.copy(theirs, ours)
    with pytest.raises(ValueError, match="another configuration"):
        train_annulus(TINY, cache_dir=tmp_path)
    assert len(other.losses) == 7 and len(first.losses) == 20
    for content in (b"garbage", b""):
        ours.write_bytes(content)
        with pytest.raises(ValueError, match="delete .* to train the model again"):
            train_annulus(TINY, cache_dir=tmp_path)
        assert ours.read_bytes() == content  # left as it was


def test_cache_dir_is_checked_before_training(tmp_path, monkeypatch):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for bad in (a_file, a_file / "sub", "", 123, b"/tmp/x"):
        with pytest.raises(ValueError, match="cache_dir"):
            train_annulus(dict(TINY, n_steps=10**6), cache_dir=bad)  # would take minutes if it trained first
    monkeypatch.setenv("HOME", str(tmp_path))
    assert not train_annulus(TINY, cache_dir="~/fmcache").from_cache
    assert len(list((tmp_path / "fmcache").glob("annulus-*.pt"))) == 1  # ~ expanded, no literal "~" folder


def test_cache_key_depends_on_the_default_dtype(tmp_path):
    from fmlib.recipes import _cache_key

    key32 = _cache_key(TINY, 0, torch.device("cpu"))
    old = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.float64)
        assert _cache_key(TINY, 0, torch.device("cpu")) != key32
    finally:
        torch.set_default_dtype(old)
    assert _cache_key(TINY, 0, torch.device("cpu")) == key32


def test_device_and_progress_checked():
    for bad in ("meta", "bogus", True):
        with pytest.raises(ValueError, match="device"):
            train_annulus(TINY, device=bad)
    with pytest.raises(ValueError, match="progress"):
        train_annulus(TINY, progress="no")
    with pytest.raises(ValueError, match=r"config\['sigma_min'\]"):
        train_annulus(dict(TINY, sigma_min=-0.1))


def test_train_annulus_many_equals_train_annulus_one_by_one(tmp_path):
    """Side by side (this process + a spawned worker, one thread each) gives the very models of train_annulus, in the
    order of the configs; the thread count is restored; a second call loads every model from the cache."""
    from fmlib.recipes import train_annulus_many

    configs = [dict(TINY, schedule="cosine"), dict(TINY, width=16, time_frequencies=2, residual=True),
               dict(TINY, width=8)]  # three configs, two trainers: the worker trains the second and the third
    threads = torch.get_num_threads()
    runs = train_annulus_many(configs, seed=2, cache_dir=tmp_path, processes=2)
    assert torch.get_num_threads() == threads
    for cfg, run in zip(configs, runs):
        alone = train_annulus(cfg, seed=2)
        assert run.losses == alone.losses and not run.from_cache and run.seconds > 0 and not run.model.training
        assert all(torch.equal(p, q) for p, q in zip(run.model.parameters(), alone.model.parameters()))
        assert not any(p.is_shared() for p in run.model.parameters())  # plain tensors, no file descriptor each
    assert len(list(tmp_path.glob("annulus-*.pt"))) == 3  # the worker wrote its files too
    again = train_annulus_many(configs, seed=2, cache_dir=tmp_path)
    assert all(r.from_cache and r.losses == s.losses for r, s in zip(again, runs))
    # processes=1: one after the other in this process, the same models
    (one,) = train_annulus_many(configs[1:2], seed=2, processes=1)
    assert one.losses == runs[1].losses


def test_train_annulus_many_keeps_the_default_dtype():
    """A spawned worker starts with float32: it is given the caller's default dtype (here float64)."""
    from fmlib.recipes import train_annulus_many

    old = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.float64)
        runs = train_annulus_many([TINY, dict(TINY, width=8)], seed=1, processes=2)
        alone = train_annulus(dict(TINY, width=8), seed=1)
    finally:
        torch.set_default_dtype(old)
    assert all(next(r.model.parameters()).dtype == torch.float64 for r in runs)
    assert runs[1].losses == alone.losses


@pytest.mark.parametrize("configs,kwargs,match", [
    ([], {}, "configs must be a non-empty list"),
    (TINY, {}, "configs must be a non-empty list"),  # a dict, not a list of dicts
    ([TINY, dict(TINY, width=0)], {}, r"configs\[1\]: config\['width'\]"),
    ([TINY], {"processes": 0}, "processes"),
    ([TINY], {"processes": True}, "processes"),
    ([TINY], {"seed": -1}, "seed"),
    ([TINY], {"device": "meta"}, "device"),
    ([TINY], {"cache_dir": ""}, "cache_dir"),
])
def test_train_annulus_many_bad_input(configs, kwargs, match):
    from fmlib.recipes import train_annulus_many

    with pytest.raises(ValueError, match=match):
        train_annulus_many(configs, **kwargs)


def test_train_annulus_many_errors_name_the_config_and_stop_the_workers():
    """A training that fails here stops the worker at once; one that fails in a worker is raised with its index."""
    import time

    from fmlib.recipes import train_annulus_many

    bad = dict(TINY, lr=1e30)  # the loss becomes inf within a few steps
    slow = dict(TINY, n_steps=20_000)  # tens of seconds
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"configs\[0\]: the loss became non-finite"):
        train_annulus_many([bad, slow], processes=2)
    assert time.perf_counter() - t0 < 8  # not after the slow training
    with pytest.raises(ValueError, match=r"configs\[1\]: the loss became non-finite"):
        train_annulus_many([TINY, bad], processes=2)


def test_train_annulus_many_calls_from_threads_run_one_after_the_other():
    """torch's thread count is process-wide, so a call waits while another one runs (here: while the test holds
    the lock a call takes), and the count is left as it was."""
    import multiprocessing
    import threading
    import time

    from fmlib import recipes

    old = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        call = threading.Thread(target=recipes.train_annulus_many, args=([TINY, dict(TINY, width=8)],),
                                kwargs={"processes": 2})
        with recipes._SIDE_BY_SIDE:  # as if another call were running
            call.start()
            time.sleep(1.5)
            assert call.is_alive() and not multiprocessing.active_children()  # it waits: no worker started yet
        call.join()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(old)
