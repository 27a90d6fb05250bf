"""fmbook's benchmarks: fmlib against the seed's code and against peer libraries, side by side.

Run from the repository root:

    python benchmarks/run.py            # everything (about 10 minutes on 2 CPU cores)
    python benchmarks/run.py --quick    # fewer repetitions and steps, for a smoke test

Each comparison runs both sides in this one process, interleaved (A, B, A, B, ...; the order alternates between
repetitions), so that machine noise hits both sides alike; ratios are reported as median with min and max over the
repetitions. The results are printed as a table and written to ``benchmarks/results.json``, which the book's
appendix "Benchmarks" shows. When a CUDA GPU is present, the training and sampler benchmarks also run there.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

import fmlib
from fmlib import MLPVectorField, sample_annulus

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results.json"
CHAPTER_BUDGET = 120  # seconds a chapter may take cold on 2 CPU cores
PARTS = ("overhead", "compile", "training", "sampler", "quality", "book", "pytest")


# --- helpers -----------------------------------------------------------------------------------------------------

def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device="cpu"):
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - t0, out


def spread(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def interleaved(fns: dict, reps: int, device="cpu"):
    """Time each function ``reps`` times, alternating the order every repetition. Returns name -> list of seconds."""
    names = list(fns)
    times = {k: [] for k in names}
    for r in range(reps):
        for k in (names if r % 2 == 0 else names[::-1]):
            times[k].append(timed(fns[k], device)[0])
    return times


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# --- 0. fmlib's overhead over the bare network ----------------------------------------------------------------

def bench_overhead(blocks, device, calls_per_block=10, batch=1024):
    """The book's best annulus network called as fmlib.MLPVectorField(t, x) against the same layers called bare
    (the time features and the nn.Sequential, no argument handling): a forward pass and a training step (forward,
    backward, Adam). The two sides alternate in short blocks of ``calls_per_block`` calls (A, B, B, A, ...), many
    blocks, so that the machine's noise, which is larger than the overhead itself on a shared CPU, hits both sides
    alike; the overhead is the median over the blocks of fmlib's time / bare time - 1, with its quartiles."""
    from fmlib import recipes

    fmlib.seed_everything(0)
    model = recipes.build_model(recipes.BEST_ANNULUS_CONFIG).to(device)
    g = torch.Generator(device=device).manual_seed(1)
    t = torch.rand(batch, 1, generator=g, device=device)
    x = torch.randn(batch, 2, generator=g, device=device)
    target = torch.randn(batch, 2, generator=g, device=device)
    omega = math.pi * torch.arange(1, model.time_frequencies + 1, device=device, dtype=torch.float32)

    def bare(t, x):  # what MLPVectorField.forward computes, without its shape and dtype handling
        angles = t * omega
        return model.net(torch.cat([t, torch.sin(angles), torch.cos(angles), x], dim=1))

    opt = torch.optim.Adam(model.parameters(), lr=1e-6)  # tiny steps: the network hardly changes between blocks

    def forward(f):
        def run():
            with torch.no_grad():
                for _ in range(calls_per_block):
                    f(t, x)
        return run

    def step(f):
        def run():
            for _ in range(calls_per_block):
                loss = ((f(t, x) - target) ** 2).sum(dim=1).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        return run

    torch.testing.assert_close(model(t, x), bare(t, x), rtol=0, atol=0)  # the same computation
    # one thread on a CPU: two threads make each call's time jitter by more than the overhead being measured
    threads = torch.get_num_threads()
    if torch.device(device).type == "cpu":
        torch.set_num_threads(1)
    out = {"batch": batch, "calls_per_block": calls_per_block, "blocks": blocks, "cpu_threads": torch.get_num_threads()}
    for name, make in (("forward", forward), ("training_step", step)):
        make(model)(), make(bare)()  # warm-up
        times = interleaved({"fmlib": make(model), "bare": make(bare)}, blocks, device)
        pct = sorted(100 * (a / b - 1) for a, b in zip(times["fmlib"], times["bare"]))
        out[name] = {"us_per_call": {k: 1e6 * statistics.median(v) / calls_per_block for k, v in times.items()},
                     "overhead_percent": {"median": statistics.median(pct), "q1": pct[len(pct) // 4],
                                          "q3": pct[(3 * len(pct)) // 4], "n": len(pct)}}
    torch.set_num_threads(threads)
    return out


# --- 0b. torch.compile on the book's training runs ----------------------------------------------------------------

def bench_compile(blocks, steps_per_block, device):
    """Does ``torch.compile`` pay off for the book's two annulus trainings? For each recipe config, two copies of
    its network with the same weights: one eager, one ``torch.compile``-d (default mode, caches disabled so that the
    compilation is timed as a reader's first run meets it). Each trains with ``fmlib.train_cfm`` in blocks of
    ``steps_per_block`` steps, alternating (A, B, B, A, ...); the compile time is the first compiled step's time
    minus an eager step's. Reported: the medians per step, the per-block speed-up (median, min, max), and the whole
    training's estimated time both ways: n_steps x step, plus the compile time for the compiled model."""
    from torch._inductor import config as inductor_config

    from fmlib import recipes
    from fmlib.training import _default_adam

    out = {"blocks": blocks, "steps_per_block": steps_per_block, "cpu_threads": torch.get_num_threads(),
           "mode": "default"}
    for name, config in (("seed", recipes.SEED_ANNULUS_CONFIG), ("best", recipes.BEST_ANNULUS_CONFIG)):
        fmlib.seed_everything(0)
        eager = recipes.build_model(config).to(device)
        twin = recipes.build_model(config).to(device)
        twin.load_state_dict(eager.state_dict())
        torch._dynamo.reset()
        compiled = torch.compile(twin)
        optimizers = {"eager": _default_adam(eager, 1e-3), "compiled": _default_adam(twin, 1e-3)}
        models = {"eager": eager, "compiled": compiled}

        def block(side, n=steps_per_block):
            return lambda: fmlib.train_cfm(models[side], sample_annulus, n_steps=n, batch_size=config["batch_size"],
                                           optimizer=optimizers[side], seed=1, device=device, progress=False,
                                           time_beta=config["time_beta"])

        block("eager", 1)()  # warm-up
        eager_first = timed(block("eager", 1), device)[0]
        with inductor_config.patch(force_disable_caches=True):
            compiled_first = timed(block("compiled", 1), device)[0]
        times = interleaved({"eager": block("eager"), "compiled": block("compiled")}, blocks, device)
        ratio = [a / b for a, b in zip(times["eager"], times["compiled"])]
        step = {k: statistics.median(v) / steps_per_block for k, v in times.items()}
        compile_s = compiled_first - eager_first
        n = config["n_steps"]
        out[name] = {"batch_size": config["batch_size"], "n_steps": n, "compile_seconds": compile_s,
                     "ms_per_step": {k: 1e3 * v for k, v in step.items()}, "speedup": spread(ratio),
                     "training_seconds": {"eager": n * step["eager"], "compiled": compile_s + n * step["compiled"]}}
    return out


# --- 1. training throughput --------------------------------------------------------------------------------------

class AnnulusPoints(torch.utils.data.Dataset):
    """The seed's style of data pipeline: pre-drawn points served one item at a time."""

    def __init__(self, n, seed=0):
        self.data = sample_annulus(n, generator=torch.Generator().manual_seed(seed))

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        return self.data[i]


def seed_style_training(n_steps, device, seed=0):
    """Per-item Dataset + DataLoader(batch_size=256, shuffle=True), the same MLP, Adam lr 1e-2, linear path."""
    torch.manual_seed(seed)
    model = MLPVectorField(2).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loader = torch.utils.data.DataLoader(AnnulusPoints(256 * n_steps, seed), batch_size=256, shuffle=True)
    for x_1 in loader:
        x_1 = x_1.to(device)
        t = torch.rand(x_1.shape[0], 1, device=device)
        x_0 = torch.randn_like(x_1)
        x_t = (1 - t) * x_0 + t * x_1
        loss = ((model(t, x_t) - (x_1 - x_0)) ** 2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
    return model


def fmlib_training(n_steps, device, seed=0):
    torch.manual_seed(seed)
    model = MLPVectorField(2)
    fmlib.train_cfm(model, sample_annulus, n_steps=n_steps, batch_size=256, lr=1e-2, seed=seed, device=device,
                    progress=False)
    return model


def bench_training(n_steps, reps, device):
    times = interleaved({"seed_dataloader": lambda: seed_style_training(n_steps, device),
                         "fmlib_train_cfm": lambda: fmlib_training(n_steps, device)}, reps, device)
    ratios = [a / b for a, b in zip(times["seed_dataloader"], times["fmlib_train_cfm"])]
    return {"device": str(device), "n_steps": n_steps, "reps": reps,
            "seconds": {k: spread(v) for k, v in times.items()},
            "ms_per_step": {k: 1e3 * statistics.median(v) / n_steps for k, v in times.items()},
            "speedup_fmlib_vs_seed": spread(ratios)}


# --- 2. sampler overhead -----------------------------------------------------------------------------------------

def bare_loop(model, x_0, n_steps, method):
    """The same fixed-step methods written inline, as one would without a library."""
    h = 1.0 / n_steps
    x = x_0
    with torch.no_grad():
        for k in range(n_steps):
            t = torch.tensor(k * h, device=x.device)
            if method == "euler":
                x = x + h * model(t, x)
            elif method == "midpoint":
                x = x + h * model(t + h / 2, x + h / 2 * model(t, x))
            else:
                k1 = model(t, x)
                k2 = model(t + h / 2, x + h / 2 * k1)
                k3 = model(t + h / 2, x + h / 2 * k2)
                k4 = model(t + h, x + h * k3)
                x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return x


def bench_sampler(model, n_samples, n_steps, reps, device):
    from flow_matching.solver import ODESolver
    from torchdiffeq import odeint

    model = model.to(device).eval()
    x_0 = torch.randn(n_samples, 2, generator=torch.Generator().manual_seed(1)).to(device)
    grid = torch.tensor([0.0, 1.0], device=device)
    meta = ODESolver(velocity_model=lambda x, t: model(t, x))
    out = {}
    for method in ("euler", "midpoint", "rk4"):
        fns = {
            "fmlib": lambda: fmlib.solve(model, x_0, n_steps=n_steps, method=method),
            "bare_loop": lambda: bare_loop(model, x_0, n_steps, method),
            "torchdiffeq": lambda: _no_grad(lambda: odeint(model, x_0, grid, method=method,
                                                           options={"step_size": 1.0 / n_steps})[-1]),
            "flow_matching": lambda: meta.sample(x_init=x_0, step_size=1.0 / n_steps, method=method,
                                                 time_grid=grid),
        }
        results = {k: f() for k, f in fns.items()}
        times = interleaved(fns, reps, device)
        ref = results["fmlib"]
        out[method] = {
            "n_steps": n_steps, "n_samples": n_samples,
            "seconds": {k: spread(v) for k, v in times.items()},
            "ratio_to_fmlib": {k: spread([a / b for a, b in zip(v, times["fmlib"])]) for k, v in times.items()
                               if k != "fmlib"},
            "max_abs_diff_to_fmlib": {k: float((v - ref).abs().max()) for k, v in results.items() if k != "fmlib"},
        }
    return out


def _no_grad(fn):
    with torch.no_grad():
        return fn()


# --- 3. quality ----------------------------------------------------------------------------------------------------

def energy_distance(x, y):
    """Energy distance 2 E|X - Y| - E|X - X'| - E|Y - Y'| between two samples (V-statistic), in the data's units."""
    return float(2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean())


def sample_metrics(samples, reference, n_proj=200, seed=0):
    import ot
    from scipy import stats

    r = samples.norm(dim=1).numpy()
    return {
        "inside_2_3": float(np.mean((r >= 2) & (r <= 3))),
        "ks_radius": float(stats.kstest(r, stats.uniform(2, 1).cdf).statistic),
        "sliced_w2": float(ot.sliced_wasserstein_distance(samples.numpy(), reference.numpy(), n_projections=n_proj,
                                                          p=2, seed=seed)),
        "energy": energy_distance(samples.double(), reference.double()),
    }


def heldout_nll(model, x, method="dopri5"):
    """Mean negative log-likelihood (nats) of points x under the model, by fmlib.log_likelihood (exact div.)."""
    from fmlib.ode import log_likelihood

    return float(-log_likelihood(model, x, method=method, rtol=1e-5, atol=1e-5).mean())


def bench_quality(n_eval, quick):
    from fmlib import recipes

    gen = torch.Generator().manual_seed(123)
    true_a, true_b = sample_annulus(n_eval, generator=gen), sample_annulus(n_eval, generator=gen)
    held_out = sample_annulus(2_000 if quick else 5_000, generator=gen)
    floor = sample_metrics(true_a, true_b)
    floor["heldout_nll"] = fmlib.annulus_entropy()  # the exact entropy: no model can do better in expectation
    rows = {"floor (two true samples)": floor}
    runs = {}
    for name, cfg in (("seed setup", recipes.SEED_ANNULUS_CONFIG), ("book's best setup", recipes.BEST_ANNULUS_CONFIG)):
        trained = runs[name] = recipes.train_annulus(cfg, seed=0, progress=False)  # trained now, never from a cache
        x = fmlib.sample(trained.model, n_eval, dim=2, n_steps=50, method="rk4",
                         generator=torch.Generator().manual_seed(7))
        row = sample_metrics(x, true_a)
        row["heldout_nll"] = heldout_nll(trained.model, held_out)
        row["train_seconds"] = trained.seconds
        rows[name] = row
    # the same two trainings side by side, as chapter 08 runs them: the best setup here, the seed's in a worker
    t0 = time.perf_counter()
    best, seed = recipes.train_annulus_many([recipes.BEST_ANNULUS_CONFIG, recipes.SEED_ANNULUS_CONFIG], seed=0)
    side_by_side = {"wall_seconds": time.perf_counter() - t0, "best_seconds": best.seconds, "seed_seconds": seed.seconds,
                    "one_after_the_other_seconds": sum(r.seconds for r in runs.values()),
                    "same_models": best.losses == runs["book's best setup"].losses
                    and seed.losses == runs["seed setup"].losses}
    return {"n_eval": n_eval, "n_heldout": len(held_out), "sampler": "rk4, 50 steps", "rows": rows,
            "side_by_side": side_by_side, "entropy_floor_nats": fmlib.annulus_entropy(),
            "configs": {"seed setup": recipes.SEED_ANNULUS_CONFIG, "book's best setup": recipes.BEST_ANNULUS_CONFIG}}


# --- 4. book cost ------------------------------------------------------------------------------------------------

def _execute(path) -> float:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    t0 = time.perf_counter()
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    return time.perf_counter() - t0


def bench_book():
    """Seconds per chapter for a first build of the whole book, in chapter order, from an empty weight cache (a
    chapter trains the models that no earlier chapter cached), and for a rebuild of the chapters that stored
    trained weights (which then load them)."""
    import tempfile
    from unittest import mock

    first, rebuild = {}, {}
    chapters = [p for p in sorted((ROOT / "book").glob("*.ipynb"))
                if p.stem != "appendix_benchmarks"]  # that page shows results.json, being written now
    # the kernels inherit FMBOOK_CACHE (fmlib.recipes.default_cache_dir); it is restored afterwards
    with tempfile.TemporaryDirectory() as cache, mock.patch.dict(os.environ, {"FMBOOK_CACHE": cache}):
        for path in chapters:
            before = set(os.listdir(cache))
            first[path.stem] = _execute(path)
            print(f"   {path.stem}: {first[path.stem]:.1f} s", flush=True)
            if set(os.listdir(cache)) != before:  # it trained and cached models: time a rebuild too
                rebuild[path.stem] = _execute(path)
                print(f"   {path.stem} again, with the cached weights: {rebuild[path.stem]:.1f} s", flush=True)
    return {"chapter_seconds": first, "book_seconds": sum(first.values()), "rebuild_seconds": rebuild,
            "book_rebuild_seconds": sum(rebuild.get(k, v) for k, v in first.items()),
            "chapter_budget_seconds": CHAPTER_BUDGET}


def bench_pytest():
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "--nbval", "-q", "-p", "no:cacheprovider"], cwd=ROOT,
                          capture_output=True, text=True)
    return {"seconds": time.perf_counter() - t0, "exit_code": proc.returncode,
            "summary": proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""}


def ci_from_log(path: Path) -> dict:
    """The phases' seconds that ``.ci/run`` printed ("ci: book built in 612 s", ...) in the log ``path`` of a run."""
    import re

    phases = {m.group(1): int(m.group(2))
              for m in re.finditer(r"^ci: (.+?) in (\d+) s$", path.read_text(), flags=re.MULTILINE)}
    if "second pass passed" not in phases:
        raise SystemExit(f"{path} is not the log of a CI run that passed (no 'ci: second pass passed in N s' line)")
    return {"phases": phases, "total_seconds": sum(phases.values()), "log": path.name}


# --- table and main ----------------------------------------------------------------------------------------------

def _fmt_spread(s, unit=""):
    return f"{s['median']:.2f}{unit} (min {s['min']:.2f}, max {s['max']:.2f})"


def format_table(res) -> str:
    lines = [f"fmbook benchmarks, {res['machine']['cpu']} ({res['machine']['cores']} cores), "
             f"torch {res['machine']['torch']}, {res['date']}"]
    for dev, ov in res.get("overhead", {}).items():
        lines += ["", f"0. fmlib's overhead over the bare network on {dev} (best annulus model, batch {ov['batch']})"]
        for name in ("forward", "training_step"):
            o = ov[name]
            p = o["overhead_percent"]
            lines.append(f"   {name:14s} fmlib {o['us_per_call']['fmlib']:8.1f} us, bare {o['us_per_call']['bare']:8.1f} us,"
                         f" overhead {p['median']:+.2f} % (quartiles {p['q1']:+.1f} to {p['q3']:+.1f} %, "
                         f"{p['n']} blocks)")
    for dev, co in res.get("compile", {}).items():
        lines += ["", f"0b. torch.compile on {dev} ({co['blocks']} alternating blocks of {co['steps_per_block']} "
                      f"training steps, {co['cpu_threads']} threads)"]
        for name in ("seed", "best"):
            c = co[name]
            lines.append(f"   {name} config (batch {c['batch_size']}): eager {c['ms_per_step']['eager']:.2f} ms/step, "
                         f"compiled {c['ms_per_step']['compiled']:.2f} ms/step, speed-up "
                         f"{_fmt_spread(c['speedup'], 'x')}, compile {c['compile_seconds']:.1f} s; "
                         f"{c['n_steps']} steps: eager {c['training_seconds']['eager']:.1f} s, compiled "
                         f"{c['training_seconds']['compiled']:.1f} s")
    for dev, tr in res.get("training", {}).items():
        lines += ["", f"1. Training throughput on {dev}, {tr['n_steps']} steps x {tr['reps']} repetitions",
                  f"   seed-style DataLoader loop : {tr['ms_per_step']['seed_dataloader']:.3f} ms/step",
                  f"   fmlib.train_cfm            : {tr['ms_per_step']['fmlib_train_cfm']:.3f} ms/step",
                  f"   speed-up (seed / fmlib)    : {_fmt_spread(tr['speedup_fmlib_vs_seed'], 'x')}"]
    for dev, sm in res.get("sampler", {}).items():
        lines += ["", f"2. Sampler time relative to fmlib.solve on {dev} (ratio > 1: slower than fmlib), "
                      f"max |difference| of the samples"]
        for method, m in sm.items():
            lines.append(f"   {method:8s} ({m['n_steps']} steps, {m['n_samples']} samples, fmlib "
                         f"{1e3 * m['seconds']['fmlib']['median']:.1f} ms):")
            for k, s in m["ratio_to_fmlib"].items():
                lines.append(f"      {k:13s} {_fmt_spread(s, 'x'):38s} max diff {m['max_abs_diff_to_fmlib'][k]:.1e}")
    if "quality" in res:
        q = res["quality"]
        lines += ["", f"3. Quality ({q['n_eval']} samples; floor: two independent true samples; NLL floor = entropy "
                      f"{q['entropy_floor_nats']:.4f} nats)",
                  f"   {'setup':26s} {'in [2,3]':>9s} {'KS':>7s} {'SW2':>8s} {'energy':>9s} {'NLL':>8s} {'train s':>8s}"]
        for name, r in q["rows"].items():
            ts = f"{r['train_seconds']:.1f}" if "train_seconds" in r else "-"
            lines.append(f"   {name:26s} {r['inside_2_3']:9.4f} {r['ks_radius']:7.4f} {r['sliced_w2']:8.4f} "
                         f"{r['energy']:9.5f} {r['heldout_nll']:8.4f} {ts:>8s}")
        if "side_by_side" in q:
            sbs = q["side_by_side"]
            lines.append(f"   both trainings one after the other: {sbs['one_after_the_other_seconds']:.1f} s; side by "
                         f"side (train_annulus_many): {sbs['wall_seconds']:.1f} s (best {sbs['best_seconds']:.1f} s, "
                         f"seed {sbs['seed_seconds']:.1f} s), same models: {sbs['same_models']}")
    if "book" in res:
        b = res["book"]
        lines += ["", f"4. Book cost: whole book {b['book_seconds']:.0f} s for a first build (in chapter order, empty weight cache), "
                      f"{b.get('book_rebuild_seconds', b['book_seconds']):.0f} s for a rebuild; budget "
                      f"{CHAPTER_BUDGET} s a chapter"]
        lines += [f"   {k:28s} {v:6.1f} s" + (f"   rebuild {b['rebuild_seconds'][k]:5.1f} s"
                                               if k in b.get("rebuild_seconds", {}) else "")
                  + ("   OVER BUDGET" if v > CHAPTER_BUDGET else "")
                  for k, v in b["chapter_seconds"].items()]
    if "pytest" in res:
        p = res["pytest"]
        lines.append(f"   pytest --nbval: {p['seconds']:.0f} s, exit {p['exit_code']}: {p['summary']}")
    if "ci" in res:
        lines.append("   CI (.ci/run): " + ", ".join(f"{k} {v} s" for k, v in res["ci"]["phases"].items())
                     + f"; {res['ci']['total_seconds']} s in all")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions and steps (smoke test)")
    ap.add_argument("--skip", nargs="*", default=[], choices=PARTS,
                    help="parts to leave out")
    ap.add_argument("--output", type=Path, default=RESULTS, help="where to write the JSON (default: %(default)s)")
    ap.add_argument("--ci-log", type=Path, help="the log of a CI run (bash .ci/run > LOG) whose phase times to record")
    ap.add_argument("--update", action="store_true",
                    help="keep the parts of an existing output file that this run skips (re-measure only some parts)")
    args = ap.parse_args(argv)

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    old = json.loads(args.output.read_text()) if args.update and args.output.exists() else {}
    res = {"date": time.strftime("%Y-%m-%d"),
           "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
                       "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
                       "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
           "command": " ".join(["python benchmarks/run.py", *(argv if argv is not None else sys.argv[1:])])}
    if torch.cuda.is_available():
        print(f"CUDA GPU present ({res['machine']['cuda']}): the training and sampler benchmarks run there too")
    reps = 3 if args.quick else 7
    t_start = time.perf_counter()
    if "overhead" not in args.skip:
        res["overhead"] = {d: bench_overhead(50 if args.quick else 400, d) for d in devices}
    if "compile" not in args.skip:
        res["compile"] = {d: bench_compile(4 if args.quick else 12, 100 if args.quick else 250, d) for d in devices}
    if "training" not in args.skip:
        res["training"] = {d: bench_training(500 if args.quick else 2000, reps, d) for d in devices}
    if "sampler" not in args.skip:
        model = fmlib_training(300, "cpu")
        res["sampler"] = {d: bench_sampler(model, 10_000, 50, reps, d) for d in devices}
    if "quality" not in args.skip:
        res["quality"] = bench_quality(2_000 if args.quick else 10_000, args.quick)
    if "book" not in args.skip:
        res["book"] = bench_book()
    if "pytest" not in args.skip:
        res["pytest"] = bench_pytest()
    if args.ci_log:
        res["ci"] = ci_from_log(args.ci_log)
    measured = [p for p in PARTS if p not in args.skip]
    if args.update and not measured and old:  # only a CI log added: the rest of the file stays as it was
        old["ci"] = res["ci"]
        res = old
        res.pop("table", None)
    else:
        res["total_seconds"] = time.perf_counter() - t_start
    for part in (*PARTS, "ci"):
        if part not in res and part in old:
            res[part] = old[part]
            res.setdefault("kept_from_earlier_run", []).append(part)
    table = format_table(res)
    res["table"] = table
    print(table)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(res, indent=1) + "\n")
    print(f"\nwrote {args.output} ({res['total_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
