"""One resolved layout, made once (cluster.planner.plan_layout), and local Ray sized from it."""

from __future__ import annotations

import os

import pytest

from cluster.planner import Layout, LayoutError, bundles_for, plan_layout, resolve_parallelism
from cluster.ray_cluster import local_ray_cpus
from serve_app.errors import ConfigError
from serve_app.schema import Parallelism, parse_config

MIXTRAL_AUTO = {"name": "mixtral", "source": "mistralai/Mixtral-8x7B-v0.1", "parallelism": "auto",
                "max_model_len": 8192, "placement": {"accelerator_type": "A100-80G", "accelerators_per_node": 4}}


def _model(**fields):
    return parse_config({"models": [fields]}).models[0]


def test_auto_on_gpus_is_the_planners_choice_with_nothing_left_auto():
    m = _model(**MIXTRAL_AUTO)
    layout = plan_layout(m)
    par, strategy = resolve_parallelism(m, nodes=1, gpus_per_node=4, accelerator="A100-80G")
    assert isinstance(layout, Layout) and layout.parallelism == par and layout.strategy == strategy
    assert layout.executor == ("ray" if par.world_size > 1 else "mp")
    assert layout.gpus_per_replica == par.world_size == len(layout.bundles) == layout.workers
    assert "auto" not in (layout.strategy, layout.executor)


def test_on_the_cpu_auto_is_one_worker_and_the_mp_executor():
    layout = plan_layout(_model(name="t", source="tiny:dense", parallelism="auto", placement={"accelerator": "CPU"}))
    assert (layout.parallelism, layout.executor, layout.gpus_per_replica) == (Parallelism(), "mp", 0)


def test_the_one_precondition_names_the_field_and_the_fix():
    m = _model(**{**MIXTRAL_AUTO, "placement": {"accelerator_type": "A100-80G"}})
    with pytest.raises(LayoutError) as e:
        plan_layout(m, where="models[3]")
    assert e.value.field == "models[3].parallelism" and isinstance(e.value, ConfigError)
    assert "auto needs placement.accelerator_type and placement.accelerators_per_node" in str(e.value)
    assert plan_layout(m, accelerators_per_node=4).parallelism.world_size >= 2  # a live cluster's count will do


def test_local_ray_counts_an_auto_models_planned_workers_not_one():
    cfg = parse_config({"models": [{**MIXTRAL_AUTO, "autoscaling": {"min_replicas": 1, "max_replicas": 4}}]})
    workers = plan_layout(cfg.models[0]).workers
    assert workers >= 2
    need = int(cfg.models[0].placement.cpus_per_worker * workers * 4) + 2
    assert local_ray_cpus(cfg) == max(os.cpu_count() or 1, need)
    assert local_ray_cpus([cfg, cfg]) == local_ray_cpus(cfg)  # the largest config, not the sum


# ---- front ends: resolved once into Layout.front_ends, their CPUs reserved in bundle 0 -------------------------

MIXTRAL_TP8 = {"name": "mixtral", "source": "mistralai/Mixtral-8x7B-v0.1", "parallelism": {"tensor": 8},
               "max_model_len": 8192, "placement": {"accelerator_type": "A100-80G", "accelerators_per_node": 8}}


@pytest.mark.parametrize("placement, front_ends", [
    ({"accelerator": "CPU"}, 1),
    ({"accelerator": "CPU", "cpus_per_worker": 16}, 1),  # CPU engine workers run the model on those cores
    ({"cpus_per_worker": 1}, 1),   # 8 GPUs x 1 CPU = 8 bundle CPUs
    ({"cpus_per_worker": 2}, 2),   # 16 bundle CPUs
    ({"cpus_per_worker": 3}, 3),   # 24
    ({"cpus_per_worker": 16}, 8),  # 128 bundle CPUs: capped at 8
])
def test_auto_front_ends_follow_the_replicas_cpus(placement, front_ends):
    m = _model(**{**MIXTRAL_TP8, "placement": {**MIXTRAL_TP8["placement"], **placement}})
    if m.placement.on_cpu:
        m = _model(name="t", source="tiny:dense", placement=placement)
    assert m.front_ends == "auto"
    assert plan_layout(m).front_ends == front_ends


@pytest.mark.parametrize("placement, explicit", [({"accelerator": "CPU"}, 3), ({"cpus_per_worker": 16}, 1),
                                                 ({"cpus_per_worker": 1}, 16)])
def test_an_explicit_front_ends_wins_over_auto(placement, explicit):
    m = _model(**{**MIXTRAL_TP8, "front_ends": explicit, "placement": {**MIXTRAL_TP8["placement"], **placement}})
    assert plan_layout(m).front_ends == explicit


@pytest.mark.parametrize("front_ends", [1, 2, 3, 8])
def test_bundle_0_holds_one_cpu_per_extra_front_end_and_the_others_do_not_change(front_ends):
    m = _model(**{**MIXTRAL_TP8, "front_ends": front_ends})
    layout = plan_layout(m)
    plain = bundles_for(layout.parallelism, m.placement)
    assert len(layout.bundles) == len(plain) == 8
    assert layout.bundles[0] == {**plain[0], "CPU": plain[0]["CPU"] + front_ends - 1}
    assert list(layout.bundles[1:]) == plain[1:]
    assert layout.cpus_per_replica == sum(b["CPU"] for b in plain) + front_ends - 1


def test_local_ray_counts_the_front_ends_cpus():
    cpu = {"name": "t", "source": "tiny:dense", "placement": {"accelerator": "CPU"},
           "autoscaling": {"min_replicas": 1, "max_replicas": 3}}
    one, many = (parse_config({"models": [{**cpu, "front_ends": n}]}) for n in (1, 16))
    assert local_ray_cpus(many) == max(os.cpu_count() or 1, local_ray_cpus(one) + 15 * 3)
