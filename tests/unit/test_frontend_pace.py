"""The front-end's measured paces (frontend/pace.py) and the client's pace report (frontend/hints.py)."""
import pytest

from frontend.hints import HintError, parse_hints, parse_pace_report
from frontend.pace import PaceTable

REPORT = {"X-Client-RTT": "0.004", "X-Client-RTT-Node": "nano-1"}


def test_reports_are_smoothed_and_forgotten_after_the_ttl():
    table = PaceTable(ttl=10.0, weight=0.5)
    table.report("m", "nano-1", 0.080, now=100.0)
    table.report("m", "nano-1", 0.040, now=101.0)
    table.report("m", "cloud", 0.030, now=101.0)
    table.report("m", "cloud", 0.0, now=101.5)                  # no pace: ignored
    assert table.paces("m", ["nano-1", "cloud", "nano-2"], now=105.0) == pytest.approx(
        {"nano-1": 0.060, "cloud": 0.030})
    assert table.paces("other", ["nano-1"], now=105.0) == {}
    assert table.paces("m", ["nano-1"], now=111.5) == {}       # older than the ttl: the plan's again
    table.report("m", "nano-1", 0.100, now=130.0)               # a stale figure is not averaged in
    assert table.paces("m", ["nano-1"], now=130.0) == {"nano-1": 0.100}


def test_forget_keeps_only_the_instances_the_cluster_reports():
    table = PaceTable()
    table.report("m", "nano-1", 0.05, now=1.0)
    table.report("m", "nano-2", 0.05, now=1.0)
    table.forget({("m", "nano-2")})
    assert table.paces("m", ["nano-1", "nano-2"], now=1.0) == {"nano-2": 0.05}


@pytest.mark.parametrize("ttl, weight", [(0, 0.5), (10, 0), (10, 1.5)])
def test_bad_table_settings_are_refused(ttl, weight):
    with pytest.raises(ValueError):
        PaceTable(ttl=ttl, weight=weight)


def test_a_pace_report_from_headers_or_body():
    hints = parse_hints({**REPORT, "X-Client-Pace": "0.0523", "X-Client-Pace-Model": "digits_cnn"})
    assert (hints.pace, hints.pace_model, hints.rtt_node) == (pytest.approx(0.0523), "digits_cnn", "nano-1")
    body = {"rtt": 0.004, "rtt_node": "cloud", "pace": 0.02, "pace_model": "digits_cnn"}
    assert parse_pace_report({}, body, "cloud") == (0.02, "digits_cnn")
    assert parse_pace_report(REPORT, None, "nano-1") == (None, None)
    assert parse_hints(REPORT).pace is None


@pytest.mark.parametrize("headers, fragment", [
    ({"X-Client-Pace": "0.05"}, "together"),
    ({"X-Client-Pace-Model": "m"}, "together"),
    ({"X-Client-Pace": "0", "X-Client-Pace-Model": "m"}, "more than 0"),
    ({"X-Client-Pace": "61", "X-Client-Pace-Model": "m"}, "between 0 and 60"),
    ({"X-Client-Pace": "inf", "X-Client-Pace-Model": "m"}, "number"),
    ({"X-Client-Pace": "0.05", "X-Client-Pace-Model": "a b"}, "model must be"),
])
def test_a_malformed_pace_report_is_refused(headers, fragment):
    with pytest.raises(HintError, match=fragment):
        parse_hints({**REPORT, **headers})


def test_a_pace_needs_the_round_trip_reports_node():
    with pytest.raises(HintError, match="X-Client-RTT-Node"):
        parse_hints({"X-Client-Pace": "0.05", "X-Client-Pace-Model": "m"})
    with pytest.raises(HintError, match="X-Client-RTT-Node"):
        parse_hints({}, {"pace": 0.05, "pace_model": "m"})
