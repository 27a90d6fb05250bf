"""Figures for the book: one place for the code that shows interactive plotly figures in every setting.

:func:`show_plotly` is how chapters display a plotly figure. It emits one output with two representations:

* ``text/html``: a ``<div>`` and a script that draws it with ``window.Plotly``. The built book ships plotly.js itself
  (the Sphinx extension ``_ext/fmbook_static.py`` copies the plotly.js bundled with the installed plotly package into
  ``_build/html/_static`` and loads it only on pages that contain a figure), so the static HTML needs no kernel and
  no network. The div id is derived from the figure's content, so re-executing a notebook gives identical output.

Only ``text/html`` is emitted (not also plotly's own JSON MIME type): the static book cannot
use the JSON, and storing every figure twice would double the notebooks' size. In a live Jupyter front end without
the book's plotly.js the figure shows a one-line note instead; the chapters' ipywidgets cells are the live
equivalent, and ``fig.show()`` works there too. In Google Colab :func:`show_plotly` uses plotly's ``colab`` renderer.
(A plain ``fig.show()`` also reaches the built book: ``_ext/fmbook_static.py`` draws plotly's JSON output.)

:func:`show_animation` shows a matplotlib animation as a self-contained ``to_jshtml`` player (no CDN), and
:func:`live_controls` wires ipywidgets sliders to a matplotlib drawing function for live notebooks (widget cells are
tagged ``remove-cell``: the static book shows a static figure instead).

:func:`use_book_style` sets the book's one figure style (matplotlib fonts and sizes for the text column), and
:func:`show_figure` shows a matplotlib figure as the book shows every static figure: one image per panel, at its
natural size, in a row that wraps, so that the panels sit side by side in the column of a desktop page and stack on
a phone, with their text never shrunk below its size (a caption comes from the cell's metadata, see the chapters).

:func:`glue` stores a computed number for the text of the book (MyST-NB's ``{glue:text}`` role), so that a sentence
quotes the value its own run computed.
"""

from __future__ import annotations

import hashlib
import sys

__all__ = ["glue", "use_book_style", "BOOK_STYLE", "COLUMN_INCHES", "show_figure", "show_plotly", "PlotlyFigure", "density_path_figure", "animation_html", "show_animation",
           "live_controls", "density_surface_figure", "trajectory_animation"]


def glue(name: str, value) -> None:
    """Store ``value`` under ``name`` for the book's prose: ``{glue:text}`name:.3f``` in a Markdown cell shows it.

    Calls MyST-NB's ``glue(name, value, display=False)`` (nothing shows in the notebook). Where MyST-NB is not
    installed (Colab, a bare Jupyter) it does nothing: only the built book reads glued values.

    Args:
        name: the key the text refers to.
        value: a Python ``int``, ``float`` or ``str`` (NumPy and 0-d torch scalars are converted, so that the stored
            text is a plain number that a format spec like ``:.3f`` can format).

    Raises:
        ValueError: if ``value`` is not a number or a string.
    """
    import numbers

    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:  # numpy scalars, 0-d tensors and arrays
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, str)):
        raise ValueError(f"glue: value must be an int, float or str, got {type(value).__name__} for {name!r}")
    value = value if isinstance(value, str) else (int(value) if isinstance(value, numbers.Integral) else float(value))
    try:
        from myst_nb import glue as _myst_glue
    except ImportError:
        return
    _myst_glue(name, value, display=False)


# The book's text column is 688 px wide at 1280 px (the theme's), about 6.9 in at 100 px per inch: a figure of
# COLUMN_INCHES or less is never shrunk on a desktop, and 10-point text renders at 13.9 px (9 points: 12.5 px).
COLUMN_INCHES = 6.8
BOOK_STYLE = {
    "figure.dpi": 100, "savefig.dpi": 100, "figure.figsize": (COLUMN_INCHES, 3.2),
    "font.size": 10, "axes.titlesize": 10, "axes.labelsize": 10, "xtick.labelsize": 9, "ytick.labelsize": 9,
    "legend.fontsize": 9, "figure.titlesize": 10, "axes.titlelocation": "center",
}


def use_book_style() -> None:
    """Set matplotlib's defaults to the book's figure style (:data:`BOOK_STYLE`): sizes for the text column and
    fonts that stay legible (at least 9 points, 12.5 px) when a figure is shown at its natural size."""
    import matplotlib

    matplotlib.rcParams.update(BOOK_STYLE)


class BookFigure:
    """A display object for a matplotlib figure shown by :func:`show_figure` (``text/html``; ``text/plain``: the alt
    text)."""

    def __init__(self, html: str, alt: str):
        self.html, self.alt = html, alt

    def _repr_html_(self) -> str:
        return self.html

    def __repr__(self) -> str:
        return f"<figure: {self.alt}>"


def _panels(fig):
    """The panels of a figure made as a grid of subplots, each with the colorbars drawn for it on its right, in
    reading order; None when the figure is not such a grid (twin or inset axes, colorbars elsewhere, artists
    drawn on the figure itself): then it is shown whole."""
    if fig.legends or fig.texts or fig.artists or fig.lines or fig.patches or fig.images or fig.subfigs:
        return None
    axes = [ax for ax in fig.axes if ax.get_visible()]
    bars = [ax for ax in axes if hasattr(ax, "_colorbar")]
    panels = [ax for ax in axes if ax not in bars]
    specs = [ax.get_subplotspec() for ax in panels]
    specs = [s if s is None else s.get_topmost_subplotspec() for s in specs]
    if len(panels) < 2 or None in specs:
        return None
    cells = [(spec.rowspan.start, spec.colspan.start) for spec in specs]
    if len(set(cells)) != len(cells):  # twin axes share a cell
        return None
    renderer = fig.canvas.get_renderer()
    groups = {id(ax): [ax] for ax in panels}
    for bar in bars:
        owner = getattr(getattr(bar._colorbar, "mappable", None), "axes", None)
        if owner is None or id(owner) not in groups:
            return None
        b, o = bar.get_window_extent(renderer), owner.get_window_extent(renderer)
        if b.x0 < o.x1:  # not on its right
            return None
        for other in panels:  # another panel between them: the colorbar serves several panels
            e = other.get_window_extent(renderer)
            if other is not owner and e.x0 >= o.x1 - 1 and e.x1 <= b.x0 + 1 and e.y0 < b.y1 and e.y1 > b.y0:
                return None
        groups[id(owner)].append(bar)
    order = sorted(range(len(panels)), key=lambda i: cells[i])
    return [groups[id(panels[i])] for i in order]


def _box(fig, group):
    from matplotlib.transforms import Bbox

    renderer = fig.canvas.get_renderer()
    box = Bbox.union([ax.get_tightbbox(renderer) for ax in group])
    return box.transformed(fig.dpi_scale_trans.inverted())


def show_figure(fig, alt: str, *, split: bool | None = None, resolution: float = 1.5) -> None:
    """Show a matplotlib figure the book's way, and close it.

    A figure that is a grid of subplots (``plt.subplots``), each with any colorbar on its right, is cut into its
    panels: each becomes its own image with its labels, title and colorbar, and the images sit in a row that wraps
    (side by side in a desktop column, stacked on a phone), in reading order. Any other figure (twin or inset axes,
    a figure-level legend or text, one panel) is one image. Each image is stored at ``resolution`` times the pixels
    it is shown at (sharp on high-density screens) and shown at its natural size of 100 px per inch, never wider
    than the column; a figure drawn within :data:`COLUMN_INCHES` is never shrunk on a desktop.

    The figure is displayed at once (``IPython.display.display`` of a ``BookFigure``: one ``text/html`` output,
    which a cell's ``mystnb.figure`` metadata turns into a numbered figure with a caption).

    Args:
        fig: a ``matplotlib.figure.Figure``; a figure-level title (``suptitle``) is removed: the caption says it.
        alt: the alt text, a non-empty str: what the figure shows, for a reader who cannot see it.
        split: None (default): cut the panels apart when the figure is a grid as above; False: one image; True:
            cut them apart, and raise if the figure is not such a grid.
        resolution: stored pixels per shown pixel, a number in [1, 4].

    Raises:
        ValueError: for a fig that is not a matplotlib Figure, an alt that is not a non-empty str, a split that is
            not None or a bool (or True for a figure that cannot be cut), or a resolution outside [1, 4].
    """
    import base64
    import html
    import io
    import numbers

    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure
    from IPython.display import display

    if not isinstance(fig, Figure):
        raise ValueError(f"fig must be a matplotlib Figure (e.g. from plt.subplots), got {type(fig).__name__}")
    if not isinstance(alt, str) or not alt.strip():
        raise ValueError(f"alt must be a non-empty str describing the figure, got {alt!r}")
    if split is not None and not isinstance(split, bool):
        raise ValueError(f"split must be None, True or False, got {split!r}")
    if isinstance(resolution, bool) or not isinstance(resolution, numbers.Real) or not 1 <= resolution <= 4:
        raise ValueError(f"resolution must be a number in [1, 4], got {resolution!r}")
    if fig._suptitle is not None:
        fig._suptitle.remove()
        fig._suptitle = None
    fig.canvas.draw()
    groups = None if split is False else _panels(fig)
    if split and groups is None:
        raise ValueError("split=True, but the figure is not a grid of subplots with colorbars on their right only "
                         "(twin or inset axes, or artists on the figure itself); use split=None or False")
    boxes = [_box(fig, g) for g in groups] if groups else ["tight"]
    images = []
    for i, box in enumerate(boxes):
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100 * float(resolution), bbox_inches=box, pad_inches=0.04)
        data = buf.getvalue()
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        label = alt if len(boxes) == 1 else f"{alt} (panel {i + 1} of {len(boxes)})"
        images.append(f'<img src="data:image/png;base64,{base64.b64encode(data).decode()}" '
                      f'alt="{html.escape(label)}" width="{round(width / resolution)}" '
                      f'style="max-width: 100%; height: auto; aspect-ratio: {width} / {height}">')
    plt.close(fig)
    markup = ('<div class="fm-figure" style="display: flex; flex-wrap: wrap; justify-content: center; '
              'align-items: flex-end; gap: 0 4px">' + "".join(images) + "</div>")
    display(BookFigure(markup, alt))


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
        # auto_play=False: an animated figure waits at its first frame for the reader's slider or play button
        html = pio.to_html(self.fig, include_plotlyjs=False, full_html=False, div_id=self.div_id, auto_play=False,
                           default_height=self.height or "100%", config={"responsive": True, "displaylogo": False})
        note = (f'<script>if (!window.Plotly) {{ document.getElementById("{self.div_id}").innerHTML = '
                '"<em>This interactive figure is drawn by plotly.js, which the built book ships. In a live notebook '
                'run the widget cell that follows, or call fig.show().</em>"; }</script>')
        return html + note

    def _repr_mimebundle_(self, include=None, exclude=None):
        return {"text/html": self._repr_html_()}

    def __repr__(self) -> str:
        # the text/plain that Jupyter stores next to the HTML: content-derived, so nbval sees the same text on re-runs
        return f"<PlotlyFigure {self.div_id}>"


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

    # frames carry only the new z values: visibility (the chosen group) and styling stay as the buttons set them,
    # and the page stays small
    frames = [go.Frame(data=[go.Heatmap(z=d[g, k]) for g in range(n_groups)], name=f"frame{k}",
                       traces=list(range(n_groups)))
              for k in range(n_times)]
    fig = go.Figure(data=heatmaps(0), frames=frames)
    # Layout (it must also work on a 390 px phone): the group buttons above the plot, on the left (plotly's toolbar
    # is on the right); below the x-axis title, play/pause on the left and the time slider beside them, so that
    # neither covers the other, the slider's "t = ..." label or the axis title
    slider = dict(active=0, x=0.3, len=0.7, y=0, yanchor="top", pad=dict(t=45, b=0),
                  currentvalue=dict(prefix=f"{time_label} = ", xanchor="left"),
                  steps=[dict(label=f"{times[k]:.3g}", method="animate",
                              # mode "next", not "immediate": a click fires two slider events, and an interrupted
                              # animation rejects its promise (an uncaught error in the console)
                              args=[[f"frame{k}"], dict(mode="next", frame=dict(duration=0, redraw=True),
                                                              transition=dict(duration=0))])
                         for k in range(n_times)])
    menus = [dict(type="buttons", direction="left", x=0.0, y=0, xanchor="left", yanchor="top", showactive=False,
                  pad=dict(t=70, r=0), buttons=[
                      dict(label="play", method="animate",
                           args=[None, dict(frame=dict(duration=300, redraw=True), fromcurrent=True)]),
                      dict(label="pause", method="animate",
                           args=[[None], dict(mode="immediate", frame=dict(duration=0, redraw=False))])])]
    if groups is not None:
        menus.append(dict(type="buttons", direction="left", x=0.0, y=1.0, xanchor="left", yanchor="bottom",
                          pad=dict(b=8), active=0,
                          buttons=[dict(label=f"{group_label} = {lab}", method="restyle",
                                        args=[{"visible": [g == i for g in range(n_groups)]}])
                                   for i, lab in enumerate(groups)]))
    top = 50 + (40 if title else 0)
    fig.update_layout(title=title, height=height, sliders=[slider], updatemenus=menus,
                      xaxis=dict(title="x<sup>(1)</sup>", constrain="domain"),
                      yaxis=dict(title="x<sup>(2)</sup>", scaleanchor="x"), margin=dict(t=top, b=130, l=50, r=20))
    return fig


# Matplotlib animations: to_jshtml, made self-contained and deterministic
_ANIM_ICONS = {  # matplotlib's player uses Font Awesome icons from a CDN; plain characters need no network
    "fa fa-minus": "&minus;", "fa fa-fast-backward": "|&#9664;&#9664;", "fa fa-step-backward": "|&#9664;",
    "fa fa-play fa-flip-horizontal": "&#9664;", "fa fa-pause": "&#8214;", "fa fa-play": "&#9654;",
    "fa fa-step-forward": "&#9654;|", "fa fa-fast-forward": "&#9654;&#9654;|", "fa fa-plus": "+",
}


def animation_html(anim, *, fps: float | None = None, default_mode: str = "loop") -> str:
    """The HTML of a matplotlib animation as a player (image, frame slider, play/pause buttons) with no network needs.

    It is ``anim.to_jshtml()`` (every frame embedded as a base64 PNG, so a page grows by about the size of the frames'
    PNGs: keep figures small, e.g. ``figsize=(4, 4), dpi=72`` and 20-40 frames) with two changes: the Font Awesome
    stylesheet that matplotlib loads from a CDN is removed (the buttons show plain characters), and the random id of
    the player is replaced by a hash of its content, so re-executing a notebook gives the same output.

    Args:
        anim: a ``matplotlib.animation.Animation`` (e.g. ``FuncAnimation``).
        fps: frames per second of playback; default: from the animation's interval.
        default_mode: what happens at the last frame: "loop", "once" or "reflect".

    Returns:
        the HTML, a str.

    Raises:
        ValueError: if ``anim`` is not a matplotlib animation or ``default_mode`` is not one of the three modes,
            or if ``fps`` is not positive.
    """
    import re

    from matplotlib.animation import Animation

    if not isinstance(anim, Animation):
        raise ValueError(f"anim must be a matplotlib.animation.Animation, got {type(anim).__name__}")
    if default_mode not in ("loop", "once", "reflect"):
        raise ValueError(f"default_mode must be 'loop', 'once' or 'reflect', got {default_mode!r}")
    if fps is not None and not fps > 0:
        raise ValueError(f"fps must be positive, got {fps!r}")
    html = anim.to_jshtml(fps=fps, default_mode=default_mode)
    html = re.sub(r'<link rel="stylesheet"\s+href="[^"]*font-awesome[^"]*">', "", html)
    html = re.sub(r'<i class="([^"]+)"></i>', lambda m: _ANIM_ICONS.get(m.group(1), ""), html)
    ids = set(re.findall(r"_anim_img([0-9a-f]{32})", html))
    for old in ids:
        html = html.replace(old, hashlib.sha1(html.replace(old, "").encode()).hexdigest()[:16])
    if re.search(r"(src|href)=\"https?:", html):
        raise RuntimeError("the animation's HTML still loads something from the network; matplotlib's player "
                           "template has changed, update fmlib.plotting.animation_html")
    return html


def show_animation(anim, *, fps: float | None = None, default_mode: str = "loop") -> None:
    """Display a matplotlib animation as a player that works in the static book, JupyterLab and Colab.

    Shows :func:`animation_html` and closes the animation's figure (so the notebook does not also show its first
    frame as a still image). Tag the cell ``nbval-ignore-output`` if the frames' pixels may differ across platforms.

    Args:
        anim: a ``matplotlib.animation.Animation``.
        fps, default_mode: see :func:`animation_html`.

    Returns:
        None; the player is displayed.

    Raises:
        ValueError: as :func:`animation_html`.
    """
    import matplotlib.pyplot as plt
    from IPython.display import HTML, display

    html = animation_html(anim, fps=fps, default_mode=default_mode)
    plt.close(anim._fig)
    display(HTML(html))


def _make_control(name, spec):
    import numbers

    import ipywidgets as widgets

    if isinstance(spec, widgets.ValueWidget):
        return spec
    if isinstance(spec, list) and len(spec) > 0:
        return widgets.SelectionSlider(options=spec, value=spec[0], description=name, continuous_update=False)
    if (isinstance(spec, tuple) and len(spec) in (3, 4)
            and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in spec)):
        lo, hi, step = spec[:3]
        value = spec[3] if len(spec) == 4 else lo
        if not (lo < hi and step > 0 and lo <= value <= hi):
            raise ValueError(f"control {name}={spec!r} must satisfy min < max, step > 0 and min <= value <= max")
        cls = widgets.IntSlider if all(isinstance(v, numbers.Integral) for v in spec) else widgets.FloatSlider
        kwargs = {} if cls is widgets.IntSlider else {"readout_format": ".3g"}
        return cls(min=lo, max=hi, step=step, value=value, description=name, continuous_update=False, **kwargs)
    raise ValueError(f"control {name}={spec!r} must be a tuple (min, max, step) or (min, max, step, value), "
                     f"a non-empty list of options, or an ipywidgets value widget")


def live_controls(draw, **controls):
    """Drive a matplotlib drawing function with ipywidgets sliders, in a live kernel (JupyterLab, Colab).

    Each control becomes a slider; whenever one is released, ``draw(**values)`` runs again and its figure replaces
    the previous one (``ipywidgets.interactive_output``). ``draw`` makes a new figure and ends with ``plt.show()``.

    Widgets need a kernel: in the static book they would be dead. Tag such a cell ``remove-cell`` (and
    ``nbval-ignore-output``) and show the same figure statically in a cell before it, e.g. a plotly figure with a
    precomputed slider, or ``draw`` called once with fixed values.

    Example::

        live_controls(draw_marginal, t=(0.0, 1.0, 0.05, 0.5), n=[1, 2, 5, 20], sigma_min=(0.01, 0.5, 0.01, 0.1),
                      n_steps=(1, 50, 1, 10))

    Args:
        draw: a function taking the controls' names as keyword arguments.
        **controls: name=spec, where spec is a tuple ``(min, max, step)`` or ``(min, max, step, value)`` (an
            ``IntSlider`` if all four are ints, else a ``FloatSlider``; the start value defaults to min), a
            non-empty list of options (a ``SelectionSlider``), or any ipywidgets value widget.

    Returns:
        the displayed ``ipywidgets.VBox`` (controls above the figure).

    Raises:
        ValueError: if ``draw`` is not callable, no control is given, or a control's spec is malformed (the error
            names the control).
    """
    import ipywidgets as widgets
    from IPython.display import display

    if not callable(draw):
        raise ValueError(f"draw must be a callable taking the controls as keyword arguments, got {draw!r}")
    if not controls:
        raise ValueError("live_controls needs at least one control, e.g. t=(0.0, 1.0, 0.05)")
    made = {name: _make_control(name, spec) for name, spec in controls.items()}
    out = widgets.interactive_output(draw, made)
    box = widgets.VBox([widgets.HBox(list(made.values()), layout=widgets.Layout(flex_flow="row wrap")), out])
    display(box)
    return box


def density_surface_figure(x, times, densities, *, title: str = "", x_label: str = "x", time_label: str = "t",
                           z_label: str = "density", colorscale: str = "Viridis", height: int = 520):
    """A one-dimensional density path p_t(x) as a 3-D surface over the (x, t) plane, to rotate and zoom.

    Everything is precomputed, so it works in the static HTML (display it with :func:`show_plotly`). Keep the grid
    small (e.g. 100 x 41 values) so that pages stay small.

    Args:
        x: grid coordinates, shape (nx,).
        times: times in [0, 1] of the rows, shape (n_times,).
        densities: p_t(x) on the grid, shape (n_times, nx) (row k is time ``times[k]``); stored as float32.
        title: figure title.
        x_label, time_label, z_label: axis titles.
        colorscale: a plotly colour scale name.
        height: figure height in pixels.

    Returns:
        a ``plotly.graph_objects.Figure`` with one ``go.Surface``.

    Raises:
        ValueError: if the shapes of ``x``, ``times`` and ``densities`` do not match or a value is not finite.
    """
    import numpy as np
    import plotly.graph_objects as go

    x = np.asarray(x, dtype=np.float32)
    times = np.asarray(times, dtype=np.float32)
    d = np.asarray(densities, dtype=np.float32)
    if x.ndim != 1 or times.ndim != 1 or d.shape != (times.shape[0], x.shape[0]):
        raise ValueError(f"densities must have shape (len(times), len(x)) = ({times.shape[0] if times.ndim == 1 else '?'}, "
                         f"{x.shape[0] if x.ndim == 1 else '?'}) for 1-D x and times; got densities {d.shape}, "
                         f"x {x.shape}, times {times.shape}")
    if not (np.isfinite(x).all() and np.isfinite(times).all() and np.isfinite(d).all()):
        raise ValueError("x, times and densities must be finite")
    fig = go.Figure(go.Surface(x=x, y=times, z=d, colorscale=colorscale, colorbar=dict(title=z_label),
                               hovertemplate=f"{x_label}=%{{x:.2f}}<br>{time_label}=%{{y:.2f}}<br>{z_label}=%{{z:.3g}}"
                                             "<extra></extra>"))
    fig.update_layout(title=title, height=height, margin=dict(l=0, r=40, t=50, b=0),
                      scene=dict(xaxis_title=x_label, yaxis_title=time_label, zaxis_title=z_label,
                                 camera=dict(eye=dict(x=1.5, y=-1.7, z=0.9))))
    return fig


def trajectory_animation(trajectory, *, max_frames: int = 16, n_paths: int = 30, lim: float | None = None,
                         title: str = "samples moving along the flow", figsize=(4.0, 4.0), dpi: int = 50,
                         interval: int = 150):
    """A matplotlib animation of points carried by a flow from t = 0 to t = 1, with the paths drawn so far.

    Show it with :func:`show_animation` (a ``to_jshtml`` player that works in the static book). Each frame is an
    embedded PNG (about 10-25 KB at the defaults: 200 x 200 pixels), so keep ``max_frames`` and the figure small.

    Args:
        trajectory: points on a uniform time grid t_k = k / (n_times - 1), shape (n_times, n, 2), e.g. the
            trajectory returned by ``fmlib.sample(..., return_trajectory=True)`` or ``fmlib.solve``; a torch tensor or
            a numpy array.
        max_frames: at most this many frames (evenly spaced grid times, always including t = 0 and t = 1); >= 2.
        n_paths: draw the paths of the first ``n_paths`` points (0: none); all n points are drawn as dots.
        lim: the axes show [-lim, lim]^2; default: the largest ``|coordinate|`` over the trajectory, plus 5 %.
        title: figure title (the current time t is appended).
        figsize, dpi: figure size in inches and resolution (pixels = figsize * dpi).
        interval: milliseconds between frames when playing.

    Returns:
        a ``matplotlib.animation.FuncAnimation`` (its figure stays open until :func:`show_animation` closes it).

    Raises:
        ValueError: if ``trajectory`` does not have shape (n_times, n, 2) with n_times >= 2 and n >= 1, is not finite,
            or ``max_frames`` < 2, ``n_paths`` < 0 or ``lim`` <= 0.
    """
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.animation import FuncAnimation

    traj = trajectory.detach().cpu().numpy() if hasattr(trajectory, "detach") else np.asarray(trajectory)
    if traj.ndim != 3 or traj.shape[2] != 2 or traj.shape[0] < 2 or traj.shape[1] < 1:
        raise ValueError(f"trajectory must have shape (n_times, n, 2) with n_times >= 2, got {traj.shape}")
    if not np.isfinite(traj).all():
        raise ValueError("trajectory must be finite, got NaN or inf entries")
    if isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < 2:
        raise ValueError(f"max_frames must be an int >= 2, got {max_frames!r}")
    if isinstance(n_paths, bool) or not isinstance(n_paths, int) or n_paths < 0:
        raise ValueError(f"n_paths must be an int >= 0, got {n_paths!r}")
    if lim is not None and not lim > 0:
        raise ValueError(f"lim must be positive, got {lim!r}")
    n_times = traj.shape[0]
    frames = np.unique(np.round(np.linspace(0, n_times - 1, min(max_frames, n_times))).astype(int))
    lim = float(lim if lim is not None else 1.05 * np.abs(traj).max())
    fig, ax = plt.subplots(figsize=figsize, dpi=dpi)
    ax.set(xlim=(-lim, lim), ylim=(-lim, lim), xlabel="$x^{(1)}$", ylabel="$x^{(2)}$", aspect="equal")
    paths = [ax.plot([], [], lw=0.8, alpha=0.5, color="C0")[0] for _ in range(min(n_paths, traj.shape[1]))]
    dots = ax.scatter(traj[0, :, 0], traj[0, :, 1], s=4, color="C1", alpha=0.6)
    fig.tight_layout()

    def draw(k):
        for i, line in enumerate(paths):
            line.set_data(traj[: k + 1, i, 0], traj[: k + 1, i, 1])
        dots.set_offsets(traj[k])
        ax.set_title(f"{title}, t = {k / (n_times - 1):.2f}")
        return [*paths, dots]

    return FuncAnimation(fig, draw, frames=[int(k) for k in frames], interval=interval, blit=False)
