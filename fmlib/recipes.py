r"""Training recipes for the annulus, in one place for the chapters and the benchmarks (book chapter "Sampling and
likelihood").

* :data:`SEED_ANNULUS_CONFIG` -- the setup of the blog post the book grew from (chapter "Training a flow on an
  annulus"): 3 x 64 ELU units, Adam with a constant learning rate 1e-2, batch 256, 10,000 steps, sigma_min = 0.
* :data:`BEST_ANNULUS_CONFIG` -- the book's best setup for a budget of under a minute of training on two CPU cores:
  5 x 48 SiLU units with residual layers and sinusoidal time features, t ~ Beta(1, 1/2), quasi-random batches,
  Adam 1e-2 (beta_2 = 0.99) with cosine decay, batch 1024, 7,500 steps, sigma_min = 0; measured in chapter
  "Sampling and likelihood" against the entropy floor of the annulus (found by ``benchmarks/annulus_search.py``).

:func:`train_annulus` trains either (or any dict of the same keys) and can cache the trained weights in a directory,
keyed by a hash of the configuration, the seed, the device type and the torch version; :func:`train_annulus_many`
trains several configs side by side on a multi-core CPU (in this process and in worker processes).
:func:`evaluate_annulus` scores a trained field: held-out NLL and its gap to the entropy floor, and the fraction of
samples inside.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import multiprocessing
import numbers
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import NamedTuple

import torch

from ._checks import (check_bool, check_choice, check_device, check_int_in, check_positive_int, check_positive_real,
                      check_seed, check_sigma_min)
from .data import annulus_log_prob, sample_annulus
from .networks import ACTIVATIONS, MAX_TIME_FREQUENCIES, MLPVectorField
from .ode import log_likelihood
from .paths import LinearPath
from .sampler import solve
from .training import _default_adam, train_cfm

__all__ = ["SEED_ANNULUS_CONFIG", "BEST_ANNULUS_CONFIG", "TrainedModel", "build_model", "train_annulus",
           "train_annulus_many", "default_cache_dir", "evaluate_annulus"]

SEED_ANNULUS_CONFIG = {
    "width": 64, "depth": 3, "activation": "elu",   # MLPVectorField(2, width, depth, activation,
    "time_frequencies": 0, "residual": False,       #               time_frequencies=..., residual=...)
    "batch_size": 256, "n_steps": 10_000,           # train_cfm
    "lr": 1e-2, "schedule": "constant",             # Adam; "constant" or "cosine" (decay to 0 over n_steps)
    "adam_beta2": 0.999,                            # Adam's beta_2, a number in (0, 1) (0.999 is torch's default)
    "sigma_min": 0.0,                               # LinearPath(sigma_min)
    "time_beta": 1.0,                               # train_cfm: t ~ Beta(1, time_beta); 1.0 is U[0, 1]
    "quasi_random": False,                          # train_cfm: quasi-random batches (data_uniforms=2) or not
}

BEST_ANNULUS_CONFIG = {
    "width": 48, "depth": 5, "activation": "silu",
    "time_frequencies": 4, "residual": True,        # time features sin/cos(k pi t), k = 1..4; residual layers
    "batch_size": 1024, "n_steps": 7_500,
    "lr": 1e-2, "schedule": "cosine",
    "adam_beta2": 0.99,                             # a shorter memory of squared gradients than the default 0.999
    "sigma_min": 0.0,
    "time_beta": 0.5,                               # t ~ Beta(1, 1/2), density 1 / (2 sqrt(1 - t))
    "quasi_random": True,                           # (t, x_0, x_1) of each batch from a scrambled Sobol sequence
}

_KEYS = set(SEED_ANNULUS_CONFIG)
SCHEDULES = ("constant", "cosine")


class TrainedModel(NamedTuple):
    """Result of :func:`train_annulus`.

    Attributes:
        model: the trained ``MLPVectorField`` in eval mode, on the training device.
        losses: the CFM loss at every step (a list of floats).
        seconds: wall-clock seconds the training took (when it was trained, also if it was then cached).
        from_cache: True if the weights were loaded from the cache instead of trained now.
    """
    model: MLPVectorField
    losses: list
    seconds: float
    from_cache: bool


def _check_config(config) -> dict:
    if not isinstance(config, dict):
        raise ValueError(f"config must be a dict with the keys {sorted(_KEYS)}, got {type(config).__name__}")
    if set(config) != _KEYS:
        missing, extra = sorted(_KEYS - set(config)), sorted(set(config) - _KEYS, key=str)
        raise ValueError(f"config must be a dict with the keys {sorted(_KEYS)}; missing: {missing}, unknown: {extra} "
                         f"(start from a copy of SEED_ANNULUS_CONFIG or BEST_ANNULUS_CONFIG)")
    config = dict(config)  # the caller's dict is never modified
    for key in ("width", "depth", "batch_size", "n_steps"):
        config[key] = check_positive_int(f"config['{key}']", config[key])  # plain int (numpy ints too)
    config["lr"] = check_positive_real("config['lr']", config["lr"])     # plain float
    config["time_frequencies"] = check_int_in("config['time_frequencies']", config["time_frequencies"], 0,
                                              MAX_TIME_FREQUENCIES)
    config["residual"] = check_bool("config['residual']", config["residual"])
    config["quasi_random"] = check_bool("config['quasi_random']", config["quasi_random"])
    config["sigma_min"] = check_sigma_min(config["sigma_min"], "config['sigma_min']")
    config["time_beta"] = check_positive_real("config['time_beta']", config["time_beta"])
    beta2 = config["adam_beta2"]
    if isinstance(beta2, bool) or not isinstance(beta2, numbers.Real) or not 0 < beta2 < 1:
        raise ValueError(f"config['adam_beta2'] must be a number in (0, 1), e.g. 0.999, got {beta2!r}")
    config["adam_beta2"] = float(beta2)
    check_choice("config['schedule']", config["schedule"], SCHEDULES)
    check_choice("config['activation']", config["activation"], ACTIVATIONS)
    return config


def build_model(config: dict) -> MLPVectorField:
    """The untrained ``MLPVectorField(2, width, depth, activation)`` of a config (weights from torch's global seed).

    Raises:
        ValueError: for a config with missing/extra keys or bad values.
    """
    config = _check_config(config)
    return MLPVectorField(2, width=config["width"], depth=config["depth"], activation=config["activation"],
                          time_frequencies=config["time_frequencies"], residual=config["residual"])


def default_cache_dir() -> Path:
    """Where the chapters keep trained weights: ``$FMBOOK_CACHE`` if set and not empty (``~`` expanded); else, inside
    the book's repository (a directory holding ``_config.yml`` and ``_toc.yml``: the working directory or its parent,
    as when a chapter runs in ``book/``), its build folder ``<repository>/_build/fmbook-cache``, which git ignores and
    ``jupyter-book clean --all`` removes; anywhere else ``<system temp dir>/fmbook-cache``."""
    if os.environ.get("FMBOOK_CACHE"):  # set and not empty
        return Path(os.environ["FMBOOK_CACHE"]).expanduser()
    here = Path.cwd()
    for root in (here, here.parent):
        if (root / "_config.yml").is_file() and (root / "_toc.yml").is_file():
            return root / "_build" / "fmbook-cache"
    return Path(tempfile.gettempdir()) / "fmbook-cache"


def _cache_file(directory: Path, config, seed, device) -> Path:
    """The file in the cache ``directory`` for this config, seed and device."""
    return directory / f"annulus-{_cache_key(config, seed, device)}.pt"


def _cache_key(config, seed, device) -> str:
    key = {"config": config, "seed": seed, "device": device.type, "torch": torch.__version__, "recipe": 3}
    if torch.get_default_dtype() != torch.float32:  # the model's dtype (float32 keys stay as they were)
        key["dtype"] = str(torch.get_default_dtype())
    blob = json.dumps(key, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _cache_dir(cache_dir) -> Path:
    """The cache directory as a Path (``~`` expanded), created now so that a bad one fails before training."""
    if isinstance(cache_dir, bool) or not isinstance(cache_dir, (str, os.PathLike)) or str(cache_dir) == "":
        raise ValueError(f"cache_dir must be a non-empty str or path (or None: no cache), got {cache_dir!r}")
    directory = Path(cache_dir).expanduser()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"cache_dir {str(directory)!r} is not a directory that can be created: {err}") from err
    if not os.access(directory, os.W_OK):
        raise ValueError(f"cache_dir {str(directory)!r} is not writable; pass another directory or None")
    return directory


def _load_cached(path: Path, config: dict, seed: int, device: torch.device) -> TrainedModel:
    """The model stored in ``path`` by :func:`train_annulus`, after checking that it is the model of ``config``."""
    fix = f"delete {str(path)!r} to train the model again"
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        if not isinstance(state, dict) or state.get("config") != config:
            raise ValueError(f"it holds {'another configuration' if isinstance(state, dict) else 'no model'}")
        losses, seconds = state["losses"], state["seconds"]
        if not (isinstance(losses, list) and len(losses) == config["n_steps"] and isinstance(seconds, float)):
            raise ValueError("its losses or training time are not those of a training run")
        model = _model_with(config, seed, device, state["model"])
    except Exception as err:  # unreadable, truncated, written by something else: never use it silently
        raise ValueError(f"the cache file {str(path)!r} is not a trained model of this config ({err}); {fix}") from err
    return TrainedModel(model, list(losses), seconds, True)


def train_annulus(config: dict = BEST_ANNULUS_CONFIG, *, seed: int = 0, device=None, cache_dir=None,
                  progress: bool = False) -> TrainedModel:
    r"""Train a vector field on the annulus with the CFM loss (book eq. ``eq-cfm-loss``; Lipman et al. 2023, eq. 9)
    and the linear path (book eq. ``eq-linear-path``; paper eq. 20) as ``config`` says.

    The model's initial weights are drawn after ``torch.manual_seed(seed)``, and ``seed`` also seeds the generator
    of data, times and noise in :func:`fmlib.train_cfm`. The optimizer is Adam with betas (0.9, ``adam_beta2``),
    fused where available as in ``train_cfm`` (so :data:`SEED_ANNULUS_CONFIG`, with torch's default betas,
    reproduces the annulus chapter exactly); with ``schedule="cosine"`` its learning rate decays from ``lr`` to 0
    along a half cosine over ``n_steps``, with ``"constant"`` it stays at ``lr``. With ``quasi_random=True`` the
    batches' times, noise and data come from a scrambled Sobol sequence seeded with ``seed`` (``train_cfm`` with
    ``data_uniforms=2``).

    Args:
        config: a dict with the keys of :data:`SEED_ANNULUS_CONFIG` (default :data:`BEST_ANNULUS_CONFIG`).
        seed: a non-negative int.
        device: where to train: "cpu" (default), "cuda", ... (a device this machine has).
        cache_dir: a directory in which to look for / store the trained weights (a file named by a hash of
            config, seed, device type, torch version and, if not float32, torch's default dtype); created if
            missing, ``~`` expanded; None: always train, store nothing.
        progress: show a progress bar (a bool).

    Returns:
        :class:`TrainedModel` ``(model, losses, seconds, from_cache)``.

    Raises:
        ValueError: for a bad config, seed, device or progress; a cache_dir that is not a non-empty path or cannot
            be created or written (checked before training); a cache file of the right name that does not hold a
            trained model of this config (it is never used or overwritten silently: delete it to train again).
    """
    config = _check_config(config)
    seed = check_seed("seed", seed)
    device = check_device("device", "cpu" if device is None else device)
    progress = check_bool("progress", progress)
    path = None
    if cache_dir is not None:
        path = _cache_file(_cache_dir(cache_dir), config, seed, device)
        if path.exists():
            return _load_cached(path, config, seed, device)
    torch.manual_seed(seed)
    model = build_model(config).to(device)
    optimizer, scheduler = _default_adam(model, config["lr"], betas=(0.9, config["adam_beta2"])), None
    if config["schedule"] == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config["n_steps"], eta_min=0.0)
    t0 = time.perf_counter()
    # the data in the weights' dtype, torch's default (float32 unless the caller changed it)
    data = functools.partial(sample_annulus, dtype=next(model.parameters()).dtype)
    losses = train_cfm(model, data, path=LinearPath(config["sigma_min"]), n_steps=config["n_steps"],
                       batch_size=config["batch_size"], lr=config["lr"], seed=seed, device=device,
                       optimizer=optimizer, scheduler=scheduler, progress=progress, desc="annulus",
                       time_beta=config["time_beta"], data_uniforms=2 if config["quasi_random"] else None)
    seconds = time.perf_counter() - t0
    if path is not None:
        tmp = path.with_suffix(f".tmp{os.getpid()}-{threading.get_ident()}")  # one per writer
        torch.save({"model": model.state_dict(), "losses": losses, "seconds": seconds, "config": config}, tmp)
        os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
    return TrainedModel(model.eval(), losses, seconds, False)


def train_annulus_many(configs, *, seed: int = 0, device=None, cache_dir=None, processes=None) -> list:
    r"""Train several configs as :func:`train_annulus` does, side by side on a CPU: the same models, sooner.

    A training step of these small networks is a chain of short operations; a second CPU core barely speeds it up
    (the book's benchmarks measure this: appendix "Benchmarks", Table 3). So on a CPU the configs that are not in
    the cache are shared out among up to ``processes`` trainers that run at once: this process and worker processes,
    each with an equal part of this process's torch threads (``torch.get_num_threads()`` divided among them, at
    least one each). The results are identical to calling :func:`train_annulus` for each config in turn: same
    weights, same losses (tested); ``seconds`` is each training's own wall-clock time. Put the longest training
    first: this process starts on it at once, while a worker first spends a few seconds starting Python and
    importing torch (which also makes side by side slower for trainings of a few seconds).

    Worker processes are started with "spawn", which imports the calling script: in a script, call this under
    ``if __name__ == "__main__":`` (notebooks need nothing). While it runs, torch's thread count, which is the
    same for the whole process, is lowered; calls from several threads run one after the other. Like
    :func:`train_annulus` it seeds torch's global generator, whose state afterwards may differ from the one that
    the one-by-one calls leave.

    Args:
        configs: a non-empty list or tuple of config dicts (see :func:`train_annulus`).
        seed, device, cache_dir: as in :func:`train_annulus`, the same for every config. On a GPU ("cuda", "mps")
            the configs are trained one after the other in this process.
        processes: how many trainings run at once, this process included: a positive int; None: the number of
            CPU cores this process may use; 1 trains one config after the other in this process.

    Returns:
        a list of :class:`TrainedModel`, one per config, in the order of ``configs``; the models are on ``device``.

    Raises:
        ValueError: for configs that is not a non-empty list or tuple, a bad config, seed, device, cache_dir or
            processes (all checked before any training starts), and for anything :func:`train_annulus` raises
            while training; a message about one config starts with its index, ``configs[i]:``. A failure in this
            process stops the workers at once; a failure in a worker is raised when this process's own trainings
            are done.
        RuntimeError: if a worker process ends without a result (e.g. it could not import the calling script).
    """
    if not isinstance(configs, (list, tuple)) or not configs:
        raise ValueError(f"configs must be a non-empty list or tuple of config dicts (e.g. [SEED_ANNULUS_CONFIG, "
                         f"BEST_ANNULUS_CONFIG]), got {configs!r}")
    checked = []
    for i, config in enumerate(configs):
        try:
            checked.append(_check_config(config))
        except ValueError as err:
            raise ValueError(f"configs[{i}]: {err}") from None
    seed = check_seed("seed", seed)
    device = check_device("device", "cpu" if device is None else device)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    processes = check_positive_int("processes", cores if processes is None else processes)
    if cache_dir is not None:
        cache_dir = _cache_dir(cache_dir)

    def train(i):  # one config in this process; errors name the config
        try:
            return train_annulus(checked[i], seed=seed, device=device, cache_dir=cache_dir)
        except ValueError as err:
            raise ValueError(f"configs[{i}]: {err}") from err

    results = [None] * len(checked)
    to_train = []
    for i, config in enumerate(checked):
        if cache_dir is not None and _cache_file(cache_dir, config, seed, device).exists():
            results[i] = train(i)  # loads it
        else:
            to_train.append(i)
    trainers = min(processes, len(to_train))
    if device.type != "cpu" or trainers <= 1:
        return [run if run is not None else train(i) for i, run in enumerate(results)]

    shares = [to_train[k::trainers] for k in range(trainers)]  # shares[0] trains here, the others in workers
    with _SIDE_BY_SIDE:
        threads = max(1, torch.get_num_threads() // trainers)
        context, workers = multiprocessing.get_context("spawn"), []
        try:
            for share in shares[1:]:
                receiver, sender = context.Pipe(duplex=False)
                jobs = [(i, checked[i]) for i in share]
                worker = context.Process(target=_worker, daemon=True, args=(jobs, seed, cache_dir, threads,
                                                                             torch.get_default_dtype(), sender))
                worker.start()
                sender.close()  # the worker holds the sending end now: its exit ends the pipe
                workers.append((worker, receiver, share))
            saved = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                for i in shares[0]:
                    results[i] = train(i)
            finally:
                torch.set_num_threads(saved)
            for worker, receiver, share in workers:
                for _ in share:
                    i, run = _receive(receiver, checked, seed)
                    results[i] = run
        finally:  # normally they have finished; after an error they are stopped here
            for worker, receiver, _ in workers:
                worker.terminate()
                worker.join()
                receiver.close()
    return results


_SIDE_BY_SIDE = threading.Lock()  # torch's thread count is process-wide: one train_annulus_many at a time


def _worker(jobs, seed, cache_dir, threads, dtype, sender):
    """A worker process of :func:`train_annulus_many`: trains ``jobs``, a list of (index, config), on the CPU."""
    torch.set_num_threads(threads)
    torch.set_default_dtype(dtype)  # as in the calling process (a fresh interpreter starts with float32)
    for i, config in jobs:
        try:
            run = train_annulus(config, seed=seed, device="cpu", cache_dir=cache_dir)
        except Exception as err:  # sent as text: any exception can be, and the caller raises it with the index
            sender.send(("error", i, type(err).__name__, str(err)))
            return
        weights = io.BytesIO()
        torch.save(run.model.state_dict(), weights)  # bytes, not tensors: torch would pass those as shared memory
        sender.send(("done", i, weights.getvalue(), run.losses, run.seconds))


def _receive(receiver, checked, seed):
    """The next (index, TrainedModel) a worker of :func:`train_annulus_many` sends; its error, raised here."""
    try:
        message = receiver.recv()
    except EOFError:
        raise RuntimeError("a worker process of train_annulus_many ended without a result; in a script, call it "
                           "under if __name__ == '__main__': (workers start with 'spawn' and import the script), "
                           "or pass processes=1 to train in this process") from None
    if message[0] == "error":
        _, i, kind, text = message
        if kind == "ValueError":  # as train_annulus raised it
            raise ValueError(f"configs[{i}]: {text}")
        raise RuntimeError(f"configs[{i}]: training failed in a worker process with {kind}: {text}")
    _, i, weights, losses, seconds = message
    state = torch.load(io.BytesIO(weights), weights_only=True)
    return i, TrainedModel(_model_with(checked[i], seed, torch.device("cpu"), state), losses, seconds, False)


def _model_with(config, seed, device, state):
    """The model of ``config`` with the weights ``state``, built as :func:`train_annulus` builds it."""
    torch.manual_seed(seed)
    model = build_model(config).to(device)
    model.load_state_dict(state)
    return model.eval()


def evaluate_annulus(model, n_points: int = 4000, *, seed: int = 4, rtol: float = 1e-5, atol: float = 1e-5) -> dict:
    r"""Held-out scores of a vector field trained on the annulus, against its exact density (book chapter
    "Sampling and likelihood", eqs. ``eq-nll-floor`` and ``eq-annulus-entropy``).

    Draws ``n_points`` fresh annulus points x_1 and as many noise points x_0 from one generator seeded with
    ``seed``. The log-likelihoods log p(x_1) come from :func:`fmlib.ode.log_likelihood` (``dopri5``, exact
    divergence); the samples from :func:`fmlib.sampler.solve` (``dopri5``) from x_0. Needs torchdiffeq (``fmlib[ode]``).

    Args:
        model: the vector field ``v(t, x)``, an ``nn.Module`` with parameters (its device and dtype are used).
        n_points: an int >= 2 (standard errors need two points).
        seed: a non-negative int.
        rtol, atol: tolerances of ``dopri5``.

    Returns:
        a dict of floats with the keys ``nll`` (nats; mean of -log p(x_1)) and ``nll_se`` (its standard error); ``gap`` (the
        estimate of KL(q || p) = NLL - H(q) as the mean of log q(x_1) - log p(x_1)) and ``gap_se``; ``edge`` and
        ``interior`` (the contributions to ``gap`` of the points within 0.1 of either edge, 20 % of q's mass, and
        of the others; they add up to ``gap``); ``inside`` (the fraction of model samples with ``2 <= |x| <= 3``).

    Raises:
        ValueError: for a bad n_points or seed, a model without parameters, with ``dim`` other than 2, or in a
            dtype other than float32/float64.
    """
    n_points = check_positive_int("n_points", n_points)
    if n_points < 2:
        raise ValueError(f"n_points must be an int >= 2 (standard errors need two points), got {n_points}")
    seed = check_seed("seed", seed)
    param = next(model.parameters(), None) if isinstance(model, torch.nn.Module) else None
    if param is None:
        raise ValueError(f"model must be an nn.Module with parameters, got {type(model).__name__}")
    if getattr(model, "dim", 2) != 2:
        raise ValueError(f"model must be a vector field on R^2 (the annulus), got one with dim = {model.dim!r}")
    if param.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"model must be float32 or float64 for the ODE solves, got {param.dtype}; "
                         f"evaluate a copy in float32 (copy.deepcopy(model).float())")
    gen = torch.Generator().manual_seed(seed)
    held_out = sample_annulus(n_points, generator=gen)
    x_0 = torch.randn(n_points, 2, generator=gen)
    held_out, x_0 = (z.to(param.device, param.dtype) for z in (held_out, x_0))
    lp = log_likelihood(model, held_out, "dopri5", rtol=rtol, atol=atol).double().cpu()  # needs torchdiffeq
    held_out = held_out.double().cpu()
    kl = annulus_log_prob(held_out) - lp
    edge = (held_out.norm(dim=1) - 2.5).abs() > 0.4  # within 0.1 of r = 2 or r = 3
    r = solve(model, x_0, method="dopri5", rtol=rtol, atol=atol).double().norm(dim=1).cpu()
    root_n = n_points ** 0.5
    return {"nll": -lp.mean().item(), "nll_se": lp.std().item() / root_n,
            "gap": kl.mean().item(), "gap_se": kl.std().item() / root_n,
            "edge": (kl[edge].sum() / n_points).item(), "interior": (kl[~edge].sum() / n_points).item(),
            "inside": ((r >= 2) & (r <= 3)).double().mean().item()}
