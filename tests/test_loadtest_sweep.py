"""A strategy sweep end to end: a real local multi-node Ray cluster, real Serve, real vLLM on the tiny model.

tp1, tp2 and pp2 of the tiny dense model, each deployed through Serve's API, warmed up, loaded
at concurrency 1 and 4 for a few seconds by Locust in subprocesses, and torn down; then the
report. Logical CPUs: on the CPU, TP/PP bundles are CPU bundles (2 per node here). PP=2 runs
compiled only (eager fails on the CPU), hence its `:enforce_eager=false`; its first start
compiles (~30-50 s, cached in ~/.cache/vllm after).
"""

from __future__ import annotations

import json

import pytest
import ray
from ray import serve
from ray.cluster_utils import Cluster

from conftest import free_port
from loadtest import Ladder, Slo, load_results, load_sweep, run_sweep, table_lines, write_report
from loadtest.report import PNG_MAGIC
from serve_app.config import parse_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

STRATEGIES = ["tp1", "tp2", "pp2:enforce_eager=false"]
BUNDLES = {"tp1": 1, "tp2": 2, "pp2:enforce_eager=false": 2}


@pytest.fixture(scope="module")
def cluster_url():
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    c.add_node(num_cpus=2)
    c.wait_for_nodes()
    ray.init(address=c.address, namespace="serve")
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()
        c.shutdown()


def test_sweep_tp1_tp2_pp2_on_a_two_node_cluster(cluster_url, tmp_path):
    cfg = parse_config({"name": "sweep", "models": [{
        "name": "tiny-dense", "source": "tiny:dense", "max_model_len": 512,
        "engine_args": {"dtype": "bfloat16", "enforce_eager": True, "max_num_seqs": 8},
        "placement": {"accelerator": "CPU"}, "env": {"VLLM_CPU_KVCACHE_SPACE": "1"},
    }]})
    ladder = Ladder(kind="concurrency", values=(1, 4), step_duration_s=5, drain_s=2, input_tokens=64,
                    output_tokens=32, warmup_requests=2)
    lines: list[str] = []
    sweep = run_sweep(cfg, STRATEGIES, out_dir=tmp_path, host=cluster_url, ladder=ladder,
                      slo=Slo(ttft_ms=2000, tpot_ms=200), address="test cluster", progress=lines.append)
    print("\n".join(lines))

    assert [s.name for s in sweep.strategies] == STRATEGIES
    assert len(sweep.cluster.nodes) == 2
    assert "load generator" in sweep.notes[0]  # locust shared this machine with the cluster
    for s in sweep.strategies:
        assert s.error is None, s.error
        assert [st.load for st in s.steps] == [1, 4]
        for st in s.steps:
            assert st.output_tokens > 0 and st.requests_failed == 0, (s.name, st)
            assert st.output_tokens == 32 * st.requests_total  # ignore_eos: exactly max_tokens each
            assert st.ttft_ms.p50 is not None and st.itl_ms.count > 0
            assert (tmp_path / st.run_dir / "requests.jsonl").exists()
        # The replica's placement group as Ray created it: one CPU bundle per engine worker, one node.
        assert [len(g.bundles) for g in s.placement_groups] == [BUNDLES[s.name]], s.placement_groups
        assert s.placement_groups[0].strategy == "STRICT_PACK" and s.placement_groups[0].nodes == 1
        assert s.layout.tensor * s.layout.pipeline == BUNDLES[s.name]
        assert s.ready_s and s.teardown_s is not None
    assert sweep.strategies[2].layout.engine_args["enforce_eager"] is False
    # torn down: no app and no replica placement group left
    assert not serve.status().applications
    assert not [g for g in ray.util.placement_group_table().values()
                if g["state"] == "CREATED" and g["name"].startswith("SERVE_REPLICA::")]

    assert load_sweep(tmp_path) == sweep
    assert json.loads((tmp_path / "sweep.schema.json").read_text())["title"] == "SweepResults"
    files = write_report(sweep, tmp_path)
    assert files.throughput_png.read_bytes()[:8] == PNG_MAGIC
    # Three plots, and one timeline per strategy: each step scraped both nodes' metrics export ports.
    assert files.html.read_text().count("data:image/png;base64,") == 3 + len(STRATEGIES)
    assert [p.name for p in files.timelines] == [f"timeline-{s.slug}.png" for s in sweep.strategies]
    for s in sweep.strategies:
        for st in s.steps:
            server = load_results(tmp_path / st.run_dir / "results.json").server
            assert len(server.endpoints) == 2 and server.scrapes_failed == 0, server
            assert {p.replicas for p in server.models["tiny-dense"].points} == {1}
    table = "\n".join(table_lines(sweep))
    assert all(name in table for name in STRATEGIES)
