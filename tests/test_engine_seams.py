"""Engines as values (one registry, one start signature) and engine_args checked when the config loads."""

from __future__ import annotations

import asyncio
import inspect

import pytest

from cluster.planner import plan_layout
from serve_app.engines import ENGINES, EngineSpec, engine_class
from serve_app.errors import ConfigError
from serve_app.schema import parse_config

pytest.importorskip("vllm")


def _cfg(engine_args: dict, engine: str = "vllm"):
    return {"models": [{"name": "m", "source": "tiny:dense", "engine": engine, "engine_args": engine_args,
                        "placement": {"accelerator": "CPU"}}]}


def test_a_bad_engine_args_key_fails_at_load_naming_the_field_and_the_fix():
    with pytest.raises(ConfigError) as e:
        parse_config(_cfg({"dtype": "bfloat16", "max_num_seq": 8}))
    assert [p for p, _ in e.value.problems] == ["models[0].engine_args.max_num_seq"]
    assert "did you mean max_num_seqs" in str(e.value)


def test_known_engine_args_load_and_dashes_mean_underscores():
    cfg = parse_config(_cfg({"dtype": "bfloat16", "max-num-seqs": 8, "enable_prefix_caching": False}))
    assert cfg.models[0].engine_args["max-num-seqs"] == 8


def test_the_simulator_ignores_engine_args_it_never_passes_on():
    parse_config(_cfg({"max_num_seq": 8}, engine="sim"))


def test_every_registered_engine_starts_from_one_spec():
    classes = {name: engine_class(name) for name in ENGINES}
    assert {c.__name__ for c in classes.values()} == {"VLLMEngine", "SimEngine"}
    signatures = {name: list(inspect.signature(c.start).parameters) for name, c in classes.items()}
    assert all(params == ["spec"] for params in signatures.values()), signatures
    with pytest.raises(KeyError, match="known: sim, vllm"):
        engine_class("tgi")


def test_the_simulator_starts_from_a_spec_like_any_engine():
    cfg = parse_config({"models": [{"name": "s", "source": "tiny:dense", "engine": "sim",
                                    "sim": {"startup_s": 0}, "placement": {"accelerator": "CPU"}}]}).models[0]
    engine = asyncio.run(engine_class("sim").start(EngineSpec(model=cfg, layout=plan_layout(cfg))))
    try:
        assert engine.stats().waiting_requests == 0 and engine.alive()
    finally:
        engine.shutdown()
