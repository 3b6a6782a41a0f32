"""`fleetserve plan`: table and JSON output, user accelerators from a config, readable errors; planner purity."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from cluster.planner.cli import cli

runner = CliRunner()
MIXTRAL_ON_4_A100 = ["--model", "mixtral-8x7b", "--gpu", "A100-80GB", "--nodes", "1", "--gpus-per-node", "4",
                     "--context", "8192", "--quant", "bf16"]


def test_table():
    result = runner.invoke(cli, MIXTRAL_ON_4_A100)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("mixtral-8x7b: 46.7B parameters (12.9B active), 93.4 GB in bf16; 1 node(s) x 4 x A100-80GB")
    header = next(i for i, line in enumerate(lines) if line.startswith("#  layout"))
    assert lines[header + 1].split()[:4] == ["1", "TP4xPP1", "1", "4"]
    assert "rejected:" in lines
    assert lines[-1].startswith("  TP1xPP1: weights need 93.4 GB per GPU")


def test_json_and_latency_rank():
    result = runner.invoke(cli, [*MIXTRAL_ON_4_A100, "--json", "--rank", "latency"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["rank"] == "latency" and data["model"] == "mixtral-8x7b"
    tpots = [p["tpot_ms"] for p in data["plans"]]
    assert tpots == sorted(tpots)
    assert all(r["reasons"] for r in data["rejected"])


def test_estimated_fields_are_shown():
    result = runner.invoke(cli, ["--model", "moe-122b-a10b", "--gpu", "H200-141GB", "--gpus-per-node", "8", "--quant", "fp8"])
    assert result.exit_code == 0, result.output
    assert "(estimated model fields: hidden_size" in result.output


def test_user_accelerator_from_config(tmp_path):
    cfg = tmp_path / "deploy.yaml"
    cfg.write_text(
        "models: [{name: m, source: tiny:dense}]\n"
        "accelerators: [{name: my-card, memory_gib: 16, bf16_tflops: 100, memory_bandwidth_gb_s: 800,\n"
        "                interconnect: pcie, interconnect_gb_s: 32}]\n"
    )
    result = runner.invoke(cli, ["--model", "mistral-7b", "--gpu", "my-card", "--gpus-per-node", "2", "--config", str(cfg),
                                 "--context", "2048", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["cluster"]["accelerator"] == "my-card"


@pytest.mark.parametrize(("args", "code", "message"), [
    (["--model", "mixtral-8x7b", "--gpu", "V100", "--gpus-per-node", "4"], 2, "error: accelerator 'V100' is unknown; use one of"),
    (["--model", "nope", "--gpu", "L4", "--gpus-per-node", "1"], 2, "error: model 'nope' is neither a catalog name"),
    (["--model", "mistral-7b", "--gpu", "L4", "--gpus-per-node", "1", "--quant", "int3"], 2, "quantization 'int3' is unknown"),
    (["--model", "mistral-7b", "--gpu", "L4", "--gpus-per-node", "1", "--rank", "cost"], 2, "--rank 'cost' must be"),
    (["--model", "dense-128b", "--gpu", "A100-40GB", "--gpus-per-node", "4"], 1, "no layout fits"),
])
def test_errors(args, code, message):
    result = runner.invoke(cli, args)
    assert result.exit_code == code
    assert message in result.output


def test_registered_as_fleetserve_plan():
    fleetserve_cli = pytest.importorskip("fleetserve.cli")
    result = runner.invoke(fleetserve_cli.app, ["plan", *MIXTRAL_ON_4_A100, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["plans"][0]["tp"] == 4


def test_planner_imports_neither_ray_vllm_nor_locust():
    code = ("import sys, cluster.planner, cluster.planner.cli; "
            "print(sorted(m for m in ('ray', 'vllm', 'locust', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


def test_a_context_beyond_the_models_limit_is_refused_like_serve_does():
    result = runner.invoke(cli, ["-m", "mistralai/Mistral-7B-Instruct-v0.3", "--gpu", "L4", "--gpus-per-node", "1",
                                 "--context", "100000"])
    assert result.exit_code == 2
    assert "--context 100000 exceeds mistral-7b-v0.3's max_position_embeddings 32768" in result.output


def test_the_table_separates_one_sequence_from_full_batch_and_states_the_prompt():
    result = runner.invoke(cli, [*MIXTRAL_ON_4_A100, "--prompt-len", "1000"])
    assert result.exit_code == 0, result.output
    assert "TTFT of a 1000 token prompt (--prompt-len)" in result.output
    header = next(line for line in result.output.splitlines() if line.startswith("#  layout"))
    assert "ttft ms 1-seq" in header and "tok/s cluster @batch" in header and "itl ms @batch" in header
    default = runner.invoke(cli, MIXTRAL_ON_4_A100)
    assert "TTFT of a 4096 token prompt (half the context; set --prompt-len)" in default.output


def test_a_deploy_file_is_planned_and_emitted_as_yaml_to_paste():
    import yaml

    from conftest import REPO

    scenario = REPO / "cluster/k8s/scenarios/mixtral-8x7b-a100-40g.yaml"
    result = runner.invoke(cli, ["-c", str(scenario), "--emit-config"])
    assert result.exit_code == 0, result.output
    block = yaml.safe_load(result.output)
    model = yaml.safe_load(scenario.read_text())["models"][0]
    assert block["max_model_len"] == model["max_model_len"]
    assert block["placement"]["accelerator_type"] == model["placement"]["accelerator_type"]
    assert set(block["parallelism"]) == {"tensor", "pipeline", "expert"}
    # What it prints is a valid model block: paste it into the scenario and the config loads.
    from serve_app.schema import parse_config

    cfg = yaml.safe_load(scenario.read_text())
    cfg["models"][0].update(block)
    parse_config(cfg)
