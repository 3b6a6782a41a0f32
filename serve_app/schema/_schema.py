"""The one config: app, HTTP, telemetry and model deployments. Knows nothing of Ray or vLLM."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from serve_app.schema._accelerators import Accelerators
from serve_app.schema._autoscaling import AutoscalingConfig
from serve_app.schema._base import Frozen
from serve_app.schema._guard import KeyLimits, ModelLimits, RouteConfig
from serve_app.schema._kubernetes import KubernetesConfig
from serve_app.schema._sim import SimEngineConfig
from serve_app.schema._shape import ModelShape, shape_of_source
from serve_app.schema._tiny import TINY_PREFIX, TINY_SPECS
from serve_app.errors import FieldError

__all__ = [
    "AppConfig",
    "HttpConfig",
    "ModelConfig",
    "Parallelism",
    "Placement",
    "TelemetryConfig",
    "LocalRayConfig",
    "RESERVED_ENGINE_ARGS",
]

# engine_args keys that other fields own; giving them twice would let the two disagree.
RESERVED_ENGINE_ARGS: dict[str, str] = {
    "model": "source",
    "served_model_name": "name",
    "tensor_parallel_size": "parallelism.tensor",
    "pipeline_parallel_size": "parallelism.pipeline",
    "enable_expert_parallel": "parallelism.expert",
    "distributed_executor_backend": "placement.executor",
    "max_model_len": "max_model_len",
}


class Parallelism(Frozen):
    """How one replica is split over accelerators."""

    tensor: int = Field(1, ge=1, le=64, description="Tensor-parallel size: each layer's heads split over this many accelerators.")
    pipeline: int = Field(1, ge=1, le=64, description="Pipeline-parallel size: layers split into this many stages.")
    expert: int = Field(
        1, ge=1, le=64,
        description="Expert-parallel size for MoE models; 1 disables it, otherwise it must equal `tensor` "
        "(vLLM spreads experts over the tensor-parallel group of each stage).",
    )

    @model_validator(mode="after")
    def _expert_matches_tensor(self) -> "Parallelism":
        if self.expert not in (1, self.tensor):
            raise FieldError(
                "expert",
                f"expert={self.expert} must be 1 (off) or equal tensor={self.tensor}: vLLM shards experts "
                f"over the tensor-parallel group; set expert: {self.tensor} or tensor: {self.expert}",
            )
        return self

    @property
    def world_size(self) -> int:
        """Accelerators (placement-group bundles) per replica: tensor x pipeline."""
        return self.tensor * self.pipeline


class Placement(Frozen):
    """Where a replica's workers run: the Ray resource they take and how bundles are packed."""

    accelerator: str = Field(
        "GPU", min_length=1,
        description='Ray resource one engine worker takes: "GPU" on GPU clusters, "CPU" on a laptop.',
    )
    accelerator_type: str | None = Field(
        None, description='Optional Ray accelerator type to pin to, e.g. "A100" or "L4" (Ray resource accelerator_type:<name>).'
    )
    strategy: Literal["auto", "STRICT_PACK", "PACK", "SPREAD"] = Field(
        "auto",
        description="Placement-group strategy; auto = STRICT_PACK when the replica fits one node, else PACK.",
    )
    accelerators_per_node: int | None = Field(
        None, ge=1,
        description="Accelerators per node, for `strategy: auto` when no live cluster is at hand; "
        "read from the Ray cluster when omitted.",
    )
    cpus_per_worker: float = Field(1.0, ge=0, description="CPUs each engine worker bundle asks for beside its accelerator.")
    executor: Literal["auto", "mp", "ray"] = Field(
        "auto",
        description="vLLM distributed executor; auto = mp within one node or on the CPU, ray across nodes on GPUs.",
    )
    schedule_timeout_s: float = Field(
        120.0, gt=0, description="How long a replica's placement group may stay pending before deploy fails."
    )

    @property
    def on_cpu(self) -> bool:
        """True when engine workers are CPU processes (vLLM's CPU platform)."""
        return self.accelerator.upper() == "CPU"


class ModelConfig(Frozen):
    """One model deployment: what to serve and how it is laid out."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$", max_length=128,
                      description="Served model name: the `model` field of OpenAI requests.")
    source: str = Field(..., min_length=1, description=(
        "Weights: a local dir (absolute, ~ or ./ path), a hub id (org/name, needs the cluster to reach the hub), "
        "or tiny:dense / tiny:moe for the tiny models built locally with random weights."))
    engine: Literal["vllm", "sim"] = Field("vllm", description=(
        "Engine behind the deployment: vllm, or sim — the SIMULATOR (a latency model, no weights) for autoscaling experiments."))
    sim: SimEngineConfig = Field(default_factory=SimEngineConfig, description="Timing of the simulator; used only with engine: sim.")
    engine_args: dict[str, Any] = Field(default_factory=dict, description=(
        "Passed through to vLLM's AsyncEngineArgs (e.g. dtype, enforce_eager, max_num_seqs); "
        "keys owned by other fields are refused."))
    max_model_len: int | None = Field(None, ge=16, description="Context length in tokens; the model's own when omitted.")
    parallelism: Parallelism | Literal["auto"] = Field(default_factory=Parallelism, description=(
        "Tensor / pipeline / expert split of one replica; auto = the capacity planner's top plan "
        "(cluster.planner.resolve_parallelism) for the cluster the app is built on."))
    quantization: str | None = Field(None, min_length=1, description=(
        "Weight format the capacity planner assumes for `parallelism: auto` (bf16, fp8, int8, awq, gptq, nf4, nf4-dq, "
        "gguf-q4_k, ...); from engine_args.dtype when omitted. Planning only: vLLM's kernel is still engine_args.quantization."))
    placement: Placement = Field(default_factory=Placement, description="Ray resources and packing of a replica.")
    autoscaling: AutoscalingConfig = Field(default_factory=AutoscalingConfig, description="Replica bounds.")
    max_ongoing_requests: int = Field(256, ge=1, description="Requests Serve sends to one replica at once; vLLM batches them.")
    limits: ModelLimits = Field(default_factory=ModelLimits, description="Queue bounds: past them requests get a fast 503 with Retry-After.")
    health_check_period_s: float = Field(2.0, gt=0, le=60, description=(
        "How often Serve checks the replica's engine; a dead engine fails the check and the replica is replaced "
        "(it answers retryable 503s meanwhile)."))
    graceful_shutdown_timeout_s: float = Field(30.0, ge=0, description=(
        "On scale-down or upgrade, how long a stopping replica may finish its in-flight requests before it is killed."))
    env: dict[str, str] = Field(default_factory=dict, description="Environment variables for the replica and its engine workers.")
    front_ends: int | Literal["auto"] = Field("auto", description=(
        "OpenAI front-end processes per engine (vLLM's multi-API-server mode inside one replica): the replica "
        "process is front end 0 and dispatches each request to the least-busy one; each extra one takes a CPU "
        "of the replica. auto = 1 with CPU engine workers (they need the cores), else one per 8 CPUs of the "
        "replica's bundles, 1 to 8 (cluster.planner.layout)."))

    @field_validator("front_ends", mode="before")
    @classmethod
    def _front_ends_range(cls, v: Any) -> Any:
        # Before the int | "auto" union: a bad value gets one error with the rule, not one per union member.
        if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 16):
            return v
        raise ValueError("must be 1 to 16 front-end processes per engine, or auto")

    @field_validator("source")
    @classmethod
    def _known_tiny(cls, v: str) -> str:
        if v.startswith(TINY_PREFIX) and v[len(TINY_PREFIX):] not in TINY_SPECS:
            raise ValueError(f"unknown tiny model {v!r}; use one of {', '.join(TINY_PREFIX + k for k in TINY_SPECS)}")
        return v

    @field_validator("engine_args")
    @classmethod
    def _no_reserved(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key in v:
            owner = RESERVED_ENGINE_ARGS.get(key.replace("-", "_"))
            if owner:
                raise FieldError(key, f"is set through models[].{owner}, not engine_args; move it there")
        return v

    @model_validator(mode="after")
    def _fits_model(self) -> "ModelConfig":
        try:
            shape = shape_of_source(self.source)
        except (FileNotFoundError, ValueError) as e:
            raise FieldError("source", f"{self.source!r}: {e}") from e
        if shape is not None:
            if self.parallelism != "auto":  # auto: the planner validates the layouts it considers
                _check_parallelism(self.parallelism, shape)
            if self.max_model_len and shape.max_position_embeddings and self.max_model_len > shape.max_position_embeddings:
                raise FieldError(
                    "max_model_len",
                    f"max_model_len={self.max_model_len} exceeds the model's max_position_embeddings="
                    f"{shape.max_position_embeddings}; lower it",
                )
        if self.engine == "sim" and self.front_ends not in ("auto", 1):
            raise FieldError("front_ends", f"front_ends={self.front_ends} needs engine: vllm (the simulator has no "
                             "OpenAI front end to run twice); remove it or set 1")
        p = self.placement
        if p.on_cpu and p.executor == "ray":
            raise FieldError("placement.executor", "executor=ray is refused by vLLM on the CPU platform; use mp or auto")
        if (p.accelerators_per_node and p.strategy == "STRICT_PACK" and self.parallelism != "auto"
                and self.parallelism.world_size > p.accelerators_per_node):
            raise FieldError(
                "placement.strategy",
                f"STRICT_PACK needs {self.parallelism.world_size} accelerators on one node but "
                f"accelerators_per_node={p.accelerators_per_node}; use strategy: PACK (pipeline stages across nodes) or auto",
            )
        return self


def _check_parallelism(par: Parallelism, shape: ModelShape) -> None:
    heads, kv, layers = shape.num_attention_heads, shape.num_key_value_heads, shape.num_hidden_layers
    if heads % par.tensor:
        ok = [d for d in range(1, heads + 1) if heads % d == 0]
        raise FieldError("parallelism.tensor", f"tensor={par.tensor} does not divide num_attention_heads={heads}; use one of {ok}")
    if kv % par.tensor and par.tensor % kv:
        raise FieldError(
            "parallelism.tensor",
            f"tensor={par.tensor} and num_key_value_heads={kv}: one must divide the other (KV heads are split or replicated)",
        )
    if par.pipeline > layers:
        raise FieldError("parallelism.pipeline", f"pipeline={par.pipeline} exceeds num_hidden_layers={layers}; each stage needs a layer")
    if par.expert > 1:
        if not shape.num_experts:
            raise FieldError("parallelism.expert", f"expert={par.expert} but the model is dense (no experts); set expert: 1")
        if shape.num_experts % par.expert:
            raise FieldError(
                "parallelism.expert", f"expert={par.expert} does not divide the model's {shape.num_experts} experts"
            )


class HttpConfig(Frozen):
    """Where Serve's HTTP proxy listens."""

    host: str = Field("127.0.0.1", description="Bind address; 0.0.0.0 inside a cluster.")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port.")
    request_timeout_s: float | None = Field(None, gt=0, description="End-to-end request timeout; none by default (long generations).")
    fast_path: bool = Field(
        True,
        description="Serve's throughput-optimized mode: HAProxy on the HTTP port forwarding to replicas that serve "
        "HTTP themselves (direct ingress), user code on the replica's main loop, Ray workers at normal priority. "
        "Takes effect where fleetserve starts Ray (fleetserve serve, serve run on a laptop) and in rendered KubeRay pods; "
        "false = Serve's Python proxy.",
    )
    ingress: Literal["auto", "router"] = Field(
        "auto",
        description="auto: with one model its replicas serve HTTP themselves (no extra hop); with several, "
        "a router deployment routes by `model`. router: always deploy the router.",
    )
    max_request_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description=(
        "Largest request body accepted; a larger one gets 413 before the engine sees it."))
    routes: RouteConfig = Field(default_factory=RouteConfig, description="Which routes exist and which need no key.")


class TelemetryConfig(Frozen):
    """Traces and the request log (serve_app/telemetry). The standard OTEL_* variables win over these.

    Precedence, first wins (serve_app.telemetry.tracing.TracingSettings.resolve):
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_EXPORTER_OTLP_ENDPOINT, `otlp_endpoint`;
    OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, OTEL_EXPORTER_OTLP_PROTOCOL, `otlp_protocol`;
    OTEL_TRACES_SAMPLER (+ _ARG), `sampling_ratio`; OTEL_SERVICE_NAME, `service_name`.
    """

    otlp_endpoint: str | None = Field(None, min_length=1, description=(
        "OTLP traces endpoint (http/protobuf: http://collector:4318/v1/traces; grpc: http://collector:4317). "
        "Tracing is off when neither this nor an OTEL_EXPORTER_OTLP_*ENDPOINT variable is set."))
    otlp_protocol: Literal["grpc", "http/protobuf"] = Field("http/protobuf", description="OTLP transport of the exporter.")
    service_name: str = Field("fleetserve", min_length=1, description="service.name resource attribute of every span.")
    sampling_ratio: float = Field(0.0, ge=0.0, le=1.0, description=(
        "Fraction of requests traced when the client did not ask for it. A client traceparent with the sampled "
        "flag is always traced (W3C); one without the flag, or no traceparent, is traced at this ratio."))
    request_log: str | None = Field(None, min_length=1, description=(
        "File each model replica appends one JSON line to per finished request (arrival, model, tokens, TTFT, "
        "E2E, status, replica, trace id; never a key or prompt text); the replay's `jsonl` trace format. "
        "'-' writes the lines to the replica's log instead; none: off."))
    engine_metrics: bool = Field(True, description=(
        "Export vLLM's own metrics (TTFT, ITL, E2E, queue, KV use; the Grafana dashboard's engine panels) through "
        "Ray's metrics agent. Off saves the replica the Ray metric calls of every engine step; the autoscaling "
        "signals and fleetserve's own metrics stay (cost measured in BENCHMARKS.md, issue 16 item 2)."))


class LocalRayConfig(Frozen):
    """The Ray that fleetserve starts on this machine when no cluster is given ($RAY_ADDRESS unset or "local").

    A laptop or CI run. A cluster's Ray (KubeRay, `ray start`) is configured where it is started,
    not here.
    """

    dashboard: bool = Field(False, description=(
        "Start Ray's dashboard (http://127.0.0.1:8265): its UI, the state API and Serve's REST API (`serve status`, "
        "`serve deploy`). Off by default: on the tiny-model benchmark it cost 218 MiB of memory and 1.7 s of start-up "
        "(BENCHMARKS.md), and fleetserve's own commands do not need it."))
    metrics_export_port: int | None = Field(None, ge=1, le=65535, description=(
        "Port of Ray's metrics export on this node: Prometheus text of every Serve, vLLM and fleetserve metric of "
        "the node's processes at http://<node>:<port>/metrics (KubeRay pods use 8080). None: a free port, printed "
        "by `fleetserve serve`."))


class AppConfig(Frozen):
    """The whole application: the single source of truth for app, placement, autoscaling, manifests and load plans."""

    name: str = Field("fleetserve", pattern=r"^[a-z0-9][a-z0-9-]*$", max_length=63, description="Serve application name.")
    http: HttpConfig = Field(default_factory=HttpConfig, description="HTTP listener.")
    api_keys: tuple[SecretStr, ...] = Field((), description=(
        "Bearer tokens accepted inline. With any key source set, every route but `http.routes.public` needs one."))
    api_keys_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description=(
        "Name of an environment variable holding more keys (comma or newline separated), read by each replica at start."))
    api_keys_file: str | None = Field(None, min_length=1, description=(
        "File with more keys, one per line (a mounted Kubernetes Secret); re-read when it changes, so keys rotate "
        "without a redeploy."))
    key_limits: KeyLimits = Field(default_factory=KeyLimits, description="Per-API-key concurrency and rate limits.")
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig, description="Traces and the request log.")
    models: tuple[ModelConfig, ...] = Field(..., min_length=1, description="Model deployments, routed by `model` name.")
    accelerators: Accelerators = Field((), description=(
        "User-defined accelerators for the capacity planner, beside its built-in catalog (same name wins here)."))
    kubernetes: KubernetesConfig = Field(
        default_factory=KubernetesConfig, description="How the app runs as a KubeRay RayService (cluster/k8s renders it)."
    )
    local_ray: LocalRayConfig = Field(
        default_factory=LocalRayConfig, description="The Ray fleetserve starts itself when no cluster address is given."
    )

    @property
    def auth_enabled(self) -> bool:
        """True when any API-key source is configured (then every non-public route needs a key)."""
        return bool(self.api_keys or self.api_keys_env or self.api_keys_file)

    @property
    def direct_ingress(self) -> bool:
        """True when the single model's replicas are the HTTP ingress (no router)."""
        return len(self.models) == 1 and self.http.ingress == "auto"

    @model_validator(mode="after")
    def _guard_rules(self) -> "AppConfig":
        if self.key_limits.active and not self.auth_enabled:
            raise FieldError("key_limits", "per-key limits need API keys to tell callers apart; set api_keys, "
                             "api_keys_env or api_keys_file, or remove key_limits")
        if self.http.routes.vllm and not self.direct_ingress:
            raise FieldError("http.routes.vllm", "vLLM's own routes carry no model name to route by; they can be exposed "
                             "only with direct ingress (one model, http.ingress: auto)")
        return self

    @model_validator(mode="after")
    def _unique_names(self) -> "AppConfig":
        seen: dict[str, int] = {}
        for i, m in enumerate(self.models):
            if m.name in seen:
                raise FieldError(f"models[{i}].name", f"{m.name!r} is already used by models[{seen[m.name]}]; names must be unique")
            seen[m.name] = i
        return self

    def model(self, name: str) -> ModelConfig:
        """Return the model deployment serving `name` (KeyError if none)."""
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(name)
