"""fmlib as a library: one entry point per task, and teaching modules that hold only what the book teaches."""

import ast
from pathlib import Path

import pytest

import fmlib

FMLIB = Path(fmlib.__file__).resolve().parent
# the modules a reader opens to learn flow matching; build-time machinery (weight cache, worker processes) lives in
# fmlib.recipes, apart from them
TEACHING = ["paths", "marginal", "continuity", "networks", "sampler", "training", "ode"]
MACHINERY = {"multiprocessing", "threading", "subprocess", "os", "pathlib", "tempfile", "shutil", "hashlib", "io",
             "json", "pickle"}


def _imports(module: str) -> set[str]:
    tree = ast.parse((FMLIB / f"{module}.py").read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("module", TEACHING)
def test_teaching_modules_import_no_build_machinery(module):
    found = _imports(module) & MACHINERY
    assert not found, f"fmlib.{module} imports {sorted(found)}: process, cache and file-system code belongs elsewhere"


def test_one_entry_point_per_task():
    """solve, sample, log_likelihood and divergence: one function each, one name, found at the top level."""
    for name in ("solve", "sample", "log_likelihood", "divergence"):
        assert callable(getattr(fmlib, name))
    from fmlib import continuity, ode, sampler

    assert fmlib.solve is sampler.solve and fmlib.sample is sampler.sample
    assert fmlib.log_likelihood is ode.log_likelihood and fmlib.divergence is continuity.divergence
    for gone in ("solve_ode", "sample_with_log_prob"):
        assert not hasattr(fmlib, gone) and not hasattr(ode, gone)
    assert not hasattr(ode, "divergence")
