"""The PUT /plan body, validated by one model on both sides (common/plan_body.py)."""
from __future__ import annotations

import json
import math

import pytest

from backend.pipeline import _plan_problems
from frontend.dispatch import PlanError, parse_plan

GOOD = {"created": 10.0, "mode": 1, "solver": "ipopt", "weights": {"m": {"z": {"n": 1.0}}}, "rtt": {"z": {"n": 0.01}}}


@pytest.mark.parametrize("change, expect", [
    ({"weights": {"m": {"z": {"n": math.nan}}}}, "weights.m.z.n: must be a number >= 0"),
    ({"weights": {"m": {"z": {"n": math.inf}}}}, "weights.m.z.n: must be a number >= 0"),
    ({"rtt": {"z": {"n": math.nan}}}, "rtt.z.n: must be a number of seconds in 0..60"),
    ({"created": math.inf}, "created: must be a unix time in seconds"),
    ({"weights": {"m": {"z": {"n": "1"}}}}, "weights.m.z.n: must be a number >= 0"),
    ({"mode": "1"}, "mode: must be 1 or 2"),
    ({"mode": True}, "mode: must be 1 or 2"),
    ({"weights": [1]}, "weights: must map model -> zone -> node -> weight"),
    ({"colour": 1}, "unknown field(s): colour"),
    ({"service": {"m": {"n": 0}}}, "service.m.n: must be a number of seconds in (0, 3600]"),
    ({"service": {"m": {"n": math.nan}}}, "service.m.n: must be a number of seconds in (0, 3600]"),
    ({"service": {"m": {"n": 4000}}}, "service.m.n: must be a number of seconds in (0, 3600]"),
    ({"service": {"m": [0.1]}}, "service: must map model -> node -> seconds"),
    ({"service": {"m": {"bad node": 0.1}}}, "'bad node' is not a node name"),
    ({"idle": {"m": {"n": 0}}}, "idle.m.n: must be a number of seconds in (0, 3600]"),
    ({"idle": {"m": {"n": math.inf}}}, "idle.m.n: must be a number of seconds in (0, 3600]"),
    ({"idle": {"m": 0.1}}, "idle: must map model -> node -> seconds"),
])
def test_nan_inf_wrong_types_and_unknown_keys_are_named_on_both_sides(change, expect):
    body = {**GOOD, **change}
    with pytest.raises(PlanError) as info:
        parse_plan(json.loads(json.dumps(body)), known_models=["m"])     # as it arrives: through JSON
    assert expect in str(info.value)
    assert any(expect in problem for problem in _plan_problems(body))    # the back-end refuses to send it


def test_every_error_at_once_and_unknown_models():
    with pytest.raises(PlanError) as info:
        parse_plan({**GOOD, "mode": 3, "created": -1, "weights": {"ghost": {}, "m": {"z": {"n": -1}}}},
                   known_models=["m"])
    message = str(info.value)
    for part in ("weights.ghost: unknown model", "mode: must be 1 or 2", "created:", "weights.m.z.n"):
        assert part in message
    with pytest.raises(PlanError, match="service.ghost: unknown model"):
        parse_plan({**GOOD, "service": {"ghost": {"n": 0.1}}}, known_models=["m"])
    with pytest.raises(PlanError, match="idle.ghost: unknown model"):
        parse_plan({**GOOD, "idle": {"ghost": {"n": 0.1}}}, known_models=["m"])


def test_a_good_body_passes_both_sides():
    assert _plan_problems(GOOD) == []
    plan = parse_plan(GOOD, known_models=["m"])
    assert plan.weights == {"m": {"z": {"n": 1.0}}} and plan.rtt == {"z": {"n": 0.01}} and plan.mode == 1


def test_service_times_travel_with_the_plan():
    body = {**GOOD, "service": {"m": {"n": 0.07}}}
    assert _plan_problems(body) == []
    plan = parse_plan(json.loads(json.dumps(body)), known_models=["m"])
    assert plan.service == {"m": {"n": 0.07}} and plan.to_json()["service"] == {"m": {"n": 0.07}}
    assert "service" not in parse_plan(GOOD, known_models=["m"]).to_json()
    body = {**body, "idle": {"m": {"n": 0.05}}}
    assert _plan_problems(body) == []
    plan = parse_plan(json.loads(json.dumps(body)), known_models=["m"])
    assert plan.idle == {"m": {"n": 0.05}} and plan.to_json()["idle"] == {"m": {"n": 0.05}}
    assert "idle" not in parse_plan(GOOD, known_models=["m"]).to_json()
