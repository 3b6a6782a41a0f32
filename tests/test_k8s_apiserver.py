"""apply / status / diff against a real kube-apiserver 1.20 with the KubeRay CRDs installed.

../shared/k8s-apiserver builds the server (`setup`, ~4 min the first time on a machine, cached
after) and starts it on loopback (`start`, ~4 s). There is no KubeRay operator: the tests write
a RayService's status through the status subresource, as the operator would. Each test works in
its own namespace. No mocked API client.
"""

from __future__ import annotations

import copy
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml
from kubernetes import client as k8s
from typer.testing import CliRunner

from cluster.k8s import client
from cluster.k8s.cli import cli
from cluster.k8s.errors import K8sError, SchemaError
from cluster.k8s.examples import SCENARIO_DIR, scenario_configs
from cluster.k8s.render import render_raycluster, render_rayservice
from conftest import free_port, shared_dir_or_skip, wait_until
from serve_app.config import parse_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

_CRDS = ("rayservices.ray.io", "rayclusters.ray.io")


def _run(args: list[str], timeout_s: float) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode:
        pytest.fail(f"{' '.join(args)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return done.stdout


@pytest.fixture(scope="module")
def kubeconfig(tmp_path_factory) -> str:
    """A started kube-apiserver with both KubeRay CRDs Established; stopped and removed afterwards."""
    tools = shared_dir_or_skip("k8s-apiserver")
    _run([str(tools / "setup")], timeout_s=900)  # 0.2 s once built; ~4 min cold
    run_dir = tmp_path_factory.mktemp("k8s") / "run"
    try:
        out = _run([str(tools / "start"), str(run_dir)], timeout_s=120)
        path = out.strip().splitlines()[-1].removeprefix("KUBECONFIG=")
        api = client.api_client(path)
        ext = k8s.ApiextensionsV1Api(api)
        for f in sorted((tools / "crds").glob("*.yaml")):
            ext.create_custom_resource_definition(yaml.load(f.read_text(), Loader=yaml.CSafeLoader))

        def established() -> bool:
            return all(
                any(c.type == "Established" and c.status == "True"
                    for c in ext.read_custom_resource_definition(name).status.conditions or [])
                for name in _CRDS
            )

        wait_until(established, timeout_s=60, what="KubeRay CRDs Established")
        api.close()
        yield path
    finally:
        subprocess.run([str(tools / "stop"), str(run_dir), "--rm"], capture_output=True, timeout=60)


@pytest.fixture
def api(kubeconfig):
    a = client.api_client(kubeconfig)
    yield a
    a.close()


@pytest.fixture
def ns(api) -> str:
    name = f"t-{uuid.uuid4().hex[:8]}"
    k8s.CoreV1Api(api).create_namespace({"metadata": {"name": name}})
    return name


def _config(stem: str = "mistral-7b-l4", max_replicas: int | None = None):
    data = yaml.safe_load((SCENARIO_DIR / f"{stem}.yaml").read_text())
    if max_replicas is not None:
        data["models"][0]["autoscaling"]["max_replicas"] = max_replicas
    return parse_config(data)


def _write(tmp_path: Path, config) -> str:
    p = tmp_path / "deploy.yaml"
    p.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_defaults=True)))
    return str(p)


def _dropped(sent, stored, path="") -> list[str]:
    """Paths of `sent` that `stored` lacks."""
    if isinstance(sent, dict):
        return [p for k, v in sent.items()
                for p in ([f"{path}.{k}"] if k not in stored else _dropped(v, stored[k], f"{path}.{k}"))]
    if isinstance(sent, list):
        return [p for i, (a, b) in enumerate(zip(sent, stored)) for p in _dropped(a, b, f"{path}[{i}]")]
    return []


def test_every_scenario_applies_and_reads_back_unpruned(api, ns):
    for stem, config in scenario_configs().items():
        manifest = render_rayservice(config)
        stored = client.validated_apply(api, manifest, namespace=ns)
        live = client.get(api, "RayService", config.name, ns)
        assert live["metadata"]["uid"] == stored["metadata"]["uid"], stem
        # 1.20 prunes unknown fields silently; reading back proves nothing we render was dropped...
        assert _dropped(manifest["spec"], live["spec"]) == [], stem
        # ...and the server applied its schema defaults on top
        assert live["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["numOfHosts"] == 1
        assert live["metadata"]["managedFields"][0]["manager"] == client.FIELD_MANAGER
        again = client.apply(api, manifest, namespace=ns)  # idempotent: same generation
        assert again["metadata"]["generation"] == stored["metadata"]["generation"] == 1
    dev = render_raycluster(scenario_configs()["mistral-7b-l4"])
    client.validated_apply(api, dev, namespace=ns)
    assert _dropped(dev["spec"], client.get(api, "RayCluster", "mistral-7b-dev", ns)["spec"]) == []


def test_a_broken_manifest_gets_a_422_turned_into_a_clear_error(api, ns):
    bad = render_rayservice(_config())
    group = bad["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    group["replicas"] = "two"
    del group["groupName"]
    with pytest.raises(K8sError) as e:
        client.apply(api, bad, namespace=ns)  # the transport alone: no local validation in the way
    text = str(e.value)
    assert text.startswith(f"RayService {ns}/mistral-7b was rejected by the API server (422 Invalid):")
    assert "spec.rayClusterConfig.workerGroupSpecs.replicas: must be of type integer" in text
    assert "spec.rayClusterConfig.workerGroupSpecs.groupName: Required value" in text
    assert client.get(api, "RayService", "mistral-7b", ns) is None


def test_fields_the_server_would_prune_are_refused_before_storing(api, ns):
    manifest = render_rayservice(_config())
    manifest["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]["gpuz"] = 1
    with pytest.raises(K8sError, match=r"would drop fields .*containers\[0\]\.gpuz.*upgrade the KubeRay operator"):
        client.apply(api, manifest, namespace=ns)
    assert client.get(api, "RayService", "mistral-7b", ns) is None
    with pytest.raises(SchemaError, match=r"unknown field 'gpuz'"):  # validated_apply: caught locally, never sent
        client.validated_apply(api, manifest, namespace=ns)


def test_status_reads_conditions_and_serve_application_statuses(api, ns, kubeconfig, tmp_path):
    config = _config()
    client.apply(api, render_rayservice(config), namespace=ns)
    before = client.status(api, config.name, ns)
    assert not before.ready and before.conditions == () and before.applications == ()

    # What the KubeRay operator would write once the Serve app is up.
    now = "2026-01-01T00:00:00Z"
    status = {
        "serviceStatus": "Running",
        "observedGeneration": 1,
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "NonZeroServeEndpoints",
             "message": "Number of serve endpoints is greater than 0", "lastTransitionTime": now},
            {"type": "UpgradeInProgress", "status": "False", "reason": "NoPendingCluster",
             "message": "No pending cluster exists", "lastTransitionTime": now},
        ],
        "activeServiceStatus": {  # empty messages are omitted by the operator (omitempty)
            "rayClusterName": "mistral-7b-raycluster-abcde",
            "applicationStatuses": {config.name: {
                "status": "RUNNING",
                "serveDeploymentStatuses": {"model-mistral-7b-instruct": {"status": "HEALTHY"}},
            }},
        },
    }
    k8s.CustomObjectsApi(api).patch_namespaced_custom_object_status(
        "ray.io", "v1", ns, "rayservices", config.name, {"status": status},
        _content_type="application/merge-patch+json",
    )
    st = client.status(api, config.name, ns)
    assert st.ready and st.service_status == "Running" and st.ray_cluster == "mistral-7b-raycluster-abcde"
    assert [(c.type, c.status) for c in st.conditions] == [("Ready", "True"), ("UpgradeInProgress", "False")]
    (app,) = st.applications
    assert (app.name, app.status, app.deployments) == (config.name, "RUNNING", {"model-mistral-7b-instruct": "HEALTHY"})

    result = CliRunner().invoke(cli, ["status", "--config", _write(tmp_path, config), "-n", ns, "--kubeconfig", kubeconfig])
    assert result.exit_code == 0, result.output
    assert f"RayService {ns}/mistral-7b: READY" in result.output
    assert "deployment model-mistral-7b-instruct: HEALTHY" in result.output

    missing = CliRunner().invoke(cli, ["status", "--name", "nope", "-n", ns, "--kubeconfig", kubeconfig])
    assert missing.exit_code == 2 and f"RayService {ns}/nope does not exist" in missing.output


def test_diff_reports_a_changed_field(api, ns, kubeconfig, tmp_path):
    client.apply(api, render_rayservice(_config()), namespace=ns)
    assert client.diff(api, render_rayservice(_config()), namespace=ns) == []  # server defaults are not changes

    changed = _config(max_replicas=6)
    lines = [c.line() for c in client.diff(api, render_rayservice(changed), namespace=ns)]
    assert lines == [
        "~ spec.rayClusterConfig.workerGroupSpecs[0].maxReplicas: 4 -> 6",
        "~ spec.serveConfigV2.applications[0].args.config.models[0].autoscaling.max_replicas: 4 -> 6",
    ]
    result = CliRunner().invoke(cli, ["diff", "--config", _write(tmp_path, changed), "-n", ns, "--kubeconfig", kubeconfig])
    assert result.exit_code == 1 and "~ spec.rayClusterConfig.workerGroupSpecs[0].maxReplicas: 4 -> 6" in result.output

    # after applying, nothing is left to change
    result = CliRunner().invoke(cli, ["apply", "--config", _write(tmp_path, changed), "-n", ns, "--kubeconfig", kubeconfig])
    assert result.exit_code == 0 and f"applied RayService {ns}/mistral-7b (generation 2)" in result.output
    assert client.diff(api, render_rayservice(changed), namespace=ns) == []


def test_diff_of_an_absent_object_shows_it_all_added(api, ns):
    changes = client.diff(api, render_rayservice(_config()), namespace=ns)
    assert changes and all(c.live is None for c in changes)
    assert any(c.path == "spec.rayClusterConfig.workerGroupSpecs[0].template.spec.containers[0].resources.limits.nvidia.com/gpu"
               for c in changes)
    assert client.get(api, "RayService", "mistral-7b", ns) is None  # diff stores nothing


def test_cli_apply_refuses_a_broken_config_before_sending_anything(api, ns, kubeconfig, tmp_path):
    data = yaml.safe_load((SCENARIO_DIR / "mistral-7b-l4.yaml").read_text())
    data["kubernetes"]["autoscaler_idle_timeout_s"] = 30
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(cli, ["apply", "--config", str(bad), "-n", ns, "--kubeconfig", kubeconfig])
    assert result.exit_code == 2
    assert "kubernetes.autoscaler_idle_timeout_s: autoscaler_idle_timeout_s (30) must be >= model_cold_start_s" in result.output
    assert client.get(api, "RayService", "mistral-7b", ns) is None

    dry = CliRunner().invoke(cli, ["apply", "--config", str(SCENARIO_DIR / "mistral-7b-l4.yaml"), "-n", ns,
                                   "--kubeconfig", kubeconfig, "--dry-run"])
    assert dry.exit_code == 0 and "would apply RayService" in dry.output
    assert client.get(api, "RayService", "mistral-7b", ns) is None


def test_conflicting_field_manager_is_reported_with_the_fix(api, ns):
    manifest = render_rayservice(_config())
    client.apply(api, manifest, namespace=ns)
    # someone else takes ownership of maxReplicas with their own apply
    other = copy.deepcopy(manifest)
    other["metadata"]["namespace"] = ns
    other["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplicas"] = 9
    k8s.CustomObjectsApi(api).patch_namespaced_custom_object(
        "ray.io", "v1", ns, "rayservices", "mistral-7b", other, field_manager="someone-else", force=True,
        _content_type="application/apply-patch+yaml", _preload_content=False,
    )
    changed = render_rayservice(_config(max_replicas=5))
    with pytest.raises(K8sError, match="owned by another manager.*--force"):
        client.apply(api, changed, namespace=ns)
    client.apply(api, changed, namespace=ns, force=True)
    assert client.get(api, "RayService", "mistral-7b", ns)["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplicas"] == 5


def test_unreachable_server_and_missing_kubeconfig_are_clear(tmp_path):
    with pytest.raises(K8sError, match="cannot load kubeconfig"):
        client.api_client(str(tmp_path / "nope"))
    port = free_port()  # nothing listens there
    cfg = tmp_path / "kubeconfig"
    cfg.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": f"https://127.0.0.1:{port}", "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
    }))
    api = client.api_client(str(cfg))
    api.configuration.retries = 0
    with pytest.raises(K8sError, match=rf"cannot reach the API server at https://127.0.0.1:{port}"):
        client.status(api, "x", "default")
