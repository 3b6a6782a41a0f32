"""`parallelism: auto` in the config, its resolution by the planner, and the bundles / strategy it yields."""

from __future__ import annotations

import pytest

from cluster.planner import (
    PlannerError,
    bundles_for,
    quantization_for,
    resolve_parallelism,
    strategy_for,
    workload_for,
)
from serve_app.config import Parallelism, Placement, parse_config
from serve_app.errors import ConfigError

# A logical 16 GiB PCIe GPU, as a user defines one under `accelerators:`.
LOGICAL_GPU = {"name": "logical-16g", "memory_gib": 16, "bf16_tflops": 100, "memory_bandwidth_gb_s": 800,
               "interconnect": "pcie", "interconnect_gb_s": 32, "estimated": ["bf16_tflops", "memory_bandwidth_gb_s"]}


def app(model: dict, **extra):
    return parse_config({"models": [{"name": "m", **model}], "accelerators": [LOGICAL_GPU], **extra})


def test_config_accepts_auto_and_skips_the_parallelism_checks():
    cfg = app({"source": "tiny:dense", "parallelism": "auto",
               "placement": {"strategy": "STRICT_PACK", "accelerators_per_node": 1}})
    assert cfg.models[0].parallelism == "auto"
    with pytest.raises(ConfigError, match=r"models\[0\]\.parallelism\.tensor: tensor=3 does not divide"):
        app({"source": "tiny:dense", "parallelism": {"tensor": 3}})
    with pytest.raises(ConfigError, match="parallelism"):
        app({"source": "tiny:dense", "parallelism": "manual"})


@pytest.mark.parametrize(("accelerators", "match"), [
    ([LOGICAL_GPU, {**LOGICAL_GPU, "name": "LOGICAL-16G"}],
     r"accelerators\[1\]\.name: 'LOGICAL-16G' repeats accelerators\[0\]; names must be unique"),
    ([{**LOGICAL_GPU, "estimated": ["speed"]}], r"accelerators\[0\]\.estimated: \['speed'\] are not fields of an accelerator"),
    ([{**LOGICAL_GPU, "memory_gib": 0}], r"accelerators\[0\]\.memory_gib: 0: Input should be greater than 0"),
    ([{**LOGICAL_GPU, "interconnect": "infiniband"}],
     r"accelerators\[0\]\.interconnect: 'infiniband': Input should be 'nvlink' or 'pcie'"),
])
def test_user_accelerators_are_validated(accelerators, match):
    with pytest.raises(ConfigError, match=match):
        parse_config({"models": [{"name": "m", "source": "tiny:dense"}], "accelerators": accelerators})


def test_auto_picks_tp2_on_one_node_when_the_model_fits_two_gpus():
    # Mistral 7B in bf16 (14.5 GB) does not fit one 16 GiB GPU; two replicas of TP=2 beat one of TP2 x PP2.
    cfg = app({"source": "mistralai/Mistral-7B-Instruct-v0.2", "parallelism": "auto", "max_model_len": 2048,
               "engine_args": {"max_num_seqs": 32}})
    par, strategy = resolve_parallelism(cfg.models[0], nodes=2, gpus_per_node=2, accelerator="logical-16g",
                                        extra_accelerators=cfg.accelerators)
    assert (par, strategy) == (Parallelism(tensor=2), "STRICT_PACK")


def test_auto_spans_nodes_with_pipeline_stages_when_it_must():
    # Llama-70B-class in AWQ (~40 GB) needs all four GPUs; TP=4 may not cross nodes without a fast fabric.
    cfg = app({"source": "meta-llama/Llama-3.3-70B-Instruct", "parallelism": "auto", "max_model_len": 4096,
               "quantization": "awq"})
    par, strategy = resolve_parallelism(cfg.models[0], nodes=2, gpus_per_node=2, accelerator="logical-16g",
                                        extra_accelerators=cfg.accelerators)
    assert (par, strategy) == (Parallelism(tensor=2, pipeline=2), "PACK")
    with_fabric, _ = resolve_parallelism(cfg.models[0], nodes=2, gpus_per_node=2, accelerator="logical-16g",
                                         extra_accelerators=cfg.accelerators, fast_fabric=True, rank="latency")
    assert with_fabric.tensor == 4


def test_explicit_parallelism_and_cpu_pass_through():
    explicit = app({"source": "tiny:moe", "parallelism": {"tensor": 2, "expert": 2},
                    "placement": {"strategy": "SPREAD"}}).models[0]
    assert resolve_parallelism(explicit, nodes=1, gpus_per_node=8, accelerator="nonexistent") == (
        Parallelism(tensor=2, expert=2), "SPREAD")
    cpu = app({"source": "tiny:dense", "parallelism": "auto", "placement": {"accelerator": "CPU"}}).models[0]
    assert resolve_parallelism(cpu, nodes=1, gpus_per_node=1, accelerator="CPU") == (Parallelism(), "STRICT_PACK")


@pytest.mark.parametrize(("model", "kwargs", "match"), [
    ({"source": "mistralai/Mixtral-8x7B-v0.1"}, {"accelerator": "L4", "nodes": 1, "gpus_per_node": 2},
     r"no layout of mixtral-8x7b \(bf16\) fits 1 node\(s\) x 2 x L4 at context 32768: weights need"),
    ({"source": "mistralai/Mixtral-8x7B-v0.1"}, {"accelerator": "A100", "nodes": 1, "gpus_per_node": 8},
     r"accelerator 'A100' is unknown; use one of logical-16g, A10G, L4"),
    ({"source": "org/private-model"}, {"accelerator": "L4", "nodes": 1, "gpus_per_node": 1},
     r"model 'org/private-model' is neither a catalog name"),
    ({"source": "mistralai/Mixtral-8x7B-v0.1", "quantization": "int3"}, {"accelerator": "L4", "nodes": 1, "gpus_per_node": 1},
     r"models\[m\]\.quantization: quantization 'int3' is unknown"),
])
def test_auto_failures_say_why(model, kwargs, match):
    cfg = app({**model, "parallelism": "auto"})
    with pytest.raises(PlannerError, match=match):
        resolve_parallelism(cfg.models[0], extra_accelerators=cfg.accelerators, **kwargs)


def test_auto_finds_accelerators_by_ray_type():
    cfg = app({"source": "mistralai/Mixtral-8x7B-v0.1", "parallelism": "auto", "max_model_len": 8192,
               "placement": {"accelerator_type": "A100-80G"}})
    par, strategy = resolve_parallelism(cfg.models[0], nodes=1, gpus_per_node=4,
                                        accelerator=cfg.models[0].placement.accelerator_type)
    assert par.world_size >= 2 and strategy == "STRICT_PACK"


@pytest.mark.parametrize(("fields", "name"), [
    ({}, "bf16"),
    ({"engine_args": {"dtype": "float16"}}, "fp16"),
    ({"engine_args": {"quantization": "awq_marlin"}}, "awq"),
    ({"engine_args": {"quantization": "fp8"}}, "fp8"),
    ({"engine_args": {"quantization": "bitsandbytes"}, "quantization": "nf4-dq"}, "nf4-dq"),
])
def test_quantization_for(fields, name):
    assert quantization_for(app({"source": "tiny:dense", **fields}).models[0]).name == name


def test_gguf_needs_the_bits_spelled_out():
    match = r"engine_args\.quantization='gguf' does not say the bits per weight; set models\[m\]\.quantization"
    with pytest.raises(PlannerError, match=match):
        quantization_for(app({"source": "tiny:dense", "engine_args": {"quantization": "gguf"}}).models[0])


def test_workload_reads_engine_args():
    engine_args = {"gpu_memory_utilization": 0.8, "max_num_seqs": 64, "max_num_batched_tokens": 4096,
                   "kv_cache_dtype": "fp8_e5m2"}
    w = workload_for(app({"source": "tiny:dense", "engine_args": engine_args}).models[0], context_len=1024)
    assert (w.gpu_memory_utilization, w.max_num_seqs, w.max_num_batched_tokens, w.kv_cache_bytes) == (0.8, 64, 4096, 1.0)


@pytest.mark.parametrize(("par", "placement", "bundles"), [
    (Parallelism(tensor=2), Placement(), [{"GPU": 1.0, "CPU": 1.0}] * 2),
    (Parallelism(tensor=2, pipeline=2), Placement(cpus_per_worker=0.5), [{"GPU": 1.0, "CPU": 0.5}] * 4),
    (Parallelism(), Placement(accelerator="CPU"), [{"CPU": 1.0}]),
    (Parallelism(), Placement(accelerator="CPU", cpus_per_worker=4), [{"CPU": 4.0}]),
    (Parallelism(tensor=2), Placement(accelerator="TPU"), [{"TPU": 1.0, "CPU": 1.0}] * 2),
    (Parallelism(), Placement(accelerator_type="L4"), [{"GPU": 1.0, "CPU": 1.0, "accelerator_type:L4": 0.001}]),
])
def test_bundles_for(par, placement, bundles):
    assert bundles_for(par, placement) == bundles


@pytest.mark.parametrize(("world", "placement", "per_node", "strategy"), [
    (2, Placement(), 2, "STRICT_PACK"),
    (4, Placement(), 2, "PACK"),
    (4, Placement(accelerators_per_node=8), None, "STRICT_PACK"),
    (4, Placement(accelerators_per_node=8), 2, "PACK"),  # the live cluster wins over the config's guess
    (1, Placement(), None, "STRICT_PACK"),
    (2, Placement(), None, "PACK"),  # unknown node size: PACK still packs when it can
    (4, Placement(strategy="SPREAD"), 8, "SPREAD"),
])
def test_strategy_for(world, placement, per_node, strategy):
    assert strategy_for(Parallelism(tensor=world), placement, accelerators_per_node=per_node) == strategy
