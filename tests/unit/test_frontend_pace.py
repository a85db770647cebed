"""The front-end's measured paces (frontend/pace.py) and the client's pace report, back to back and
idle start (frontend/hints.py)."""
import pytest

from frontend.hints import PACE_IDLE_HEADER, HintError, parse_hints, parse_pace_report
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
    assert parse_pace_report({}, body, "cloud") == (0.02, None, "digits_cnn")
    assert parse_pace_report(REPORT, None, "nano-1") == (None, None, None)
    assert parse_hints(REPORT).pace is None


def test_an_idle_pace_comes_alone_or_beside_the_back_to_back_one():
    assert PACE_IDLE_HEADER == "X-Client-Pace-Idle"
    hints = parse_hints({**REPORT, "X-Client-Pace-Idle": "0.0475", "X-Client-Pace-Model": "digits_cnn"})
    assert (hints.pace, hints.pace_idle, hints.pace_model) == (None, pytest.approx(0.0475), "digits_cnn")
    both = parse_hints({**REPORT, "X-Client-Pace": "0.06", "X-Client-Pace-Idle": "4.7e-2", "X-Client-Pace-Model": "m"})
    assert (both.pace, both.pace_idle, both.pace_model) == (0.06, pytest.approx(0.047), "m")
    body = {"rtt": 0.004, "rtt_node": "cloud", "pace_idle": 0.03, "pace_model": "digits_cnn"}
    assert parse_pace_report({}, body, "cloud") == (None, 0.03, "digits_cnn")
    assert parse_hints({}, body).pace_idle == 0.03
    # any pace header wins over the body's report, which is still validated
    headers = {**REPORT, "X-Client-Pace-Idle": "0.05", "X-Client-Pace-Model": "m"}
    assert parse_pace_report(headers, {"pace": 0.02, "pace_model": "b"}, "nano-1") == (None, 0.05, "m")
    with pytest.raises(HintError, match="body field 'pace_idle'"):
        parse_hints(headers, {"pace_idle": "0", "pace_model": "b"})


@pytest.mark.parametrize("headers, fragment", [
    ({"X-Client-Pace": "0.05"}, "together"),
    ({"X-Client-Pace-Model": "m"}, "together"),
    ({"X-Client-Pace": "0", "X-Client-Pace-Model": "m"}, "more than 0"),
    ({"X-Client-Pace": "61", "X-Client-Pace-Model": "m"}, "between 0 and 60"),
    ({"X-Client-Pace": "inf", "X-Client-Pace-Model": "m"}, "number"),
    ({"X-Client-Pace": "0.05", "X-Client-Pace-Model": "a b"}, "model must be"),
    ({"X-Client-Pace-Idle": "0.05"}, "X-Client-Pace-Idle and X-Client-Pace-Model must be sent together"),
    ({"X-Client-Pace-Model": "m"}, "X-Client-Pace or X-Client-Pace-Idle"),
    ({"X-Client-Pace-Idle": "0", "X-Client-Pace-Model": "m"}, "X-Client-Pace-Idle: must be more than 0"),
    ({"X-Client-Pace-Idle": "60.5", "X-Client-Pace-Model": "m"}, "X-Client-Pace-Idle: must be between 0 and 60"),
    ({"X-Client-Pace-Idle": "", "X-Client-Pace-Model": "m"}, "X-Client-Pace-Idle: must be a number"),
    ({"X-Client-Pace-Idle": "nan", "X-Client-Pace-Model": "m"}, "X-Client-Pace-Idle: must be a number"),
    ({"X-Client-Pace-Idle": "1_0", "X-Client-Pace-Model": "m"}, "X-Client-Pace-Idle: must be a number"),
    ({"X-Client-Pace-Idle": "-0.1", "X-Client-Pace-Model": "m"}, "X-Client-Pace-Idle: must be a number"),
    ({"X-Client-Pace": "0.05", "X-Client-Pace-Idle": "x", "X-Client-Pace-Model": "m"}, "X-Client-Pace-Idle"),
    ({"X-Client-Pace-Idle": "0.05", "X-Client-Pace-Model": "a b"}, "model must be"),
])
def test_a_malformed_pace_report_is_refused(headers, fragment):
    with pytest.raises(HintError, match=fragment):
        parse_hints({**REPORT, **headers})


def test_a_pace_needs_the_round_trip_reports_node():
    with pytest.raises(HintError, match="X-Client-RTT-Node"):
        parse_hints({"X-Client-Pace": "0.05", "X-Client-Pace-Model": "m"})
    with pytest.raises(HintError, match="X-Client-RTT-Node"):
        parse_hints({}, {"pace": 0.05, "pace_model": "m"})
    with pytest.raises(HintError, match="X-Client-RTT-Node"):
        parse_hints({"X-Client-Pace-Idle": "0.05", "X-Client-Pace-Model": "m"})
    with pytest.raises(HintError, match="X-Client-RTT-Node"):
        parse_hints({}, {"pace_idle": 0.05, "pace_model": "m"})


@pytest.mark.parametrize("body, fragment", [
    ({"pace_idle": 0.05}, "body field 'pace_idle' and body field 'pace_model' must be sent together"),
    ({"pace_model": "m"}, "body field 'pace' or body field 'pace_idle'"),
    ({"pace_idle": 0, "pace_model": "m"}, "body field 'pace_idle': must be more than 0"),
    ({"pace_idle": 61, "pace_model": "m"}, "body field 'pace_idle': must be between 0 and 60"),
    ({"pace_idle": True, "pace_model": "m"}, "body field 'pace_idle': must be a number"),
    ({"pace_idle": "inf", "pace_model": "m"}, "body field 'pace_idle': must be a number"),
])
def test_a_malformed_idle_pace_in_the_body_is_refused(body, fragment):
    with pytest.raises(HintError, match=fragment):
        parse_hints({}, {"rtt": 0.004, "rtt_node": "nano-1", **body})
