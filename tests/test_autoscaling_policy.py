"""The pure queue-depth policy: hypothesis properties, then one table case per clamp."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serve_app.autoscaling.policy import Observation, PolicyState, WindowSample, decide, due
from serve_app.config import AutoscalingConfig

# Per test, not a global profile: other modules' hypothesis tests keep their own settings.
props = settings(deadline=None, max_examples=150)


# -- strategies --------------------------------------------------------------------------------

@st.composite
def policies(draw) -> AutoscalingConfig:
    lo = draw(st.integers(0, 4))
    hi = draw(st.integers(max(lo, 1), 24))
    kw = dict(
        min_replicas=lo,
        max_replicas=hi,
        metric=draw(st.sampled_from(["requests", "tokens"])),
        target_queue_per_replica=draw(st.floats(0.5, 32)),
        target_waiting_tokens_per_replica=draw(st.integers(256, 32768)),
        downscale_max_kv_usage=draw(st.floats(0.1, 1.0)),
        upscale_stabilization_s=draw(st.sampled_from([0.0, 5.0, 30.0])),
        downscale_stabilization_s=draw(st.sampled_from([0.0, 30.0, 300.0])),
        upscale_cooldown_s=draw(st.sampled_from([0.0, 15.0, 60.0])),
        downscale_cooldown_s=draw(st.sampled_from([0.0, 60.0])),
        max_step_up=draw(st.integers(1, 8)),
        max_step_up_percent=draw(st.sampled_from([0.0, 50.0, 100.0, 400.0])),
        max_step_down=draw(st.integers(1, 4)),
        max_step_down_percent=draw(st.sampled_from([0.0, 10.0, 50.0, 100.0])),
        panic_threshold=draw(st.floats(1.0, 10.0)),
    )
    if lo == 0:
        kw["idle_timeout_s"] = draw(st.sampled_from([1.0, 60.0, 600.0]))
    return AutoscalingConfig(**kw)


@st.composite
def loads(draw) -> dict:
    """Load fields of an observation (replica counts come separately): idle, calm or backlogged."""
    regime = draw(st.sampled_from(["idle", "calm", "busy", "busy"]))
    if regime == "idle":
        return dict(kv_usage=draw(st.none() | st.just(0.0)))
    calm = regime == "calm"
    return dict(
        queued_requests=0.0 if calm else draw(st.sampled_from([0.0, 1.0]) | st.floats(0, 400)),
        waiting_requests=0.0 if calm else draw(st.sampled_from([0.0, 3.0]) | st.floats(0, 400)),
        running_requests=draw(st.sampled_from([0.0, 16.0]) | st.floats(0, 600)),
        waiting_tokens=0.0 if calm else draw(st.floats(0, 200_000)),
        kv_usage=draw(st.none() | st.floats(0, 1)),
    )


@st.composite
def observations(draw, policy: AutoscalingConfig, now_s: float) -> Observation:
    """A consistent observation: the target is the replicas running plus those starting."""
    base = draw(st.integers(policy.min_replicas, policy.max_replicas))
    starting = draw(st.just(0) | st.integers(0, base))
    return Observation(now_s=now_s, current_replicas=base - starting, target_replicas=base,
                       starting_replicas=starting, **draw(loads()))


@st.composite
def scenarios(draw):
    """A policy, a reachable state (a few earlier decisions) and the next observation."""
    policy = draw(policies())
    state, now = PolicyState(), 0.0
    for _ in range(draw(st.integers(0, 5))):
        now += draw(st.floats(0.1, 400))
        state = decide(draw(observations(policy, now)), state, policy).state
    now += draw(st.floats(0.1, 400))
    return policy, state, draw(observations(policy, now))


def _step_limits(policy: AutoscalingConfig, base: int) -> tuple[int, int]:
    up = max(policy.max_step_up, math.floor(base * policy.max_step_up_percent / 100 + 1e-9))
    down = max(policy.max_step_down, math.floor(base * policy.max_step_down_percent / 100 + 1e-9))
    return up, down


def _queue_above_target(policy: AutoscalingConfig, obs: Observation) -> bool:
    backlog = (obs.queued_requests + obs.waiting_requests if policy.metric == "requests" else
               obs.waiting_tokens + obs.queued_requests * policy.target_waiting_tokens_per_replica / policy.target_queue_per_replica)
    return backlog > policy.target_backlog_per_replica * obs.capacity_replicas


# -- properties ----------------------------------------------------------------------------------

@props
@given(scenarios())
def test_target_never_leaves_bounds(sc):
    policy, state, obs = sc
    d = decide(obs, state, policy)
    assert policy.min_replicas <= d.target_replicas <= policy.max_replicas


@props
@given(scenarios())
def test_every_change_respects_the_step_limits(sc):
    policy, state, obs = sc
    d = decide(obs, state, policy)
    up, down = _step_limits(policy, obs.target_replicas)
    assert obs.target_replicas - down <= d.target_replicas <= obs.target_replicas + up


@props
@given(scenarios())
def test_never_scales_down_while_the_queue_is_above_target(sc):
    policy, state, obs = sc
    d = decide(obs, state, policy)
    if _queue_above_target(policy, obs):
        assert d.target_replicas >= obs.target_replicas, d.clamps


@props
@given(scenarios(), st.floats(1.0, 50.0), st.floats(0.0, 1.0))
def test_monotone_in_load(sc, factor, kv_extra):
    policy, state, obs = sc
    more = obs.model_copy(update=dict(
        queued_requests=obs.queued_requests * factor,
        waiting_requests=obs.waiting_requests * factor,
        running_requests=obs.running_requests * factor,
        waiting_tokens=obs.waiting_tokens * factor,
        kv_usage=None if obs.kv_usage is None else min(1.0, obs.kv_usage + kv_extra),
    ))
    assert decide(more, state, policy).target_replicas >= decide(obs, state, policy).target_replicas


@props
@given(scenarios(), st.floats(0.0, 500.0), st.floats(0.0, 500.0))
def test_monotone_in_backlog_alone(sc, extra_queued, extra_waiting):
    policy, state, obs = sc
    more = obs.model_copy(update=dict(
        queued_requests=obs.queued_requests + extra_queued,
        waiting_requests=obs.waiting_requests + extra_waiting,
        waiting_tokens=obs.waiting_tokens + extra_waiting * 100,
    ))
    assert decide(more, state, policy).target_replicas >= decide(obs, state, policy).target_replicas


@props
@given(policies(), loads(), st.integers(0, 24), st.lists(st.floats(0.1, 120.0), min_size=5, max_size=40))
def test_no_oscillation_under_constant_load(policy, load, start, gaps):
    base = min(max(start, policy.min_replicas), policy.max_replicas)
    state, now, targets = PolicyState(), 0.0, [base]
    for gap in gaps:
        now += gap
        obs = Observation(now_s=now, current_replicas=targets[-1], target_replicas=targets[-1], **load)
        d = decide(obs, state, policy)
        state = d.state
        targets.append(d.target_replicas)
    moves = [b - a for a, b in zip(targets, targets[1:]) if b != a]
    assert all(m > 0 for m in moves) or all(m < 0 for m in moves), targets


@props
@given(scenarios())
def test_panic_is_bounded_by_the_step_limits_and_max(sc):
    policy, state, obs = sc
    d = decide(obs, state, policy)
    if d.mode == "panic":
        up, _ = _step_limits(policy, obs.target_replicas)
        assert d.target_replicas <= min(obs.target_replicas + up, policy.max_replicas)
        assert d.target_replicas >= obs.target_replicas


@props
@given(scenarios(), st.floats(0.1, 1000.0))
def test_starting_replicas_count_as_capacity(sc, later_s):
    """The same backlog never triggers a second scale-up once the first one reached its wish."""
    policy, state, obs = sc
    first = decide(obs, state, policy)
    added = first.target_replicas - obs.target_replicas
    wish = min(max(first.raw_desired, policy.min_replicas), policy.max_replicas)
    if added <= 0 or first.target_replicas < wish:
        return  # no scale-up, or a capped one that is still on its way
    again = obs.model_copy(update=dict(
        now_s=obs.now_s + later_s, target_replicas=first.target_replicas,
        starting_replicas=obs.starting_replicas + added,
    ))
    assert decide(again, first.state, policy).target_replicas <= first.target_replicas


@props
@given(scenarios(), st.floats(0.01, 5.0))
def test_wakes_from_zero_on_the_first_queued_request(sc, queued):
    policy, state, _ = sc
    if policy.min_replicas:
        policy = policy.model_copy(update={"min_replicas": 0})
    obs = Observation(now_s=(state.last_decision_s or 0) + 0.1, current_replicas=0, target_replicas=0,
                      queued_requests=queued)
    d = decide(obs, state, policy)
    assert d.mode == "wake" and d.target_replicas >= 1


@props
@given(scenarios())
def test_state_survives_a_json_round_trip(sc):
    policy, state, obs = sc
    s = decide(obs, state, policy).state
    assert PolicyState.from_dict(json.loads(json.dumps(s.to_dict()))) == s


# -- table cases: one per clamp --------------------------------------------------------------------

def P(**kw) -> AutoscalingConfig:
    base = dict(min_replicas=1, max_replicas=10, upscale_stabilization_s=0, downscale_stabilization_s=0,
                upscale_cooldown_s=0, downscale_cooldown_s=0, max_step_up=100, max_step_down=100,
                target_queue_per_replica=4)
    return AutoscalingConfig(**{**base, **kw})


def O(now=100.0, running_replicas=2, starting=0, **load) -> Observation:
    return Observation(now_s=now, current_replicas=running_replicas, target_replicas=running_replicas + starting,
                       starting_replicas=starting, **load)


def names(d) -> list[str]:
    return [c.name for c in d.clamps]


def test_queue_need_counts_a_new_replica_as_a_whole_batch():
    # 2 replicas each running 32 with 40 waiting: (64 + 40) / (32 + 4) -> 3 replicas, not 40 / 4 = 10.
    d = decide(O(running_requests=64, waiting_requests=40), PolicyState(), P())
    assert (d.queue_need, d.target_replicas, d.clamps) == (3, 3, ())


def test_queue_exactly_at_target_holds():
    d = decide(O(running_requests=64, waiting_requests=8), PolicyState(), P())
    assert d.target_replicas == 2 and d.direction == "hold"


def test_tokens_metric_counts_waiting_prompt_tokens():
    policy = P(metric="tokens", target_waiting_tokens_per_replica=1000)
    few = decide(O(waiting_requests=50, waiting_tokens=1500), PolicyState(), policy)
    many = decide(O(waiting_requests=5, waiting_tokens=9000), PolicyState(), policy)
    assert few.target_replicas == 2 and many.target_replicas == 9  # 9000 tokens / 1000 per replica
    assert many.unit == "tokens" and many.backlog == 9000


@pytest.mark.parametrize("policy, obs, state, clamp, target", [
    pytest.param(P(max_replicas=3), O(waiting_requests=100), PolicyState(), "bounds", 3, id="bounds"),
    pytest.param(P(upscale_stabilization_s=30), O(now=110, waiting_requests=20), PolicyState(
        up_window=(WindowSample(90.0, 2),)), "upscale_stabilization", 2, id="upscale_stabilization"),
    pytest.param(P(downscale_stabilization_s=300), O(now=110, running_replicas=6), PolicyState(
        down_window=(WindowSample(0.0, 9), WindowSample(50.0, 6))), "downscale_stabilization", 6, id="downscale_stabilization"),
    pytest.param(P(min_replicas=0, idle_timeout_s=60), O(now=110, running_replicas=1), PolicyState(
        idle_since_s=100.0), "idle_timeout", 1, id="idle_timeout"),
    pytest.param(P(upscale_cooldown_s=30), O(now=110, waiting_requests=20), PolicyState(
        last_scale_up_s=100.0), "upscale_cooldown", 2, id="upscale_cooldown"),
    pytest.param(P(downscale_cooldown_s=60), O(now=110, running_replicas=4), PolicyState(
        last_scale_up_s=80.0), "downscale_cooldown", 4, id="downscale_cooldown_after_up"),
    pytest.param(P(), O(running_replicas=2, starting=2), PolicyState(), "starting_replicas", 4, id="starting_replicas"),
    pytest.param(P(max_step_up=2, max_step_up_percent=0), O(waiting_requests=40), PolicyState(),
                 "max_step_up", 4, id="max_step_up"),
    pytest.param(P(max_step_up=1, max_step_up_percent=200), O(waiting_requests=40), PolicyState(),
                 "max_step_up", 6, id="max_step_up_percent"),
    pytest.param(P(max_step_down=1, max_step_down_percent=0), O(running_replicas=8), PolicyState(),
                 "max_step_down", 7, id="max_step_down"),
    pytest.param(P(max_step_down=1, max_step_down_percent=50), O(running_replicas=8), PolicyState(),
                 "max_step_down", 4, id="max_step_down_percent"),
    pytest.param(P(min_replicas=0, idle_timeout_s=60), O(running_replicas=3), PolicyState(idle_since_s=0.0), "zero_from_one", 1,
                 id="zero_from_one"),
    pytest.param(P(max_replicas=4, max_step_down=1, max_step_down_percent=0), O(running_replicas=6), PolicyState(),
                 "final_bounds", 4, id="final_bounds"),
])
def test_each_clamp_is_applied_and_recorded(policy, obs, state, clamp, target):
    d = decide(obs, state, policy)
    assert clamp in names(d), d.clamps
    assert d.target_replicas == target
    c = next(c for c in d.clamps if c.name == clamp)
    assert c.before != c.after and c.why


def test_clamps_are_recorded_in_order():
    policy = P(max_replicas=6, max_step_up=1, max_step_up_percent=0)
    d = decide(O(waiting_requests=400), PolicyState(), policy)
    assert names(d) == ["bounds", "max_step_up"]
    assert [(c.before, c.after) for c in d.clamps] == [(100, 6), (6, 3)]


def test_panic_skips_the_upscale_window_and_cooldown_but_not_the_steps():
    policy = P(upscale_stabilization_s=60, upscale_cooldown_s=60, panic_threshold=3, max_step_up=2, max_step_up_percent=0)
    state = PolicyState(last_scale_up_s=95.0, up_window=(WindowSample(90.0, 2),))
    calm = decide(O(waiting_requests=20), state, policy)  # 5 per replica: above target, under panic
    panic = decide(O(waiting_requests=24), state, policy)  # 12 per replica = 3x target
    assert calm.mode == "normal" and calm.target_replicas == 2
    assert panic.mode == "panic" and panic.target_replicas == 4 and names(panic) == ["max_step_up"]


def test_drain_safe_scale_down_keeps_room_for_the_running_work():
    # 6 replicas at 35 % KV: the work fits 3 replicas at <= 70 %; scale-down stops there.
    d = decide(O(running_replicas=6, running_requests=60, kv_usage=0.35), PolicyState(), P())
    assert d.busy_need == 3 and d.target_replicas == 3
    unknown = decide(O(running_replicas=6, running_requests=60), PolicyState(), P())
    assert unknown.target_replicas == 6  # no KV signal: nothing running is given up


def test_scale_to_zero_after_idle_timeout_then_wake_on_first_request():
    policy = P(min_replicas=0, idle_timeout_s=60, downscale_stabilization_s=30)
    state, targets = PolicyState(), []
    for t in range(0, 100, 10):
        d = decide(O(now=float(t), running_replicas=1), state, policy)
        state = d.state
        targets.append(d.target_replicas)
    assert targets == [1] * 6 + [0] * 4  # idle since t=0: 0 from t=60 on
    wake = decide(Observation(now_s=100.0, current_replicas=0, target_replicas=0, queued_requests=1), state, policy)
    assert wake.mode == "wake" and wake.target_replicas == 1 and wake.clamps == ()


def test_waking_from_zero_uses_the_last_full_batch_seen():
    policy = P(min_replicas=0, idle_timeout_s=1)
    seen = decide(O(running_requests=64, waiting_requests=4), PolicyState(), policy).state
    assert seen.running_per_replica == 32
    wake = decide(Observation(now_s=200.0, current_replicas=0, target_replicas=0, queued_requests=100), seen, policy)
    assert wake.target_replicas == 3  # 100 / (32 + 4), not 100 / 4


def test_windows_are_measured_in_seconds_not_ticks():
    policy = P(upscale_stabilization_s=10)
    finals = []
    for tick_s in (0.1, 1.0, 2.5):
        state, t, d = PolicyState(), 0.0, None
        state = decide(O(now=0.0), state, policy).state  # a calm wish at t=0
        while t < 12.0 - 1e-9:
            t = round(t + tick_s, 6)
            d = decide(O(now=t, waiting_requests=20), state, policy)  # 2.5x target: no panic
            state = d.state
            if d.target_replicas > 2:
                break
        finals.append(t)
    assert all(10.0 <= f <= 10.0 + tick for f, tick in zip(finals, (0.1, 1.0, 2.5))), finals


def test_downscale_cooldown_counts_from_the_last_scale_down_too():
    policy = P(downscale_cooldown_s=60)
    d = decide(O(now=130, running_replicas=4), PolicyState(last_scale_down_s=100.0), policy)
    assert names(d) == ["bounds", "downscale_cooldown"] and d.target_replicas == 4
    later = decide(O(now=161, running_replicas=4), PolicyState(last_scale_down_s=100.0), policy)
    assert later.target_replicas == 1


def test_due_spaces_decisions_by_policy_interval():
    policy = P(policy_interval_s=1.0)
    assert due(PolicyState(), 5.0, policy)
    s = PolicyState(last_decision_s=5.0)
    assert not due(s, 5.5, policy) and due(s, 6.0, policy)
    assert due(s, 4.0, policy)  # a clock that went back never stalls the policy


def test_policy_module_imports_neither_ray_nor_vllm():
    code = ("import sys, serve_app.autoscaling, serve_app.autoscaling.policy, serve_app.autoscaling.replay, "
            "serve_app.autoscaling.audit, serve_app.autoscaling.cli; "
            "print([m for m in ('ray', 'vllm', 'locust') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
