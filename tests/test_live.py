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

from qlab.live import (Frame, LivePanel, apply_frame, live, live_figure, on_axes, shown_value, stairs, vline_shape,
                       vlines, vspan_shape)


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
