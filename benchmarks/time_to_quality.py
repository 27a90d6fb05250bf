"""Time to quality on the annulus: the same seconds of training for four recipes, one evaluator.

Which recipe gives the better model for the same minutes of compute? Each recipe trains a vector field on the
annulus of the book (``fmlib.sample_annulus``: x_1 with radius uniform in [2, 3], x_0 ~ N(0, I)) for wall-clock
budgets of 10, 20, 40 and 80 s, and every model is scored by one evaluator:

* held-out NLL by exact likelihood (``fmlib.recipes.evaluate_annulus``: dopri5, exact divergence) and its gap to the
  annulus' entropy (2.7474 nats), with the gap's standard error and its share near the edges;
* the fraction of samples with 2 <= |x| <= 3;
* the sliced 2-Wasserstein distance between samples and fresh data (POT, the same projections for every model),
  with its floor: the same distance between two fresh data samples of the same size.

The recipes, each as its own example file sets it up (network, optimiser, learning rate, batch size, loss):

* ``fmlib``: the book's best setup, ``fmlib.recipes.BEST_ANNULUS_CONFIG``, trained by ``fmlib.recipes.train_annulus``;
  its cosine learning-rate schedule is stretched to the budget: the step count is the budget divided by the step
  time, measured by two short runs of 100 and 600 steps before the first budget and by each run for the next.
* ``flow_matching``: Meta's ``flow_matching`` 2-D example (``examples/2d_flow_matching.ipynb`` in
  facebookresearch/flow_matching): an MLP with 4 hidden layers of 512 Swish (SiLU) units fed (x, t), Adam at a
  constant 1e-3, batch 4096, t ~ U[0, 1], ``AffineProbPath(CondOTScheduler())`` from the library for x_t and its
  target, mean squared error.
* ``torchcfm``: the I-CFM part of torchcfm's 2-D tutorial (``examples/2D_tutorials/Flow_matching_tutorial.ipynb``
  in atong01/conditional-flow-matching): the library's ``torchcfm.models.models.MLP(dim=2, time_varying=True)``
  (3 hidden layers of 64 SELU units) fed (x, t), Adam with torch's default learning rate 1e-3, batch 256, t ~ U[0, 1],
  x_t = t x_1 + (1 - t) x_0 + 0.01 eps and the target x_1 - x_0: the tutorial's I-CFM cell draws these with its own
  helper at sigma = 0.01 (its variable ``sigma = 0.1`` is not used there); here the library's
  ``ConditionalFlowMatcher(sigma=0.01)`` draws them.
* ``blog post``: the setup of the blog post the book grew from: 3 hidden layers of 64 ELU units fed (t, x), Adam at
  a constant 1e-2, batch 256 from a ``DataLoader`` that shuffles 2,560,000 pre-drawn points (one epoch is 10,000
  steps; the loop starts another epoch when one ends), linear path with sigma_min = 0.

The peers' examples learn other data (a checkerboard; moons from eight Gaussians); here every recipe learns the
annulus from N(0, I). The three recipes with a constant learning rate are trained once per seed for the longest
budget, and their weights are copied (the clock paused) when each shorter budget has passed: with a constant
learning rate, the model at 10 s of an 80-s run is the model of a 10-s run. The ``fmlib`` recipe, whose schedule
depends on the budget, trains once per budget. The runs are interleaved: the order of the recipes alternates from
one seed to the next. Wall time counts the training loop only (drawing data included; the blog post's points are
drawn before its loop, as its code does), not building the model or evaluating it.

Run from the repository root, with the peers installed (``pip install --no-deps -r benchmarks/requirements.txt``):

    python benchmarks/time_to_quality.py                    # seeds 0 1 2, about 30 minutes on 2 CPU cores
    python benchmarks/time_to_quality.py --seeds 0 --budgets 10 --n-points 1000    # a smoke test

It prints a table of medians and writes every run to ``benchmarks/time_to_quality.json``, which the appendix page
"Benchmarks" shows. On a machine with a CUDA GPU, ``--device cuda`` trains and evaluates there.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import fmlib
from fmlib import recipes
from fmlib.data import sample_annulus

HERE = Path(__file__).resolve().parent
OUTPUT = HERE / "time_to_quality.json"
RECIPES = ("fmlib", "flow_matching", "torchcfm", "blog post")
SOURCES = {
    "fmlib": "fmlib/recipes.py (BEST_ANNULUS_CONFIG)",
    "flow_matching": "facebookresearch/flow_matching, examples/2d_flow_matching.ipynb",
    "torchcfm": "atong01/conditional-flow-matching, examples/2D_tutorials/Flow_matching_tutorial.ipynb (I-CFM)",
    "blog post": "the blog post's training code (book chapter 'Training a flow on an annulus')",
}


# --- the peers' networks, behind the book's calling convention v(t, x) -------------------------------------------

class TimeAsInput(nn.Module):
    """A network that takes the time as one more input column, called as ``v(t, x)`` (t a scalar or shape (n, 1) or
    (n,)): the evaluator's convention. ``time_first`` puts t before x in the input, as the blog post does."""

    def __init__(self, net: nn.Module, time_first: bool):
        super().__init__()
        self.net, self.time_first, self.dim = net, time_first, 2

    def forward(self, t, x):
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(-1, 1).expand(x.shape[0], 1)
        return self.net(torch.cat([t, x] if self.time_first else [x, t], dim=1))


def flow_matching_network(hidden: int = 512) -> TimeAsInput:
    """The network of flow_matching's 2-D example: (x, t) -> 4 hidden layers of ``hidden`` Swish units -> 2."""
    layers, width = [], 3
    for _ in range(4):
        layers += [nn.Linear(width, hidden), nn.SiLU()]
        width = hidden
    return TimeAsInput(nn.Sequential(*layers, nn.Linear(hidden, 2)), time_first=False)


def torchcfm_network() -> TimeAsInput:
    from torchcfm.models.models import MLP

    return TimeAsInput(MLP(dim=2, time_varying=True), time_first=False)  # its forward takes cat([x, t])


def blog_network() -> TimeAsInput:
    """The blog post's FlowNet: (t, x) -> 3 hidden layers of 64 ELU units -> 2."""
    layers, width = [], 3
    for _ in range(3):
        layers += [nn.Linear(width, 64), nn.ELU()]
        width = 64
    return TimeAsInput(nn.Sequential(*layers, nn.Linear(64, 2)), time_first=True)


# --- training to a wall-clock budget -----------------------------------------------------------------------------

def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_with_snapshots(model, step, budgets, device):
    """Call ``step()`` until the largest budget (seconds) has passed; when each budget passes, copy the weights
    (with the clock paused). Returns a list of dicts (budget, seconds, steps, state)."""
    snapshots, pending = [], sorted(budgets)
    elapsed, steps = 0.0, 0
    _sync(device)
    t0 = time.perf_counter()
    while pending:
        step()
        steps += 1
        # the clock is read after every step on a CPU (a step of the largest network takes 0.3 s there) and after
        # every 10th on a GPU, where reading it means waiting for the GPU, which fmlib's loop rarely does
        if device.type == "cuda" and steps % 10:
            continue
        _sync(device)
        now = time.perf_counter()
        if elapsed + now - t0 >= pending[0]:
            elapsed += now - t0
            snapshots.append({"budget": pending.pop(0), "seconds": elapsed, "steps": steps,
                              "state": copy.deepcopy(model.state_dict())})
            _sync(device)
            t0 = time.perf_counter()
    return snapshots


def run_flow_matching(seed, budgets, device):
    from flow_matching.path import AffineProbPath
    from flow_matching.path.scheduler import CondOTScheduler

    torch.manual_seed(seed)
    model = flow_matching_network().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    path = AffineProbPath(scheduler=CondOTScheduler())

    def step():
        x_1 = sample_annulus(4096, device=device)
        x_0 = torch.randn_like(x_1)
        t = torch.rand(x_1.shape[0], device=device)
        s = path.sample(t=t, x_0=x_0, x_1=x_1)
        loss = (model.net(torch.cat([s.x_t, s.t[:, None]], dim=1)) - s.dx_t).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return model, train_with_snapshots(model, step, budgets, device)


def run_torchcfm(seed, budgets, device):
    from torchcfm.conditional_flow_matching import ConditionalFlowMatcher

    torch.manual_seed(seed)
    model = torchcfm_network().to(device)
    optimizer = torch.optim.Adam(model.parameters())
    matcher = ConditionalFlowMatcher(sigma=0.01)  # the tutorial's x_t: t x_1 + (1 - t) x_0 + 0.01 eps

    def step():
        x_1 = sample_annulus(256, device=device)
        x_0 = torch.randn_like(x_1)
        t, x_t, u_t = matcher.sample_location_and_conditional_flow(x_0, x_1)
        loss = (model.net(torch.cat([x_t, t[:, None]], dim=1)) - u_t).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return model, train_with_snapshots(model, step, budgets, device)


def run_blog(seed, budgets, device):
    torch.manual_seed(seed)
    model = blog_network().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    data = sample_annulus(256 * 10_000)
    loader = torch.utils.data.DataLoader(_Points(data), batch_size=256, shuffle=True)
    batches = iter(loader)

    def step():
        nonlocal batches
        try:
            x_1 = next(batches)
        except StopIteration:  # the next epoch
            batches = iter(loader)
            x_1 = next(batches)
        x_1 = x_1.to(device)
        t = torch.rand(x_1.shape[0], 1, device=device)
        x_0 = torch.randn(x_1.shape[0], 2, device=device)
        x_t = (1 - t) * x_0 + t * x_1
        loss = (model(t, x_t) - (x_1 - x_0)).pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    return model, train_with_snapshots(model, step, budgets, device)


class _Points(torch.utils.data.Dataset):
    """Pre-drawn points served one at a time, as the blog post's AnnulusDataset does."""

    def __init__(self, data):
        self.data = data

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        return self.data[i]


def run_fmlib(seed, budgets, device, config=None):
    """The book's best setup with its step count fitted to each budget: one training per budget."""
    config = dict(recipes.BEST_ANNULUS_CONFIG if config is None else config)
    # the step time and the fixed cost of a run (the first steps are slower), measured now by two short runs
    short, long = (recipes.train_annulus(dict(config, n_steps=n), seed=seed, device=device).seconds
                   for n in (100, 600))
    step_seconds = (long - short) / 500
    overhead = max(0.0, short - 100 * step_seconds)
    out = []
    for budget in sorted(budgets):
        n_steps = max(10, int((budget - overhead) / step_seconds))
        run = recipes.train_annulus(dict(config, n_steps=n_steps), seed=seed, device=device)
        out.append({"budget": budget, "seconds": run.seconds, "steps": n_steps, "model": run.model})
        step_seconds, overhead = run.seconds / n_steps, 0.0  # the next, longer run: this run's pace
    return out


# --- the evaluator -----------------------------------------------------------------------------------------------

def sliced_w2(x, y, n_projections=500, seed=0):
    import ot

    return float(ot.sliced_wasserstein_distance(x.double().cpu().numpy(), y.double().cpu().numpy(),
                                                n_projections=n_projections, p=2, seed=seed))


def evaluate(model, n_points, reference):
    """fmlib.recipes.evaluate_annulus (NLL, gap, inside) and the sliced W2 of dopri5 samples against ``reference``."""
    model = model.eval()
    scores = recipes.evaluate_annulus(model, n_points)
    param = next(model.parameters())
    x_0 = torch.randn(n_points, 2, generator=torch.Generator().manual_seed(11)).to(param.device)
    x = fmlib.solve(model, x_0, method="dopri5", rtol=1e-5, atol=1e-5)
    scores["sliced_w2"] = sliced_w2(x, reference)
    return scores


# --- main --------------------------------------------------------------------------------------------------------

def summarise(runs, budgets):
    """Median, min and max over seeds of each score, per recipe and budget."""
    table = {}
    for recipe in RECIPES:
        for budget in budgets:
            rows = [r for r in runs if r["recipe"] == recipe and r["budget"] == budget]
            if not rows:
                continue
            table[f"{recipe} @ {budget} s"] = {
                k: {"median": statistics.median(r[k] for r in rows), "min": min(r[k] for r in rows),
                    "max": max(r[k] for r in rows)}
                for k in ("seconds", "steps", "gap", "gap_se", "edge", "inside", "sliced_w2")} | {"n": len(rows)}
    return table


def format_table(res) -> str:
    lines = [f"Time to quality on the annulus, {res['machine']['cpu']} ({res['machine']['cores']} cores, "
             f"{res['machine']['torch_threads']} torch threads), device {res['device']}, {res['date']}",
             f"medians over seeds {res['seeds']} (min-max); gap = NLL - entropy ({res['entropy']:.4f} nats), "
             f"{res['n_points']} held-out points; sliced W2 floor {res['sliced_w2_floor']:.4f}",
             f"{'recipe @ budget':24s} {'seconds':>8s} {'steps':>7s} {'gap (nats)':>22s} {'inside':>7s} "
             f"{'sliced W2':>10s}"]
    for name, row in res["summary"].items():
        g = row["gap"]
        lines.append(f"{name:24s} {row['seconds']['median']:8.1f} {row['steps']['median']:7.0f} "
                     f"{g['median']:8.4f} ({g['min']:.4f}-{g['max']:.4f}) {row['inside']['median']:7.4f} "
                     f"{row['sliced_w2']['median']:10.4f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--budgets", nargs="+", type=float, default=[10, 20, 40, 80])
    parser.add_argument("--recipes", nargs="+", choices=RECIPES, default=list(RECIPES))
    parser.add_argument("--n-points", type=int, default=4000, help="held-out points per score (default 4000)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    from run import cpu_model  # benchmarks/run.py, next to this script

    device = torch.device(args.device)
    budgets = sorted(args.budgets)
    gen = torch.Generator().manual_seed(123)
    reference = sample_annulus(args.n_points, generator=gen)
    floor = sliced_w2(sample_annulus(args.n_points, generator=gen), reference)
    res = {"date": datetime.date.today().isoformat(), "device": str(device), "seeds": args.seeds,
           "budgets": budgets, "n_points": args.n_points, "entropy": fmlib.annulus_entropy(),
           "sliced_w2_floor": floor, "sources": SOURCES, "best_config": recipes.BEST_ANNULUS_CONFIG,
           "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
                       "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
                       "cuda": torch.cuda.get_device_name(0) if device.type == "cuda" else None},
           "command": " ".join(["python benchmarks/time_to_quality.py", *(argv if argv is not None else sys.argv[1:])]),
           "runs": []}
    peers = {"flow_matching": run_flow_matching, "torchcfm": run_torchcfm, "blog post": run_blog}
    t_start = time.perf_counter()
    for i, seed in enumerate(args.seeds):
        order = args.recipes if i % 2 == 0 else args.recipes[::-1]
        for recipe in order:
            if recipe == "fmlib":
                trained = run_fmlib(seed, budgets, device)
            else:
                model, snapshots = peers[recipe](seed, budgets, device)
                trained = []
                for snap in snapshots:
                    m = copy.deepcopy(model)
                    m.load_state_dict(snap.pop("state"))
                    trained.append(dict(snap, model=m))
            for run in trained:
                scores = evaluate(run.pop("model"), args.n_points, reference)
                row = {"recipe": recipe, "seed": seed, **run, **scores}
                res["runs"].append(row)
                print(f"{recipe:>13s} seed {seed} budget {run['budget']:4.0f} s: {run['seconds']:5.1f} s, "
                      f"{run['steps']:6d} steps, gap {scores['gap']:.4f} +- {scores['gap_se']:.4f}, inside "
                      f"{scores['inside']:.4f}, SW2 {scores['sliced_w2']:.4f}", flush=True)
            args.output.write_text(json.dumps(res, indent=1) + "\n")  # after every recipe: nothing is lost
    res["summary"] = summarise(res["runs"], budgets)
    res["total_seconds"] = time.perf_counter() - t_start
    res["table"] = format_table(res)
    print(res["table"])
    args.output.write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
