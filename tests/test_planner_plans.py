"""Plans: every rejected layout carries its reason; feasible ones are estimated and ranked consistently."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.planner import (
    ACCELERATOR_CATALOG,
    MODEL_CATALOG,
    ClusterShape,
    Split,
    Workload,
    candidate_layouts,
    check_layout,
    find_accelerator,
    model_spec,
    plan,
    quantization,
)

H100 = find_accelerator("H100-80GB")
MISTRAL = model_spec("mistral-7b")
MIXTRAL = model_spec("mixtral-8x7b")
# 12 heads over 6 KV heads; 6 experts: shapes that break the divisibility rules at tp = 4.
ODD = replace(MIXTRAL, name="odd", num_attention_heads=12, num_key_value_heads=6, head_dim=128, num_experts=6)
LLAMA2_7B = replace(MISTRAL, name="llama-2-7b", intermediate_size=11008, num_key_value_heads=32)


def reasons(model, layout, *, quant="bf16", nodes=1, gpn=8, fast_fabric=False):
    return " | ".join(check_layout(model, quantization(quant), layout, ClusterShape(nodes, gpn, H100, fast_fabric=fast_fabric)))


@pytest.mark.parametrize(("model", "layout", "kwargs", "expected"), [
    (MISTRAL, Split(3), {"gpn": 3}, "num_attention_heads=32 is not divisible by tp=3"),
    (ODD, Split(4), {}, "tp=4 neither divides num_key_value_heads=6 nor is a multiple of it"),
    (model_spec("tiny:dense"), Split(1, 5), {}, "pp=5 exceeds num_hidden_layers=4"),
    (ODD, Split(2, 1, 2), {}, ""),  # 6 experts over 2 EP ranks is fine
    (replace(ODD, num_attention_heads=8, num_key_value_heads=4), Split(4, 1, 4), {}, "num_experts=6 is not divisible by ep=4"),
    (MISTRAL, Split(2, 1, 2), {}, "ep=2 but the model is dense"),
    (MIXTRAL, Split(4, 1, 2), {}, "ep=2 must be 1 or tp=4"),
    (MISTRAL, Split(8), {"nodes": 2, "gpn": 4}, "tp=8 spans 2 nodes of 4 GPUs without a fast fabric"),
    (MISTRAL, Split(8), {"nodes": 2, "gpn": 4, "fast_fabric": True}, ""),
    (MISTRAL, Split(4, 2), {"nodes": 2, "gpn": 6}, "tp=4 does not divide gpus_per_node=6"),
    (MISTRAL, Split(2, 4), {"nodes": 2, "gpn": 4}, ""),  # pipeline stages may cross nodes
    (LLAMA2_7B, Split(4), {"quant": "awq"}, "awq groups of 128 inputs do not align with the 2752 intermediate_size"),
    (LLAMA2_7B, Split(4), {"quant": "bf16"}, ""),
    (LLAMA2_7B, Split(2), {"quant": "gptq"}, ""),
    (MISTRAL, Split(16), {"gpn": 16}, ""),  # KV heads replicated 2x: allowed, noted on the plan
    (MISTRAL, Split(4, 4), {"gpn": 8}, "needs 16 GPUs, the cluster has 8"),
])
def test_rejection_reasons(model, layout, kwargs, expected):
    got = reasons(model, layout, **kwargs)
    assert (expected in got) if expected else got == "", got


def test_memory_rejections_name_the_numbers():
    report = plan(MIXTRAL, ClusterShape(1, 2, find_accelerator("L4")), quant=quantization("bf16"), workload=Workload(4096))
    assert report.plans == ()
    text = {str(r.layout): r.reason for r in report.rejected}
    assert text["TP2xPP1"].startswith("weights need 46.7 GB per GPU plus")
    assert "over the 23.2 GB budget (0.9 x 24 GiB)" in text["TP2xPP1"]
    # Fits its weights, but a 32k context leaves no room for one sequence's KV.
    tight = plan(MISTRAL, ClusterShape(1, 1, find_accelerator("RTX3080-20GB")), quant=quantization("bf16"),
                 workload=Workload(32768))
    assert tight.plans == ()
    assert tight.rejected[0].reason.startswith("no room for one 32768-token sequence: it needs 4.29 GB of KV cache per GPU")


def test_replicated_kv_heads_are_noted():
    report = plan(MISTRAL, ClusterShape(1, 16, H100), quant=quantization("bf16"), workload=Workload(4096),
                  layouts=[Split(16)])
    assert report.plans[0].notes == ("KV heads replicated 2x (tp > num_key_value_heads)",)


_clusters = st.builds(
    ClusterShape, nodes=st.integers(1, 4), gpus_per_node=st.sampled_from([1, 2, 4, 6, 8]),
    accelerator=st.sampled_from(sorted(ACCELERATOR_CATALOG)).map(find_accelerator), fast_fabric=st.booleans(),
)
_inputs = st.tuples(st.sampled_from(sorted(MODEL_CATALOG) + ["tiny:moe"]), _clusters,
                    st.sampled_from(["bf16", "fp8", "awq", "nf4-dq", "gguf-q4_k"]), st.sampled_from([1024, 8192, 32768]),
                    st.sampled_from(["throughput", "latency"]))


@settings(max_examples=60, deadline=None)
@given(_inputs)
def test_every_layout_is_planned_or_rejected_with_a_reason(args):
    model, cluster, quant, ctx, rank = args
    m, q = model_spec(model), quantization(quant)
    report = plan(m, cluster, quant=q, workload=Workload(ctx), rank=rank)
    candidates = candidate_layouts(m, cluster)
    assert sorted([p.layout for p in report.plans] + [r.layout for r in report.rejected]) == sorted(candidates)
    for r in report.rejected:
        assert r.reasons and all(isinstance(s, str) and len(s) > 20 for s in r.reasons), r
    for p in report.plans:
        assert check_layout(m, q, p.layout, cluster) == ()
        assert p.memory.weights_fit and p.memory.max_sequences >= 1
        assert 1 <= p.replicas and p.replicas * p.layout.world <= cluster.total_gpus
        assert p.strategy == ("STRICT_PACK" if p.layout.world <= cluster.gpus_per_node else "PACK")
        if not cluster.fast_fabric:
            assert p.layout.tp <= cluster.gpus_per_node
        e = p.estimate
        assert 0 < e.tpot_s <= e.itl_at_load_s * (1 + 1e-9) and e.ttft_s > 0 and e.tokens_per_s > 0
        assert 0 <= e.prefill_bubble < 1 and e.stage_imbalance >= 1 - 1e-9 and 0 <= e.comm_share < 1
    if rank == "latency":
        tpots = [p.estimate.tpot_s for p in report.plans]
        assert tpots == sorted(tpots) or max(abs(a - b) for a, b in zip(tpots, sorted(tpots))) < 1e-8
    else:
        tput = [p.cluster_tokens_per_s for p in report.plans]
        assert all(a >= b - 1e-6 for a, b in zip(tput, tput[1:]))


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(sorted(MODEL_CATALOG)), st.sampled_from([1, 2, 4, 8]))
def test_a_lone_sequence_gains_nothing_from_pipeline_stages(model, pp):
    # Decode of one sequence walks every stage in turn: splitting layers never lowers time per token.
    m = model_spec(model)
    cluster = ClusterShape(1, 8, find_accelerator("B200"))
    report = plan(m, cluster, quant=quantization("fp8"), workload=Workload(2048), layouts=[Split(1, 1), Split(1, pp)])
    one = {p.layout.pp: p.estimate.tpot_s for p in report.plans}
    if 1 in one and pp in one:
        assert one[pp] >= one[1] * 0.999


def test_tensor_parallel_over_nvlink_is_nearly_linear_for_decode():
    w = Workload(4096)
    report = plan(model_spec("llama-70b"), ClusterShape(1, 8, H100), quant=quantization("fp8"), workload=w,
                  layouts=[Split(2), Split(4), Split(8)])
    tpot = {p.layout.tp: p.estimate.tpot_s for p in report.plans}
    assert tpot[2] / tpot[4] > 1.6 and tpot[4] / tpot[8] > 1.3
    assert all(p.estimate.decode_bound == "memory" for p in plan(
        model_spec("llama-70b"), ClusterShape(1, 8, H100), quant=quantization("fp8"), workload=w, layouts=[Split(8)]).plans)


def test_moe_plans_offer_expert_parallel_variants():
    report = plan(MIXTRAL, ClusterShape(1, 8, H100), quant=quantization("bf16"), workload=Workload(8192))
    layouts = {p.layout for p in report.plans}
    assert {Split(2, 1, 2), Split(4, 1, 4), Split(8, 1, 8)} <= layouts
    assert Split(8, 1, 8) in layouts and Split(8, 1, 1) in layouts
    # Decode reads only the routed experts: 12.9B of 46.7B parameters at batch 1.
    tp2 = next(p for p in report.plans if p.layout == Split(2))
    dense_equivalent = plan(replace(model_spec("mistral-7b"), name="x"), ClusterShape(1, 8, H100),
                            quant=quantization("bf16"), workload=Workload(8192), layouts=[Split(2)]).plans[0]
    assert tp2.estimate.tpot_s < 2.2 * dense_equivalent.estimate.tpot_s


def test_report_to_dict_is_plain_json():
    import json

    report = plan(MIXTRAL, ClusterShape(1, 4, find_accelerator("A100-80GB")), quant=quantization("bf16"),
                  workload=Workload(8192))
    data = json.loads(json.dumps(report.to_dict()))
    assert data["plans"][0]["tp"] == 4 and data["weights_gb"] == pytest.approx(93.41, abs=0.01)
    assert data["rejected"] == [{"tp": 1, "pp": 1, "ep": 1, "reasons": [report.rejected[0].reason]}]
