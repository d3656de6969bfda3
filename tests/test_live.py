"""qlab.live: panels whose plotly figure is updated in place and whose slider values coalesce.

The coalescing tests run the panel inside a real asyncio event loop, which is what ipykernel's main
thread is: a slider value that arrives while a frame is being computed cannot be handled until that
frame returns (the loop is blocked), so it is simulated by a loop callback scheduled during the frame.
"""

import asyncio
import json
import re
import time

import ipywidgets as widgets
import numpy as np
import pytest

from qlab.live import (Frame, LivePanel, apply_frame, figure_widget, live, live_figure, on_axes, shown_value, stairs,
                       vline_shape, vlines, vspan_shape)


def _frame(a: float, n_points: int = 5) -> Frame:
    x = np.arange(n_points, dtype=float)
    return Frame([{"type": "scatter", "x": x, "y": a * x, "name": "line"},
                  {"type": "bar", "x": x, "y": x + a, **on_axes(2)}],
                 {"shapes": [vline_shape(a, 1)], "xaxis": {"title": {"text": f"a = {a}"}}}, f"a = {a}")


def test_a_frame_is_applied_in_place_when_its_traces_keep_their_types():
    fig = live_figure(2, titles=("left", "right"))
    apply_frame(fig, _frame(1.0))
    first = fig.data[0]
    apply_frame(fig, _frame(2.0))
    assert fig.data[0] is first, "the trace was replaced instead of restyled"
    assert list(fig.data[0].y) == [0.0, 2.0, 4.0, 6.0, 8.0]
    assert fig.data[1].xaxis == "x2" and list(fig.data[1].y) == [2.0, 3.0, 4.0, 5.0, 6.0]
    assert fig.layout.xaxis.title.text == "a = 2.0"
    assert len(fig.layout.shapes) == 1 and fig.layout.shapes[0].x0 == 2.0
    assert [a.text for a in fig.layout.annotations] == ["left", "right"], "the subplot titles were lost"


def test_only_what_changed_since_the_previous_frame_is_sent():
    x = np.arange(3.0)

    def frame(a, b):
        return Frame([{"type": "scatter", "x": x, "y": a * x}, {"type": "bar", "x": x, "y": b * x, **on_axes(2)}],
                     {"xaxis": {"title": {"text": f"a = {a}"}}})

    fig = live_figure(2)
    one = frame(1.0, 1.0)
    apply_frame(fig, one)
    fig.data[1].y = [9.0] * 3          # changed behind the panel's back: a diff against `previous` cannot see it
    two = frame(2.0, 1.0)
    apply_frame(fig, two, previous=one)
    assert list(fig.data[0].y) == [0.0, 2.0, 4.0] and fig.layout.xaxis.title.text == "a = 2.0"   # changed: sent
    assert list(fig.data[1].y) == [9.0] * 3, "an unchanged property was sent again"
    apply_frame(fig, frame(2.0, 3.0), previous=two)
    assert list(fig.data[1].y) == [0.0, 3.0, 6.0]
    nan = Frame([{"type": "scatter", "x": np.array([0.0, np.nan]), "y": np.array([1.0, 2.0])}])
    apply_frame(fig, nan)
    fig.data[0].x = [5.0, 6.0]
    apply_frame(fig, Frame([{"type": "scatter", "x": np.array([0.0, np.nan]), "y": np.array([1.0, 2.0])}]), previous=nan)
    assert list(fig.data[0].x) == [5.0, 6.0], "NaN != NaN made an unchanged array look changed"


def test_shapes_replace_rather_than_merge():
    fig = live_figure(1)
    apply_frame(fig, Frame([{"type": "scatter", "x": [0, 1], "y": [0, 1]}], {"shapes": [vline_shape(0.5, 1)]}))
    apply_frame(fig, Frame([{"type": "scatter", "x": [0, 1], "y": [0, 1]}],
                           {"shapes": [vspan_shape(0.0, 0.2, 1), vspan_shape(0.8, 1.0, 1)]}))
    assert [s.type for s in fig.layout.shapes] == ["rect", "rect"]
    assert fig.layout.shapes[0].line.dash is None, "properties of the old line leaked into the new shape"


def test_a_change_of_trace_types_replaces_the_traces():
    fig = live_figure(1)
    apply_frame(fig, Frame([{"type": "scatter", "x": [0], "y": [1]}]))
    apply_frame(fig, Frame([{"type": "bar", "x": [0, 1], "y": [1, 2]}, {"type": "scatter", "x": [0], "y": [0]}]))
    assert [t.type for t in fig.data] == ["bar", "scatter"]


def test_trace_helpers_build_one_trace_each():
    counts, edges = np.array([1.0, 3.0, 2.0]), np.array([0.0, 1.0, 2.0, 3.0])
    s = stairs(counts, edges, 2)
    assert s["xaxis"] == "x2" and list(s["x"]) == [0, 1, 2, 3] and list(s["y"]) == [1, 3, 2, 2]
    v = vlines([0.5, 1.5], 0.0, 4.0)
    assert len(v["x"]) == 6 and np.isnan(v["x"][2]) and list(v["y"][:2]) == [0.0, 4.0]
    with pytest.raises(ValueError, match="edges must have"):
        stairs(counts, edges[:-1])
    with pytest.raises(ValueError, match="subplot number"):
        on_axes(0)
    with pytest.raises(ValueError, match="frame.traces\\[0\\]"):
        apply_frame(live_figure(1), Frame([{"x": [1]}]))
    with pytest.raises(ValueError, match="cols must be"):
        live_figure(0)


def test_outside_a_kernel_every_change_is_drawn_at_once():
    calls = []

    def render(a, b):
        calls.append((a, b))
        return _frame(a)

    panel = live(render, live_figure(2), a=widgets.IntSlider(1, 0, 10, description="a"),
                 b=widgets.Dropdown(options=[("one", 1), ("two", 2)], value=1, description="b"))
    panel.controls["a"].value = 3
    panel.controls["b"].value = 2
    assert calls == [(1, 1), (3, 1), (3, 2)] and panel.frames == 3 and panel.error is None
    assert panel.figure.layout.xaxis.title.text == "a = 3"
    assert "a = 3" in panel.text.value
    status = re.search(r"data-busy='(\d)' data-frame='(\d+)' data-shown='([^']*)' data-ms='([\d.]+)'",
                       panel.status.value)
    assert status and status.group(1) == "0" and status.group(2) == "3"
    assert json.loads(status.group(3).replace("&quot;", '"')) == {"a": "3", "b": "two"}
    assert float(status.group(4)) == round(panel.last_ms, 1) > 0


def test_the_status_says_how_long_the_last_frame_took_on_the_kernel():
    def render(a):
        time.sleep(0.02 * a)            # 20 ms per unit of a
        return _frame(a)

    panel = live(render, live_figure(2), a=widgets.IntSlider(1, 0, 10, description="a"))
    panel.controls["a"].value = 3
    panel._show_status()
    ms = float(re.search(r"data-ms='([\d.]+)'", panel.status.value).group(1))
    assert 60 <= ms < 1000, ms


def test_shown_value_is_what_the_control_displays():
    assert shown_value(widgets.FloatSlider(0.3, min=0, max=1, step=0.01)) == "0.30"
    assert shown_value(widgets.IntSlider(5)) == "5"
    assert shown_value(widgets.SelectionSlider(options=[90, 99.5], value=99.5)) == "99.5"
    assert shown_value(widgets.Checkbox(True)) == "True"
    assert shown_value(widgets.FloatLogSlider(value=0.1, base=10, min=-2, max=0)) == "0.1"


def test_an_error_in_render_is_shown_and_written_to_stderr(capfd):
    def render(a):
        if a > 5:
            raise ValueError(f"a = {a} is too large")
        return _frame(a)

    panel = live(render, live_figure(2), a=widgets.IntSlider(1, 0, 10))
    panel.controls["a"].value = 7
    assert "a = 7 is too large" in panel.error and "qlab-live-error" in panel.text.value
    assert "a = 7 is too large" in capfd.readouterr().err
    panel.controls["a"].value = 2
    assert panel.error is None and "qlab-live-text" in panel.text.value


def test_bad_arguments_are_refused_before_anything_is_built():
    with pytest.raises(TypeError, match="render must be callable"):
        LivePanel(None, {"a": widgets.IntSlider()})
    with pytest.raises(ValueError, match="controls must name"):
        LivePanel(lambda: Frame(), {})
    with pytest.raises(TypeError, match="controls\\['a'\\]"):
        LivePanel(lambda a: Frame(), {"a": 3})
    panel = live(lambda a: "not a frame", None, a=widgets.IntSlider())
    assert "render must return a qlab.live.Frame" in panel.error


class _CommRecorder:
    """Stands in for ipywidgets' comm: records what each widget sends, its opening state first."""

    def __init__(self, log: list, **kwargs) -> None:
        self.kernel, self.comm_id, self.log = object(), f"comm{len(log)}", log
        log.append(("open", kwargs["data"]["state"]))

    def send(self, data=None, buffers=None, **kwargs) -> None:
        self.log.append(("update", data.get("state", {})))

    def on_msg(self, callback) -> None:
        pass

    def on_close(self, callback) -> None:
        pass

    def close(self, *args, **kwargs) -> None:
        pass


@pytest.fixture
def comm_log(monkeypatch) -> list:
    import ipywidgets.widgets.widget as widget_module

    log: list = []
    monkeypatch.setattr(widget_module.comm, "create_comm", lambda **kwargs: _CommRecorder(log, **kwargs))
    return log


def test_a_figure_widget_opens_with_its_traces_and_layout(comm_log):
    """The state the comm opens with is whole, so that what the browser draws never depends on a second
    message (anywidget drops them all when plotly's module loads too slowly; see ``figure_widget``)."""
    import plotly.graph_objects as go

    fig = _plain_figure()
    w = figure_widget(fig)
    assert [kind for kind, _ in comm_log] == ["open"], comm_log
    state = comm_log[0][1]
    assert [t["type"] for t in state["_widget_data"]] == ["scatter", "bar"]
    assert list(state["_widget_data"][0]["y"]) == [0.0, 1.0, 4.0]
    assert state["_widget_layout"]["width"] == 500
    assert isinstance(w, go.FigureWidget) and list(w.data[1].y) == list(fig.data[1].y)
    w.data[0].y = [9.0, 9.0, 9.0]                     # once open, a change is an update as usual
    restyles = [state["_py2js_restyle"] for kind, state in comm_log[1:] if (state.get("_py2js_restyle") or {})]
    assert len(restyles) == 1 and restyles[0]["restyle_data"]["y"] == [[9.0, 9.0, 9.0]], comm_log[1:]
    with pytest.raises(TypeError, match="figure must be a plotly Figure, got dict"):
        figure_widget({"data": []})


def test_a_figure_widget_s_browser_module_is_qlab_s_loader_of_plotly_s(comm_log):
    """The module anywidget imports for every figure is qlab's small loader (``qlab/plotly_loader.js``),
    keyed by the hash of plotly's module; plotly's module, the text anywidget would have imported for
    plotly's own FigureWidget, travels in the opening state beside it (the browser test
    ``test_figure_widgets_follow_the_kernel_when_plotly_loads_slowly`` shows what that changes)."""
    import hashlib

    import plotly.graph_objects as go

    figure_widget(_plain_figure())
    go.FigureWidget()
    ours, plotlys = (state for kind, state in comm_log if kind == "open")
    assert ours["_qlab_plotly_source"] == plotlys["_esm"] and len(plotlys["_esm"]) > 1_000_000
    key = hashlib.sha256(plotlys["_esm"].encode()).hexdigest()[:32]
    assert len(ours["_esm"]) < 10_000 and ours["_esm"].count(f'const KEY = "plotly:{key}";') == 1
    assert "__QLAB_PLOTLY_KEY__" not in ours["_esm"] and "export default" in ours["_esm"]


def test_plotly_s_own_figure_widget_opens_empty(comm_log):
    """Why ``figure_widget`` exists: ``go.FigureWidget(fig)`` opens with no traces and sends them after.
    (If plotly ever opens it whole, this fails and ``figure_widget`` can go.)"""
    import plotly.graph_objects as go

    go.FigureWidget(_plain_figure())
    kind, state = comm_log[0]
    assert kind == "open" and state["_widget_data"] == [] and "width" not in state["_widget_layout"]
    assert any(kind == "update" and len(state.get("_widget_data", [])) == 2 for kind, state in comm_log[1:])


def test_a_panel_s_figure_opens_with_its_first_frame(comm_log):
    live(lambda a: _frame(a), live_figure(2), a=widgets.IntSlider(3, 0, 10, description="a"))
    opened = [state for kind, state in comm_log if kind == "open" and "_widget_data" in state]
    assert len(opened) == 1 and [t["type"] for t in opened[0]["_widget_data"]] == ["scatter", "bar"]
    assert list(opened[0]["_widget_data"][0]["y"]) == [0.0, 3.0, 6.0, 9.0, 12.0]


def _plain_figure():
    import plotly.graph_objects as go

    return go.Figure([go.Scatter(x=[0.0, 1.0, 2.0], y=[0.0, 1.0, 4.0]), go.Bar(x=[0, 1, 2], y=[3, 2, 1])],
                     layout=dict(width=500, height=300))


def _drive(panel, schedule, render_s):
    """Run ``panel`` in an asyncio loop: ``schedule`` is [(time_s, name, value)] of values arriving."""
    async def main():
        loop = asyncio.get_running_loop()
        for at, name, value in schedule:
            loop.call_later(at, setattr, panel.controls[name], "value", value)
        await asyncio.sleep(schedule[-1][0] + 6 * render_s + 0.1)

    asyncio.run(main())


def test_values_that_arrive_during_a_frame_coalesce_into_the_latest():
    render_s = 0.08

    def render(a):
        time.sleep(render_s)            # blocks the loop as a real computation does
        return _frame(a)

    panel = live(render, live_figure(2), a=widgets.IntSlider(0, 0, 100))
    assert panel.computed == [{"a": 0}]
    # a drag: 1 arrives on an idle panel; 2..6 arrive while the frame of 1 is computed
    _drive(panel, [(0.0, "a", 1)] + [(0.01 + 0.01 * i, "a", v) for i, v in enumerate(range(2, 7))], render_s)
    assert [c["a"] for c in panel.computed] == [0, 1, 6], "stale values were computed"
    assert panel.figure.layout.xaxis.title.text == "a = 6" and "data-busy='0'" in panel.status.value


def test_a_value_alone_is_drawn_once_and_the_panel_says_it_is_computing_meanwhile():
    seen = []

    def render(a):
        seen.append(panel_status())
        return _frame(a)

    panel = None
    panel_status = lambda: panel.status.value if panel else ""   # noqa: E731
    panel = live(render, None, a=widgets.IntSlider(0, 0, 100))
    _drive(panel, [(0.0, "a", 5)], 0.01)
    assert [c["a"] for c in panel.computed] == [0, 5]
    assert "data-busy='1'" in seen[-1] and "computing" in seen[-1]
    assert "data-busy='0'" in panel.status.value and "data-frame='2'" in panel.status.value


def test_a_value_moved_back_during_a_frame_is_not_drawn_twice():
    def render(a):
        time.sleep(0.05)
        return _frame(a)

    panel = live(render, None, a=widgets.IntSlider(0, 0, 100))
    _drive(panel, [(0.0, "a", 3), (0.02, "a", 4), (0.03, "a", 3)], 0.05)
    assert [c["a"] for c in panel.computed] == [0, 3]
