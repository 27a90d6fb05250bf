"""The API reference and the equation index (``_ext/fmbook_api.py``, appendix pages ``book/api_reference.rst`` and
``book/equation_index.md``).

From the sources (always):

* every equation label that an fmlib docstring cites (````eq-...````) is defined in the book, and so is every label in
  a cell's ``"fmbook": {"checks": [...]}`` metadata; such a cell is shown in the book (not removed), so that the index
  can link to it;
* both pages are in ``_toc.yml`` and use the generating directives.

From the built book (``_build/html``; skipped without one, except in CI, where ``.ci/run`` builds it first):

* every public name of fmlib (``fmlib.__all__`` and the ``__all__`` of each public module) has an entry on the API
  page, and the page shows no raw label: each citation became a numbered link to the equation's page and anchor;
* the equation index was generated: it lists every labelled equation of the book with a link to it, says how many
  have neither code nor check (as many as it lists), and every link to a checking cell or an API entry lands on an
  anchor that exists.
"""

from __future__ import annotations

import html
import importlib
import json
import os
import pkgutil
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "_build" / "html"
sys.path.insert(0, str(ROOT / "_ext"))
from fmbook_api import CITATION  # noqa: E402  (the extension's own pattern for a docstring's citation)

sys.path.pop(0)

# a labelled display equation: MyST's  $$ ... $$ (eq-x)  or a {math} directive's  :label: eq-x
_DEFINED = [re.compile(r"\$\$\s*\((eq-[A-Za-z0-9-]+)\)"), re.compile(r"^:label:\s*(eq-[A-Za-z0-9-]+)", re.M)]


def _cells(path: Path):
    if path.suffix == ".ipynb":
        return json.loads(path.read_text(encoding="utf-8"))["cells"]
    return [{"cell_type": "markdown", "source": path.read_text(encoding="utf-8"), "metadata": {}}]


def _source(cell) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def _book_files():
    return sorted((ROOT / "book").glob("*.ipynb")) + sorted((ROOT / "book").glob("*.md"))


def _book_labels() -> dict[str, str]:
    """Every equation label defined in the book -> the file that defines it."""
    labels = {}
    for path in _book_files():
        for cell in _cells(path):
            if cell["cell_type"] == "markdown":
                for pattern in _DEFINED:
                    for label in pattern.findall(_source(cell)):
                        labels[label] = path.name
    return labels


LABELS = _book_labels()


def _public_modules() -> list[str]:
    import fmlib

    return [f"fmlib.{m.name}" for m in pkgutil.iter_modules(fmlib.__path__) if not m.name.startswith("_")]


def _public_names() -> dict[str, str]:
    """Every public name -> the id of its API entry (``fmlib.module.name``)."""
    import fmlib

    names = {}
    for modname in _public_modules():
        module = importlib.import_module(modname)
        public = getattr(module, "__all__", None)
        if public is None:
            public = [n for n, obj in vars(module).items() if not n.startswith("_")
                      and getattr(obj, "__module__", None) == modname]
        for name in public:
            names[f"{modname}.{name}"] = f"{modname}.{name}"
    for name in fmlib.__all__:
        obj = getattr(fmlib, name)
        homes = [key for key in names if key.rsplit(".", 1)[1] == name
                 and getattr(importlib.import_module(key.rsplit(".", 1)[0]), name) is obj]
        names[f"fmlib.{name}"] = homes[0] if homes else f"fmlib.{name}"
    return names


def test_the_book_has_labelled_equations():
    assert len(LABELS) > 50, sorted(LABELS)


def test_docstrings_cite_only_labels_of_the_book():
    unknown = []
    for path in sorted((ROOT / "fmlib").rglob("*.py")):
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for label in CITATION.findall(line):
                if label not in LABELS:
                    unknown.append(f"{path.relative_to(ROOT)}:{lineno}: {label}")
    assert not unknown, "docstrings cite equation labels that no chapter defines:\n  " + "\n  ".join(unknown)


def test_the_citation_pattern_finds_the_docstrings_citations():
    """The pattern the extension links with is the one this test checks with, and it finds what fmlib cites."""
    text = (ROOT / "fmlib" / "paths.py").read_text(encoding="utf-8")
    assert "eq-linear-path" in CITATION.findall(text)
    assert CITATION.sub(r":eq:`\1`", "book eq. ``eq-linear-path``;") == "book eq. :eq:`eq-linear-path`;"


def test_checking_cells_name_labels_of_the_book_and_are_shown():
    problems, n_cells = [], 0
    for path in sorted((ROOT / "book").glob("*.ipynb")):
        for i, cell in enumerate(_cells(path)):
            meta = cell.get("metadata", {}).get("fmbook")
            if meta is None:
                continue
            n_cells += 1
            checks = meta.get("checks") if isinstance(meta, dict) else None
            where = f"{path.name}, cell {i} ({cell.get('id')})"
            if cell["cell_type"] != "code":
                problems.append(f"{where}: fmbook.checks on a {cell['cell_type']} cell")
            if not (isinstance(checks, list) and checks and all(isinstance(c, str) for c in checks)):
                problems.append(f"{where}: fmbook.checks must be a non-empty list of labels, got {checks!r}")
                continue
            problems += [f"{where}: {label} is not a label of the book" for label in checks if label not in LABELS]
            tags = set(cell.get("metadata", {}).get("tags", []))
            if tags & {"remove-cell", "remove_cell"} or (tags & {"remove-input", "remove_input"}
                                                        and tags & {"remove-output", "remove_output"}):
                problems.append(f"{where}: a checking cell must be shown (it is removed, so nothing can link to it)")
    assert not problems, "\n  ".join(["cell metadata fmbook.checks:", *problems])
    assert n_cells > 30, n_cells


def test_pages_are_in_the_toc_and_generated():
    toc = (ROOT / "_toc.yml").read_text()
    assert "book/api_reference" in toc and "book/equation_index" in toc
    assert ".. fmlib-api::" in (ROOT / "book" / "api_reference.rst").read_text()
    assert "{fmbook-equation-index}" in (ROOT / "book" / "equation_index.md").read_text()


# ----------------------------------------------------------------------------------------------------------------
# the built book
def _built(page: str) -> str:
    path = SITE / "book" / page
    if not path.is_file():
        reason = f"no built page {path}: build the book first with `jupyter-book build .` in {ROOT}"
        if os.environ.get("CI"):
            pytest.fail(reason + " (the environment variable CI is set, so this test may not be skipped)")
        pytest.skip(reason)
    return path.read_text(encoding="utf-8")


def _text(page_html: str) -> str:
    """The text a reader sees in the article (tags removed)."""
    article = page_html.split('<article class="bd-article"', 1)[-1].split("</article>", 1)[0]
    article = re.sub(r"<(script|style)\b.*?</\1>", " ", article, flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", " ", article))


def _ids(page_html: str) -> set[str]:
    return set(re.findall(r'\bid="([^"]+)"', page_html))


def test_every_public_name_has_an_api_entry():
    page = _built("api_reference.html")
    ids = _ids(page)
    missing = sorted(f"{name} (entry {target})" for name, target in _public_names().items() if target not in ids)
    assert not missing, ("public names of fmlib without an entry in the API reference (rebuild the book if they "
                         "are new):\n  " + "\n  ".join(missing))
    for modname in _public_modules():
        assert f"module-{modname}" in ids, modname


def test_api_citations_are_numbered_links_to_the_equations():
    page = _built("api_reference.html")
    raw = sorted(set(re.findall(r"\beq-[a-z0-9]+(?:-[a-z0-9]+)*\b", _text(page))))
    assert not raw, f"raw equation labels in the API reference: {raw}"
    links = re.findall(r'<a class="reference internal" href="([\w.]+\.html)#equation-(eq-[\w-]+)">\((\d+)\)</a>',
                       page)
    cited = {label for path in (ROOT / "fmlib").rglob("*.py") for label in CITATION.findall(path.read_text())}
    assert {label for _, label, _ in links} == cited
    for target, label, number in links:
        target_page = (SITE / "book" / target).read_text(encoding="utf-8")
        # the link lands on the equation, on the page that defines it, and shows the number that equation has there
        assert f'id="equation-{label}"' in target_page, (target, label)
        # (the number itself links to the equation's entry in the index: its code and checks)
        assert re.search(rf'<span class="eqno"><a class="fmbook-eqno reference internal" '
                         rf'href="equation_index.html#index-{label}"[^>]*>\({number}\)</a>'
                         rf'<a class="headerlink" href="#equation-{label}"', target_page), (target, label, number)
        assert LABELS[label].rsplit(".", 1)[0] == target.rsplit(".", 1)[0], (label, LABELS[label], target)


def test_equation_index_is_generated():
    page = _built("equation_index.html")
    text = " ".join(_text(page).split())
    listed = set(re.findall(r'href="[\w.]+\.html#equation-(eq-[\w-]+)"', page))
    assert set(LABELS) <= listed, f"equations missing from the index: {sorted(set(LABELS) - listed)}"
    assert not re.search(r"\beq-[a-z0-9]+(?:-[a-z0-9]+)*\b", text), "a raw label in the index"
    m = re.search(r"The book has (\d+) labelled equations: (\d+) are implemented by fmlib code that cites them, "
                  r"(\d+) are checked by an executed cell, and (\d+) are neither", text)
    assert m, "the index's summary sentence is missing"
    n_all, n_code, n_checked, n_none = map(int, m.groups())
    assert n_all == len(LABELS)
    assert n_none == text.count("No code and no checking cell.")
    assert n_checked > 0 and n_code > 0
    # every link to a checking cell or an API entry lands on an anchor that exists
    for target, anchor in set(re.findall(r'href="([\w.]+\.html)#((?:check-|fmlib\.)[^"]+)"', page)):
        assert anchor in _ids((SITE / "book" / target).read_text(encoding="utf-8")), (target, anchor)


def test_checking_cells_link_back():
    """A chapter shows, above each checking cell, the equations it checks, linked, and a link to the index."""
    page = _built("04_conditional_to_marginal.html")
    notes = re.findall(r'<p class="fmbook-checks" id="(check-[^"]+)">(.*?)</p>', page, flags=re.S)
    assert notes
    index = _built("equation_index.html")
    for anchor, body in notes:
        assert 'href="equation_index.html#index-eq-' in body and "#equation-eq-" in body, body
        assert f'04_conditional_to_marginal.html#{anchor}"' in index, anchor
