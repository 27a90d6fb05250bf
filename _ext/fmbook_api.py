"""Sphinx extension of the book: fmlib's API reference and the equation index, both built from the sources.

* **From code to book.** fmlib's docstrings cite the book's equations by label in double backticks
  (````eq-cond-path````). :func:`_link_equation_citations` (an ``autodoc-process-docstring`` handler) turns each into
  the ``:eq:`` role, which renders the equation's number with a link to it in its chapter, and records which API
  entry cites which label.
* **Checking cells.** A notebook code cell that checks labelled equations carries the cell metadata
  ``"fmbook": {"checks": ["eq-...", ...]}``. :func:`_collect_page` gives each such cell an anchor (``check-<cell id>``)
  and a short line above it, "This cell checks (30), (31).", that links to the equations and to their rows of the
  index; it also records every labelled display equation of every page with the section it appears in.
* **From an equation.** Every labelled equation's number links to its row of the index
  (:func:`_link_equation_numbers`).
* **From book to code and checks.** The directive ``fmbook-equation-index`` (page ``book/equation_index.md``) lists
  every labelled equation, chapter by chapter: where it is derived, the API entries whose docstrings cite it and the
  cells that check it, and at the end the equations that nothing implements or checks, with their count. The page is
  read after every other page at every build (:func:`_read_index_last`), so it sees all of them.
* **The API pages.** The directive ``fmlib-api`` (page ``book/api_reference.rst``) writes one section per public
  module of fmlib (every module whose name does not start with an underscore, in the order in which fmlib's package
  docstring names them, then any others) with ``automodule`` and all the names of the module's ``__all__``, and a
  first section that lists ``fmlib.__all__`` with a link to each entry. A new module or name appears without any
  edit here.

Unknown labels are errors: a docstring's ``:eq:`` and a cell's ``checks`` entry both resolve through Sphinx's math
domain, which warns about an equation it does not know (and ``-W`` makes that fail the build).
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import re
import shutil

from docutils import nodes
from docutils.statemachine import StringList
from sphinx import addnodes
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import make_refnode, nested_parse_with_titles

INDEX_DOC = "book/equation_index"
API_DOC = "book/api_reference"
CSS = "fmbook_api.css"
CITATION = re.compile(r"``(eq-[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*)``")
ANCHOR = "fmbook-anchor"  # reftype of the pending references to a page and an anchor (resolved below)


# --------------------------------------------------------------------------------------------------------------
# the data kept in the build environment, per page (so that a page read again replaces its own entries)
def _store(env, key: str) -> dict:
    if not hasattr(env, key):
        setattr(env, key, {})
    return getattr(env, key)


def _purge(app, env, docname):
    for key in ("fmbook_equations", "fmbook_checks", "fmbook_citations"):
        _store(env, key).pop(docname, None)


def _merge(app, env, docnames, other):
    for key in ("fmbook_equations", "fmbook_checks", "fmbook_citations"):
        theirs = getattr(other, key, {})
        _store(env, key).update({d: theirs[d] for d in docnames if d in theirs})


# --------------------------------------------------------------------------------------------------------------
# code to book: docstrings
def _link_equation_citations(app, what, name, obj, options, lines):
    """Replace ````eq-label```` in a docstring by ``:eq:`eq-label``` and note that the entry ``name`` cites it."""
    if what == "data" and lines and type(obj).__doc__ and lines[0].strip() == type(obj).__doc__.strip().split("\n")[0]:
        lines[:] = []  # a constant without a #: comment: not the docstring of its type (dict, tuple, float)
    cited = _store(app.env, "fmbook_citations").setdefault(app.env.docname, [])
    for i, line in enumerate(lines):
        labels = CITATION.findall(line)
        if labels:
            lines[i] = CITATION.sub(r":eq:`\1`", line)
            for label in labels:
                entry = [label, what, name]
                if entry not in cited:
                    cited.append(entry)


# --------------------------------------------------------------------------------------------------------------
# the pages: labelled equations and checking cells
def _sections(doctree) -> dict[int, tuple[list, str]]:
    """For every node under a section: id(node) -> (the innermost titled section's title, its id).

    Only sections with a title count: sphinx-proof wraps a theorem's body in an untitled section ("proof-content").
    The title is kept as nodes (a copy), so that math in it is typeset where the index shows it.
    """
    found = {}

    def walk(node, current):
        if (isinstance(node, nodes.section) and node.get("ids") and node.children
                and isinstance(node[0], nodes.title)):
            current = ([child.deepcopy() for child in node[0].children], node["ids"][0])
        if current is not None:
            found[id(node)] = current
        for child in getattr(node, "children", ()):
            walk(child, current)

    walk(doctree, None)
    return found


def _eq_ref(label, docname):
    """A reference to an equation, resolved by Sphinx's math domain like ``{eq}`` (it shows the number)."""
    ref = addnodes.pending_xref("", nodes.Text(label), refdomain="math", reftype="eq", reftarget=label,
                                refexplicit=False, refwarn=True, refdoc=docname)
    return ref


def _anchor_ref(docname, target_doc, anchor, content, classes=()):
    """A reference to ``anchor`` on page ``target_doc`` (resolved by :func:`_resolve_anchor`)."""
    ref = addnodes.pending_xref("", refdomain="", reftype=ANCHOR, reftarget=f"{target_doc}#{anchor}",
                                refexplicit=True, refwarn=True, refdoc=docname)
    ref += content if isinstance(content, nodes.Node) else nodes.inline("", "", *content)
    if classes:
        ref["classes"] += list(classes)
    return ref


def _copy(title_nodes) -> list:
    """Fresh copies of a section title's nodes (each place that shows it needs its own)."""
    return [node.deepcopy() for node in title_nodes or []]


def _cell_ids(env, docname):
    """The notebook's cell ids by position (None where a cell has none, or for a page that is no notebook)."""
    path = env.doc2path(docname)
    if not str(path).endswith(".ipynb"):
        return []
    with open(path, encoding="utf-8") as f:
        return [cell.get("id") for cell in json.load(f).get("cells", [])]


def _collect_page(app, doctree):
    env = app.env
    docname = env.docname
    if docname == API_DOC:
        # "Bases: object" says nothing: keep the line only for classes that derive from another
        for para in list(doctree.findall(nodes.paragraph)):
            if para.astext().strip() in ("Bases: object", "Bases:"):
                para.parent.remove(para)
    sections = _sections(doctree)
    equations = _store(env, "fmbook_equations")[docname] = []
    for node in doctree.findall(nodes.math_block):
        label = node.get("label")
        if label:
            section = sections.get(id(node), ([], ""))
            equations.append([label, section[0], section[1]])

    checks = _store(env, "fmbook_checks")[docname] = []
    cell_ids = None
    for node in list(doctree.findall(nodes.container)):
        if node.get("nb_element") != "cell_code":
            continue
        labels = ((node.get("cell_metadata") or {}).get("fmbook") or {}).get("checks") or []
        if not labels:
            continue
        if cell_ids is None:
            cell_ids = _cell_ids(env, docname)
        index = node.get("cell_index", 0)
        cell_id = cell_ids[index] if index < len(cell_ids) and cell_ids[index] else f"cell-{index + 1}"
        anchor = nodes.make_id(f"check-{cell_id}")
        section = sections.get(id(node), ([], ""))
        checks.append([list(labels), anchor, section[0], section[1]])
        # the line above the cell: what it checks, each number linked to its equation, and the index
        note = nodes.paragraph(classes=["fmbook-checks"], ids=[anchor])
        note += nodes.Text("This cell checks ")
        for i, label in enumerate(labels):
            if i:
                note += nodes.Text(" and " if i == len(labels) - 1 else ", ")
            note += _eq_ref(label, docname)
        note += nodes.Text(" (")
        note += _anchor_ref(docname, INDEX_DOC, _row_id(labels[0]), nodes.Text("equation index"))
        note += nodes.Text(").")
        doctree.ids[anchor] = note
        node.parent.insert(node.parent.index(node), note)


def _resolve_anchor(app, env, node, contnode):
    if node.get("reftype") != ANCHOR:
        return None
    target_doc, anchor = node["reftarget"].split("#", 1)
    if target_doc not in env.all_docs:
        return None
    return make_refnode(app.builder, node["refdoc"], target_doc, anchor, contnode)


def _resolve_fmlib_name(app, env, node, contnode):
    """Python references that name an fmlib object by another of its names, resolved to its API entry.

    ``fmlib.save_model`` (the package's re-export of :func:`fmlib.checkpoints.save_model`), a bare ``solve`` in the
    package's docstring, and a method that a class inherits (``VPDiffusionPath.sample``, documented on
    ``GaussianPath``): Sphinx looks only for the exact dotted name in the current module and class.
    """
    if node.get("refdomain") != "py":
        return None
    py = env.get_domain("py")
    objects = py.objects
    target = node["reftarget"].lstrip("~.")
    name = target.split(".")[-1]
    candidates = []
    if target.startswith("fmlib.") and target.count(".") == 1 or "." not in target:
        candidates = [key for key in objects if key.startswith("fmlib.") and key.count(".") == 2
                      and key.endswith("." + name) and not key.startswith("fmlib._")]
    if not candidates and node.get("py:class") and "." not in target:
        try:
            cls = getattr(importlib.import_module(node.get("py:module")), node.get("py:class").split(".")[0])
        except (ImportError, AttributeError, TypeError, ValueError):
            cls = None
        for base in getattr(cls, "__mro__", ())[1:]:
            key = f"{base.__module__}.{base.__qualname__}.{name}"
            if key in objects:
                candidates = [key]
                break
    if len(candidates) != 1:
        return None
    return py.resolve_xref(env, node["refdoc"], app.builder, "obj", candidates[0], node, contnode)


def _read_index_last(app, env, docnames):
    """Read the API page and the index at every build, and last (they use what every other page recorded)."""
    for doc in (API_DOC, INDEX_DOC):
        if doc in docnames:
            docnames.remove(doc)
            docnames.append(doc)


def _always_outdated(app, env, added, changed, removed):
    return [doc for doc in (API_DOC, INDEX_DOC) if doc in env.found_docs]


# --------------------------------------------------------------------------------------------------------------
# book to code and checks: the index
def _row_id(label: str) -> str:
    return nodes.make_id(f"index-{label}")


def _toc_order(env) -> list[str]:
    """The pages in the order of the table of contents, then any others."""
    order, seen = [], set()

    def visit(doc):
        if doc in seen:
            return
        seen.add(doc)
        order.append(doc)
        for child in env.toctree_includes.get(doc, []):
            visit(child)

    visit(env.config.root_doc)
    return order + sorted(set(env.all_docs) - seen)


def _short_name(what: str, name: str) -> str:
    """``fmlib.paths.GaussianPath.flow`` -> ``GaussianPath.flow``; a module keeps its full name."""
    parts = name.split(".")
    return name if what == "module" or len(parts) < 3 else ".".join(parts[2:])


class EquationIndex(SphinxDirective):
    """``fmbook-equation-index``: every labelled equation of the book with its code and its checks."""

    has_content = False

    def run(self):
        env = self.env
        here = env.docname
        equations = _store(env, "fmbook_equations")
        checks = _store(env, "fmbook_checks")
        citations = _store(env, "fmbook_citations")

        code = {}  # label -> [(what, name)]
        for doc in sorted(citations):
            for label, what, name in citations[doc]:
                if (what, name) not in code.setdefault(label, []):
                    code[label].append((what, name))
        checked = {}  # label -> [(docname, anchor, section title)]
        order = _toc_order(env)
        for doc in order:
            for labels, anchor, title, _ in checks.get(doc, []):
                for label in labels:
                    checked.setdefault(label, []).append((doc, anchor, title))

        out, todo, n_all, n_code, n_checked = [], [], 0, 0, 0
        for doc in order:
            rows = [e for e in equations.get(doc, []) if e[0].startswith("eq-")]
            if not rows or doc == here:
                continue
            chapter = env.titles[doc].astext() if doc in env.titles else doc
            section = nodes.section(ids=[nodes.make_id(f"index-{doc}")])
            section += nodes.title(text=chapter)
            lst = nodes.definition_list(classes=["fmbook-eq-index"])
            for label, sec_title, sec_id in rows:
                n_all += 1
                item = nodes.definition_list_item(ids=[_row_id(label)])
                term = nodes.term()
                term += _eq_ref(label, here)
                term += nodes.Text(" in ")
                term += _anchor_ref(here, doc, sec_id, _copy(sec_title) or nodes.Text(chapter))
                item += term
                body = nodes.definition()
                entries = code.get(label, [])
                cells = checked.get(label, [])
                n_code += bool(entries)
                n_checked += bool(cells)
                if entries:
                    para = nodes.paragraph(classes=["fmbook-index-code"])
                    para += nodes.Text("Code: ")
                    for i, (what, name) in enumerate(entries):
                        if i:
                            para += nodes.Text(", ")
                        para += self._api_ref(what, name)
                    body += para
                if cells:
                    para = nodes.paragraph(classes=["fmbook-index-checks"])
                    para += nodes.Text("Checked in: ")
                    seen = {}
                    for i, (cell_doc, anchor, title) in enumerate(cells):
                        if i:
                            para += nodes.Text("; ")
                        where = _copy(title) or [nodes.Text(env.titles[cell_doc].astext())]
                        cell_chapter = env.titles[cell_doc].astext() if cell_doc in env.titles else cell_doc
                        if cell_doc != doc and nodes.inline("", "", *_copy(title)).astext() != cell_chapter:
                            where.insert(0, nodes.Text(f"{cell_chapter}: "))
                        key = (cell_doc, nodes.inline("", "", *_copy(where)).astext())
                        seen[key] = seen.get(key, 0) + 1
                        if seen[key] > 1:
                            nth = {2: "second", 3: "third", 4: "fourth"}.get(seen[key], f"{seen[key]}th")
                            where.append(nodes.Text(f" ({nth} cell)"))
                        para += _anchor_ref(here, cell_doc, anchor, where)
                    body += para
                if not entries and not cells:
                    body += nodes.paragraph(text="No code and no checking cell.",
                                            classes=["fmbook-index-none"])
                    todo.append((label, doc))
                item += body
                lst += item
            section += lst
            out.append(section)

        summary = nodes.paragraph()
        summary += nodes.Text(
            f"The book has {n_all} labelled equations: {n_code} are implemented by fmlib code that cites them, "
            f"{n_checked} are checked by an executed cell, and {len(todo)} are neither implemented nor checked "
            "(listed at the end).")
        rest = nodes.section(ids=["index-unchecked"])
        rest += nodes.title(text="Equations without code or check")
        para = nodes.paragraph()
        if todo:
            para += nodes.Text(f"{len(todo)} of {n_all} equations are neither implemented in fmlib nor checked by "
                               "a cell; each number links to the equation:")
        else:
            para += nodes.Text("Every labelled equation is implemented or checked.")
        rest += para
        chapters = nodes.bullet_list()
        for doc in dict.fromkeys(doc for _, doc in todo):
            item = nodes.paragraph()
            item += nodes.Text((env.titles[doc].astext() if doc in env.titles else doc) + ": ")
            for i, label in enumerate(label for label, d in todo if d == doc):
                if i:
                    item += nodes.Text(", ")
                item += _eq_ref(label, here)
            chapters += nodes.list_item("", item)
        if todo:
            rest += chapters
        return [summary, *out, rest]

    def _api_ref(self, what, name):
        reftype = "mod" if what == "module" else "obj"
        ref = addnodes.pending_xref("", refdomain="py", reftype=reftype, reftarget=name, refexplicit=True,
                                    refwarn=True, refdoc=self.env.docname)
        ref += nodes.literal(text=_short_name(what, name), classes=["xref", "py", f"py-{reftype}"])
        return ref


# --------------------------------------------------------------------------------------------------------------
# the API pages
def _public_modules(package) -> list[str]:
    """fmlib's public modules: in the order the package docstring names them (``:mod:`fmlib.x```), then the rest."""
    names = [m.name for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_")]
    named = re.findall(r":mod:`fmlib\.(\w+)`", package.__doc__ or "")
    ordered = [n for n in dict.fromkeys(named) if n in names]
    return ordered + sorted(set(names) - set(ordered))


def _home_module(package, name: str, modules: list[str]) -> str | None:
    """The public module whose ``__all__`` defines ``name`` (where its API entry is)."""
    obj = getattr(package, name)
    home = getattr(obj, "__module__", None)
    if home and home.startswith("fmlib.") and name in getattr(importlib.import_module(home), "__all__", [name]):
        return home
    for mod in modules:
        module = importlib.import_module(f"fmlib.{mod}")
        if name in getattr(module, "__all__", []) and getattr(module, name) is obj:
            return module.__name__
    return None


def _first_line(obj) -> str:
    doc = (getattr(obj, "__doc__", None) or "").strip()
    if not doc or isinstance(obj, (dict, tuple, list, str, int, float)):
        return ""
    return CITATION.sub(r":eq:`\1`", doc.split("\n\n")[0].replace("\n", " ").strip())


def _value_annotation(obj) -> list[str]:
    """A dict of functions or classes shown by their names (``{'moons': sample_moons}``), not by their reprs."""
    if isinstance(obj, dict) and any(callable(v) for v in obj.values()):
        items = ", ".join(f"{k!r}: {getattr(v, '__qualname__', None) or repr(v)}" for k, v in obj.items())
        return [f"   :annotation: = {{{items}}}"]
    return []


class FmlibApi(SphinxDirective):
    """``fmlib-api``: the API reference of every public module of fmlib, generated at every build."""

    has_content = False

    @staticmethod
    def _undocumented_data(mod: str) -> list[str]:
        """Entries for the names of ``__all__`` that ``automodule`` leaves out: those without a docstring.

        Constants without a ``#:`` comment get ``autodata`` (their value), functions and classes without a
        docstring ``autofunction`` and ``autoclass`` (their signature), so that every public name has an entry.
        """
        import inspect

        from sphinx.pycode import ModuleAnalyzer

        module = importlib.import_module(f"fmlib.{mod}")
        attr_docs = ModuleAnalyzer.for_module(module.__name__).find_attr_docs()
        lines = []
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name, None)
            if inspect.ismodule(obj) or ("", name) in attr_docs:
                continue
            if inspect.isclass(obj) or inspect.isroutine(obj):
                if getattr(obj, "__doc__", None):
                    continue
                kind = "autoclass" if inspect.isclass(obj) else "autofunction"
                lines += [f".. {kind}:: fmlib.{mod}.{name}", "   :members:" if kind == "autoclass" else "", ""]
            else:
                lines += [f".. autodata:: fmlib.{mod}.{name}", *_value_annotation(obj), ""]
        return lines

    def run(self):
        package = importlib.import_module("fmlib")
        modules = _public_modules(package)
        lines = ["The package fmlib", "-----------------", "",
                 "``import fmlib`` gives these names; each links to its entry in the module that defines it.", ""]
        for name in package.__all__:
            home = _home_module(package, name, modules)
            summary = _first_line(getattr(package, name))
            target = f"{home}.{name}" if home else f"fmlib.{name}"
            lines.append(f"* :py:obj:`fmlib.{name} <{target}>`" + (f" -- {summary}" if summary else ""))
        lines += ["", "Modules:", ""]
        lines += [f"* :py:mod:`fmlib.{mod}`" for mod in modules]
        lines.append("")
        for mod in modules:
            title = f"fmlib.{mod}"
            lines += [title, "-" * len(title), "",
                      f".. automodule:: fmlib.{mod}",
                      "   :members:",
                      "   :show-inheritance:",
                      "   :member-order: bysource",
                      ""]
            lines += self._undocumented_data(mod)
        node = nodes.container()
        nested_parse_with_titles(self.state, StringList(lines, source="fmlib-api"), node)
        for mod in modules:
            self.env.note_dependency(importlib.import_module(f"fmlib.{mod}").__file__)
        return node.children


_EQNO = re.compile(r'<span class="eqno">\((\d+)\)(<a class="headerlink" href="#equation-(eq-[\w-]+)")')


def _link_equation_numbers(app, pagename, templatename, context, doctree):
    """An equation's number links to its entry in the index (its code and checks); the "#" beside it stays the
    permanent link to the equation itself."""
    body = context.get("body")
    if not body or INDEX_DOC not in app.env.all_docs or pagename == INDEX_DOC:
        return
    index = app.builder.get_relative_uri(pagename, INDEX_DOC)

    def link(m):
        row = _row_id(m.group(3))
        return (f'<span class="eqno"><a class="fmbook-eqno reference internal" href="{index}#{row}" '
                f'title="Its code and checks">({m.group(1)})</a>{m.group(2)}')

    context["body"] = _EQNO.sub(link, body)


# --------------------------------------------------------------------------------------------------------------
def _copy_css(app, exception):
    if exception is None and app.builder.format == "html":
        static = os.path.join(app.outdir, "_static")
        os.makedirs(static, exist_ok=True)
        shutil.copyfile(os.path.join(os.path.dirname(__file__), CSS), os.path.join(static, CSS))


def setup(app):
    app.add_directive("fmbook-equation-index", EquationIndex)
    app.add_directive("fmlib-api", FmlibApi)
    app.connect("autodoc-process-docstring", _link_equation_citations)
    app.connect("doctree-read", _collect_page)
    app.connect("missing-reference", _resolve_anchor)
    app.connect("missing-reference", _resolve_fmlib_name)
    app.connect("env-purge-doc", _purge)
    app.connect("env-merge-info", _merge)
    app.connect("env-before-read-docs", _read_index_last)
    app.connect("env-get-outdated", _always_outdated)
    app.connect("html-page-context", _link_equation_numbers)
    app.connect("build-finished", _copy_css)
    app.add_css_file(CSS)
    return {"version": "1.0", "env_version": 2, "parallel_read_safe": True, "parallel_write_safe": True}
