"""The engine boundary names each load signal once; the policy, the replay and the audit use those names."""

from __future__ import annotations

import dataclasses
import json

import pytest

from serve_app.autoscaling.audit import DecisionRecord, read_records
from serve_app.autoscaling.policy import Observation, PolicyState, decide
from serve_app.autoscaling.replay import TracePoint
from serve_app.config import AutoscalingConfig
from serve_app.engines.base import SIGNALS, EngineStats, Load, metric_name, signal_of_metric


def test_engine_stats_carry_exactly_the_signals_and_report_them_as_engine_metrics():
    assert tuple(f.name for f in dataclasses.fields(EngineStats)) == SIGNALS
    assert list(EngineStats().as_metrics()) == [f"engine_{s}" for s in SIGNALS]
    assert all(signal_of_metric(metric_name(s)) == s for s in SIGNALS)
    assert signal_of_metric("engine_waiting") is None and signal_of_metric("replica_queue") is None
    with pytest.raises(KeyError, match="not an engine signal"):
        metric_name("waiting_prompt_tokens")


@pytest.mark.parametrize("cls", [Observation, TracePoint])
def test_observation_and_trace_point_inherit_load_without_redeclaring_it(cls):
    assert issubclass(cls, Load) and set(SIGNALS) <= set(cls.model_fields)
    own = set(cls.__annotations__)  # fields declared by the class itself, not inherited
    assert not own & set(Load.model_fields), own & set(Load.model_fields)


def test_a_trace_point_becomes_the_same_load_in_an_observation():
    pt = TracePoint(t_s=3.0, queued_requests=1, waiting_requests=2, running_requests=3, waiting_tokens=40, kv_usage=0.5)
    obs = Observation(now_s=3.0, current_replicas=1, target_replicas=1, **pt.load().model_dump())
    assert obs.load() == pt.load() and pt.in_flight_requests == obs.in_flight_requests == 6


def test_decision_record_is_typed_and_round_trips_through_json():
    obs = Observation(now_s=7.0, current_replicas=2, target_replicas=2, waiting_requests=50, running_requests=64)
    rec = DecisionRecord.from_decision(decide(obs, PolicyState(), AutoscalingConfig(max_replicas=8)), model="m")
    wire = json.loads(rec.to_json())
    assert "now_s" not in wire["inputs"] and wire["time_s"] == 7.0  # the JSON form is unchanged
    back = read_records(rec.to_json())
    assert back == [rec] and back[0].inputs.waiting_requests == 50 and back[0].clamps == rec.clamps
