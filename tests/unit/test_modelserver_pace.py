"""The model server's pace (modelserver/pace.py): busy seconds per answer back to back; an answer
that began a busy stretch, and idle time, are left out."""
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


@pytest.mark.parametrize("weight", [0, -0.1, 1.5])
def test_weight_outside_0_1_is_refused(weight):
    with pytest.raises(ValueError, match="weight"):
        PaceMeter(weight=weight)
