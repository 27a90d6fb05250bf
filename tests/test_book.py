"""The book's notebooks: layout rules that CI must keep (size, kernelspec, Colab cell, no path hacks, seeding, no
rounding noise in compared outputs, no launch buttons to a placeholder repository)."""

import json
import re
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
    assert not re.search(r"[\"']torch", first), "the Colab cell must not reinstall torch (no 'torch...' argument)"
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


# a number printed in scientific notation with an exponent of -10 or below, not written as a bound ("< 1e-12")
_NOISE = re.compile(r"(?<![<\d.e-])(?<!< )\d\.\d+e-(?:1\d|[2-9]\d)\b")


def _compared_text(cell) -> str:
    text = ""
    for out in cell.get("outputs", []):
        text += "".join(out.get("text", ""))
        for mime, value in out.get("data", {}).items():
            if mime.endswith("text/plain"):
                text += "".join(value)
    return text


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_rounding_noise_in_compared_outputs(path):
    """A compared output that prints a rounding-level number (2.8e-15) differs on another CPU or BLAS: print the bound
    that the cell asserts instead (``< 1e-12``), or tag the cell ``nbval-ignore-output``."""
    nb = json.loads(path.read_text())
    found = []
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code" or "nbval-ignore-output" in cell.get("metadata", {}).get("tags", []):
            continue
        found += [f"cell {i}: {m.group(0)}" for m in _NOISE.finditer(_compared_text(cell))]
    assert not found, f"{path.name}: rounding-level numbers in compared outputs: {found}"


def test_no_rounding_noise_pattern():
    assert _NOISE.search("residual 2.8e-15 here") and _NOISE.search("weights 6.7e-16")
    assert not _NOISE.search("residual < 1e-12") and not _NOISE.search("error 9.7e-05")


def test_no_launch_buttons_to_a_placeholder():
    """Launch buttons (Colab, Binder) only once repository.url is the published repository (README: publishing)."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    if config["repository"]["url"] == "https://github.com/fmbook/fmbook":  # the placeholder
        launch = config.get("launch_buttons") or {}
        offered = {k: v for k, v in launch.items() if k.endswith("_url") and v}
        assert not offered, f"launch buttons {offered} point at the placeholder repository {config['repository']['url']}"


# --- pages that read as a book ------------------------------------------------------------------------------------

def _tags(cell) -> list:
    return cell.get("metadata", {}).get("tags", [])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_figures_are_numbered_captioned_and_folded(path):
    """Every static figure goes through fmlib.plotting.show_figure in a folded cell of its own, with a numbered
    caption; figures are referred to by {numref}, never by a number typed into a title or the text."""
    nb = json.loads(path.read_text())
    for i, cell in enumerate(nb["cells"]):
        source = "".join(cell["source"])
        where = f"{path.name}, cell {i}"
        assert not re.search(r"\bFigure \d", source), f"{where}: a hard-coded figure number (use {{numref}})"
        if cell["cell_type"] != "code" or "remove-cell" in _tags(cell):
            continue
        assert "plt.show()" not in source, f"{where}: show a static figure with show_figure(fig, alt=...)"
        if "show_figure(" in source:
            figure = cell["metadata"].get("mystnb", {}).get("figure", {})
            assert figure.get("name", "").startswith("fig-") and figure.get("caption"), \
                f"{where}: a figure cell needs mystnb.figure metadata with a name 'fig-...' and a caption"
            assert {"hide-input", "nbval-ignore-output"} <= set(_tags(cell)), \
                f"{where}: a figure cell is tagged hide-input and nbval-ignore-output"
            outputs = [o for o in cell.get("outputs", []) if o.get("output_type") != "stream" or o.get("text")]
            assert len(outputs) == 1, f"{where}: a figure cell has one output, the figure ({len(outputs)} found)"


def _shown_text(cell) -> str:
    """The text outputs the page shows: streams, and plain text where there is no richer representation."""
    text = ""
    for out in cell.get("outputs", []):
        text += "".join(out.get("text", ""))
        data = out.get("data", {})
        if "text/plain" in data and not ({"text/html", "text/markdown", "image/png"} & set(data)):
            text += "".join(data["text/plain"])
    return text


_RAW_LABEL = re.compile(r"eq-[a-z0-9]+(?:-[a-z0-9]+)*")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_raw_labels_and_lines_that_fit(path):
    """Code is part of the page: no raw equation labels in it, and lines of code and of text output of at most 79
    characters (the column)."""
    nb = json.loads(path.read_text())
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code" or "remove-cell" in _tags(cell):
            continue
        source = "".join(cell["source"])
        assert not _RAW_LABEL.search(source), \
            f"{path.name}, cell {i}: raw label {_RAW_LABEL.search(source).group()} in code (say it in words)"
        long = [line for line in source.splitlines() if len(line) > 79]
        assert not long, f"{path.name}, cell {i}: {len(long)} code lines longer than 79 characters, e.g. {long[0]!r}"
        if "remove-output" in _tags(cell):
            continue
        # an output block has padding: 77 characters fill its width in the 1280 px column
        long = [line for line in _shown_text(cell).splitlines() if len(line) > 77]
        assert not long, f"{path.name}, cell {i}: {len(long)} output lines longer than 77 characters, e.g. {long[0]!r}"
