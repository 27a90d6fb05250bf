"""Sphinx extension of the book: ship the JavaScript the pages need, so the static HTML needs no CDN.

* plotly.js: the copy bundled inside the installed ``plotly`` Python package (the same version that produced the
  figures' JSON) goes to ``_build/html/_static/plotly.min.js`` and is loaded only on pages that contain a figure.
* MathJax 3: ``tex-svg-full.js`` (all TeX extensions, SVG output, no font files) from the ``django-static-mathjax``
  package (MathJax's own es5 build, static files only) goes to ``_static/mathjax/``; ``mathjax_path`` in
  ``_config.yml`` points there.
* plotly's own output: a plain ``fig.show()`` (or a figure as a cell's last expression) in a kernel emits only
  ``application/vnd.plotly.v1+json`` (plotly >= 6 picks the ``plotly_mimetype`` renderer in any ipykernel). MyST-NB
  renders every MIME type of an output while parsing, before ``nb_mime_priority_overrides`` picks one, and drops this
  one with "skipping unknown output mime type". :class:`PlotlyJsonRenderer` is a MyST-NB MIME render plugin that
  draws that JSON with the shipped plotly.js (no CDN, no require.js), so such figures appear in the book instead of
  vanishing. ``nb_mime_priority_overrides`` in ``_config.yml`` prefers it to plotly's ``text/html`` variants, which
  load plotly.js and MathJax 2 from CDNs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil

PLOTLY_JS = "plotly.min.js"
PLOTLY_MIME = "application/vnd.plotly.v1+json"


class PlotlyJsonRenderer:
    """MyST-NB MIME render plugin (protocol ``myst_nb.core.render.MimeRenderPlugin``) for plotly's JSON output.

    Renders ``application/vnd.plotly.v1+json`` (a figure dict: data, layout, optional frames and config) as a raw-HTML
    ``<div class="plotly-graph-div">`` and a script that calls ``Plotly.newPlot`` with the plotly.js that this
    extension ships. The div id is a hash of the JSON, so rebuilding gives identical HTML.
    """

    mime_priority_overrides = ()  # the priority is set in _config.yml (nb_mime_priority_overrides), in one place

    @staticmethod
    def handle_mime(renderer, data, inline):
        if data.mime_type != PLOTLY_MIME:
            return None
        import plotly.io as pio
        from docutils import nodes

        fig = dict(data.content) if isinstance(data.content, dict) else json.loads(data.content)
        config = {"responsive": True, "displaylogo": False, **(fig.pop("config", None) or {})}
        text = json.dumps(fig, sort_keys=True, separators=(",", ":"))
        div_id = "fmbook-" + hashlib.sha1(text.encode()).hexdigest()[:12]
        html = pio.to_html(fig, include_plotlyjs=False, include_mathjax=False, full_html=False, div_id=div_id,
                           config=config, validate=False, auto_play=False, default_width="100%",
                           default_height=525)
        return [nodes.raw(text=html, format="html", classes=["output", "text_html"])]


def _register_mime_renderer() -> None:
    """Add :class:`PlotlyJsonRenderer` to the plugins MyST-NB consults for every output MIME type.

    MyST-NB finds such plugins only through the entry-point group ``myst_nb.mime_renderers`` of installed
    distributions; this local extension is not one, so it extends MyST-NB's lookup function instead.
    """
    from myst_nb.core import render

    if getattr(render.load_mime_renders, "_fmbook", False):
        return
    entry_point_plugins = render.load_mime_renders

    def load_mime_renders():
        return [*entry_point_plugins(), PlotlyJsonRenderer]

    load_mime_renders._fmbook = True
    render.load_mime_renders = load_mime_renders


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


def _fix_page_scripts(app, pagename, templatename, context, doctree):
    """Two defects of the theme's pages that show as JavaScript errors in every browser console.

    * sphinx-thebe and sphinx-togglebutton add inline scripts (``const THEBE_JS_URL = ...``) that Sphinx registers
      twice (once as file ``None``, once as ``""``), and the second ``const`` is a SyntaxError: keep the first of
      equal scripts.
    * pydata-sphinx-theme logs "Got invalid theme mode" when ``default_mode`` is unset: use "auto" (the reader's
      system setting).
    """
    context.setdefault("default_mode", "auto")
    scripts = context.get("script_files")
    if isinstance(scripts, list):
        seen, kept = set(), []
        for js in scripts:
            key = (getattr(js, "filename", js) or "", tuple(sorted(getattr(js, "attributes", {}).items())))
            if key not in seen:
                seen.add(key)
                kept.append(js)
        scripts[:] = kept


def _copy_static(app, exception):
    if exception is None and app.builder.format == "html":
        static = os.path.join(app.outdir, "_static")
        os.makedirs(static, exist_ok=True)
        shutil.copyfile(_plotly_js_path(), os.path.join(static, PLOTLY_JS))
        os.makedirs(os.path.join(static, "mathjax"), exist_ok=True)
        shutil.copyfile(_mathjax_js_path(), os.path.join(static, "mathjax", "tex-svg-full.js"))


def setup(app):
    _register_mime_renderer()
    app.connect("html-page-context", _add_plotly_to_page)
    app.connect("html-page-context", _fix_page_scripts, priority=900)  # after every other extension's additions
    app.connect("build-finished", _copy_static)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
