"""Memory math: weight formats, KV cache per token (GQA, replication, sliding window), stages, per-GPU shares."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.planner import (
    ACCELERATOR_CATALOG,
    MODEL_CATALOG,
    QUANTIZATIONS,
    Split,
    PlannerError,
    Workload,
    find_accelerator,
    kv_bytes_per_token,
    kv_tokens_per_sequence,
    model_spec,
    param_counts,
    quantization,
    replica_memory,
    stage_layers,
    weight_bytes,
)


@pytest.mark.parametrize(("name", "bits"), [
    ("fp32", 32), ("bf16", 16), ("fp16", 16), ("fp8", 8), ("int8", 8),
    ("awq", 4.15625), ("gptq", 4.15625), ("nf4", 4.5), ("nf4-dq", 4.126953125),
    ("gguf-q2_k", 2.625), ("gguf-q3_k", 3.4375), ("gguf-q4_0", 4.5), ("gguf-q4_k", 4.5), ("gguf-q5_0", 5.5),
    ("gguf-q5_k", 5.5), ("gguf-q6_k", 6.5625), ("gguf-q8_0", 8.5),
])
def test_bits_per_weight(name, bits):
    assert quantization(name).bits_per_weight == pytest.approx(bits)


@pytest.mark.parametrize(("alias", "name"), [("BFloat16", "bf16"), ("half", "fp16"), ("int4", "awq"), ("q4_k", "gguf-q4_k"),
                                             ("qlora", "nf4-dq"), ("bitsandbytes", "nf4")])
def test_aliases(alias, name):
    assert quantization(alias).name == name


def test_unknown_quantization_lists_the_names():
    with pytest.raises(PlannerError, match=r"quantization 'int3' is unknown; use one of fp32, bf16"):
        quantization("int3")


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(sorted(MODEL_CATALOG)), st.sampled_from(sorted(QUANTIZATIONS)), st.sampled_from(sorted(QUANTIZATIONS)))
def test_weights_grow_with_bits(model, qa, qb):
    m, a, b = model_spec(model), quantization(qa), quantization(qb)
    if a.bits_per_weight <= b.bits_per_weight and a.embedding_bits <= b.embedding_bits and a.small_bits <= b.small_bits:
        assert weight_bytes(m, a) <= weight_bytes(m, b)
    assert weight_bytes(m, a, nominal=True) == pytest.approx(param_counts(m).total * a.nominal_bits / 8)


@pytest.mark.parametrize(("model", "kwargs", "per_token"), [
    ("mistral-7b", {}, 32 * 8 * 128 * 2 * 2),  # 128 KiB
    ("llama-70b", {}, 80 * 8 * 128 * 2 * 2),  # 320 KiB
    ("mixtral-8x7b", {}, 32 * 8 * 128 * 2 * 2),  # experts do not touch the KV cache
    ("mixtral-8x22b", {}, 56 * 8 * 128 * 2 * 2),
    ("llama-70b", {"kv_bytes": 1.0}, 80 * 8 * 128 * 2),  # fp8 KV cache
    ("llama-70b", {"tp": 4}, 80 * 2 * 128 * 2 * 2),  # 8 KV heads split over 4 ranks
    ("llama-70b", {"tp": 8}, 80 * 1 * 128 * 2 * 2),
    ("llama-70b", {"tp": 16}, 80 * 1 * 128 * 2 * 2),  # replicated: every rank still holds one head
    ("llama-70b", {"layers": 20}, 20 * 8 * 128 * 2 * 2),  # one of four pipeline stages
    ("moe-122b-a10b", {"tp": 8}, 48 * 1 * 128 * 2 * 2),
])
def test_kv_bytes_per_token(model, kwargs, per_token):
    assert kv_bytes_per_token(model_spec(model), **kwargs) == per_token


def test_sliding_window_caps_kv_per_sequence():
    windowed = replace(model_spec("mistral-7b"), sliding_window=4096)
    assert kv_tokens_per_sequence(windowed, 32768) == 4096
    assert kv_tokens_per_sequence(windowed, 1000) == 1000
    assert kv_tokens_per_sequence(model_spec("mistral-7b"), 32768) == 32768
    w = Workload(32768)
    plain = replica_memory(model_spec("mistral-7b"), quantization("bf16"), Split(), find_accelerator("L4"), w)
    slid = replica_memory(windowed, quantization("bf16"), Split(), find_accelerator("L4"), w)
    assert slid.kv_tokens == plain.kv_tokens
    assert slid.max_sequences == min(256, plain.kv_tokens // 4096) > plain.max_sequences


@pytest.mark.parametrize(("layers", "pp", "parts"), [
    (32, 1, (32,)), (32, 4, (8, 8, 8, 8)), (32, 3, (11, 11, 10)), (80, 3, (27, 27, 26)), (92, 3, (31, 31, 30)),
    (10, 4, (2, 3, 3, 2)), (4, 4, (1, 1, 1, 1)),
])
def test_stage_layers_follow_vllm(layers, pp, parts):
    assert stage_layers(layers, pp) == parts


def test_more_stages_than_layers_is_refused():
    with pytest.raises(PlannerError, match="pipeline size 5"):
        stage_layers(4, 5)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 200).flatmap(lambda n: st.tuples(st.just(n), st.integers(1, n))))
def test_stages_cover_every_layer_evenly(args):
    layers, pp = args
    parts = stage_layers(layers, pp)
    assert len(parts) == pp and sum(parts) == layers and max(parts) - min(parts) <= 1
    assert parts[-1] == min(parts)  # the last stage (final norm + lm_head) never gets an extra layer


@pytest.mark.parametrize("model", sorted(MODEL_CATALOG))
@pytest.mark.parametrize("quant", ["bf16", "awq", "gguf-q4_k"])
def test_one_gpu_holds_exactly_the_checkpoint(model, quant):
    m, q = model_spec(model), quantization(quant)
    mem = replica_memory(m, q, Split(), find_accelerator("B200"), Workload(1024))
    assert mem.stages[0].weights == pytest.approx(weight_bytes(m, q))


@settings(max_examples=80, deadline=None)
@given(st.sampled_from(sorted(MODEL_CATALOG)), st.sampled_from([1, 2, 4, 8]), st.sampled_from([1, 2, 3, 4]))
def test_shares_add_up_to_the_checkpoint(model, tp, pp):
    m, q = model_spec(model), quantization("bf16")
    mem = replica_memory(m, q, Split(tp, pp), find_accelerator("H100-80GB"), Workload(4096))
    spread = sum(s.weights for s in mem.stages) * tp
    # Only norms, routers and (tied) head copies are replicated: under 1 % on top of the checkpoint.
    assert weight_bytes(m, q) <= spread * 1.0000001 and spread < 1.01 * weight_bytes(m, q)
    assert [s.layers for s in mem.stages] == list(stage_layers(m.num_hidden_layers, pp))


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(sorted(MODEL_CATALOG)), st.sampled_from(sorted(ACCELERATOR_CATALOG)),
       st.floats(0.5, 0.95), st.integers(256, 65536))
def test_more_memory_fraction_never_holds_fewer_tokens(model, gpu, util, ctx):
    m, a, q = model_spec(model), find_accelerator(gpu), quantization("awq")
    low = replica_memory(m, q, Split(), a, Workload(ctx, gpu_memory_utilization=util))
    high = replica_memory(m, q, Split(), a, Workload(ctx, gpu_memory_utilization=min(1.0, util + 0.05)))
    assert high.kv_tokens >= low.kv_tokens and high.max_sequences >= low.max_sequences


def test_fp8_kv_cache_doubles_the_tokens():
    m, a, q = model_spec("llama-70b"), find_accelerator("H100-80GB"), quantization("fp8")
    auto = replica_memory(m, q, Split(2), a, Workload(8192))
    fp8 = replica_memory(m, q, Split(2), a, Workload(8192, kv_cache_bytes=1.0))
    assert fp8.kv_tokens == pytest.approx(2 * auto.kv_tokens, abs=1)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"context_tokens": 0}, "context_tokens=0"),
    ({"context_tokens": 10, "gpu_memory_utilization": 1.5}, r"gpu_memory_utilization=1.5 must be in \(0, 1\]"),
    ({"context_tokens": 10, "prompt_tokens": 11}, "prompt_tokens=11"),
])
def test_workload_checks(kwargs, match):
    with pytest.raises(PlannerError, match=match):
        Workload(**kwargs)
