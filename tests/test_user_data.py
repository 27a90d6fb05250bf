"""fmlib on a reader's own data: the toy data sets, self-describing model files, torch.compile and torch.func."""

import math

import pytest
import torch
from scipy import stats

import fmlib
from fmlib import LinearPath, MLPVectorField, VPDiffusionPath, load_model, save_model, train_cfm


# --- toy data sets -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(fmlib.TOY_DATASETS))
def test_toy_datasets_are_seeded_typed_and_placed(name):
    sampler = fmlib.get_dataset(name)
    a = sampler(300, generator=torch.Generator().manual_seed(3))
    b = sampler(300, generator=torch.Generator().manual_seed(3))
    c = sampler(300, generator=torch.Generator().manual_seed(4))
    assert a.shape == (300, 2) and a.dtype == torch.float32 and torch.equal(a, b) and not torch.equal(a, c)
    assert sampler(5, dtype=torch.float64).dtype == torch.float64
    assert sampler(5, device="cpu").device.type == "cpu"
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="n must be"):
            sampler(bad)
    with pytest.raises(ValueError, match="dtype"):
        sampler(5, dtype=torch.int64)


def test_moons_are_scikit_learns_scaled():
    from sklearn.datasets import make_moons

    x = fmlib.sample_moons(2000, generator=torch.Generator().manual_seed(0), noise=0.0)
    clean, _ = make_moons(2000, noise=0.0)
    # without noise both lie on the same two arcs: each point of ours is on a point of the scaled arcs
    arcs = torch.as_tensor(clean) * 2 + torch.tensor([-1.0, -0.2], dtype=torch.float64)
    assert torch.cdist(x.double(), arcs).min(dim=1).values.max() < 0.01
    with pytest.raises(ValueError, match="noise"):
        fmlib.sample_moons(10, noise=-0.1)


def test_eight_gaussians_components():
    radius, std = 3.0, 0.2
    x = fmlib.sample_eight_gaussians(40_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64,
                                     radius=radius, std=std)
    angles = torch.arange(8, dtype=torch.float64) * math.pi / 4
    centres = radius * torch.stack([angles.cos(), angles.sin()], dim=1)
    k = torch.cdist(x, centres).argmin(dim=1)
    counts = torch.bincount(k, minlength=8).numpy()
    assert stats.chisquare(counts).pvalue > 1e-3  # equal weights
    offsets = (x - centres[k]).flatten().numpy()  # components far apart: nearest centre = true centre
    assert stats.kstest(offsets / std, "norm").pvalue > 1e-3
    for bad in (dict(radius=0), dict(std=-1.0), dict(std=math.inf)):
        with pytest.raises(ValueError, match="radius|std"):
            fmlib.sample_eight_gaussians(10, **bad)


def test_checkerboard_fills_the_dark_squares_uniformly():
    x = fmlib.sample_checkerboard(64_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert x.min() >= -4 and x.max() <= 4
    cells = torch.floor(x / 2).long()
    assert bool(((cells[:, 0] + cells[:, 1]) % 2 == 0).all())  # dark squares only
    index = (cells[:, 0] + 2) * 4 + (cells[:, 1] + 2)
    counts = torch.bincount(index, minlength=16)
    assert (counts > 0).sum() == 8 and stats.chisquare(counts[counts > 0].numpy()).pvalue > 1e-3
    inside = (x / 2 - cells).flatten().numpy()  # uniform within each square
    assert stats.kstest(inside, "uniform").pvalue > 1e-3


def test_get_dataset_names_every_set():
    assert fmlib.get_dataset("moons") is fmlib.sample_moons
    assert set(fmlib.TOY_DATASETS) == {"annulus", "moons", "eight_gaussians", "checkerboard"}


# --- self-describing model files ---------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_saved_model_reloads_from_its_file_alone(tmp_path, dtype):
    torch.manual_seed(0)
    model = MLPVectorField(2, width=16, depth=2, activation="silu", time_frequencies=3, residual=True).to(dtype)
    file = tmp_path / "model.pt"
    save_model(model, file, path=LinearPath(0.01))
    loaded, path = load_model(file)
    assert loaded.config == model.config and not loaded.training
    assert next(loaded.parameters()).dtype == dtype
    assert isinstance(path, LinearPath) and path.sigma_min == 0.01
    x = torch.randn(7, 2, dtype=dtype)
    assert torch.equal(loaded(0.4, x), model(0.4, x))
    # a plain dict of strings, numbers and tensors: torch's safe loader reads it
    raw = torch.load(file, weights_only=True)
    assert raw["config"] == model.config and raw["path"] == {"class": "LinearPath", "sigma_min": 0.01}
    save_model(model, file, path=VPDiffusionPath(0.2, 10.0))
    path = load_model(file, map_location="cpu").path
    assert isinstance(path, VPDiffusionPath) and (path.beta_min, path.beta_max) == (0.2, 10.0)
    save_model(model, file)
    assert load_model(file).path is None


def test_weights_refuse_a_model_built_otherwise():
    elu = MLPVectorField(2)
    with pytest.raises(ValueError, match=r"activation: the weights' 'elu', this model's 'silu'"):
        MLPVectorField(2, activation="silu").load_state_dict(elu.state_dict())
    with pytest.raises(ValueError, match=r"time_frequencies: the weights' 0, this model's 4"):
        MLPVectorField(2, time_frequencies=4).load_state_dict(elu.state_dict())
    # the same arguments load, also after a round trip through torch.save
    MLPVectorField(2).load_state_dict(elu.state_dict())


def test_bad_model_files(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_model(tmp_path / "missing.pt")
    torch.save(MLPVectorField(2).state_dict(), tmp_path / "bare.pt")
    with pytest.raises(ValueError, match="not written by fmlib.save_model"):
        load_model(tmp_path / "bare.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="could not be read"):
        load_model(tmp_path / "junk.pt")
    with pytest.raises(ValueError, match="model must be an fmlib.MLPVectorField"):
        save_model(torch.nn.Linear(2, 2), tmp_path / "x.pt")
    with pytest.raises(ValueError, match="path must be"):
        save_model(MLPVectorField(2), tmp_path / "x.pt", path="linear")
    for bad in ("", None, 3):
        with pytest.raises(ValueError, match="file must be"):
            save_model(MLPVectorField(2), bad)
    with pytest.raises(ValueError, match="map_location"):
        load_model(tmp_path / "bare.pt", map_location="gpu7")


# --- torch.func and torch.compile --------------------------------------------------------------------------------

def test_vmap_jacrev_jacobian_equals_autograd():
    from torch.func import jacrev, vmap

    torch.manual_seed(0)
    model = MLPVectorField(3, width=16, time_frequencies=2, residual=True).double()
    t, x = torch.rand(6, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    per_point = jacrev(lambda ti, xi: model(ti.reshape(1), xi.reshape(1, 3)).reshape(3), argnums=1)
    jac = vmap(per_point)(t, x)
    expected = torch.stack([torch.autograd.functional.jacobian(
        lambda xi: model(t[i:i + 1], xi.reshape(1, 3)).reshape(3), x[i]) for i in range(6)])
    torch.testing.assert_close(jac, expected, rtol=1e-12, atol=1e-12)
    # its trace is fmlib's exact divergence
    torch.testing.assert_close(jac.diagonal(dim1=1, dim2=2).sum(1), fmlib.divergence(model, t, x),
                               rtol=1e-12, atol=1e-12)


def test_compiled_training_step_gives_the_same_losses():
    """A model compiled whole (fullgraph=True: no graph breaks in its forward or backward) trains in train_cfm as
    the model itself does."""
    torch.manual_seed(0)
    model = MLPVectorField(2, width=32, time_frequencies=2)
    twin = MLPVectorField(2, width=32, time_frequencies=2)
    twin.load_state_dict(model.state_dict())
    kwargs = dict(n_steps=5, batch_size=64, seed=1, progress=False)
    compiled = torch.compile(twin, fullgraph=True)
    eager_losses = train_cfm(model, fmlib.sample_moons, **kwargs)
    compiled_losses = train_cfm(compiled, fmlib.sample_moons, **kwargs)
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-4)
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


# --- small things ------------------------------------------------------------------------------------------------

def test_non_finite_loss_names_the_optimizers_learning_rate():
    model = MLPVectorField(2, width=8, depth=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e9)
    with pytest.raises(ValueError, match=r"the optimizer's lr=1000000000.0"):
        train_cfm(model, fmlib.sample_annulus, n_steps=50, optimizer=optimizer, progress=False)


def test_plotting_is_reachable_from_the_package():
    import fmlib.plotting

    assert fmlib.plotting is fmlib.__getattr__("plotting")
    with pytest.raises(AttributeError):
        fmlib.no_such_thing


# --- from a break-it round ---------------------------------------------------------------------------------------

def test_config_is_a_copy_of_plain_python_values(tmp_path):
    import numpy as np

    model = MLPVectorField(2, width=np.int64(8), depth=2, activation=np.str_("elu"))
    config = model.config
    config["activation"] = "relu"  # changes nothing of the model's
    assert model.config["activation"] == "elu" and type(model.config["activation"]) is str
    save_model(model, tmp_path / "m.pt")
    loaded, _ = load_model(tmp_path / "m.pt")  # numpy values were stored as Python ones: weights_only reads them
    x = torch.randn(3, 2)
    assert torch.equal(loaded(0.3, x), model(0.3, x))


def test_a_state_dict_from_before_the_config_still_loads():
    model = MLPVectorField(2, width=8)
    old = {k: v for k, v in model.state_dict().items() if k != "_extra_state"}
    twin = MLPVectorField(2, width=8)
    twin.load_state_dict(old)
    assert "_extra_state" not in old  # the caller's dict is left as it was
    x = torch.randn(3, 2)
    assert torch.equal(twin(0.5, x), model(0.5, x))
    # functional_call over the parameters, as the class docstring says
    out = torch.func.functional_call(model, dict(model.named_parameters()), (0.5, x))
    assert torch.equal(out, model(0.5, x))


def test_damaged_files_and_bad_targets_are_value_errors(tmp_path):
    model = MLPVectorField(2, width=8)
    file = tmp_path / "m.pt"
    save_model(model, file)
    saved = torch.load(file, weights_only=True)
    for edit in (lambda d: d.pop("config"), lambda d: d.update(config=[1, 2]), lambda d: d.update(state_dict={}),
                 lambda d: d["config"].update(width=16), lambda d: d.update(path={"class": "Foo"})):
        damaged = {k: (dict(v) if isinstance(v, dict) else v) for k, v in saved.items()}
        edit(damaged)
        torch.save(damaged, tmp_path / "bad.pt")
        with pytest.raises(ValueError, match="does not hold a model"):
            load_model(tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="is a directory"):
        save_model(model, tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        save_model(model, tmp_path / "no" / "such" / "folder.pt")
    with pytest.raises(ValueError, match="is a directory"):
        load_model(tmp_path)

    class Sub(MLPVectorField):
        pass

    with pytest.raises(ValueError, match="model must be an fmlib.MLPVectorField"):
        save_model(Sub(2), file)
    path = LinearPath(0.1)
    path.sigma_min = 5.0  # changed after construction
    with pytest.raises(ValueError, match="invalid parameters"):
        save_model(model, file, path=path)
    save_model(torch.compile(model), file)  # the compiled wrapper's model is saved
    assert load_model(file).model.config == model.config


def test_training_data_tensor_is_copied_and_detached():
    data = torch.randn(64, 2, requires_grad=True)
    before = data.detach().clone()
    model = MLPVectorField(2, width=8, depth=1)
    train_cfm(model, data, n_steps=3, batch_size=16, progress=False)
    assert data.grad is None and torch.equal(data.detach(), before)


def test_generator_and_device_must_agree():
    if not torch.cuda.is_available():
        pytest.skip("needs a second device (a CUDA GPU)")
    for sampler in fmlib.TOY_DATASETS.values():
        with pytest.raises(ValueError, match="generator is on"):
            sampler(4, generator=torch.Generator(device="cuda"), device="cpu")


@pytest.mark.parametrize("name, kwargs", [("moons", dict(noise=1e300)), ("eight_gaussians", dict(radius=1e39)),
                                          ("eight_gaussians", dict(std=1e39))])
def test_sample_scales_are_capped(name, kwargs):
    with pytest.raises(ValueError, match="at most 1e30"):
        fmlib.get_dataset(name)(4, **kwargs)


def test_show_figure_cuts_only_grids_of_subplots():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from fmlib.plotting import _panels, show_figure

    fig, axes = plt.subplots(1, 3)
    axes[2].set_title("a title makes this panel taller")
    image = axes[1].imshow(np.eye(3))
    fig.colorbar(image, ax=axes[1])
    groups = _panels(fig)
    assert [g[0] for g in groups] == list(axes) and [len(g) for g in groups] == [1, 2, 1]  # reading order
    for make in (lambda f, a: a[0].twinx(), lambda f, a: f.add_axes([0.1, 0.1, 0.2, 0.2]),
                 lambda f, a: f.colorbar(a[0].imshow(np.eye(2)), ax=list(a)), lambda f, a: f.text(0.5, 0.5, "x")):
        fig, axes = plt.subplots(1, 2)
        make(fig, axes)
        assert _panels(fig) is None  # shown whole
        with pytest.raises(ValueError, match="split=True"):
            show_figure(fig, alt="a figure", split=True)
    for bad in (dict(fig=axes[0]), dict(alt=""), dict(split="yes"), dict(resolution=9)):
        args = dict(fig=plt.figure(), alt="a figure") | bad
        with pytest.raises(ValueError):
            show_figure(args.pop("fig"), **args)
    plt.close("all")
