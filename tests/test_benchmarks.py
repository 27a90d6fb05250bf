"""The benchmark scripts' own logic: the peers' networks behind v(t, x), training to a budget with copies of the
weights, the summary of runs and the CI log reader (no benchmark is run here)."""

import importlib.util
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ttq():
    return _load("time_to_quality")


def test_networks_take_time_as_the_book_calls_them(ttq):
    """v(t, x) with t a scalar, (n,) or (n, 1) gives the same field; t goes where each example puts it."""
    torch.manual_seed(0)
    x = torch.randn(5, 2)
    for make, time_first in ((ttq.flow_matching_network, False), (ttq.blog_network, True)):
        v = make()
        assert v.time_first is time_first
        t = torch.tensor(0.3)
        out = v(t, x)
        assert out.shape == (5, 2)
        torch.testing.assert_close(v(t.expand(5), x), out)
        torch.testing.assert_close(v(t.expand(5, 1), x), out)
        columns = [t.expand(5, 1), x] if time_first else [x, t.expand(5, 1)]
        torch.testing.assert_close(v.net(torch.cat(columns, dim=1)), out)
    hidden = [m for m in ttq.flow_matching_network().net if isinstance(m, torch.nn.Linear)]
    assert [tuple(m.weight.shape) for m in hidden] == [(512, 3), (512, 512), (512, 512), (512, 512), (2, 512)]


def test_snapshots_are_the_weights_at_each_budget(ttq):
    """A step that adds 1 to a weight and sleeps: each copy holds the step count when its budget passed."""
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.zero_()

    def step():
        with torch.no_grad():
            model.weight += 1
        time.sleep(0.01)

    snaps = ttq.train_with_snapshots(model, step, [0.1, 0.05], torch.device("cpu"))
    assert [s["budget"] for s in snaps] == [0.05, 0.1]
    for s in snaps:
        assert s["seconds"] >= s["budget"]
        assert float(s["state"]["weight"]) == s["steps"]
    assert snaps[0]["steps"] < snaps[1]["steps"]


def test_summary_gives_median_and_range_per_recipe_and_budget(ttq):
    runs = [{"recipe": "fmlib", "budget": 10, "seed": s, "seconds": 10 + s, "steps": 100, "gap": g, "gap_se": 0.001,
             "edge": 0.0, "inside": 0.99, "sliced_w2": 0.05} for s, g in enumerate((0.03, 0.01, 0.02))]
    row = ttq.summarise(runs, [10])["fmlib @ 10 s"]
    assert row["gap"] == {"median": 0.02, "min": 0.01, "max": 0.03}
    assert row["n"] == 3


def test_ci_log_reader(tmp_path):
    run = _load("run")
    log = tmp_path / "ci.log"
    log.write_text("noise\nci: installed in 95 s\nci: book built in 600 s\nci: pytest --nbval passed in 900 s\n")
    with pytest.raises(SystemExit, match="not the log of a CI run that passed"):
        run.ci_from_log(log)
    log.write_text(log.read_text() + "ci: second pass passed in 700 s\n")
    ci = run.ci_from_log(log)
    assert ci["phases"] == {"installed": 95, "book built": 600, "pytest --nbval passed": 900,
                            "second pass passed": 700}
    assert ci["total_seconds"] == 2295
