"""The Colab path, played here: a fresh virtual environment that holds only what Google Colab preinstalls, the
notebooks' own install cell, then one theory chapter and one training chapter executed in that environment.

What stands in for Colab:

* a new virtual environment (no system site-packages) with torch already installed, as in Colab, and the other
  packages that Colab preinstalls at versions *other than* the book's pins in ``requirements.txt``
  (:data:`COLAB_PACKAGES`), so that fmlib's loose requirements in ``pyproject.toml`` are what is tested;
* a stub module ``google.colab`` imported at start-up (a ``.pth`` file), so the install cell's
  ``"google.colab" in sys.modules`` is true, as it is in Colab;
* the repository URL of the install cell replaced by this checkout (``git+file://``), since the published
  repository is not reachable from here; the rest of the cell is run as written.

The test then checks that the install cell left torch alone (same version, same files), and executes the chapters
with a kernel of that environment in an empty folder (no repository around them, as in Colab). Cells tagged
``remove-cell`` run too (Colab shows them). It needs ``git`` and the package index (PyPI); it takes a few minutes.
Without them it is skipped with a message, except when ``CI`` is set: then it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import nbformat
import pytest
import yaml
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
# one theory chapter and one that trains a network
CHAPTERS = ["04_conditional_to_marginal.ipynb", "07_annulus.ipynb"]
# Packages that Colab preinstalls, each at a version other than the pin in requirements.txt (torch excepted: it is
# installed first and must stay untouched). test_colab_versions_differ_from_pins keeps them apart from the pins.
COLAB_PACKAGES = ["numpy==2.0.2", "scipy==1.15.3", "matplotlib==3.10.0", "plotly==5.24.1", "ipywidgets==7.7.1",
                  "tqdm==4.67.1", "ipykernel==6.29.5"]
COLAB_PIP = "pip==24.1.2"  # Colab's pip; the pip that venv brings with Python 3.11 (23.2) rejects "name @ git+file:"
TIMEOUT_S = 900


def _unavailable(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (the environment variable CI is set, so the Colab test may not be skipped)")
    pytest.skip(reason)


def _pins() -> dict:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==")
            pins[name.lower()] = version
    return pins


def _run(cmd, **kw):
    done = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def test_colab_versions_differ_from_pins():
    pins = _pins()
    for spec in COLAB_PACKAGES:
        name, version = spec.split("==")
        assert pins.get(name.lower()) != version, f"{spec} is the book's own pin: the Colab test would not test fmlib's range"


def test_install_cell_names_the_repository():
    url = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
    for name in CHAPTERS:
        first = next(c for c in nbformat.read(ROOT / "book" / name, as_version=4).cells if c.cell_type == "code")
        assert f"git+{url}" in first.source


@pytest.fixture(scope="module")
def colab_env(tmp_path_factory):
    if shutil.which("git") is None:
        _unavailable("the Colab test needs git (apt-get install -y git)")
    if not (ROOT / ".git").exists():
        _unavailable("the Colab test installs fmlib from this checkout with git, and it is not a git repository")
    base = tmp_path_factory.mktemp("colab")
    env_dir = base / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(env_dir)
    python = env_dir / "bin" / "python"
    import torch  # the same torch as the book's environment: Colab's is there before the install cell runs

    torch_version = torch.__version__.split("+")[0]
    try:
        _run([python, "-m", "pip", "install", "-q", COLAB_PIP], timeout=TIMEOUT_S)
        _run([python, "-m", "pip", "install", "-q", f"torch=={torch_version}", *COLAB_PACKAGES], timeout=TIMEOUT_S)
    except AssertionError as err:
        _unavailable(f"could not install Colab's packages from the package index: {err}")
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip())
    (site / "google" / "colab").mkdir(parents=True)
    (site / "google" / "colab" / "__init__.py").write_text('"""Stand-in for Colab\'s module (tests/test_colab.py)."""\n')
    (site / "fmbook_colab_stub.pth").write_text("import google.colab\n")
    kernels = base / "jupyter"
    (kernels / "kernels" / "colab").mkdir(parents=True)
    (kernels / "kernels" / "colab" / "kernel.json").write_text(json.dumps(
        {"argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"], "display_name": "Colab stand-in",
         "language": "python"}))
    return {"python": python, "site": site, "jupyter_path": kernels, "base": base}


def _torch_fingerprint(python) -> str:
    return _run([python, "-c", "import torch, pathlib; p = pathlib.Path(torch.__file__).parent; "
                 "print(torch.__version__, p, sum(f.stat().st_mtime_ns for f in p.glob('*.py')))"]).strip()


def _install_cell(nb) -> nbformat.NotebookNode:
    return next(c for c in nb.cells if c.cell_type == "code")


@pytest.mark.parametrize("name", CHAPTERS)
def test_chapter_runs_in_colab(colab_env, name, monkeypatch):
    url = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
    nb = nbformat.read(ROOT / "book" / name, as_version=4)
    cell = _install_cell(nb)
    assert f"git+{url}" in cell.source
    # the published repository is not reachable here: install from this checkout instead, the rest as written
    cell.source = cell.source.replace(f"git+{url}", f"git+file://{ROOT}")
    for c in nb.cells:
        if c.cell_type == "code":
            c.outputs = []
    before = _torch_fingerprint(colab_env["python"])
    work = colab_env["base"] / name.removesuffix(".ipynb")  # an empty folder: no repository around the notebook
    work.mkdir()
    monkeypatch.setenv("JUPYTER_PATH", str(colab_env["jupyter_path"]))
    monkeypatch.setenv("FMBOOK_CACHE", str(work / "cache"))
    monkeypatch.delenv("PYTHONPATH", raising=False)
    client = NotebookClient(nb, kernel_name="colab", timeout=600, resources={"metadata": {"path": str(work)}})
    client.execute()
    # fmlib came from the install cell (not from this checkout on a path), and torch was left alone
    where = _run([colab_env["python"], "-c", "import fmlib; print(fmlib.__file__)"], cwd=work).strip()
    assert where.startswith(str(colab_env["site"])), where
    assert _torch_fingerprint(colab_env["python"]) == before, "the install cell changed Colab's torch"
