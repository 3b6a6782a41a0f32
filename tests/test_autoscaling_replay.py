"""Offline replay, the audit trail and the `fleetserve autoscaler` commands (no Ray)."""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import yaml
from typer.testing import CliRunner

from serve_app.autoscaling.audit import EVENT, AuditLog, decision_record, format_table, read_records
from serve_app.autoscaling.cli import cli, fetch_records, replay_records
from serve_app.autoscaling.policy import Observation, PolicyState, decide
from serve_app.autoscaling.replay import TracePoint, parse_trace, replay
from serve_app.config import AutoscalingConfig
from serve_app.errors import ConfigError

POLICY = AutoscalingConfig(
    min_replicas=0, max_replicas=10, idle_timeout_s=120, upscale_stabilization_s=5,
    downscale_stabilization_s=60, upscale_cooldown_s=15, downscale_cooldown_s=30,
)


def steps(*segments: tuple[float, float]) -> tuple[TracePoint, ...]:
    """A trace of (start_s, in-flight requests) segments, one point every 10 s until the next segment."""
    points = []
    for (start, load), (end, _) in zip(segments, [*segments[1:], (segments[-1][0] + 10, 0)]):
        t = start
        while t < end:
            points.append(TracePoint(t_s=t, running_requests=load))
            t += 10
    return tuple(points)


def ready_at(decisions, t: float) -> int:
    return next(d.observation.current_replicas for d in decisions if d.observation.now_s >= t)


# -- trace parsing ----------------------------------------------------------------------------------

def test_trace_formats_parse_to_the_same_points():
    pts = [{"t_s": 10, "waiting_requests": 3}, {"t_s": 0, "running_requests": 5, "kv_usage": 0.5}]
    as_list = parse_trace(json.dumps(pts))
    as_obj = parse_trace(json.dumps({"points": pts}, indent=2))
    as_jsonl = parse_trace("\n".join(json.dumps(p) for p in pts))
    assert as_list == as_obj == as_jsonl
    assert [p.t_s for p in as_list] == [0, 10]  # sorted by time


def test_bad_trace_point_names_its_index_and_field():
    with pytest.raises(ConfigError) as e:
        parse_trace(json.dumps([{"t_s": 0}, {"t_s": 1, "kv_usage": 3}, {"t_s": 2, "queue": 1}]), source="t.json")
    paths = [p for p, _ in e.value.problems]
    assert paths == ["points[1].kv_usage", "points[2].queue"] and "t.json" in str(e.value)


# -- replay ---------------------------------------------------------------------------------------

def test_capacity_arrives_after_startup():
    trace = steps((0, 10), (100, 150), (400, 150))
    decisions = replay(trace, POLICY, startup_s=40, slots_per_replica=32)
    first_up = next(d for d in decisions if d.direction == "up" and d.observation.now_s >= 100)
    t_up = first_up.observation.now_s
    assert first_up.mode == "panic" and t_up == 100  # 140 in flight on 1 replica: no waiting out the window
    assert ready_at(decisions, t_up + 39) == first_up.previous_replicas
    assert ready_at(decisions, t_up + 40) == first_up.target_replicas
    # While they start, the same backlog asks for nothing more (they count as capacity).
    during = [d for d in decisions if t_up < d.observation.now_s < t_up + 40]
    assert during and all(d.target_replicas == first_up.target_replicas for d in during)


def test_constant_load_settles_without_flapping():
    decisions = replay(steps((0, 150), (1800, 150)), POLICY, startup_s=30, slots_per_replica=32)
    targets = [d.target_replicas for d in decisions]
    assert targets[-1] == 5  # 150 in flight / (32 + 4) per replica
    settled = next(i for i, d in enumerate(decisions) if d.observation.now_s >= 300)
    assert len(set(targets[settled:])) == 1
    changes = [b - a for a, b in zip(targets, targets[1:]) if a != b]
    assert all(c > 0 for c in changes)  # up to the need, never back and forth


def test_scales_to_zero_when_idle_and_wakes_on_load():
    decisions = replay(steps((0, 40), (200, 0), (600, 20), (700, 20)), POLICY, startup_s=20, slots_per_replica=32)
    at = {d.observation.now_s: d for d in decisions}
    assert at[300.0].target_replicas >= 1  # idle for 100 s < idle_timeout_s=120
    assert at[599.0].target_replicas == 0
    assert at[600.0].mode == "wake" and at[600.0].target_replicas >= 1
    assert ready_at(decisions, 620) >= 1


def test_open_loop_replay_uses_the_recorded_values():
    trace = (TracePoint(t_s=0, running_requests=64, waiting_requests=40, kv_usage=0.9),
             TracePoint(t_s=5, running_requests=64, waiting_requests=40, kv_usage=0.9))
    policy = AutoscalingConfig(min_replicas=1, max_replicas=4, upscale_stabilization_s=0)
    decisions = replay(trace, policy, tick_s=1.0, initial_replicas=2)
    assert len(decisions) == 6
    assert decisions[0].observation.waiting_requests == 40 and decisions[0].target_replicas > 2


def test_replay_is_deterministic():
    trace = steps((0, 10), (50, 300), (300, 0))
    a = replay(trace, POLICY, startup_s=25, slots_per_replica=16)
    b = replay(trace, POLICY, startup_s=25, slots_per_replica=16)
    assert [decision_record(d, model="m") for d in a] == [decision_record(d, model="m") for d in b]


@pytest.mark.parametrize("kw", [{"startup_s": -1}, {"slots_per_replica": 0}, {"tick_s": 0}])
def test_replay_refuses_bad_parameters(kw):
    with pytest.raises(ValueError):
        replay(steps((0, 1)), POLICY, **kw)


# -- audit ----------------------------------------------------------------------------------------

def _decisions(n: int):
    state, out = PolicyState(), []
    policy = AutoscalingConfig(min_replicas=1, max_replicas=8, upscale_stabilization_s=0, upscale_cooldown_s=0)
    for i in range(n):
        d = decide(Observation(now_s=float(i), current_replicas=2, target_replicas=2, waiting_requests=10.0 * i,
                               running_requests=64), state, policy)
        state = d.state
        out.append(d)
    return out


def test_audit_log_is_bounded_and_logs_one_json_line_per_decision(caplog):
    seen = []
    log = AuditLog("m", size=3, on_record=seen.append)
    with caplog.at_level(logging.DEBUG, logger="fleetserve.autoscaler"):
        for d in _decisions(5):
            log.record(d)
    assert len(log) == 3 and [r.time_s for r in log.history()] == [2.0, 3.0, 4.0]
    assert len(seen) == 5 and len(caplog.records) == 5
    line = json.loads(caplog.records[-1].getMessage())
    assert line["event"] == EVENT and line["model"] == "m"
    assert set(line) >= {"time_s", "inputs", "raw_desired", "clamps", "previous_replicas", "target_replicas"}
    assert line["inputs"]["waiting_requests"] == 40.0
    body = log.to_dict(last=2)
    assert body["count"] == 2 and body["history_size"] == 3 and body["decisions"][-1] == line


def test_records_read_back_from_endpoint_json_jsonl_and_log_lines():
    log = AuditLog("m", size=10)
    for d in _decisions(3):
        log.record(d)
    recs = log.history()
    jsonl = "\n".join(r.to_json() for r in recs)
    logged = "\n".join(f"INFO 2025-01-01 controller.py:12 -- {r.to_json()}" for r in recs) + "\nunrelated line"
    assert read_records(json.dumps(log.to_dict())) == read_records(jsonl) == read_records(logged) == recs
    with pytest.raises(ValueError):
        read_records("nothing here")


def test_table_collapses_repeats_and_shows_clamps():
    policy = AutoscalingConfig(min_replicas=1, max_replicas=3, upscale_stabilization_s=0)
    recs = [decision_record(decide(Observation(now_s=float(t), current_replicas=3, target_replicas=3,
                                               waiting_requests=50, running_requests=96), PolicyState(), policy),
                            model="m") for t in range(4)]
    table = format_table(recs, why=True)
    assert "0.0..3.0 x4" in table and "bounds" in table and "3->3" in table
    assert "- bounds: bounds [1, 3]" in table
    assert format_table(recs, changes_only=True) == "(no decisions)"


# -- CLI ------------------------------------------------------------------------------------------

@pytest.fixture
def files(tmp_path):
    cfg = {"models": [{"name": "m", "source": "org/model", "autoscaling": POLICY.model_dump(mode="json")},
                      {"name": "other", "source": "org/other"}]}
    (tmp_path / "deploy.yaml").write_text(yaml.safe_dump(cfg))
    trace = steps((0, 10), (60, 200), (200, 0))
    (tmp_path / "trace.jsonl").write_text("\n".join(p.model_dump_json() for p in trace))
    return tmp_path


def test_cli_replay_prints_a_table_and_json(files):
    runner = CliRunner()
    args = ["replay", str(files / "trace.jsonl"), "-c", str(files / "deploy.yaml"), "-m", "m",
            "--slots-per-replica", "32", "--startup-s", "20"]
    out = runner.invoke(cli, args)
    assert out.exit_code == 0, out.output
    assert "panic" in out.output and "decisions" in out.output.splitlines()[-1]
    js = runner.invoke(cli, [*args, "--json"])
    recs = read_records(js.output)
    assert recs == replay_records(files / "trace.jsonl", files / "deploy.yaml", "m", startup_s=20, slots_per_replica=32)


def test_cli_replay_errors_name_the_problem(files):
    out = CliRunner().invoke(cli, ["replay", str(files / "trace.jsonl"), "-c", str(files / "deploy.yaml")])
    assert out.exit_code == 1 and "--model" in out.output and "m, other" in out.output
    out = CliRunner().invoke(cli, ["replay", str(files / "nope.json"), "-c", str(files / "deploy.yaml"), "-m", "m"])
    assert out.exit_code == 1 and "does not exist" in out.output


def test_cli_explain_reads_a_file(files):
    recs = replay_records(files / "trace.jsonl", files / "deploy.yaml", "m", startup_s=20, slots_per_replica=32)
    (files / "decisions.jsonl").write_text("\n".join(r.to_json() for r in recs))
    out = CliRunner().invoke(cli, ["explain", str(files / "decisions.jsonl"), "--last", "400"])
    assert out.exit_code == 0, out.output
    assert "replicas" in out.output.splitlines()[0] and "panic" in out.output


def test_explain_reads_a_running_apps_endpoint():
    log = AuditLog("m", size=10)
    for d in _decisions(3):
        log.record(d)
    seen_paths = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            seen_paths.append((self.path, self.headers.get("Authorization")))
            found = self.path.startswith("/-/autoscaler/m")
            body = json.dumps(log.to_dict() if found else {"detail": "no such model"}).encode()
            self.send_response(200 if found else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        assert fetch_records(url, "m", last=2, api_key="k") == log.history()
        assert seen_paths[0] == ("/-/autoscaler/m?last=2", "Bearer k")
        out = CliRunner().invoke(cli, ["explain", url, "-m", "m"])
        assert out.exit_code == 0 and "2->" in out.output
        missing = CliRunner().invoke(cli, ["explain", url, "-m", "x"])
        assert missing.exit_code == 1 and "404" in missing.output
    finally:
        server.shutdown()
        server.server_close()


def test_explain_of_a_model_the_app_does_not_serve_fails_naming_the_served_ones(files):
    # Like the real endpoint: the history of any name is an empty list; /v1/models says what is served.
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            body = json.dumps({"object": "list", "data": [{"id": "m"}]} if self.path == "/v1/models" else []).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        nosuch = CliRunner().invoke(cli, ["explain", url, "-m", "nosuch"])
        assert nosuch.exit_code == 1 and "serves no model 'nosuch'; it serves m" in nosuch.output
        empty = CliRunner().invoke(cli, ["explain", url, "-m", "m", "--json"])
        assert empty.exit_code == 0 and "no autoscaling decisions yet for m" in empty.output
    finally:
        server.shutdown()
        server.server_close()
    recs = replay_records(files / "trace.jsonl", files / "deploy.yaml", "m", startup_s=20, slots_per_replica=32)
    (files / "decisions.jsonl").write_text("\n".join(r.to_json() for r in recs))
    other = CliRunner().invoke(cli, ["explain", str(files / "decisions.jsonl"), "-m", "nosuch"])
    assert other.exit_code == 1 and "has no decisions of model 'nosuch'; it has m" in other.output
