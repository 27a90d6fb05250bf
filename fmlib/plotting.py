"""Figures for the book: one place for the code that shows interactive plotly figures in every setting.

:func:`show_plotly` is how chapters display a plotly figure. It emits one output with two representations:

* ``text/html``: a ``<div>`` and a script that draws it with ``window.Plotly``. The built book ships plotly.js itself
  (the Sphinx extension ``_ext/fmbook_static.py`` copies the plotly.js bundled with the installed plotly package into
  ``_build/html/_static`` and loads it only on pages that contain a figure), so the static HTML needs no kernel and
  no network. The div id is derived from the figure's content, so re-executing a notebook gives identical output.
Only ``text/html`` is emitted (not plotly's own ``application/vnd.plotly.v1+json`` as well): the static book cannot
use the JSON, and storing every figure twice would double the notebooks' size. In a live Jupyter front end without
the book's plotly.js the figure shows a one-line note instead; the chapters' ipywidgets cells are the live
equivalent, and ``fig.show()`` works there too. In Google Colab :func:`show_plotly` uses plotly's ``colab`` renderer.
"""

from __future__ import annotations

import hashlib
import sys

__all__ = ["show_plotly", "PlotlyFigure", "density_path_figure"]


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
        note = (f'<script>if (!window.Plotly) {{ document.getElementById("{self.div_id}").innerHTML = '
                '"<em>This interactive figure is drawn by plotly.js, which the built book ships. In a live notebook '
                'run the widget cell that follows, or call fig.show().</em>"; }</script>')
        return html + note

    def _repr_mimebundle_(self, include=None, exclude=None):
        return {"text/html": self._repr_html_()}


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


def density_path_figure(x, y, densities, times, *, groups=None, group_label: str = "n", time_label: str = "t",
                        title: str = "", colorscale: str = "Viridis", height: int = 520, zmax=None):
    """A 2-D density that evolves in time, as a heatmap with a time slider and a play button.

    With ``groups``, the figure has one heatmap per group (e.g. per number of data points n) and buttons that choose
    which is shown; the time slider moves all of them. Everything is precomputed, so it works in the static HTML.

    Args:
        x: grid coordinates along the horizontal axis, shape (nx,).
        y: grid coordinates along the vertical axis, shape (ny,).
        densities: values on the grid, shape (n_times, ny, nx), or (n_groups, n_times, ny, nx) with ``groups``.
            Stored as float32 to keep pages small.
        times: the time of each frame, shape (n_times,), shown on the slider.
        groups: optional labels of the groups (length n_groups), shown on buttons as "<group_label> = <label>".
        group_label, time_label: names shown on the buttons and slider.
        title: figure title.
        colorscale: a plotly colour scale name.
        height: figure height in pixels.
        zmax: upper end of the colour scale per group (scalar or length n_groups); default: each group's 99th
            percentile over all frames (a fixed scale, so that the frames are comparable).

    Returns:
        a ``plotly.graph_objects.Figure``; display it with :func:`show_plotly`.

    Raises:
        ValueError: if the shapes of ``x``, ``y``, ``densities``, ``times`` and ``groups`` do not match.
    """
    import numpy as np
    import plotly.graph_objects as go

    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.float32)
    times = np.asarray(times, dtype=float)
    d = np.asarray(densities, dtype=np.float32)
    if d.ndim == 3:
        if groups is not None:
            raise ValueError(f"densities of shape {d.shape} have no group axis, but groups={groups!r} was given")
        d = d[None]
    elif d.ndim != 4 or groups is None or len(groups) != d.shape[0]:
        raise ValueError(f"densities must have shape (n_times, ny, nx), or (n_groups, n_times, ny, nx) with "
                         f"len(groups) == n_groups; got shape {d.shape} and groups={groups!r}")
    n_groups, n_times, ny, nx = d.shape
    if x.shape != (nx,) or y.shape != (ny,) or times.shape != (n_times,):
        raise ValueError(f"x, y and times must have shapes ({nx},), ({ny},) and ({n_times},) to match densities "
                         f"{d.shape}; got {x.shape}, {y.shape}, {times.shape}")
    if zmax is None:
        zmax = [float(np.percentile(d[g], 99)) or 1.0 for g in range(n_groups)]
    zmax = list(np.broadcast_to(np.asarray(zmax, dtype=float), (n_groups,)))

    def heatmaps(k):
        return [go.Heatmap(x=x, y=y, z=d[g, k], zmin=0.0, zmax=zmax[g], colorscale=colorscale, visible=(g == 0),
                           colorbar=dict(title="density"), hovertemplate="x=%{x:.2f}<br>y=%{y:.2f}<br>p=%{z:.3g}")
                for g in range(n_groups)]

    frames = [go.Frame(data=heatmaps(k), name=f"{times[k]:.3g}", traces=list(range(n_groups)))
              for k in range(n_times)]
    fig = go.Figure(data=heatmaps(0), frames=frames)
    slider = dict(active=0, currentvalue=dict(prefix=f"{time_label} = "), pad=dict(t=40),
                  steps=[dict(label=f"{times[k]:.3g}", method="animate",
                              args=[[f"{times[k]:.3g}"], dict(mode="immediate", frame=dict(duration=0, redraw=True),
                                                              transition=dict(duration=0))])
                         for k in range(n_times)])
    menus = [dict(type="buttons", direction="left", x=0.0, y=-0.08, xanchor="left", yanchor="top", showactive=False,
                  buttons=[dict(label="play", method="animate",
                                args=[None, dict(frame=dict(duration=300, redraw=True), fromcurrent=True)]),
                           dict(label="pause", method="animate",
                                args=[[None], dict(mode="immediate", frame=dict(duration=0, redraw=False))])])]
    if groups is not None:
        menus.append(dict(type="buttons", direction="left", x=1.0, y=1.12, xanchor="right", yanchor="bottom",
                          active=0, buttons=[dict(label=f"{group_label} = {lab}", method="restyle",
                                                  args=[{"visible": [g == i for g in range(n_groups)]}])
                                             for i, lab in enumerate(groups)]))
    fig.update_layout(title=title, height=height, sliders=[slider], updatemenus=menus,
                      xaxis=dict(title="x<sup>(1)</sup>", constrain="domain"),
                      yaxis=dict(title="x<sup>(2)</sup>", scaleanchor="x"), margin=dict(t=70, b=40))
    return fig
