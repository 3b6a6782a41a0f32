"""Apply, read and diff KubeRay objects with the `kubernetes` client, turning API errors into K8sError.

    manifest ──► SSA dry-run ──► fields the server would prune? ──► K8sError (nothing stored)
                     │                        no
                     ▼
                 SSA (field manager "fleetserve") ──► the stored object
    status:  RayService .status ──► conditions + Serve application / deployment statuses
    diff:    live object  vs  SSA dry-run of the manifest (both carry the server's defaults)

Every call takes an `ApiClient` (see `api_client`), never the global kubernetes configuration.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import yaml
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from urllib3.exceptions import HTTPError

from cluster.k8s.errors import K8sError
from cluster.k8s.schema import CrdSchemas, validate_manifest

__all__ = [
    "FIELD_MANAGER",
    "AppStatus",
    "Condition",
    "FieldChange",
    "RayServiceStatus",
    "api_client",
    "apply",
    "cluster_schemas",
    "diff",
    "get",
    "status",
    "validated_apply",
]

FIELD_MANAGER = "fleetserve"
_APPLY = "application/apply-patch+yaml"
_PLURALS = {"RayService": "rayservices", "RayCluster": "rayclusters"}
# Written by the API server or the operator, never by us: left out of diffs.
_SERVER_META = ("managedFields", "resourceVersion", "generation", "uid", "creationTimestamp", "selfLink")
_MISSING = object()


def api_client(kubeconfig: str | None = None, *, context: str | None = None) -> k8s.ApiClient:
    """Return an ApiClient for `kubeconfig` (else $KUBECONFIG / ~/.kube/config) without touching global state."""
    from kubernetes.config import new_client_from_config

    try:
        return new_client_from_config(config_file=kubeconfig, context=context, persist_config=False)
    except (ConfigException, OSError) as e:
        raise K8sError(f"cannot load kubeconfig {kubeconfig or '$KUBECONFIG / ~/.kube/config'}: {e}") from e


def apply(api: k8s.ApiClient, manifest: Mapping[str, Any], *, namespace: str | None = None,
          force: bool = False, dry_run: bool = False) -> dict[str, Any]:
    """Server-side apply `manifest` (into `namespace` if given) and return the object as stored.

    A dry run goes first: if the server would silently prune fields it does not know (a CRD older
    than the one we render for), K8sError lists them and nothing is changed. Raises K8sError for
    a rejected object (422, with each cause), a field-manager conflict (409) or an absent CRD.
    """
    obj = _placed(manifest, namespace)
    preview = _ssa(api, obj, force=force, dry_run=True)
    pruned = sorted(_missing_paths(obj, preview))
    if pruned:
        raise K8sError(
            f"{_what(obj)}: the API server would drop fields its {obj['kind']} CRD does not define: {', '.join(pruned)}; "
            "the cluster's KubeRay CRDs are older than the manifest: upgrade the KubeRay operator (and its CRDs)"
        )
    return preview if dry_run else _ssa(api, obj, force=force, dry_run=False)


def get(api: k8s.ApiClient, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
    """Return the live object, or None when it does not exist."""
    group, version = _group_version(None)
    try:
        return k8s.CustomObjectsApi(api).get_namespaced_custom_object(group, version, namespace, _plural(kind), name)
    except ApiException as e:
        if e.status == 404 and _body(e).get("details", {}).get("name") == name:
            return None
        raise _api_error(e, f"{kind} {namespace}/{name}", action="read") from None
    except HTTPError as e:
        raise _unreachable(api, e) from None


@dataclass(frozen=True)
class Condition:
    """One entry of status.conditions."""

    type: str
    status: str
    reason: str = ""
    message: str = ""


@dataclass(frozen=True)
class AppStatus:
    """One Serve application as the operator last saw it, with its deployments' statuses."""

    name: str
    status: str
    message: str = ""
    deployments: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RayServiceStatus:
    """What a RayService reports: readiness conditions and the Serve applications of its active cluster."""

    name: str
    namespace: str
    generation: int | None
    observed_generation: int | None
    service_status: str | None
    ray_cluster: str | None
    conditions: tuple[Condition, ...]
    applications: tuple[AppStatus, ...]
    pending_ray_cluster: str | None = None

    @property
    def ready(self) -> bool:
        """True when the Ready condition is True."""
        return any(c.type == "Ready" and c.status == "True" for c in self.conditions)

    def lines(self) -> list[str]:
        """Render as short human-readable lines."""
        observed = "-" if self.observed_generation is None else self.observed_generation
        gen = f"generation {self.generation}, observed {observed}"
        out = [f"RayService {self.namespace}/{self.name}: {'READY' if self.ready else 'NOT READY'} ({gen})"]
        if self.service_status:
            out.append(f"  service status: {self.service_status}")
        pending = f", pending: {self.pending_ray_cluster}" if self.pending_ray_cluster else ""
        out.append(f"  active RayCluster: {self.ray_cluster or '-'}{pending}")
        if not self.conditions:
            out.append("  conditions: none yet (has the KubeRay operator seen this object?)")
        for c in self.conditions:
            reason = f" ({c.reason})" if c.reason else ""
            out.append(f"  condition {c.type}={c.status}{reason}" + (f": {c.message}" if c.message else ""))
        for app in self.applications:
            out.append(f"  app {app.name}: {app.status}" + (f": {app.message}" if app.message else ""))
            for dep, st in sorted(app.deployments.items()):
                out.append(f"    deployment {dep}: {st}")
        return out


def status(api: k8s.ApiClient, name: str, namespace: str) -> RayServiceStatus:
    """Read a RayService's conditions and Serve application statuses (K8sError if it does not exist)."""
    obj = get(api, "RayService", name, namespace)
    if obj is None:
        raise K8sError(f"RayService {namespace}/{name} does not exist; create it with `fleetserve k8s apply`")
    st = obj.get("status") or {}
    active = st.get("activeServiceStatus") or {}
    apps = tuple(
        AppStatus(
            name=app_name,
            status=app.get("status", ""),
            message=app.get("message", ""),
            deployments={d: (s.get("status", "") + (f": {s['message']}" if s.get("message") else ""))
                         for d, s in (app.get("serveDeploymentStatuses") or {}).items()},
        )
        for app_name, app in sorted((active.get("applicationStatuses") or {}).items())
    )
    return RayServiceStatus(
        name=name,
        namespace=namespace,
        generation=obj["metadata"].get("generation"),
        observed_generation=st.get("observedGeneration"),
        service_status=st.get("serviceStatus"),
        ray_cluster=active.get("rayClusterName"),
        pending_ray_cluster=(st.get("pendingServiceStatus") or {}).get("rayClusterName"),
        conditions=tuple(Condition(c.get("type", ""), c.get("status", ""), c.get("reason", ""), c.get("message", ""))
                         for c in st.get("conditions") or []),
        applications=apps,
    )


@dataclass(frozen=True)
class FieldChange:
    """One field that `apply` would change: `live` / `desired` are None when absent on that side."""

    path: str
    live: Any
    desired: Any

    def line(self) -> str:
        """Render as `~ path: live -> desired` (`+` added, `-` removed)."""
        if self.live is None:
            return f"+ {self.path}: {_short(self.desired)}"
        if self.desired is None:
            return f"- {self.path}: {_short(self.live)}"
        return f"~ {self.path}: {_short(self.live)} -> {_short(self.desired)}"


def diff(api: k8s.ApiClient, manifest: Mapping[str, Any], *, namespace: str | None = None,
         force: bool = False) -> list[FieldChange]:
    """Return the field-level changes applying `manifest` would make to the live object.

    Compares the live object with a server-side-apply dry run, so defaults the server fills and
    fields another manager owns do not show as changes; server bookkeeping and status are ignored.
    serveConfigV2 (YAML text) is compared field by field. An absent object shows every field added.
    Changes come sorted by path.
    """
    obj = _placed(manifest, namespace)
    live = get(api, obj["kind"], obj["metadata"]["name"], obj["metadata"]["namespace"])
    desired = _ssa(api, obj, force=force, dry_run=True)
    return sorted(_changes(_comparable(live or {}), _comparable(desired), ""), key=lambda c: c.path)


# ---- helpers ---------------------------------------------------------------------------------------------


def _ssa(api: k8s.ApiClient, obj: dict[str, Any], *, force: bool, dry_run: bool) -> dict[str, Any]:
    group, version = _group_version(obj.get("apiVersion"))
    meta = obj["metadata"]
    kwargs: dict[str, Any] = {"field_manager": FIELD_MANAGER, "_content_type": _APPLY}
    if force:
        kwargs["force"] = True
    if dry_run:
        kwargs["dry_run"] = "All"
    try:
        # Raw response: the generated client maps only 200 to a body, so the 201 of an apply that
        # creates the object would come back as None.
        resp = k8s.CustomObjectsApi(api).patch_namespaced_custom_object(
            group, version, meta["namespace"], _plural(obj["kind"]), meta["name"], obj, _preload_content=False, **kwargs
        )
        return json.loads(resp.data)
    except ApiException as e:
        raise _api_error(e, _what(obj), action="apply") from None
    except HTTPError as e:
        raise _unreachable(api, e) from None


def _placed(manifest: Mapping[str, Any], namespace: str | None) -> dict[str, Any]:
    obj = copy.deepcopy(dict(manifest))
    meta = obj.setdefault("metadata", {})
    if namespace:
        meta["namespace"] = namespace
    meta.setdefault("namespace", "default")
    if obj.get("kind") not in _PLURALS:
        raise K8sError(f"kind {obj.get('kind')!r} is not one this client handles ({', '.join(_PLURALS)})")
    if not meta.get("name"):
        raise K8sError(f"{obj['kind']} manifest has no metadata.name")
    return obj


def _group_version(api_version: str | None) -> tuple[str, str]:
    group, _, version = (api_version or "ray.io/v1").partition("/")
    return group, version


def _plural(kind: str) -> str:
    return _PLURALS[kind]


def _what(obj: Mapping[str, Any]) -> str:
    return f"{obj['kind']} {obj['metadata']['namespace']}/{obj['metadata']['name']}"


def _body(e: ApiException) -> dict[str, Any]:
    try:
        body = json.loads(e.body or "{}")
    except (TypeError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def _api_error(e: ApiException, what: str, *, action: str) -> K8sError:
    body = _body(e)
    message = body.get("message") or e.reason or ""
    causes = (body.get("details") or {}).get("causes") or []
    if e.status == 422:
        lines = [f"{what} was rejected by the API server (422 {body.get('reason') or 'Invalid'}):"]
        for c in causes:
            lines.append(f"  {c.get('field') or '<object>'}: {_cause_message(c)}")
        if not causes:
            lines.append(f"  {message}")
        lines.append("Fix the config (or the CRD version) and render again; nothing was stored.")
        return K8sError("\n".join(lines))
    if e.status == 409:
        conflicts = "; ".join(c.get("message", "") for c in causes) or message
        return K8sError(f"cannot {action} {what}: fields are owned by another manager ({conflicts}); "
                        "re-run with --force to take them over, or change them through their owner")
    if e.status == 404:
        return K8sError(f"cannot {action} {what}: the API server has no such resource ({message}); "
                        "is the KubeRay operator (and its CRDs) installed in this cluster?")
    if e.status in (401, 403):
        return K8sError(f"cannot {action} {what}: {e.status} {e.reason}: {message}; check the kubeconfig user and its RBAC")
    return K8sError(f"cannot {action} {what}: API server answered {e.status} {e.reason}: {message}")


def _cause_message(cause: Mapping[str, Any]) -> str:
    msg = cause.get("message", "")
    # "Invalid value: \"string\": spec.x in body must be of type integer: \"string\"" -> keep the rule only
    fld = cause.get("field")
    if fld and f"{fld} " in msg:
        msg = msg.split(f"{fld} ", 1)[1].removeprefix("in body ")
    return msg


def _unreachable(api: k8s.ApiClient, e: HTTPError) -> K8sError:
    return K8sError(f"cannot reach the API server at {api.configuration.host}: {getattr(e, 'reason', None) or e}")


def _missing_paths(sent: Any, stored: Any, path: str = "") -> Iterator[str]:
    """Paths present in `sent` but absent from `stored` (what the server pruned)."""
    if isinstance(sent, Mapping):
        if not isinstance(stored, Mapping):
            return
        for key, value in sent.items():
            sub = f"{path}.{key}" if path else str(key)
            if key not in stored:
                yield sub
            else:
                yield from _missing_paths(value, stored[key], sub)
    elif isinstance(sent, list) and isinstance(stored, list):
        for i, (a, b) in enumerate(zip(sent, stored)):
            yield from _missing_paths(a, b, f"{path}[{i}]")


def _comparable(obj: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(obj))
    out.pop("status", None)
    meta = out.get("metadata") or {}
    for key in _SERVER_META:
        meta.pop(key, None)
    spec = out.get("spec") or {}
    if isinstance(spec.get("serveConfigV2"), str):
        try:
            spec["serveConfigV2"] = yaml.safe_load(spec["serveConfigV2"])
        except yaml.YAMLError:
            pass  # compared as text then
    return out


def _changes(live: Any, desired: Any, path: str) -> Iterator[FieldChange]:
    if isinstance(live, Mapping) and isinstance(desired, Mapping):
        for key in list(live) + [k for k in desired if k not in live]:
            sub = f"{path}.{key}" if path else str(key)
            yield from _changes(live.get(key, _MISSING), desired.get(key, _MISSING), sub)
    elif isinstance(live, list) and isinstance(desired, list):
        for i in range(max(len(live), len(desired))):
            yield from _changes(live[i] if i < len(live) else _MISSING, desired[i] if i < len(desired) else _MISSING,
                                f"{path}[{i}]")
    elif live is _MISSING and isinstance(desired, (Mapping, list)) and desired:
        yield from _changes({} if isinstance(desired, Mapping) else [], desired, path)
    elif desired is _MISSING and isinstance(live, (Mapping, list)) and live:
        yield from _changes(live, {} if isinstance(live, Mapping) else [], path)
    elif live != desired:
        yield FieldChange(path, None if live is _MISSING else live, None if desired is _MISSING else desired)


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[: limit - 3] + "..."


def cluster_schemas(api: k8s.ApiClient, kinds: tuple[str, ...] = ("RayService",)) -> CrdSchemas:
    """Read the CRDs of `kinds` installed in the cluster, for strict validation against exactly them."""
    ext = k8s.ApiextensionsV1Api(api)
    crds = []
    for kind in kinds:
        name = f"{_plural(kind)}.ray.io"
        try:
            crds.append(api.sanitize_for_serialization(ext.read_custom_resource_definition(name)))
        except ApiException as e:
            raise _api_error(e, f"CustomResourceDefinition {name}", action="read") from None
        except HTTPError as e:
            raise _unreachable(api, e) from None
    return CrdSchemas.from_crds(crds, source=f"the cluster at {api.configuration.host}")


def validated_apply(api: k8s.ApiClient, manifest: Mapping[str, Any], *, namespace: str | None = None,
                    force: bool = False, dry_run: bool = False) -> dict[str, Any]:
    """Validate `manifest` strictly against the cluster's own CRD, then `apply` it.

    Raises SchemaError (listing every bad field) before anything is sent for apply.
    """
    obj = _placed(manifest, namespace)
    validate_manifest(obj, cluster_schemas(api, (obj["kind"],)))
    return apply(api, obj, force=force, dry_run=dry_run)
