"""The model server's pace (modelserver/pace.py): busy seconds per answer back to back; an answer
that began a busy stretch, and idle time, are left out of it; such answers' own time is `idle`."""
import pytest

from modelserver.pace import PaceMeter


def test_alone_no_answer_is_back_to_back_so_there_is_no_pace():
    meter = PaceMeter(weight=1.0)
    meter.start(10.0)
    assert meter.finish(10.05) is None           # found the server idle: its own, faster, time
    meter.start(20.0)                            # 10 s idle before it
    assert meter.finish(20.03) is None


def test_back_to_back_the_pace_is_the_time_between_answers_however_many_overlap():
    meter = PaceMeter(weight=1.0)
    for k in range(4):                           # four requests ready at once (threads or queue)
        meter.start(0.0)
    answers = [meter.finish(t) for t in (0.05, 0.12, 0.19, 0.26)]
    # the first began the busy stretch (left out); the rest are 70 ms apart (`app` says 120-260 ms)
    assert answers[0] is None and answers[1:] == pytest.approx([0.07] * 3)


def test_a_request_ready_before_the_last_answer_is_charged_from_that_answer():
    meter = PaceMeter(weight=1.0)
    meter.start(0.0)
    meter.start(0.04)                            # queued behind the first
    assert meter.finish(0.05) is None
    assert meter.finish(0.12) == pytest.approx(0.07)
    meter.start(0.5)                             # idle again: a new stretch, its first answer not counted,
    assert meter.finish(0.55) == pytest.approx(0.07)      # the figure kept


def test_a_request_that_waited_for_the_one_request_thread_is_back_to_back():
    meter = PaceMeter(weight=1.0)
    meter.start(0.0)
    assert meter.finish(0.05) is None
    meter.start(0.01)                            # arrived at 10 ms, taken up by the thread only now
    assert meter.finish(0.11) == pytest.approx(0.06)


def test_the_figure_is_smoothed():
    meter = PaceMeter(weight=0.5)
    for _ in range(3):
        meter.start(0.0)
    meter.finish(0.05)
    assert meter.finish(0.15) == pytest.approx(0.1)
    assert meter.finish(0.45) == pytest.approx(0.2)      # 0.1 + 0.5 * (0.3 - 0.1)


def test_an_answer_that_found_the_server_idle_is_its_own_service_time_in_idle():
    meter = PaceMeter(weight=1.0)
    assert meter.idle is None
    meter.start(10.0)
    assert meter.idle is None                    # nothing answered yet
    assert meter.finish(10.05) is None           # the pace as before: none back to back ...
    assert meter.idle == pytest.approx(0.05)     # ... the idle-start answer's own time kept apart
    meter.start(20.0)                            # 10 s idle before it: not counted
    meter.finish(20.03)
    assert meter.idle == pytest.approx(0.03) and meter.value is None


def test_answers_back_to_back_leave_idle_as_it_was():
    meter = PaceMeter(weight=1.0)
    for _ in range(4):                           # four ready at once: only the first found it idle
        meter.start(0.0)
    meter.finish(0.05)
    assert meter.idle == pytest.approx(0.05)
    assert [meter.finish(t) for t in (0.12, 0.19, 0.26)] == pytest.approx([0.07] * 3)
    assert meter.idle == pytest.approx(0.05)     # 70 ms apart (and 120-260 ms since ready): not idle


def test_a_request_that_waited_for_the_one_request_thread_is_not_idle():
    meter = PaceMeter(weight=1.0)
    meter.start(0.0)
    meter.finish(0.05)
    meter.start(0.01)                            # arrived at 10 ms, taken up by the thread only now
    assert meter.finish(0.11) == pytest.approx(0.06)
    assert meter.idle == pytest.approx(0.05)


def test_idle_is_smoothed_with_the_same_weight():
    meter = PaceMeter(weight=0.5)
    for start, done in ((0.0, 0.04), (1.0, 1.08), (2.0, 2.02)):
        meter.start(start)
        meter.finish(done)
    assert meter.idle == pytest.approx(0.04)     # 0.04 -> 0.06 -> 0.06 + 0.5 * (0.02 - 0.06)
    assert meter.value is None


@pytest.mark.parametrize("weight", [0, -0.1, 1.5])
def test_weight_outside_0_1_is_refused(weight):
    with pytest.raises(ValueError, match="weight"):
        PaceMeter(weight=weight)
