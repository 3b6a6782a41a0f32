"""Sweep strategies, pure: names parsed, applied to the one config, re-validated, refused on the CPU when vLLM can't run them."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from loadtest import LoadTestError, Strategy, apply_strategy, cpu_refusal, parse_strategy, plan_sweep
from serve_app.config import load_config, parse_config
from serve_app.errors import ConfigError


@pytest.fixture(scope="module")
def cfg():
    return load_config()  # the embedded default: tiny-dense and tiny-moe on the CPU, enforce_eager


@pytest.mark.parametrize("text, expected", [
    ("tp1", dict(tensor=1, pipeline=1, expert=1, replicas=1)),
    ("tp2", dict(tensor=2)),
    ("pp2", dict(pipeline=2)),
    ("tp2-pp2", dict(tensor=2, pipeline=2)),
    ("PP2-TP2", dict(tensor=2, pipeline=2)),
    ("replicas=2", dict(replicas=2)),
    ("tp2-replicas=3", dict(tensor=2, replicas=3)),
    ("ep2", dict(tensor=2, expert=2)),  # expert must equal tensor: ep2 means tp2-ep2
    ("tp4-ep2", dict(tensor=4, expert=2)),  # left for the config to refuse, naming the field
    ("pp2:enforce_eager=false,max_num_seqs=16,dtype=bfloat16",
     dict(pipeline=2, engine_args={"enforce_eager": False, "max_num_seqs": 16, "dtype": "bfloat16"})),
])
def test_parse_strategy(text, expected):
    s = parse_strategy(text)
    full = dict(tensor=1, pipeline=1, expert=1, replicas=1, engine_args={}) | expected
    assert s.model_dump(exclude={"name"}) == full
    assert s.name == text


@pytest.mark.parametrize("text, words", [
    ("tp2-foo", "unknown part 'foo'"),
    ("tp", "unknown part 'tp'"),
    ("tp0", "at least 1"),
    ("tp2-tp4", "tp is given twice"),
    ("replicas", "unknown part"),
    ("pp2:enforce_eager", "is not key=value"),
])
def test_bad_strategy_names_say_the_part_and_the_grammar(text, words):
    with pytest.raises(LoadTestError, match=words) as e:
        parse_strategy(text)
    assert text in str(e.value)


def test_slugs_are_path_and_app_safe():
    assert parse_strategy("replicas=2").slug == "replicas-2"
    assert parse_strategy("pp2:enforce_eager=false").slug == "pp2_enforce_eager-false"


def test_apply_strategy_overrides_one_model_and_keeps_the_rest(cfg):
    out = apply_strategy(cfg, "tiny-moe", parse_strategy("tp2-replicas=2:max_num_seqs=4"))
    (m,) = out.models
    base = cfg.model("tiny-moe")
    assert m.name == "tiny-moe" and (m.parallelism.tensor, m.parallelism.pipeline, m.parallelism.expert) == (2, 1, 1)
    assert (m.autoscaling.min_replicas, m.autoscaling.max_replicas) == (2, 2)  # fixed: no scaling within a step
    assert m.engine_args == {**base.engine_args, "max_num_seqs": 4}
    assert m.placement == base.placement and m.env == base.env and m.source == base.source
    assert out.http == cfg.http and out.name == cfg.name


@pytest.mark.parametrize("model, text, field, words", [
    ("tiny-dense", "tp3", "models[0].parallelism.tensor", "does not divide num_attention_heads=4"),
    ("tiny-dense", "pp8", "models[0].parallelism.pipeline", "exceeds num_hidden_layers=4"),
    ("tiny-dense", "ep2", "models[0].parallelism.expert", "the model is dense"),
    ("tiny-moe", "tp4-ep2", "models[0].parallelism.expert", "must be 1 (off) or equal tensor=4"),
    ("tiny-dense", "tp1:tensor_parallel_size=2", "models[0].engine_args.tensor_parallel_size", "parallelism.tensor"),
])
def test_bad_strategies_fail_validation_with_the_field_named(cfg, model, text, field, words):
    with pytest.raises(ConfigError) as e:
        apply_strategy(cfg, model, parse_strategy(text))
    assert e.value.source == f"strategy {text!r}"
    assert any(path == field and words in msg for path, msg in e.value.problems), e.value.problems


def test_cpu_refuses_expert_parallel_and_eager_pipeline_parallel(cfg):
    def why(model, text):
        return cpu_refusal(apply_strategy(cfg, model, parse_strategy(text)).models[0])

    assert "segfaults" in why("tiny-moe", "ep2")
    assert "enforce_eager=false" in why("tiny-dense", "pp2")
    assert why("tiny-dense", "pp2:enforce_eager=false") is None
    assert why("tiny-dense", "tp2") is None and why("tiny-dense", "replicas=2") is None
    gpu = parse_config({"models": [{"name": "m", "source": "tiny:moe", "placement": {"accelerator": "GPU"}}]})
    assert cpu_refusal(apply_strategy(gpu, None, parse_strategy("ep2")).models[0]) is None  # GPUs run EP


def test_plan_sweep_reports_every_problem_before_deploying_anything(cfg):
    with pytest.raises(LoadTestError) as e:
        plan_sweep(cfg, "tiny-dense", ["tp1", "tp3", "pp2", "bogus"])
    msg = str(e.value)
    assert "tp3" in msg and "strategy 'pp2' cannot run" in msg and "unknown part 'bogus'" in msg
    planned = plan_sweep(cfg, "tiny-moe", ["tp1", "ep2"], allow_refused=True)  # --dry-run plans EP anyway
    assert [s.name for s, _ in planned] == ["tp1", "ep2"]
    with pytest.raises(LoadTestError, match="pick the model to sweep with --model"):
        plan_sweep(cfg, None, ["tp1"])
    with pytest.raises(LoadTestError, match="share the directory name"):
        plan_sweep(cfg, "tiny-dense", ["tp2", "TP2"])
    assert isinstance(planned[0][0], Strategy)


def test_sweep_command_refuses_before_starting_ray_and_dry_run_plans():
    from loadtest.cli import cli

    runner = CliRunner()
    res = runner.invoke(cli, ["sweep", "tp1", "ep2", "--model", "tiny-moe"])
    assert res.exit_code == 2 and "segfaults" in res.output
    res = runner.invoke(cli, ["sweep", "tp1", "--model", "tiny-dense", "--concurrency", "1,x"])
    assert res.exit_code == 2 and "--concurrency '1,x'" in res.output
    res = runner.invoke(cli, ["sweep", "tp2-pp2", "ep2", "--model", "tiny-moe", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "tp2-pp2: tp2 pp2 ep1 x1" in res.output and "refused here" in res.output
