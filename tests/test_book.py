"""The book's notebooks: layout rules that CI must keep (size, kernelspec, Colab cell, no path hacks, seeding)."""

import json
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "book").glob("*.ipynb"))


def _repo_url():
    return yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]


def _code_cells(nb):
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


def test_there_are_chapters():
    assert len(NOTEBOOKS) >= 2


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_rules(path):
    assert path.stat().st_size < 1024**2, f"{path.name} is {path.stat().st_size // 1024} KiB (limit 1 MiB)"
    nb = json.loads(path.read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    code = _code_cells(nb)
    # the first code cell installs fmlib in Colab only, from the repository named once in _config.yml
    first = code[0]
    assert 'if "google.colab" in sys.modules' in first
    assert f"@ git+{_repo_url()}" in first
    assert "torch" not in first.split("git+")[0].split("install")[-1], "the Colab cell must not reinstall torch"
    src = "\n".join(code)
    assert "sys.path" not in src, "import fmlib as an installed package, no sys.path hacks"
    # seeded: the cell after the Colab cell seeds the generators
    assert "seed_everything(" in code[1] or "manual_seed(" in code[1], f"{path.name}: second code cell must seed"
    # executed, with outputs committed
    assert any(c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code"), f"{path.name} has no outputs"


def test_toc_lists_every_notebook():
    toc = (ROOT / "_toc.yml").read_text()
    for path in NOTEBOOKS:
        assert f"book/{path.stem}" in toc, f"{path.name} is not in _toc.yml"
