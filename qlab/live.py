"""Sliders that follow the hand: widget panels whose figure is updated in place and whose callbacks coalesce.

A slider drawn with ``ipywidgets.interact`` and matplotlib redraws a whole figure (a new PNG, ~70 ms on
the kernel, more in the browser) for every value the browser sends, and a drag sends 3-5 of them, so
the plot trails the hand by a queue of stale frames. A ``LivePanel`` does two things instead:

* **Updates in place.** The figure is a plotly ``FigureWidget`` built once; a move sends only the new
  trace data and layout (``batch_update``: one message of a few KB, ~1 ms on the kernel), and the
  browser restyles the existing plot.
* **Coalescing.** A control's observer only records that something changed; the work runs a moment
  later from the kernel's event loop, with the controls' values *at that time*. Values that arrive
  while a frame is computed queue up in the kernel, are all applied (each a cheap trait update) before
  the next frame starts, and only the latest is computed. The output catches up with the hand after at
  most two frames.

What one position of the controls shows is a ``Frame`` (plotly traces, layout changes, a text), made
by a plain function of the values (``render(**values)``) that lives in ``qlab.lessons`` and is tested
on its own; the panel adds the widgets. While a frame is computed the status line says "computing…";
its HTML carries ``data-busy``, ``data-frame`` (frames drawn so far), ``data-shown`` (each control's
value as the control displays it) and ``data-ms`` (the kernel's milliseconds for the last frame: render
and in-place update), which the browser tests and ``benchmarks/bench_browser.py`` read. An
exception in ``render`` is shown in the panel (class ``qlab-live-error``) and written to the kernel's
stderr, so neither a student nor a test can miss it.
"""

from __future__ import annotations

import asyncio
import functools
import html
import json
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from qlab.plotting import FIGURE_DPI, FIGURE_WIDTH

__all__ = ["Frame", "LivePanel", "apply_frame", "figure_widget", "live", "live_figure", "on_axes", "shown_value",
           "stairs", "vlines", "vline_shape", "vspan_shape"]

FIGURE_WIDTH_PX = int(FIGURE_WIDTH * FIGURE_DPI)     # 840: the width every lesson figure keeps to
FIRST_DELAY_S = 0.002     # an idle panel starts a frame this soon after a value arrives
NEXT_DELAY_S = 0.015      # after a frame: time for the values queued meanwhile to be applied first


@dataclass
class Frame:
    """What one position of a panel's controls shows.

    traces: plotly trace dicts (``{"type": "scatter", "x": ..., "y": ..., **on_axes(2)}``), in the
        figure's order; a panel's frames should keep their number and types (then a move only restyles).
    layout: layout properties to set (titles, ranges, ``shapes``, ``annotations``: lists replace).
    text: shown under the figure, as printed text.
    """

    traces: list[dict] = field(default_factory=list)
    layout: dict = field(default_factory=dict)
    text: str = ""


def on_axes(k: int) -> dict:
    """The ``xaxis`` / ``yaxis`` keys that put a trace on subplot ``k`` (1-based, row by row, as
    plotly's ``make_subplots`` numbers them)."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a subplot number >= 1, got {k!r}")
    suffix = "" if k == 1 else str(k)
    return {"xaxis": f"x{suffix}", "yaxis": f"y{suffix}"}


def _array(values):
    """float64 numpy array: plotly sends it as a binary buffer, without checking each element."""
    import numpy as np

    if hasattr(values, "detach"):
        values = values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=np.float64).reshape(-1)


def stairs(counts, edges, k: int = 1, **props: Any) -> dict:
    """A histogram (``counts`` over ``edges``, as ``torch.histogram`` returns them) as ONE filled step
    line (a single SVG path: far cheaper for the browser to redraw than a bar per bin)."""
    import numpy as np

    c, e = _array(counts), _array(edges)
    if len(e) != len(c) + 1:
        raise ValueError(f"edges must have len(counts) + 1 = {len(c) + 1} values, got {len(e)}")
    return {"type": "scatter", "mode": "lines", "x": e, "y": np.append(c, c[-1:]), "line": {"shape": "hv", "width": 0},
            "fill": "tozeroy", **on_axes(k), **props}


def vlines(xs, y0: float, y1: float, k: int = 1, **props: Any) -> dict:
    """Vertical segments at ``xs`` from ``y0`` to ``y1`` (data units) as ONE scatter trace (NaN gaps
    between segments), so their number can change without changing the figure's traces."""
    import numpy as np

    x = np.repeat(_array(xs), 3)
    x[2::3] = np.nan
    y = np.tile(np.array([y0, y1, np.nan]), len(x) // 3)
    return {"type": "scatter", "mode": "lines", "x": x, "y": y, "connectgaps": False, **on_axes(k), **props}


def _refs(k: int) -> tuple[str, str]:
    a = on_axes(k)
    return a["xaxis"], a["yaxis"] + " domain"


def vspan_shape(x0: float, x1: float, k: int = 1, color: str = "red", opacity: float = 0.2) -> dict:
    """A shaded band from x0 to x1 over the whole height of subplot k (a layout shape)."""
    xref, yref = _refs(k)
    return {"type": "rect", "xref": xref, "yref": yref, "x0": float(x0), "x1": float(x1), "y0": 0, "y1": 1,
            "fillcolor": color, "opacity": opacity, "line": {"width": 0}, "layer": "below"}


def vline_shape(x: float, k: int = 1, color: str = "black", dash: str = "dash") -> dict:
    """A vertical line at x over the whole height of subplot k (a layout shape)."""
    xref, yref = _refs(k)
    return {"type": "line", "xref": xref, "yref": yref, "x0": float(x), "x1": float(x), "y0": 0, "y1": 1,
            "line": {"color": color, "dash": dash, "width": 1}}


def live_figure(cols: int = 1, *, rows: int = 1, titles: Sequence[str] = (), height: int = 340,
                width: int = FIGURE_WIDTH_PX, **subplot_args: Any):
    """An empty plotly figure with a grid of subplots, ``width`` px wide (the lessons' 840). A ``LivePanel``
    draws its first frame into it and only then makes it a widget (``figure_widget``), so the widget is born
    with its data (traces added to a FigureWidget before the browser has loaded plotly's code can be lost)."""
    from plotly.subplots import make_subplots

    for name, value in (("cols", cols), ("rows", rows)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=list(titles) or None, **subplot_args)
    fig.update_layout(width=width, height=height, margin=dict(l=60, r=20, t=40, b=50), template="plotly_white",
                      legend=dict(font=dict(size=10)), font=dict(size=11))
    if titles:
        fig.update_annotations(font_size=12)
    return fig


def _structure(traces) -> list[str]:
    return [t["type"] if isinstance(t, Mapping) else t.type for t in traces]


def _same(a: Any, b: Any) -> bool:
    """Equal values (numpy arrays element by element, NaN equal to NaN; dicts and lists recursively)."""
    import numpy as np

    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.shape == b.shape
                and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind == "f"))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def _changed_keys(new: Mapping, old: Mapping | None) -> dict:
    return {k: v for k, v in new.items() if old is None or k not in old or not _same(old[k], v)}


def _plain(value: Any) -> Any:
    """numpy arrays as lists (NaN as None, a gap), in dicts and lists too. plotly.js echoes numpy data back
    as typed-array dicts, and plotly's widget then tests the array's truth value (a ValueError in the
    browser's log console); JSON has no NaN."""
    import numpy as np

    if isinstance(value, np.ndarray):
        if value.dtype.kind == "f":
            return [None if v != v else v for v in value.tolist()]
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def figure_widget(figure):
    """A plotly ``FigureWidget`` of ``figure`` that opens whole and keeps following the kernel on a slow page.

    Two things go wrong with plotly's own ``FigureWidget(figure)`` in JupyterLab, both from anywidget's
    start-up limit: a widget has 2 s from the creation of its model to the end of its module's
    ``initialize``; past that, anywidget rejects the model for good and drops every later message to it
    ("[anywidget] Failed to initialize model." in the browser's console). plotly's module is 5 MB and
    anywidget evaluates it anew for every figure: 1.3 s on an idle 2-core Xeon (3.5 s for three at once),
    more on a loaded one. So

    * plotly's widget opens with no traces and no layout and sends them in later messages: dropped, the plot
      stays empty (seen 0 to 4 times per ``make test``: no trace, no width). Here the widget opens only
      once the figure is whole (its first state has every trace);
    * the moves' restyles are dropped, and the plot never changes again. Here the browser module is
      ``qlab/plotly_loader.js``: its ``initialize`` returns at once, it evaluates plotly's module once per
      page (the module's text travels as ``_qlab_plotly_source``), then runs plotly's ``initialize`` and
      replays, in order, plotly's messages that arrived meanwhile; the view waits for that.
    """
    import plotly.graph_objects as go

    if not isinstance(figure, go.Figure | go.FigureWidget):
        raise TypeError(f"figure must be a plotly Figure, got {type(figure).__name__}")
    return _whole_figure_widget()(figure)


_LOADER_KEY = "__QLAB_PLOTLY_KEY__"


@functools.cache
def _plotly_loader() -> tuple[str, str]:
    """(plotly's widget module, qlab's loader module for it), the loader keyed by the hash of plotly's."""
    import hashlib
    from pathlib import Path

    import plotly.graph_objects as go

    source = str(go.FigureWidget._esm)        # the text anywidget would send for plotly's own FigureWidget
    key = "plotly:" + hashlib.sha256(source.encode()).hexdigest()[:32]
    loader = (Path(__file__).with_name("plotly_loader.js")).read_text()
    if loader.count(_LOADER_KEY) != 1:
        raise RuntimeError(f"qlab/plotly_loader.js must hold {_LOADER_KEY!r} once (the key it is filled with)")
    return source, loader.replace(_LOADER_KEY, key)


@functools.cache
def _whole_figure_widget() -> type:
    """``go.FigureWidget`` whose comm opens at the end of its constructor and whose browser module is qlab's
    loader (see ``figure_widget``); made on first use, so that importing qlab.live does not import plotly."""
    import plotly.graph_objects as go
    import traitlets

    source, loader = _plotly_loader()

    class WholeFigureWidget(go.FigureWidget):
        _esm = loader
        _qlab_plotly_source = traitlets.Unicode(source).tag(sync=True)
        _open_deferred = True      # ipywidgets' Widget.__init__ calls open() before plotly fills the figure

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._open_deferred = False
            self.open()

        def open(self) -> None:
            if not self._open_deferred:
                super().open()

    return WholeFigureWidget


def apply_frame(fig, frame: Frame, previous: Optional[Frame] = None) -> None:
    """Show ``frame`` in ``fig`` (a plotly ``Figure`` or ``FigureWidget``): in place, one message, when
    the traces keep their number and types; otherwise the traces are replaced.

    previous: the frame shown last (``LivePanel`` passes it): only what differs from it is sent. plotly
    validates every property it is given, so resending unchanged axes and styles costs more than the data.
    """
    for i, t in enumerate(frame.traces):
        if not isinstance(t, Mapping) or "type" not in t:
            raise ValueError(f"frame.traces[{i}] must be a dict with a 'type' (a plotly trace), got {t!r:.80}")
    subplot_titles = [a for a in fig.layout.annotations if getattr(a, "xref", "") == "paper"]
    if _structure(fig.data) != _structure(frame.traces):
        fig.data = ()
        fig.add_traces([_plain(dict(t)) for t in frame.traces])
        _set_layout(fig, _plain(frame.layout), subplot_titles)
        return
    if previous is not None and _structure(previous.traces) != _structure(frame.traces):
        previous = None
    with fig.batch_update():
        for i, (trace, props) in enumerate(zip(fig.data, frame.traces)):
            changed = _changed_keys(props, previous.traces[i] if previous is not None else None)
            changed.pop("type", None)
            if changed:
                trace.update(_plain(changed))
        layout = _changed_keys(frame.layout, previous.layout if previous is not None else None)
        if layout:
            _set_layout(fig, _plain(layout), subplot_titles)


def _set_layout(fig, layout: Mapping, subplot_titles: list) -> None:
    """Lists (shapes, annotations) replace the figure's (``update`` would merge them item by item); the
    subplot titles of ``make_subplots``, which are annotations too, are kept."""
    layout = dict(layout)
    if "annotations" in layout:
        layout["annotations"] = list(subplot_titles) + list(layout["annotations"])
    for key in ("shapes", "annotations"):
        if key in layout:
            setattr(fig.layout, key, layout.pop(key))
    fig.layout.update(layout)


def shown_value(control) -> str:
    """A control's value as the control shows it: the selected label of a dropdown or selection slider,
    a slider's readout (its ``readout_format``), the text of anything else."""
    if hasattr(control, "label") and hasattr(control, "options"):
        return str(control.label)
    fmt = getattr(control, "readout_format", None)
    if fmt and not isinstance(control.value, (tuple, list)):
        try:
            return format(control.value, fmt.replace("~", ""))
        except (TypeError, ValueError):
            pass
    return str(control.value)


class LivePanel:
    """Controls, a status line, an optional plotly figure and a text, kept in step (see the module
    docstring). ``render(**values) -> Frame``; ``controls``: name -> ipywidgets value widget.

    In a notebook, end the cell with the panel (it displays as its widget box). Outside a running kernel
    (a script, a test) every change is drawn at once.
    """

    def __init__(self, render: Callable[..., Frame], controls: Mapping[str, Any], figure=None, *,
                 description: str = "") -> None:
        import ipywidgets as widgets
        import plotly.graph_objects as go

        if not callable(render):
            raise TypeError(f"render must be callable, got {type(render).__name__}")
        if not controls:
            raise ValueError("controls must name at least one widget")
        for name, control in controls.items():
            if not hasattr(control, "observe") or not hasattr(control, "value"):
                raise TypeError(f"controls[{name!r}] must be an ipywidgets value widget, got {type(control).__name__}")
        self.render, self.controls, self.figure = render, dict(controls), figure
        self.frames = 0              # frames drawn
        self.last_ms = 0.0           # the kernel's time for the last frame (render + apply_frame), ms
        self.computed: list[dict] = []   # the values of each frame drawn (the coalescing tests read it)
        self.error: Optional[str] = None
        self._busy = False
        self._last: Optional[Frame] = None    # the frame the figure shows
        self.status = widgets.HTML()
        self.text = widgets.HTML()
        for control in self.controls.values():
            control.observe(self._changed, names="value")
        parts = [widgets.HBox(list(self.controls.values()), layout=widgets.Layout(flex_flow="row wrap")),
                 self.status]
        if description:
            parts.insert(0, widgets.HTML(f"<b>{html.escape(description)}</b>"))
        if figure is not None:
            parts.append(figure)
        parts.append(self.text)
        self.draw()
        if figure is not None and not isinstance(figure, go.FigureWidget):
            self.figure = figure_widget(figure)           # born with the first frame's data
            parts = [self.figure if p is figure else p for p in parts]
        self.widget = widgets.VBox(parts)
        self.widget.add_class("qlab-live-panel")

    # ------------------------------------------------------------------ what the panel shows
    def values(self) -> dict:
        return {name: control.value for name, control in self.controls.items()}

    def _show_status(self) -> None:
        shown = {name: shown_value(c) for name, c in self.controls.items()}
        words = "computing…" if self._busy else ("error" if self.error else "")
        self.status.value = (f"<span class='qlab-live' data-busy='{int(self._busy)}' data-frame='{self.frames}' "
                             f"data-shown='{html.escape(json.dumps(shown), quote=True)}' data-ms='{self.last_ms:.1f}' "
                             f"style='color:#888;font-size:90%'>{words or '&nbsp;'}</span>")

    def draw(self) -> Frame | None:
        """Compute the frame of the controls' current values and show it. An exception in ``render`` is
        shown in the panel and on the kernel's stderr, and returns None."""
        values = self.values()
        start = time.perf_counter()
        try:
            frame = self.render(**values)
            if not isinstance(frame, Frame):
                raise TypeError(f"render must return a qlab.live.Frame, got {type(frame).__name__}")
            if self.figure is not None:
                previous, self._last = self._last, None      # None while the figure is half-updated
                apply_frame(self.figure, frame, previous)
                self._last = frame
        except Exception as exc:     # shown, not swallowed: see the docstring
            self.error = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            self.text.value = (f"<pre class='qlab-live-error' style='color:#b00'>"
                               f"{html.escape(self.error)}</pre>")
            print(f"qlab.live: render failed for {values}:\n{self.error}", file=sys.__stderr__, flush=True)
            frame = None
        else:
            self.error = None
            self.text.value = f"<pre class='qlab-live-text' style='margin:0'>{html.escape(frame.text)}</pre>"
        self.last_ms = 1000 * (time.perf_counter() - start)
        self.frames += 1
        self.computed.append(values)
        return frame

    # ------------------------------------------------------------------ coalescing
    def _changed(self, change) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None:                # not in a running kernel: draw at once
            self.draw()
            self._show_status()
            return
        if self._busy:                  # a frame is on its way; _settle looks at the values after it
            return
        self._busy = True
        self._show_status()            # "computing…" reaches the browser before the work starts
        loop.call_later(FIRST_DELAY_S, self._run, loop)

    def _run(self, loop) -> None:
        drawn = self.values()
        self.draw()
        # Values that arrived while drawing are still queued in the kernel: let them all be applied
        # first (each is a trait update and a call of _changed that returns at once), then draw the
        # latest, once, if they changed anything.
        loop.call_later(NEXT_DELAY_S, self._settle, loop, drawn)

    def _settle(self, loop, drawn: dict) -> None:
        if self.values() != drawn:
            self._run(loop)
            return
        self._busy = False
        self._show_status()

    def _ipython_display_(self) -> None:
        from IPython.display import display

        self._show_status()
        display(self.widget)


def live(render: Callable[..., Frame], figure=None, *, description: str = "", **controls: Any) -> LivePanel:
    """``LivePanel(render, controls, figure)`` with the controls as keyword arguments, like ``interact``:
    ``live(render, live_figure(2), bits=IntSlider(4, 2, 8), clip=FloatSlider(1.0, 0.02, 1.0, 0.01))``."""
    return LivePanel(render, controls, figure, description=description)
