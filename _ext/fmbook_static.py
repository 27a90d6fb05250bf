"""Sphinx extension of the book: ship the JavaScript the pages need, so the static HTML needs no CDN.

* plotly.js: the copy bundled inside the installed ``plotly`` Python package (the same version that produced the
  figures' JSON) goes to ``_build/html/_static/plotly.min.js`` and is loaded only on pages that contain a figure.
* MathJax 3: ``tex-svg-full.js`` (all TeX extensions, SVG output, no font files) from the ``django-static-mathjax``
  package (MathJax's own es5 build, static files only) goes to ``_static/mathjax/``; ``mathjax_path`` in
  ``_config.yml`` points there.
"""

from __future__ import annotations

import os
import shutil

PLOTLY_JS = "plotly.min.js"


def _plotly_js_path() -> str:
    import plotly

    return os.path.join(os.path.dirname(plotly.__file__), "package_data", PLOTLY_JS)


def _mathjax_js_path() -> str:
    import mathjax  # the django-static-mathjax distribution: MathJax's files, no Django needed

    return os.path.join(os.path.dirname(mathjax.__file__), "static", "mathjax", "es5", "tex-svg-full.js")


def _add_plotly_to_page(app, pagename, templatename, context, doctree):
    if "plotly-graph-div" in context.get("body", ""):
        # plain (not deferred) script in <head>: window.Plotly exists before the figures' inline scripts run
        app.add_js_file(PLOTLY_JS, priority=100)


def _copy_static(app, exception):
    if exception is None and app.builder.format == "html":
        static = os.path.join(app.outdir, "_static")
        os.makedirs(static, exist_ok=True)
        shutil.copyfile(_plotly_js_path(), os.path.join(static, PLOTLY_JS))
        os.makedirs(os.path.join(static, "mathjax"), exist_ok=True)
        shutil.copyfile(_mathjax_js_path(), os.path.join(static, "mathjax", "tex-svg-full.js"))


def setup(app):
    app.connect("html-page-context", _add_plotly_to_page)
    app.connect("build-finished", _copy_static)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
