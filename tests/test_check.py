"""`fleetserve check`: a deploy file checked without Ray or an engine, each bad case naming its field.

vLLM's argument parser is imported (real), no engine is started; placement is checked
against declared nodes, so these run on any machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from serve_app.check import check_file, load_inventory
from serve_app.errors import ConfigError

TINY = {"name": "tiny-dense", "source": "tiny:dense", "placement": {"accelerator": "CPU"}}


def _write(tmp_path, name: str, data: dict) -> str:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return str(p)


@pytest.fixture
def h100_node(tmp_path):
    return load_inventory(_write(tmp_path, "nodes.yaml", {"nodes": [{"count": 1, "cpus": 8, "gpus": 4, "accelerator_type": "H100"}]}))


def _errors(findings):
    return {f.field: f.message for f in findings if f.level == "error"}


def test_the_embedded_default_passes():
    findings = check_file(str(REPO / "serve_app/schema/default.yaml"))
    assert not _errors(findings), findings
    assert {f.field for f in findings} >= {"models[0].engine_args", "models[0].source", "models[0].placement"}


BAD = {
    # case: (model overrides, field named, words in the message)
    "engine-arg-typo": ({"engine_args": {"enforce_eagre": True}}, "models[0].engine_args.enforce_eagre", "enforce_eager"),
    "missing-local-dir": ({"source": "/nonexistent/model"}, "models[0].source", "config.json does not exist"),
    "gpu-on-cpu-only-nodes": ({"placement": {"accelerator": "GPU"}}, "models[0].placement", "no node has any GPU"),
    "bad-config-field": ({"parallelism": {"tensor": 3}}, "models[0].parallelism.tensor", "does not divide"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_file_names_the_field(tmp_path, case):
    overrides, field, words = BAD[case]
    path = _write(tmp_path, "deploy.yaml", {"name": "t", "models": [{**TINY, **overrides}]})
    cpu_only = load_inventory(_write(tmp_path, "nodes.yaml", {"nodes": [{"cpus": 4}]}))
    errors = _errors(check_file(path, inventory=cpu_only))
    assert field in errors, errors
    assert words in errors[field]


def test_a_scenario_fits_its_declared_nodes_and_a_too_wide_layout_does_not(tmp_path, h100_node):
    scenario = REPO / "cluster/k8s/scenarios/dense-128b-h100-tp4.yaml"
    findings = check_file(str(scenario), inventory=h100_node)
    assert not _errors(findings), findings
    assert any(f.field == "models[0].parallelism" and "memory fits on H100" in f.message for f in findings)
    wide = yaml.safe_load(scenario.read_text())
    wide["models"][0]["parallelism"] = {"tensor": 8}
    wide["models"][0]["placement"]["accelerators_per_node"] = 8
    errors = _errors(check_file(_write(tmp_path, "wide.yaml", wide), inventory=h100_node))
    assert "STRICT_PACK needs" in errors["models[0].placement"] and "no node has that much" in errors["models[0].placement"]


def test_a_layout_too_small_for_the_weights_is_an_error(tmp_path, h100_node):
    scenario = yaml.safe_load((REPO / "cluster/k8s/scenarios/dense-128b-h100-tp4.yaml").read_text())
    scenario["models"][0]["parallelism"] = {"tensor": 1}
    errors = _errors(check_file(_write(tmp_path, "small.yaml", scenario), inventory=h100_node))
    assert "tp=1 pp=1 ep=1 on H100" in errors["models[0].parallelism"]


def test_a_bad_cluster_file_names_the_entry(tmp_path):
    with pytest.raises(ConfigError, match=r"nodes\[0\]: unknown keys \['gpu'\]"):
        load_inventory(_write(tmp_path, "nodes.yaml", {"nodes": [{"gpu": 8}]}))


def test_the_command_exits_1_on_an_error_and_prints_json(tmp_path):
    path = _write(tmp_path, "deploy.yaml", {"name": "t", "models": [{**TINY, "engine_args": {"enforce_eagre": True}}]})
    exe = Path(sys.executable).with_name("fleetserve")
    out = subprocess.run([str(exe), "check", "-c", path, "--json"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stderr[-2000:]
    findings = json.loads(out.stdout)
    assert any(f["level"] == "error" and f["field"] == "models[0].engine_args.enforce_eagre" for f in findings), findings


def test_the_placement_finding_shows_bundle_0_with_the_front_ends_cpus(tmp_path, h100_node):
    scenario = yaml.safe_load((REPO / "cluster/k8s/scenarios/dense-128b-h100-tp4.yaml").read_text())
    scenario["models"][0]["front_ends"] = 3
    findings = check_file(_write(tmp_path, "fe.yaml", scenario), inventory=h100_node)
    (placed,) = [f for f in findings if f.field == "models[0].placement"]
    assert placed.level == "ok", placed
    assert "bundle 0 of {'GPU': 1.0, 'CPU': 3.0, 'accelerator_type:H100': 0.001} + 3 of {'GPU': 1.0, 'CPU': 1.0" in placed.message
    assert "front_ends=3" in placed.message
    scenario["models"][0]["front_ends"] = 8  # 1 + 7 CPUs in bundle 0 + 3 others: more than the node's 8
    (placed,) = [f for f in check_file(_write(tmp_path, "fe8.yaml", scenario), inventory=h100_node)
                 if f.field == "models[0].placement"]
    assert placed.level == "error", placed
