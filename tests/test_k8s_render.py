"""KubeRay rendering: strict CRD validation, golden k8s/ files, worker sizing, secrets, clear errors."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from cluster.k8s.cli import cli
from cluster.k8s.errors import K8sError, RenderError, SchemaError
from cluster.k8s.examples import SCENARIO_DIR, check_examples, render_examples, scenario_configs
from cluster.k8s.layout import per_pod_share, resolve_for_kubernetes, worker_layouts
from cluster.k8s.render import SERVE_IMPORT_PATH, render_raycluster, render_rayservice
from cluster.k8s.schema import apply_defaults, load_crd_schemas, validate_manifest
from cluster.planner import plan_layout
from conftest import REPO, shared_dir_or_skip
from serve_app.config import parse_config
from serve_app.errors import ConfigError

SCENARIOS = sorted(p.stem for p in SCENARIO_DIR.glob("*.yaml"))
K8S = REPO / "k8s"


@pytest.fixture(scope="module")
def crds():
    return load_crd_schemas(shared_dir_or_skip("kuberay-crds"))


def _scenario(stem: str) -> dict:
    return yaml.safe_load((SCENARIO_DIR / f"{stem}.yaml").read_text())


def _config(stem: str = "mistral-7b-l4", **patch):
    data = _scenario(stem)
    for dotted, value in patch.items():
        node, *path = data, *dotted.split("__")
        for key in path[:-1]:
            node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
        node[path[-1]] = value
    return parse_config(data)


def _workers(manifest: dict) -> list[dict]:
    spec = manifest["spec"].get("rayClusterConfig", manifest["spec"])
    return spec["workerGroupSpecs"]


# ---- strict schema validation -----------------------------------------------------------------------------


def test_the_issue_scenarios_are_all_there():
    assert SCENARIOS == [
        "dense-128b-a100-tp4-pp2", "dense-128b-h100-tp4", "mistral-7b-l4", "mixtral-8x22b-h100",
        "mixtral-8x7b-a100-40g", "moe-122b-a10b-ep-h100",
    ]


@pytest.mark.parametrize("stem", SCENARIOS)
def test_every_rendered_manifest_validates_strictly(crds, stem):
    config = scenario_configs()[stem]
    validate_manifest(render_rayservice(config), crds)
    validate_manifest(render_raycluster(config), crds)


def test_every_committed_manifest_validates_strictly(crds):
    manifests = sorted(K8S.rglob("raycluster.yaml")) + sorted(K8S.rglob("rayservice.yaml"))
    assert len(manifests) == len(SCENARIOS) + 1
    for path in manifests:
        validate_manifest(yaml.safe_load(path.read_text()), crds)


def test_strict_validation_names_every_bad_field(crds):
    bad = render_rayservice(_config())
    wg = _workers(bad)[0]
    wg["replicas"] = "two"
    del wg["groupName"]
    wg["template"]["spec"]["containers"][0]["resourcez"] = {}  # unknown: a server would silently prune it
    wg["template"]["spec"]["containers"].append({"name": "ray-worker", "image": "x"})
    bad["spec"]["rayClusterConfig"]["autoscalerOptions"]["idleTimeoutSeconds"] = 2**31  # > int32
    bad["spec"]["upgradeStratgy"] = {"type": "NewCluster"}
    with pytest.raises(SchemaError) as e:
        validate_manifest(bad, crds)
    where = dict(e.value.problems)
    w = "spec.rayClusterConfig.workerGroupSpecs[0]"
    assert "'groupName' is required" in where[w]
    assert "not of type 'integer'" in where[f"{w}.replicas"]
    assert "unknown field 'resourcez'" in where[f"{w}.template.spec.containers[0]"]
    assert "duplicate entry [1] with name='ray-worker'" in where[f"{w}.template.spec.containers"]
    assert "maximum" in where["spec.rayClusterConfig.autoscalerOptions.idleTimeoutSeconds"]
    assert "unknown field 'upgradeStratgy'" in where["spec"]
    assert str(e.value).startswith("RayService default/mistral-7b does not match the KubeRay CRD schema:")


def test_schema_defaults_are_applied_before_validation(crds):
    # minReplicas / maxReplicas are required but defaulted: a manifest without them is valid, as on a server.
    m = render_rayservice(_config())
    for key in ("minReplicas", "maxReplicas"):
        del _workers(m)[0][key]
    validate_manifest(m, crds)
    filled = apply_defaults(copy.deepcopy(m), crds.schemas["RayService"])
    assert _workers(filled)[0]["numOfHosts"] == 1 and _workers(filled)[0]["minReplicas"] == 0
    assert "numOfHosts" not in _workers(m)[0]  # the caller's manifest is untouched


def test_metadata_is_checked_as_the_api_server_would(crds):
    m = render_rayservice(_config())
    m["metadata"]["name"] = "Mistral_7B"
    m["metadata"]["labels"]["x"] = "not a label value!"
    with pytest.raises(SchemaError) as e:
        validate_manifest(m, crds)
    where = dict(e.value.problems)
    assert "DNS-1035" in where["metadata.name"] and "metadata.labels.x" in where


# ---- golden files --------------------------------------------------------------------------------------------


def test_committed_k8s_matches_the_renderer():
    problems = check_examples(K8S)
    assert not problems, "k8s/ drifted from cluster/k8s; run `fleetserve k8s render --all`:\n" + "\n".join(problems)


def test_drift_check_catches_edits_missing_and_stale_files(tmp_path):
    out = tmp_path / "k8s"
    shutil.copytree(K8S, out)
    assert check_examples(out) == []
    path = out / "mistral-7b-l4" / "rayservice.yaml"
    path.write_text(path.read_text().replace("maxReplicas: 4", "maxReplicas: 5"))
    (out / "mixtral-8x22b-h100" / "kustomization.yaml").unlink()
    (out / "old-scenario.yaml").write_text("kind: RayService\n")
    assert check_examples(out) == [
        "old-scenario.yaml: not rendered by cluster/k8s (stale)",
        "mistral-7b-l4/rayservice.yaml: differs from the renderer",
        "mixtral-8x22b-h100/kustomization.yaml: missing",
    ]
    result = CliRunner().invoke(cli, ["render", "--all", "--check", "--out", str(out)])
    assert result.exit_code == 1 and "differs from the renderer" in result.output
    result = CliRunner().invoke(cli, ["render", "--all", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert check_examples(out) == [] and not (out / "old-scenario.yaml").exists()


def test_render_all_never_prunes_a_directory_it_did_not_render(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    result = CliRunner().invoke(cli, ["render", "--all", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "holds no `fleetserve k8s render --all` output" in result.output
    assert (tmp_path / "notes.txt").read_text() == "mine"
    result = CliRunner().invoke(cli, ["render", "--all", "--out", str(tmp_path / "fresh")])
    assert result.exit_code == 0 and check_examples(tmp_path / "fresh") == []


def test_rendering_is_deterministic():
    assert render_examples() == render_examples()


def test_kustomizations_list_existing_resources_and_the_dashboard():
    top = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert top["resources"] == SCENARIOS
    for d in top["resources"]:
        sub = yaml.safe_load((K8S / d / "kustomization.yaml").read_text())
        assert all((K8S / d / r).is_file() for r in sub["resources"])
    assert top["configMapGenerator"][0]["files"] == ["grafana-dashboard.json"]
    assert top["configMapGenerator"][0]["options"]["labels"]["grafana_dashboard"] == "1"


def test_the_dashboard_is_rendered_json():
    # What it queries is checked against the code in tests/test_dashboard.py, against a scrape in
    # tests/test_observability_live.py.
    board = json.loads((K8S / "grafana-dashboard.json").read_text())
    assert board["uid"] == "fleetserve-serving" and board["panels"]


# ---- worker group sizing -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tensor, pipeline, per_node, expected",
    [
        (1, 1, 1, (1, 1)),        # Mistral 7B on one L4
        (4, 1, 8, (4, 1)),        # Mixtral 8x7B TP=4 on 8-GPU A100 nodes: a pod is one replica, two per node
        (8, 1, 8, (8, 1)),        # Mixtral 8x22B TP=8 on H100: the whole node
        (4, 2, 4, (4, 2)),        # 128B TP=4 x PP=2 over two 4-GPU nodes: one stage per pod
        (4, 2, 8, (8, 1)),        # the same replica fits one 8-GPU node
        (2, 4, 4, (4, 2)),        # two stages per pod
        (4, 3, 8, (4, 3)),        # 3 stages cannot split 2+1 evenly: one stage per pod
        (16, 1, 8, (8, 2)),       # TP spanning two full nodes
        (4, 2, None, (8, 1)),     # node size unknown: a pod holds the whole replica
    ],
)
def test_gpus_per_pod_is_the_per_node_share(tensor, pipeline, per_node, expected):
    assert per_pod_share(tensor, pipeline, per_node) == expected


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 16), st.integers(1, 8), st.sampled_from([1, 2, 4, 8, 16]))
def test_pods_hold_whole_shares_of_a_replica(tensor, pipeline, per_node):
    try:
        per_pod, pods = per_pod_share(tensor, pipeline, per_node)
    except ValueError:
        assert tensor > per_node and tensor % per_node
        return
    world = tensor * pipeline
    assert per_pod * pods == world
    assert per_pod == world if world <= per_node else per_pod <= per_node  # a pod never exceeds a node
    assert per_pod % tensor == 0 or tensor % per_pod == 0  # a TP group is never split unevenly


@pytest.mark.parametrize(
    "stem, gpus_per_pod, pods_per_replica, min_pods, start_pods, max_pods, node_label",
    [
        ("mistral-7b-l4", 1, 1, 1, 1, 4, "nvidia-l4"),
        ("mixtral-8x7b-a100-40g", 4, 1, 1, 1, 4, "nvidia-tesla-a100"),
        ("mixtral-8x22b-h100", 8, 1, 1, 1, 2, "nvidia-h100-80gb"),
        ("dense-128b-h100-tp4", 4, 1, 1, 1, 4, "nvidia-h100-80gb"),
        ("dense-128b-a100-tp4-pp2", 4, 2, 2, 2, 4, "nvidia-tesla-a100"),
        ("moe-122b-a10b-ep-h100", 8, 1, 1, 1, 2, "nvidia-h100-80gb"),
    ],
)
def test_worker_groups_are_sized_to_whole_replicas(stem, gpus_per_pod, pods_per_replica, min_pods, start_pods,
                                                   max_pods, node_label):
    config = scenario_configs()[stem]
    (layout,) = worker_layouts(config)
    assert (layout.accelerators_per_pod, layout.pods_per_replica) == (gpus_per_pod, pods_per_replica)
    (group,) = _workers(render_rayservice(config))
    assert (group["minReplicas"], group["replicas"], group["maxReplicas"]) == (min_pods, start_pods, max_pods)
    for count in (group["minReplicas"], group["replicas"], group["maxReplicas"]):
        assert count % pods_per_replica == 0
    pod = group["template"]["spec"]
    res = pod["containers"][0]["resources"]
    assert res["requests"]["nvidia.com/gpu"] == res["limits"]["nvidia.com/gpu"] == str(gpus_per_pod)
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": node_label}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]


def test_parallelism_auto_is_planned_once_and_pinned_in_the_serve_config():
    config = _config("mixtral-8x7b-a100-40g", models__0__parallelism="auto")
    m = render_rayservice(config)
    pinned = yaml.safe_load(m["spec"]["serveConfigV2"])["applications"][0]["args"]["config"]["models"][0]["parallelism"]
    (layout,) = worker_layouts(config)
    # the cluster runs exactly the layout its pods were sized for (one 8-GPU node here)
    assert pinned["tensor"] * pinned.get("pipeline", 1) == layout.accelerators_per_pod * layout.pods_per_replica
    assert layout.accelerators_per_pod <= 8
    with pytest.raises(RenderError, match=r"models\[0\]\.parallelism: auto needs placement.accelerator_type and "
                                          r"placement.accelerators_per_node"):
        render_rayservice(_config("mixtral-8x7b-a100-40g", models__0__parallelism="auto",
                                  models__0__placement__accelerators_per_node=None))
    with pytest.raises(RenderError, match=r"models\[0\]\.parallelism: auto: no layout of mixtral-8x7b"):
        render_rayservice(_config("mixtral-8x7b-a100-40g", models__0__parallelism="auto",
                                  models__0__placement__accelerators_per_node=1))


def _pinned_model(manifest: dict) -> dict:
    return yaml.safe_load(manifest["spec"]["serveConfigV2"])["applications"][0]["args"]["config"]["models"][0]


@pytest.mark.parametrize("stem", ["mistral-7b-l4", "mixtral-8x22b-h100", "dense-128b-a100-tp4-pp2"])
def test_front_ends_fit_the_pod_that_holds_bundle_0_and_are_pinned_in_the_serve_config(crds, stem):
    config = _config(stem, models__0__front_ends=3)
    m = render_rayservice(config)
    validate_manifest(m, crds)
    assert _pinned_model(m)["front_ends"] == 3
    (layout,) = worker_layouts(config)
    bundles = plan_layout(resolve_for_kubernetes(config).models[0]).bundles
    assert bundles[0]["CPU"] == config.models[0].placement.cpus_per_worker + 2
    # any pod of the group may get bundle 0, so each one holds bundle 0 and the rest of a pod's share
    share = sum(b["CPU"] for b in bundles[: layout.accelerators_per_pod])
    (group,) = _workers(m)
    cpu = group["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"]
    assert float(cpu) == layout.cpus_per_pod >= share


def test_front_ends_auto_is_resolved_once_and_pinned_as_a_number():
    # 8 H100s x 2 CPUs = 16 bundle CPUs: auto gives 2 front ends; a cluster re-resolving would never see auto
    config = _config("mixtral-8x22b-h100", models__0__placement__cpus_per_worker=2)
    assert config.models[0].front_ends == "auto"
    m = render_rayservice(config)
    assert _pinned_model(m)["front_ends"] == 2 == plan_layout(config.models[0]).front_ends
    assert parse_config(yaml.safe_load(m["spec"]["serveConfigV2"])["applications"][0]["args"]["config"]).models[0].front_ends == 2


def test_head_has_no_gpus_and_pods_get_shm_and_the_model_cache():
    m = render_rayservice(_config("dense-128b-a100-tp4-pp2"))
    rc = m["spec"]["rayClusterConfig"]
    head = rc["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0"
    assert "nvidia.com/gpu" not in json.dumps(head) and "tolerations" not in head["template"]["spec"]
    for pod in (head["template"]["spec"], _workers(m)[0]["template"]["spec"]):
        shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
        assert shm["emptyDir"]["medium"] == "Memory"
        assert {"name": "dshm", "mountPath": "/dev/shm"} in pod["containers"][0]["volumeMounts"]
    worker = _workers(m)[0]["template"]["spec"]
    assert {"name": "model-cache", "hostPath": {"path": "/mnt/fleetserve-model-cache", "type": "DirectoryOrCreate"}} in worker["volumes"]
    assert {"name": "HF_HOME", "value": "/model-cache"} in worker["containers"][0]["env"]
    # Ray detects only "A100": the sized type the app pins to must be advertised explicitly.
    assert _workers(m)[0]["resources"] == {"accelerator_type:A100-40G": "1"}
    pvc = render_rayservice(_config(kubernetes__model_cache={"kind": "pvc", "pvc_claim_name": "weights"}))
    assert {"name": "model-cache", "persistentVolumeClaim": {"claimName": "weights"}} in _workers(pvc)[0]["template"]["spec"]["volumes"]


def test_autoscaling_and_upgrade_strategy():
    config = _config("mixtral-8x22b-h100")
    m = render_rayservice(config)
    rc = m["spec"]["rayClusterConfig"]
    assert rc["enableInTreeAutoscaling"] is True
    assert rc["autoscalerOptions"]["idleTimeoutSeconds"] == 1800 >= config.kubernetes.model_cold_start_s
    assert m["spec"]["upgradeStrategy"] == {"type": "NewCluster"}


# ---- the Serve config and secrets ----------------------------------------------------------------------------


@pytest.mark.parametrize("stem", SCENARIOS)
def test_serve_config_imports_the_builder_with_the_config_as_args(stem):
    config = scenario_configs()[stem]
    serve = yaml.safe_load(render_rayservice(config)["spec"]["serveConfigV2"])
    (app,) = serve["applications"]
    assert app["import_path"] == SERVE_IMPORT_PATH == "serve_app.config:build_app"
    assert serve["http_options"]["host"] == "0.0.0.0"
    # the cluster parses exactly the config we rendered from (less the Kubernetes section it does not need),
    # its `auto`s pinned to what the pods were sized for
    again = parse_config(app["args"]["config"])
    pinned = resolve_for_kubernetes(config)
    assert again.model_dump(exclude={"kubernetes"}) == pinned.model_dump(exclude={"kubernetes"})
    assert all(m.front_ends != "auto" and m.parallelism != "auto" for m in again.models)


def test_the_hf_token_comes_from_a_secret_never_inline(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_do_not_leak_0123456789")  # must not be read by the renderer
    for stem, text in render_examples().items():
        assert "hf_do_not_leak" not in text, stem
    config = _config(kubernetes__hf_token={"secret_name": "hub", "secret_key": "read-token"})
    for manifest in (render_rayservice(config), render_raycluster(config)):
        for group in _workers(manifest):
            env = {e["name"]: e for e in group["template"]["spec"]["containers"][0]["env"]}
            assert env["HF_TOKEN"] == {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hub", "key": "read-token"}}}


def test_api_keys_are_refused_rather_than_written_into_the_manifest():
    with pytest.raises(RenderError) as e:
        render_rayservice(_config(api_keys=["sk-secret"]))
    assert e.value.field == "api_keys" and "plain text" in str(e.value) and "sk-secret" not in str(e.value)


# ---- a broken config gives a clear error before anything reaches a cluster ---------------------------------


@pytest.mark.parametrize(
    "patch, error, field, words",
    [
        ({"models__0__placement__accelerator_type": "A10G"}, RenderError, "models[0].placement.accelerator_type",
         "no entry in kubernetes.accelerators"),
        ({"models__0__source": "tiny:dense", "models__0__max_model_len": 1024}, RenderError, "models[0].source",
         "built on this machine"),
        ({"name": "7b-mistral"}, RenderError, "name", "must start with a letter"),
        ({"models__0__placement__schedule_timeout_s": 60}, RenderError, "models[0].placement.schedule_timeout_s",
         "before a new GPU node joins"),
        ({"models__0__parallelism": {"tensor": 6}, "models__0__placement__accelerators_per_node": 4}, RenderError,
         "models[0].parallelism.tensor", "not a multiple"),
        ({"models__0__placement__cpus_per_worker": 8}, RenderError, "kubernetes.worker_cpus_per_accelerator",
         "needs 8 (8 for 1 engine worker(s) at placement.cpus_per_worker=8); raise it by 2 to 8"),
        ({"models__0__front_ends": 8}, RenderError, "kubernetes.worker_cpus_per_accelerator",
         "needs 8 (1 for 1 engine worker(s) at placement.cpus_per_worker=1 + 7 for models[0].front_ends=8 beyond the "
         "first); raise it by 2 to 8, or lower models[0].front_ends"),
        ({"models__0__placement__accelerator": "TPU"}, RenderError, "models[0].placement.accelerator", "GPU"),
        ({"kubernetes__autoscaler_idle_timeout_s": 60}, ConfigError, "kubernetes.autoscaler_idle_timeout_s",
         "must be >= model_cold_start_s"),
        ({"kubernetes__worker_shm_size_gib": 64}, ConfigError, "kubernetes.worker_shm_size_gib", "memory limit"),
        ({"kubernetes__worker_ray_start_params": {"num-gpus": "2"}}, ConfigError,
         "kubernetes.worker_ray_start_params.num-gpus", "set by the renderer"),
        ({"kubernetes__model_cache": {"kind": "pvc"}}, ConfigError, "kubernetes.model_cache.pvc_claim_name", "set it"),
        ({"kubernetes__nodeSelector": {"a": "b"}}, ConfigError, "kubernetes.nodeSelector", "Extra inputs"),
    ],
)
def test_broken_config_names_the_field(patch, error, field, words):
    with pytest.raises(error) as e:
        render_rayservice(_config(**patch))
    text = str(e.value)
    assert field in text and words in text, text


def test_cli_render_reports_a_broken_config_and_writes_nothing(tmp_path):
    data = _scenario("mistral-7b-l4")
    data["models"][0]["placement"]["accelerator_type"] = "A10G"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    out = tmp_path / "out.yaml"
    result = CliRunner().invoke(cli, ["render", "--config", str(bad), "--out", str(out)])
    assert result.exit_code == 2
    assert "error: models[0].placement.accelerator_type: 'A10G' has no entry in kubernetes.accelerators" in result.output
    assert not out.exists()


def test_cli_render_writes_a_validated_manifest(tmp_path, crds):
    out = tmp_path / "rs.yaml"
    result = CliRunner().invoke(
        cli, ["render", "--config", str(SCENARIO_DIR / "mixtral-8x7b-a100-40g.yaml"), "--out", str(out),
              "--crd-dir", crds.source],
    )
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(out.read_text()) == render_rayservice(scenario_configs()["mixtral-8x7b-a100-40g"])
    result = CliRunner().invoke(cli, ["render", "--config", str(SCENARIO_DIR / "mistral-7b-l4.yaml"), "--kind", "raycluster"])
    assert result.exit_code == 0 and "kind: RayCluster" in result.output and "name: mistral-7b-dev" in result.output


def test_unknown_kind_is_an_error():
    with pytest.raises(K8sError):
        from cluster.k8s.cli import render_manifest

        render_manifest(str(SCENARIO_DIR / "mistral-7b-l4.yaml"), "deployment")


def test_rendering_modules_are_pure():
    code = (
        "import sys; import cluster.k8s, cluster.k8s.schema, cluster.k8s.examples, cluster.k8s.dashboard, cluster.k8s.cli\n"
        "bad = [m for m in ('ray', 'vllm', 'locust', 'kubernetes') if m in sys.modules]\n"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_api_keys_come_from_a_secret_in_every_pod_and_never_inline():
    cfg = _config(kubernetes={"api_keys_secret": {"secret_name": "fleetserve-keys"}})
    svc = render_rayservice(cfg)
    text = yaml.safe_dump(svc)
    spec = svc["spec"]["rayClusterConfig"]
    pods = [spec["headGroupSpec"]] + spec["workerGroupSpecs"]
    for pod in pods:
        env = {e["name"]: e for e in pod["template"]["spec"]["containers"][0]["env"]}
        assert env["FLEETSERVE_API_KEYS"]["valueFrom"]["secretKeyRef"] == {"name": "fleetserve-keys", "key": "keys"}
    app_config = yaml.safe_load(svc["spec"]["serveConfigV2"])["applications"][0]["args"]["config"]
    assert app_config["api_keys_env"] == "FLEETSERVE_API_KEYS" and "api_keys" not in app_config
    assert "value: sk-" not in text


def test_a_key_source_the_pods_do_not_have_is_refused():
    with pytest.raises(RenderError) as e:
        render_rayservice(_config(api_keys_env="MY_KEYS"))
    assert e.value.field == "api_keys_env" and "api_keys_secret" in str(e.value)
