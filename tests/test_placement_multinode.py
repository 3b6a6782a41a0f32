"""Placement on a real multi-node Ray cluster (2 nodes x 2 logical GPUs) on one machine.

The deployments carry exactly the options our builder produces (bundles, strategy, actor
options); their class only holds the placement (no engine: CUDA kernels cannot run here), so
what is asserted is where Ray put the replica's placement group, read from Ray's own table.
"""

from __future__ import annotations

import sys
import time

import pytest
import ray
from ray import cloudpickle
from ray import serve
from ray.cluster_utils import Cluster

from conftest import free_port, wait_until
from serve_app.app import build_application, deployment_options, layout_for
from serve_app.config import parse_config
from serve_app.errors import PlacementError

pytestmark = pytest.mark.slow

# Replicas cannot import test modules: ship the holder class by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


class PlacementHolder:
    """Holds a replica's placement group and nothing else (placement tests only)."""

    def __call__(self) -> str:
        return "ok"


def _cfg(name, parallelism, **placement):
    return parse_config({"name": "placement", "models": [{
        "name": name, "source": "mistralai/Mistral-7B-v0.1", "parallelism": parallelism,
        "placement": {"accelerator": "GPU", "schedule_timeout_s": 3, **placement},
    }]})


@pytest.fixture(scope="module")
def cluster():
    # Ray marks a node's GPU model with an accelerator_type:<name> resource; logical here.
    marker = {"accelerator_type:A100-40G": 1}
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 2, "resources": marker})
    c.add_node(num_cpus=2, num_gpus=2, resources=marker)
    c.wait_for_nodes()
    ray.init(address=c.address, namespace="serve")
    serve.start(http_options={"host": "127.0.0.1", "port": free_port()}, proxy_location="HeadOnly")
    try:
        yield c
    finally:
        serve.shutdown()
        ray.shutdown()
        c.shutdown()


def _deploy_and_read_group(cfg):
    model = cfg.models[0]
    layout = layout_for(model)
    opts = deployment_options(model, layout)
    app = serve.deployment(PlacementHolder).options(**opts).bind()
    serve.run(app, name=model.name, route_prefix=f"/{model.name}")

    def created():
        groups = [g for g in ray.util.placement_group_table().values()
                  if g["state"] == "CREATED" and len(g["bundles"]) == model.parallelism.world_size
                  and not g["name"].startswith("fleetserve-probe")]
        return groups[0] if len(groups) == 1 else None

    group = wait_until(created, timeout_s=60, what="the replica's placement group")
    serve.delete(model.name)
    wait_until(lambda: not any(g["state"] == "CREATED" for g in ray.util.placement_group_table().values()),
               timeout_s=60, what="the placement group to be removed")
    return layout, group


def test_tp2_bundles_land_on_one_node(cluster):
    layout, group = _deploy_and_read_group(_cfg("tp2", {"tensor": 2}))
    assert layout.strategy == "STRICT_PACK"
    assert group["strategy"] == "STRICT_PACK"
    assert all(b.get("GPU") == 1 for b in group["bundles"].values())
    assert len(set(group["bundles_to_node_id"].values())) == 1


def test_tp2_pp2_spans_both_nodes(cluster):
    layout, group = _deploy_and_read_group(_cfg("tp2pp2", {"tensor": 2, "pipeline": 2}))
    assert layout.strategy == "PACK"  # 4 GPUs cannot fit one 2-GPU node: stages cross nodes
    assert layout.executor == "ray"  # vLLM's ray executor is what spans nodes on GPUs
    assert group["strategy"] == "PACK"
    nodes = list(group["bundles_to_node_id"].values())
    assert len(set(nodes)) == 2 and all(nodes.count(n) == 2 for n in set(nodes))


def test_parallelism_auto_plans_mixtral_over_both_nodes(cluster):
    # Mixtral 8x7B in bf16 (~93 GB) on 2 nodes x 2 A100-40G: TP may not cross nodes over PCIe,
    # so the planner picks TP=2 x PP=2 and the group spans both nodes.
    cfg = parse_config({"name": "auto", "models": [{
        "name": "mixtral", "source": "mistralai/Mixtral-8x7B-v0.1", "parallelism": "auto", "max_model_len": 4096,
        "placement": {"accelerator": "GPU", "accelerator_type": "A100-40G", "schedule_timeout_s": 3}}]})
    layout, group = _deploy_and_read_group(cfg.model_copy(update={"models": (
        cfg.models[0].model_copy(update={"parallelism": layout_for(cfg.models[0]).parallelism}),)}))
    assert (layout.parallelism.tensor, layout.parallelism.pipeline) == (2, 2)
    assert all(b.get("accelerator_type:A100-40G") for b in group["bundles"].values())
    assert len(set(group["bundles_to_node_id"].values())) == 2


def test_tp4_strict_pack_fails_fast_with_a_clear_message(cluster):
    cfg = _cfg("tp4-strict", {"tensor": 4}, strategy="STRICT_PACK")
    start = time.monotonic()
    with pytest.raises(PlacementError) as e:
        build_application(cfg)
    msg = str(e.value)
    assert "'tp4-strict'" in msg and "STRICT_PACK" in msg
    assert "'GPU': 1.0" in msg and "4 bundles" in msg  # the bundles
    assert "no node has that much" in msg
    assert msg.count("GPU: 2") == 2  # both nodes' resources are named
    assert time.monotonic() - start < 60  # bounded (the deadline is 3 s); not a speed assertion
    # and the probe left nothing behind
    assert not any(g["state"] == "CREATED" for g in ray.util.placement_group_table().values())
