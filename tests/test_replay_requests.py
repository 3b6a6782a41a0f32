"""Request-level replay: the shared batch model, traces, the event-driven replay, compare, tune, shadows (pure, fast)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from serve_app.autoscaling.cli import cli
from serve_app.autoscaling.compare import Slo, compare, summarize
from serve_app.autoscaling.des import ReplaySetup, run_replay
from serve_app.autoscaling.latency import LatencyModel, from_roofline
from serve_app.autoscaling.policy import Observation
from serve_app.autoscaling.runners import QueueDepthRunner, ServeDefaultRunner
from serve_app.autoscaling.serve_default import ServeDefaultState, serve_default_decide
from serve_app.autoscaling.shadows import evaluate
from serve_app.autoscaling.traces import RequestTrace, generate, load_requests, read_trace
from serve_app.autoscaling.tune import search_space, tune, yaml_block
from serve_app.config import AutoscalingConfig
from serve_app.engines.batching import BatchModel, Seq
from serve_app.errors import ConfigError

LAT = LatencyModel(decode_step_base_s=0.04, decode_step_per_seq_s=0.005, prefill_s_per_token=0.0002,
                   prefill_s_per_request=0.001, max_num_seqs=4, kv_capacity_tokens=100_000, cold_start_s=5.0)
POLICY = AutoscalingConfig(min_replicas=1, max_replicas=6, target_queue_per_replica=1, upscale_stabilization_s=1,
                           downscale_stabilization_s=10, upscale_cooldown_s=1, downscale_cooldown_s=2,
                           metrics_push_interval_s=0.5, metrics_look_back_s=2, policy_interval_s=0.5)


# ---- the batch model -----------------------------------------------------------------------------

def test_lone_request_gets_its_first_token_after_the_prefill_step_and_ends_n_steps_later():
    m = BatchModel(LAT)
    m.submit(Seq(100, 5))
    d1, admitted = m.start_step()
    assert len(admitted) == 1 and d1 == pytest.approx(0.04 + 100 * 0.0002 + 0.001)
    assert m.steps_to_next_finish() == 5 and m.steady_step_s() == pytest.approx(0.04)
    assert m.finish(5)[0].output_tokens == 5 and m.idle and m.kv_used == 0


def test_batch_is_bounded_by_max_num_seqs_and_kv():
    m = BatchModel(LAT.with_(kv_capacity_tokens=250))
    for _ in range(6):
        m.submit(Seq(100, 10))
    m.start_step()
    assert len(m.running) == 2 and len(m.waiting) == 4  # 2 x 110 KV tokens fit in 250, a third does not
    m2 = BatchModel(LAT)
    for _ in range(6):
        m2.submit(Seq(10, 10))
    m2.start_step()
    assert len(m2.running) == 4 and m2.waiting_tokens == 20


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 50), st.integers(1, 30)), min_size=1, max_size=12))
def test_jumping_k_steps_finishes_the_same_requests_at_the_same_steps_as_stepping_one_by_one(reqs):
    def drive(jump: bool) -> list[tuple[int, int]]:
        m, out = BatchModel(LAT), []
        for i, (p, n) in enumerate(reqs):
            m.submit(Seq(p, n, tag=i))
        while not m.idle:
            m.start_step()
            k = m.steps_to_next_finish() if jump else 1
            out += [(s.tag, m.steps) for s in m.finish(k)]
        return sorted(out)

    assert drive(True) == drive(False)


# ---- traces --------------------------------------------------------------------------------------

def test_every_format_reads_to_the_same_requests(tmp_path):
    rows = [(0.0, 10, 3), (0.5, 20, 4), (2.0, 30, 5)]
    files = {
        "a.csv": "timestamp_s,prompt_tokens,output_tokens\n" + "".join(f"{t},{p},{o}\n" for t, p, o in rows),
        "azure.csv": "TIMESTAMP,ContextTokens,GeneratedTokens\n" + "".join(
            f"2023-11-16 18:15:{46 + t:09.6f}0,{p},{o}\n" for t, p, o in rows),
        "burst.csv": "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n" + "".join(
            f"{t + 5},ChatGPT,{p},{o},{p + o},Conversation log\n" for t, p, o in rows),
        "moon.jsonl": "".join(json.dumps({"timestamp": int(t * 1000), "input_length": p, "output_length": o, "hash_ids": []}) + "\n"
                              for t, p, o in rows),
        "requests.jsonl": "".join(json.dumps({"i": i, "proc": "local", "model": "m", "start_unix_s": 1e9 + t, "input_tokens": p,
                                              "max_tokens": o, "output_tokens": o, "e2e_ms": 1, "ok": True}) + "\n"
                                  for i, (t, p, o) in enumerate(rows)),
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
        tr = read_trace(tmp_path / name)
        assert [round(a, 3) for a in tr.arrival_s] == [0.0, 0.5, 2.0], name
        assert tr.prompt_tokens == (10, 20, 30) and tr.output_tokens == (3, 4, 5), name
    assert read_trace(tmp_path / "requests.jsonl").for_model("m").models == ("m",) * 3


def test_column_mapping_and_bad_rows_name_file_line_and_field(tmp_path):
    p = tmp_path / "mine.csv"
    p.write_text("when,in,out\n1,5,5\n2,x,5\n")
    with pytest.raises(ConfigError) as e:
        read_trace(p)
    assert "no column for time" in str(e.value)
    with pytest.raises(ConfigError) as e:
        read_trace(p, columns={"time": "when", "prompt": "in", "output": "out"})
    assert str(p) in str(e.value) and "line 3.in" in str(e.value) and "'x'" in str(e.value)
    with pytest.raises(ConfigError, match="duration_s"):
        load_requests("gen:poisson,rate_rps=3")


def test_generators_are_seeded_and_shaped():
    a, b = generate("poisson", rate_rps=20, duration_s=100, seed=3), generate("poisson", rate_rps=20, duration_s=100, seed=3)
    assert a == b and 1700 < len(a) < 2300 and a != generate("poisson", rate_rps=20, duration_s=100, seed=4)
    bursty = generate("bursty", rate_rps=2, burst_rps=50, burst_s=10, burst_every_s=100, duration_s=100, seed=1)
    inside = sum(1 for t in bursty.arrival_s if 50 <= t < 60)
    assert inside > 5 * (len(bursty) - inside) / 9  # the burst window holds far more than its share
    ramp = generate("ramp", rate_rps=1, end_rps=20, duration_s=200, seed=1)
    assert sum(t > 100 for t in ramp.arrival_s) > 2 * sum(t <= 100 for t in ramp.arrival_s)
    assert len(generate("diurnal", rate_rps=10, period_s=100, duration_s=100, seed=1)) > 0


def test_a_mixed_burst_gives_the_burst_requests_their_own_lengths_and_keeps_the_arrivals():
    kw = dict(rate_rps=5, burst_rps=20, burst_s=20, burst_every_s=100, first_burst_s=40, duration_s=100, seed=2,
              prompt_tokens=256, output_tokens=128)
    plain = generate("bursty", **kw)
    mixed = generate("bursty", **kw, burst_prompt_tokens=4096, burst_output_tokens=16)
    assert mixed.arrival_s == plain.arrival_s  # the same thinning draws: only the lengths differ
    inside = [p for t, p in zip(mixed.arrival_s, mixed.prompt_tokens) if 40 <= t < 60]
    outside = [p for t, p in zip(mixed.arrival_s, mixed.prompt_tokens) if not 40 <= t < 60]
    assert max(outside) <= 384 and sum(p > 2000 for p in inside) > 0.6 * len(inside)
    assert load_requests("gen:bursty,rate_rps=5,burst_rps=20,burst_s=20,burst_every_s=100,first_burst_s=40,duration_s=100,"
                         "seed=2,prompt_tokens=256,output_tokens=128,burst_prompt_tokens=4096,burst_output_tokens=16") == mixed
    with pytest.raises(ConfigError, match="bursty generator only"):
        generate("poisson", rate_rps=5, duration_s=10, burst_prompt_tokens=4096)


# ---- the replay ----------------------------------------------------------------------------------

def _setup(**kw) -> ReplaySetup:
    return ReplaySetup(latency=LAT, max_ongoing_requests=kw.pop("max_ongoing_requests", 6), tail_s=kw.pop("tail_s", 20), **kw)


def test_a_lone_request_is_timed_by_the_batch_model():
    tr = RequestTrace.from_rows([(1.0, 100, 5)])
    r = run_replay(tr, QueueDepthRunner("q", POLICY), _setup())
    ttft = 0.04 + 100 * 0.0002 + 0.001
    assert r.ttft_s[0] == pytest.approx(ttft) and r.e2e_s[0] == pytest.approx(ttft + 4 * 0.04)
    assert r.tpot_s[0] == pytest.approx(0.04) and r.finished == 1


def test_the_http_path_is_added_to_every_request_and_measured_on_the_unloaded_ones():
    from serve_app.autoscaling.fidelity import unloaded_overhead_s

    tr = RequestTrace.from_rows([(1.0, 100, 5), (1.05, 100, 5), (9.0, 100, 5)])
    plain = run_replay(tr, QueueDepthRunner("q", POLICY), _setup())
    hop = run_replay(tr, QueueDepthRunner("q", POLICY), _setup(ingress_s=0.03))
    assert [b - a for a, b in zip(plain.ttft_s, hop.ttft_s)] == pytest.approx([0.03] * 3)
    lone = (0.04 + 100 * 0.0002 + 0.001) * 1e3
    rec = [{"start_unix_s": 10.0, "ttft_ms": lone + 30, "e2e_ms": 300, "input_tokens": 100},  # alone: 30 ms of hops
           {"start_unix_s": 20.0, "ttft_ms": lone + 500, "e2e_ms": 900, "input_tokens": 100},  # queued behind the next:
           {"start_unix_s": 20.1, "ttft_ms": lone + 900, "e2e_ms": 1200, "input_tokens": 100},  # not a measure of the path
           {"start_unix_s": 30.0, "ttft_ms": lone + 40, "e2e_ms": 300, "input_tokens": 100}]
    assert unloaded_overhead_s(rec, LAT) == pytest.approx(0.035)
    assert unloaded_overhead_s(rec[1:3], LAT) == 0.0


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), rate=st.floats(0.5, 40), maxq=st.one_of(st.none(), st.integers(0, 30)),
       timeout=st.one_of(st.none(), st.floats(0.5, 10)), serve=st.booleans(), min_r=st.integers(0, 2))
def test_conservation_bounds_and_determinism(seed, rate, maxq, timeout, serve, min_r):
    tr = generate("bursty", rate_rps=rate, burst_rps=3 * rate, burst_s=5, burst_every_s=20, duration_s=40, seed=seed,
                  prompt_tokens=64, output_tokens=16)
    if not len(tr):
        return
    cfg = POLICY.model_copy(update={"min_replicas": min_r, "initial_replicas": max(1, min_r), "idle_timeout_s": 5.0 if min_r == 0 else None})
    cfg = AutoscalingConfig.model_validate(cfg.model_dump() | ({"policy": "serve_default"} if serve else {}))

    def once():
        runner = ServeDefaultRunner("s", cfg) if serve else QueueDepthRunner("q", cfg)
        return run_replay(tr, runner, _setup(max_queued_requests=maxq, request_timeout_s=timeout, seed=seed))

    r = once()
    assert r.finished + r.shed + r.timed_out + r.killed + r.unfinished == r.requests == len(tr)
    assert all(cfg.min_replicas <= p[6] <= cfg.max_replicas for p in r.timeline)
    assert all(p[4] + p[5] <= cfg.max_replicas for p in r.timeline)
    served = [t for t in r.ttft_s if t == t]
    assert all(t > 0 for t in served)
    again = once()

    def nan_safe(xs):
        return [x if x == x else None for x in xs]  # NaN (no first token) != NaN

    assert (nan_safe(again.ttft_s), again.timeline, again.replica_s) == (nan_safe(r.ttft_s), r.timeline, r.replica_s)


def test_a_burst_scales_up_after_the_cold_start_and_back_down():
    tr = generate("bursty", rate_rps=1, burst_rps=25, burst_s=20, burst_every_s=1000, first_burst_s=10, duration_s=60,
                  seed=2, prompt_tokens=64, output_tokens=16)
    r = run_replay(tr, QueueDepthRunner("q", POLICY), _setup())
    replicas = [(t, n) for t, *_rest, n, _s, _tgt in r.timeline]
    assert max(n for _, n in replicas) >= 3
    first_up = min(t for t, n in replicas if n > 1)
    assert first_up >= 10 + LAT.cold_start_s  # the new replica serves only after its cold start
    assert replicas[-1][1] == 1 and r.finished == len(tr)


def test_max_ongoing_requests_keeps_the_rest_at_the_handle():
    tr = RequestTrace.from_rows([(0.0, 10, 50)] * 20)
    fixed = POLICY.model_copy(update={"max_replicas": 1})
    r = run_replay(tr, QueueDepthRunner("q", fixed), _setup(max_ongoing_requests=2, max_queued_requests=5))
    assert r.shed == 13 and r.finished == 7 and r.peak_queue >= 5


def test_roofline_latency_says_where_it_came_from():
    lat = from_roofline("mixtral-8x7b", "A100-80GB", tp=4)
    assert lat.gpus_per_replica == 4 and "roofline mixtral-8x7b" in lat.describe() and "not validated" in lat.describe()
    with pytest.raises(ConfigError, match="does not fit"):
        from_roofline("llama-70b", "L4", tp=1)


# ---- Serve's default, compare, tune, shadows ---------------------------------------------------

def _obs(now, running, target, total):
    return Observation(now_s=now, current_replicas=running, target_replicas=target, running_requests=total)


def test_serve_default_waits_its_delays_in_seconds():
    cfg = AutoscalingConfig(policy="serve_default", min_replicas=0, max_replicas=10, serve_target_ongoing_requests=2,
                            upscale_stabilization_s=3, downscale_stabilization_s=10, idle_timeout_s=20)
    st0 = ServeDefaultState()
    n, s = serve_default_decide(_obs(0, 2, 2, 12), st0, cfg)
    assert n == 2
    n, s = serve_default_decide(_obs(3, 2, 2, 12), s, cfg)
    assert n == 6  # 12 ongoing / target 2, after 3 s of wanting it
    n, s = serve_default_decide(_obs(4, 6, 6, 0), s, cfg)
    n, s = serve_default_decide(_obs(14, 6, 6, 0), s, cfg)
    assert n == 1  # other downscales stop at 1 ...
    n, s = serve_default_decide(_obs(15, 1, 1, 0), s, cfg)
    n, s = serve_default_decide(_obs(35, 1, 1, 0), s, cfg)
    assert n == 0  # ... 1 -> 0 waits downscale_to_zero (idle_timeout_s)
    assert serve_default_decide(_obs(36, 0, 0, 0.0).model_copy(update={"queued_requests": 1}), s, cfg)[0] == 1


def test_compare_and_slo():
    tr = generate("bursty", rate_rps=2, burst_rps=20, burst_s=10, burst_every_s=60, duration_s=60, seed=1,
                  prompt_tokens=64, output_tokens=16)
    sd = AutoscalingConfig(policy="serve_default", min_replicas=1, max_replicas=6, serve_target_ongoing_requests=4,
                           upscale_stabilization_s=1, downscale_stabilization_s=10, metrics_push_interval_s=0.5,
                           metrics_look_back_s=2)
    slo = Slo.parse("ttft_p95_ms=800")
    assert (slo.ttft_ms, slo.attainment) == (800, 0.95) and Slo.parse("ttft_p99_ms=5", attainment=0.9).attainment == 0.9
    with pytest.raises(ValueError, match="ttft_pNN_ms"):
        Slo.parse("p95=3")
    _, rows = compare(tr, [QueueDepthRunner("q", POLICY), ServeDefaultRunner("s", sd)], _setup(), slo=slo)
    assert [r["policy"] for r in rows] == ["q", "s"]
    assert all(0 <= r["slo_attainment"] <= 1 and r["gpu_hours"] > 0 and r["ttft_ms"]["p50"] > 0 for r in rows)


def test_tune_finds_a_feasible_policy_and_writes_a_loadable_block():
    tr = generate("bursty", rate_rps=2, burst_rps=15, burst_s=10, burst_every_s=60, duration_s=60, seed=1,
                  prompt_tokens=64, output_tokens=16)
    res = tune(tr, POLICY, _setup(), Slo(5000, 0.9), trials=6, seed=1)
    assert len(res.trials) == 6 and res.best is not None and res.best.feasible
    assert res.frontier[0].gpu_hours == min(t.gpu_hours for t in res.trials)
    block = yaml.safe_load(yaml_block(res.best.config))["autoscaling"]
    again = AutoscalingConfig.model_validate(block)  # rounded to 3 decimals for reading
    assert again.target_queue_per_replica == pytest.approx(res.best.config.target_queue_per_replica, abs=1e-3)
    assert (again.min_replicas, again.max_replicas) == (res.best.config.min_replicas, 6)


def test_the_search_space_suggests_only_the_chosen_metrics_target():
    from optuna.trial import FixedTrial

    common = {"min_replicas": 1, "upscale_stabilization_s": 1.0, "downscale_stabilization_s": 10.0, "upscale_cooldown_s": 0.0,
              "downscale_cooldown_s": 0.0, "max_step_up": 2, "max_step_down": 1, "max_step_down_percent": 10.0,
              "panic_threshold": 3.0}
    # FixedTrial raises on a parameter it was not given: these pass only if the other target is not asked for.
    req = search_space(FixedTrial({**common, "metric": "requests", "target_queue_per_replica": 2.0}), "queue_depth", POLICY, 6)
    tok = search_space(FixedTrial({**common, "metric": "tokens", "target_waiting_tokens_per_replica": 4096}), "queue_depth", POLICY, 6)
    assert "target_waiting_tokens_per_replica" not in req and "target_queue_per_replica" not in tok


def test_shadows_decide_on_the_same_observation_and_keep_their_own_state():
    cfg = POLICY.model_copy(update={"shadow_policies": {"eager": {"target_queue_per_replica": 0.25, "upscale_stabilization_s": 0},
                                                        "serve": {"policy": "serve_default", "upscale_stabilization_s": 0}}})
    cfg = AutoscalingConfig.model_validate(cfg.model_dump())
    obs = Observation(now_s=1, current_replicas=1, target_replicas=1, waiting_requests=8, running_requests=4)
    recs, states = evaluate(obs, cfg, None)
    assert [r.name for r in recs] == ["eager", "serve"] and set(states) == {"eager", "serve"}
    assert recs[1].target_replicas == 6 and recs[0].target_replicas > 1  # Serve: 12 ongoing / 2 per replica
    json.dumps(states)


def test_replay_modules_import_no_ray():
    code = ("import sys; import serve_app.autoscaling.des, serve_app.autoscaling.tune, serve_app.autoscaling.report, "
            "serve_app.autoscaling._replay_cli, serve_app.autoscaling.shadows; "
            "print([m for m in ('ray', 'vllm', 'locust') if m in sys.modules])")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


# ---- the commands --------------------------------------------------------------------------------

@pytest.fixture
def deploy(tmp_path):
    p = tmp_path / "deploy.yaml"
    p.write_text(yaml.safe_dump({"name": "fs", "models": [{
        "name": "sim", "source": "tiny:dense", "engine": "sim", "max_ongoing_requests": 6,
        "sim": {"startup_s": 5, "decode_step_base_s": 0.04, "decode_step_per_seq_s": 0.005, "max_num_seqs": 4},
        "autoscaling": {"min_replicas": 1, "max_replicas": 6, "target_queue_per_replica": 1,
                        "shadow_policies": {"calm": {"target_queue_per_replica": 8}}}}]}))
    return p


def test_cli_replay_compares_policies_and_writes_a_report(deploy, tmp_path):
    (tmp_path / "slow.yaml").write_text("autoscaling: {target_queue_per_replica: 16}\n")
    gen = "gen:bursty,rate_rps=2,burst_rps=15,burst_s=10,burst_every_s=60,duration_s=60,prompt_tokens=64,output_tokens=16"
    out = CliRunner().invoke(cli, ["replay", gen, "-c", str(deploy), "--policy", str(tmp_path / "slow.yaml"),
                                   "--serve-default", "target=4", "--slo", "ttft_p95_ms=1000", "--out", str(tmp_path / "r")])
    assert out.exit_code == 0, out.output
    for name in ("active (queue_depth)", "shadow calm", "slow", "serve_default(target=4)", "latency model: sim config"):
        assert name in out.output
    assert (tmp_path / "r" / "replicas.png").stat().st_size > 0 and (tmp_path / "r" / "report.html").exists()
    assert len(json.loads((tmp_path / "r" / "summary.json").read_text())["policies"]) == 4
    bad = CliRunner().invoke(cli, ["replay", gen, "-c", str(deploy), "--serve-default", "targt=4"])
    assert bad.exit_code == 1 and "targt" in bad.output


def test_cli_tune_prints_a_frontier_and_the_yaml_block(deploy, tmp_path):
    gen = "gen:bursty,rate_rps=2,burst_rps=15,burst_s=10,burst_every_s=60,duration_s=60,prompt_tokens=64,output_tokens=16"
    out = CliRunner().invoke(cli, ["tune", gen, "-c", str(deploy), "--slo", "ttft_p90_ms=5000", "--trials", "4",
                                   "--out", str(tmp_path / "t")])
    assert out.exit_code == 0, out.output
    assert "frontier" in out.output and "serve_default" in out.output and "autoscaling:" in out.output
    assert AutoscalingConfig.model_validate(yaml.safe_load((tmp_path / "t" / "autoscaling.yaml").read_text())["autoscaling"])
    assert math.isfinite(json.loads((tmp_path / "t" / "tune.json").read_text())["queue_depth"]["best"]["gpu_hours"])


def test_startups_are_measured_from_target_increases_to_running_replicas():
    from serve_app.autoscaling.fidelity import agreement, measured_startups

    samples = [(0.0, 1, 1), (1.0, 3, 1), (3.5, 3, 2), (4.0, 3, 3), (9.0, 4, 3), (10.0, 4, 4)]
    assert measured_startups(samples) == [2.5, 3.0, 1.0]
    tr = RequestTrace.from_rows([(0.0, 10, 5)])
    r = run_replay(tr, QueueDepthRunner("q", POLICY), _setup(tail_s=3))
    ag = agreement([(t, 1) for t in (0.5, 1.0, 2.0, 50.0)], r, offset_s=0.0, until_s=10.0)
    assert ag.samples == 3 and ag.within_one == 1.0 and ag.exact == 1.0
