"""Figures for the book: one place for the code that shows interactive plotly figures in every setting.

:func:`show_plotly` is how chapters display a plotly figure. It emits one output with two representations:

* ``text/html``: a ``<div>`` and a script that draws it with ``window.Plotly``. The built book ships plotly.js itself
  (the Sphinx extension ``_ext/fmbook_static.py`` copies the plotly.js bundled with the installed plotly package into
  ``_build/html/_static`` and loads it only on pages that contain a figure), so the static HTML needs no kernel and
  no network. The div id is derived from the figure's content, so re-executing a notebook gives identical output.
* ``application/vnd.plotly.v1+json``: the figure itself, which JupyterLab and VS Code render natively.

In Google Colab, which renders neither of these without help, it falls back to plotly's ``colab`` renderer.
"""

from __future__ import annotations

import hashlib
import json
import sys

__all__ = ["show_plotly", "PlotlyFigure"]


class PlotlyFigure:
    """A display object for a plotly figure (see the module docstring). Created by :func:`show_plotly`."""

    def __init__(self, fig, height: int | None = None):
        import plotly.io as pio

        self.fig = fig
        self.height = height
        self._json = pio.to_json(fig, validate=True, remove_uids=True)
        self.div_id = "fmbook-" + hashlib.sha1(self._json.encode()).hexdigest()[:12]

    def _repr_html_(self) -> str:
        import plotly.io as pio

        # include_plotlyjs=False: the book loads plotly.js from its own _static folder, never from a CDN
        html = pio.to_html(self.fig, include_plotlyjs=False, full_html=False, div_id=self.div_id,
                           default_height=self.height or "100%", config={"responsive": True, "displaylogo": False})
        return html

    def _repr_mimebundle_(self, include=None, exclude=None):
        return {"text/html": self._repr_html_(), "application/vnd.plotly.v1+json": json.loads(self._json)}


def show_plotly(fig, height: int | None = None):
    """Display a plotly figure so that it works in the static book, JupyterLab and Colab (see module docstring).

    Args:
        fig: a ``plotly.graph_objects.Figure``.
        height: optional height in pixels.

    Returns:
        None; the figure is displayed.

    Raises:
        ValueError: if ``fig`` is not a plotly figure.
    """
    import plotly.graph_objects as go
    from IPython.display import display

    if not isinstance(fig, go.Figure):
        raise ValueError(f"fig must be a plotly.graph_objects.Figure, got {type(fig).__name__}")
    if "google.colab" in sys.modules:
        fig.show(renderer="colab")
        return None
    display(PlotlyFigure(fig, height))
    return None
