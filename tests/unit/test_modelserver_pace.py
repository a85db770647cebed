"""The model server's pace (modelserver/pace.py): busy seconds per answer, idle time left out."""
import pytest

from modelserver.pace import PaceMeter


def test_alone_each_answer_is_charged_its_own_time_and_idle_time_is_not_counted():
    meter = PaceMeter(weight=1.0)
    meter.start(10.0)
    assert meter.finish(10.05) == pytest.approx(0.05)
    meter.start(20.0)                            # 10 s idle before it
    assert meter.finish(20.03) == pytest.approx(0.03)


def test_back_to_back_the_pace_is_the_time_between_answers_however_many_overlap():
    meter = PaceMeter(weight=1.0)
    for k in range(4):                           # four requests ready at once (threads or queue)
        meter.start(0.0)
    answers = [meter.finish(t) for t in (0.07, 0.14, 0.21, 0.28)]
    assert answers == pytest.approx([0.07] * 4)  # `app` would say 70, 140, 210, 280 ms


def test_a_request_ready_before_the_last_answer_does_not_count_that_time_twice():
    meter = PaceMeter(weight=1.0)
    meter.start(0.0)
    meter.finish(0.05)
    meter.start(0.04)                            # ready (queued) before the answer above went out
    assert meter.finish(0.09) == pytest.approx(0.04)


def test_the_figure_is_smoothed():
    meter = PaceMeter(weight=0.5)
    meter.start(0.0)
    meter.finish(0.1)
    meter.start(1.0)
    assert meter.finish(1.3) == pytest.approx(0.2)      # 0.1 + 0.5 * (0.3 - 0.1)


@pytest.mark.parametrize("weight", [0, -0.1, 1.5])
def test_weight_outside_0_1_is_refused(weight):
    with pytest.raises(ValueError, match="weight"):
        PaceMeter(weight=weight)
