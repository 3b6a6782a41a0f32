"""The one config: defaults, field-named errors, and purity (no Ray/vLLM on import)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from serve_app.config import DEFAULT_CONFIG_PATH, load_config, parse_config
from serve_app.errors import ConfigError


def _model(**kw):
    return {"name": "m", "source": "tiny:dense", **kw}


def test_embedded_default_is_two_tiny_models_on_the_cpu():
    cfg = load_config(DEFAULT_CONFIG_PATH)
    assert [m.name for m in cfg.models] == ["tiny-dense", "tiny-moe"]
    assert all(m.placement.on_cpu for m in cfg.models)
    with pytest.raises(Exception):
        cfg.models[0].parallelism.tensor = 2  # frozen


def test_env_var_selects_the_config(tmp_path, monkeypatch):
    p = tmp_path / "deploy.yaml"
    p.write_text(yaml.safe_dump({"name": "other", "models": [_model()]}))
    monkeypatch.setenv("FLEETSERVE_CONFIG", str(p))
    assert load_config().name == "other"


@pytest.mark.parametrize(
    "models, path, words",
    [
        ([_model(parallelism={"tensor": 3})], "models[0].parallelism.tensor", "does not divide num_attention_heads=4"),
        ([_model(parallelism={"tensor": 8})], "models[0].parallelism.tensor", "does not divide"),
        ([_model(parallelism={"pipeline": 5})], "models[0].parallelism.pipeline", "exceeds num_hidden_layers=4"),
        ([_model(parallelism={"tensor": 2, "expert": 2})], "models[0].parallelism.expert", "dense"),
        ([_model(source="tiny:moe", parallelism={"tensor": 2, "expert": 4})], "models[0].parallelism.expert", "must be 1"),
        ([_model(autoscaling={"min_replicas": 4, "max_replicas": 2})], "models[0].autoscaling.max_replicas", ">= min_replicas"),
        ([_model(engine_args={"tensor_parallel_size": 2})], "models[0].engine_args.tensor_parallel_size", "parallelism.tensor"),
        ([_model(max_model_len=100000)], "models[0].max_model_len", "max_position_embeddings=2048"),
        ([_model(source="tiny:huge")], "models[0].source", "unknown tiny model"),
        ([_model(source="/no/such/dir")], "models[0].source", "does not exist"),
        ([_model(placement={"accelerator": "CPU", "executor": "ray"})], "models[0].placement.executor", "CPU"),
        ([_model(placement={"strategy": "STRICT_PACK", "accelerators_per_node": 2}, parallelism={"tensor": 4})],
         "models[0].placement.strategy", "STRICT_PACK needs 4"),
        ([_model(), _model()], "models[1].name", "already used by models[0]"),
        ([_model(bogus=1)], "models[0].bogus", "Extra inputs"),
        ([_model(front_ends=0)], "models[0].front_ends", "0: must be 1 to 16 front-end processes per engine, or auto"),
        ([_model(front_ends=17)], "models[0].front_ends", "17: must be 1 to 16"),
        ([_model(front_ends="many")], "models[0].front_ends", "'many': must be 1 to 16"),
        ([], "models", "at least 1"),
    ],
)
def test_bad_config_names_the_field_and_the_reason(models, path, words):
    with pytest.raises(ConfigError) as e:
        parse_config({"models": models})
    paths = [p for p, _ in e.value.problems]
    assert path in paths, e.value
    assert words in dict(e.value.problems)[path], e.value
    assert path in str(e.value)


def test_bad_yaml_file_is_a_config_error(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("models: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_local_dir_source_is_read_for_validation(tmp_path):
    (tmp_path / "config.json").write_text('{"num_attention_heads": 32, "num_key_value_heads": 8, "num_hidden_layers": 32}')
    ok = parse_config({"models": [_model(source=str(tmp_path), parallelism={"tensor": 8})]})
    assert ok.models[0].parallelism.tensor == 8
    with pytest.raises(ConfigError, match="tensor=16 and num_key_value_heads=8|does not divide"):
        parse_config({"models": [_model(source=str(tmp_path), parallelism={"tensor": 64})]})


def test_importing_config_pulls_in_neither_ray_nor_vllm():
    code = "import sys, serve_app.config as c; c.load_config(); print(sorted(m for m in ('ray','vllm','locust','torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_local_fast_path_env_gives_haproxy_free_ports_and_the_pod_env_does_not():
    from cluster.ray_env import fast_path_env, local_fast_path_env

    cfg = load_config(DEFAULT_CONFIG_PATH)
    local = local_fast_path_env(cfg)
    assert {k: v for k, v in local.items() if k in fast_path_env(cfg)} == fast_path_env(cfg)
    ports = {int(local["RAY_SERVE_HAPROXY_STATS_PORT"]), int(local["RAY_SERVE_HAPROXY_METRICS_PORT"])}
    assert len(ports) == 2 and all(p > 0 for p in ports)
    assert "RAY_SERVE_HAPROXY_STATS_PORT" not in fast_path_env(cfg)  # a pod keeps Serve's defaults
    slow = parse_config({**yaml.safe_load(DEFAULT_CONFIG_PATH.read_text()), "http": {"fast_path": False}})
    assert local_fast_path_env(slow) == {}


def test_telemetry_block_loads_and_a_bad_value_names_its_field():
    # The block is read by serve_app.telemetry (tests/test_telemetry.py); bad values fail at load.
    base = {"models": [{"name": "m", "source": "tiny:dense", "engine": "sim"}]}
    assert parse_config(base).telemetry.otlp_endpoint is None
    cfg = parse_config({**base, "telemetry": {"otlp_endpoint": "http://collector:4317", "otlp_protocol": "grpc",
                                              "sampling_ratio": 0.01}})
    assert (cfg.telemetry.otlp_protocol, cfg.telemetry.sampling_ratio) == ("grpc", 0.01)
    with pytest.raises(ConfigError, match=r"telemetry\.sampling_ratio"):
        parse_config({**base, "telemetry": {"sampling_ratio": 1.5}})
    with pytest.raises(ConfigError, match=r"telemetry\.otlp_protocol"):
        parse_config({**base, "telemetry": {"otlp_protocol": "udp"}})


def test_a_bad_front_ends_is_one_problem_not_one_per_union_member():
    # int | "auto": without the check before the union, pydantic reports models[0].front_ends.int as well
    with pytest.raises(ConfigError) as e:
        parse_config({"models": [_model(front_ends="many")]})
    assert [p for p, _ in e.value.problems] == ["models[0].front_ends"]
    assert [parse_config({"models": [_model(front_ends=v)]}).models[0].front_ends for v in (1, 16, "auto")] == [1, 16, "auto"]
