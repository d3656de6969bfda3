"""Every probe of tools/probe_api.py (good and bad input across the API, the CLI, the layers, the algorithms,
the calibrators, the files and the kernel dispatch) ends as it must: a right answer or a clear error."""

from collections import Counter

import pytest

from _tools import load_tool


def _tool():
    return load_tool("probe_api")


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, one_thread):
    return _tool().run_all(tmp_path_factory.mktemp("probes"))


def test_no_probe_is_silently_wrong_crashes_or_hangs(outcomes):
    bad = [f"{o.outcome}: [{o.probe.area}] {o.probe.name}: {o.detail}" for o in outcomes
           if o.outcome not in ("correct", "clear error")]
    assert not bad, "\n".join(bad)


def test_the_probes_cover_every_area_with_both_kinds(outcomes):
    counts = Counter(o.probe.area for o in outcomes)
    assert len(outcomes) >= 130 and all(counts[a] >= 3 for a in counts), counts
    kinds = Counter(o.probe.expect for o in outcomes)
    assert kinds["ok"] >= 40 and kinds["error"] >= 80, kinds


def test_the_classifier_can_tell_each_outcome():
    tool = _tool()

    def boom():
        raise KeyError("deep inside")

    def vague():
        raise ValueError("something went wrong")

    cases = {
        "clear error": tool.Probe("t", "named", lambda: int("x"), names=("invalid literal",)),
        "crash": tool.Probe("t", "other exception", boom),
        "silently wrong": tool.Probe("t", "accepted", lambda: 1),
    }
    for outcome, probe in cases.items():
        assert tool.run_probe(probe).outcome == outcome
    assert tool.run_probe(tool.Probe("t", "unnamed", vague, names=("bits",))).outcome == "crash"
    assert tool.run_probe(tool.Probe("t", "wrong answer", lambda: 2, "ok", check=lambda r: r == 3)).outcome == \
        "silently wrong"
    assert tool.run_probe(tool.Probe("t", "good input refused", vague, "ok")).outcome == "crash"
    assert tool.run_probe(tool.Probe("t", "hangs", lambda: __import__("time").sleep(5)), timeout_s=1).outcome == "hang"
