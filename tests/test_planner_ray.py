"""`parallelism: auto` on a real multi-node Ray cluster: 2 nodes x 2 logical GPUs on one machine.

The planner resolves the layout, `bundles_for` / `strategy_for` give the placement group, the
test checks they are the bundles the app builder's deployment uses (`serve_app.app.layout_for`),
creates the group with Ray and reads from Ray's own table where each bundle landed.
"""

from __future__ import annotations

from collections import Counter

import pytest

ray = pytest.importorskip("ray")

from ray.cluster_utils import Cluster  # noqa: E402
from ray.util.placement_group import placement_group, remove_placement_group  # noqa: E402

from cluster.planner import bundles_for, resolve_parallelism, strategy_for  # noqa: E402
from serve_app.config import Parallelism, parse_config  # noqa: E402

pytestmark = pytest.mark.slow

LOGICAL_GPU = {"name": "logical-16g", "memory_gib": 16, "bf16_tflops": 100, "memory_bandwidth_gb_s": 800,
               "interconnect": "pcie", "interconnect_gb_s": 32}


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 2})
    c.add_node(num_cpus=2, num_gpus=2)
    c.wait_for_nodes()
    ray.init(address=c.address)
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


def _model(source: str, **fields):
    cfg = parse_config({"name": "plan", "accelerators": [LOGICAL_GPU],
                        "models": [{"name": "m", "source": source, "parallelism": "auto", **fields}]})
    return cfg, cfg.models[0]


def _gpu_nodes_per_group(groups) -> list[list[str]]:
    """Create each group, wait until Ray placed it, and return the node of each bundle (in bundle order)."""
    placed = []
    try:
        for g in groups:
            ray.get(g.ready(), timeout=60)
            table = ray.util.placement_group_table(g)
            assert table["state"] == "CREATED"
            placed.append([table["bundles_to_node_id"][i] for i in range(len(table["bundles"]))])
    finally:
        for g in groups:
            remove_placement_group(g)
    return placed


def _plan(model, cfg):
    par, strategy = resolve_parallelism(model, nodes=2, gpus_per_node=2, accelerator="logical-16g",
                                        extra_accelerators=cfg.accelerators)
    bundles = bundles_for(par, model.placement)
    assert strategy == strategy_for(par, model.placement, accelerators_per_node=2)
    # The same bundles and strategy the app builder's deployment asks Ray for.
    from serve_app.app import layout_for

    built = layout_for(model.model_copy(update={"parallelism": par}), accelerators_per_node=2)
    assert (list(built.bundles), built.strategy) == (bundles, strategy)
    return par, bundles, strategy


def test_auto_tp2_replicas_each_stay_on_one_node(cluster):
    cfg, model = _model("mistralai/Mistral-7B-Instruct-v0.2", max_model_len=2048, engine_args={"max_num_seqs": 32})
    par, bundles, strategy = _plan(model, cfg)
    assert (par, strategy) == (Parallelism(tensor=2), "STRICT_PACK")
    assert bundles == [{"GPU": 1.0, "CPU": 1.0}] * 2
    # The plan's two replicas: each TP group on one node, the two on different nodes.
    nodes = _gpu_nodes_per_group([placement_group(bundles, strategy=strategy) for _ in range(2)])
    assert all(len(set(n)) == 1 for n in nodes)
    assert nodes[0][0] != nodes[1][0]


def test_auto_tp2_pp2_spans_both_nodes_one_stage_each(cluster):
    cfg, model = _model("meta-llama/Llama-3.3-70B-Instruct", max_model_len=4096, quantization="awq")
    par, bundles, strategy = _plan(model, cfg)
    assert (par, strategy) == (Parallelism(tensor=2, pipeline=2), "PACK")
    assert bundles == [{"GPU": 1.0, "CPU": 1.0}] * 4
    (nodes,) = _gpu_nodes_per_group([placement_group(bundles, strategy=strategy)])
    # Two bundles on each node: one pipeline stage's TP pair per node (vLLM's Ray executor orders
    # workers by node, so each TP group stays on its node's fast link and only PP crosses nodes).
    alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert Counter(nodes) == {node: 2 for node in alive}
